import { createHash, timingSafeEqual } from 'node:crypto';
import { scopesOf, SCOPE, type ServiceCredentials } from '../../common/credentials';
import { HttpError } from '../../common/errors';
import { ENV } from '../../common/names';
import type { ApprovalSettings } from '../policy/compile';
import type { ApprovalRecord } from './approvals';

/**
 * Who may approve, pure. An approver proves who they are with their own credential (its SHA-256
 * is in the policy's `approvals.people.<id>.credential_sha256`), or an operator holding the admin
 * credential acts for a named person (`--as`), recorded as such.
 *
 * Self-approval: the sponsor of the requesting agent (every agent in a delegation chain has the
 * same sponsor) approves their own agent's request only when the rule says `approvers: { sponsor:
 * true }`. Being listed in `people` or holding an approver role is not enough: a rule that wants
 * the sponsor's own word says so, any other rule wants someone else's.
 */

export interface Approver {
  person: string;
  via: 'credential' | 'admin';
}

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** The person a credential proves, or undefined. Every listed hash is compared (constant time), whichever matches. */
export function personOf(credential: string, settings: ApprovalSettings): string | undefined {
  const given = sha256(credential);
  let found: string | undefined;
  for (const [id, p] of settings.people) {
    if (!p.credentialSha256) continue;
    if (timingSafeEqual(given, Buffer.from(p.credentialSha256, 'hex')) && found === undefined) found = id;
  }
  return found;
}

/** An approver from a presented credential: a person's own, or the admin one acting for `as`. 401 otherwise. */
export function authenticateApprover(credential: string | undefined, as: string | undefined, settings: ApprovalSettings, creds: ServiceCredentials): Approver {
  if (!credential) throw new HttpError(401, 'unauthorized', `approving needs an approver credential ("Authorization: Bearer <credential>"), or ${ENV.ADMIN_TOKEN} with --as PERSON`, { 'WWW-Authenticate': 'Bearer' });
  const person = personOf(credential, settings);
  if (person !== undefined) {
    if (as !== undefined && as !== person) throw new HttpError(403, 'forbidden', `this credential is ${person}'s: it cannot act for ${as}`);
    return { person, via: 'credential' };
  }
  if (scopesOf(credential, creds).has(SCOPE.ADMIN)) {
    if (!as) throw new HttpError(400, 'invalid_request', `the admin credential approves for a named person: give --as PERSON ('as')`);
    return { person: as, via: 'admin' };
  }
  throw new HttpError(401, 'unauthorized', 'the credential is neither an approver credential (approvals.people) nor the admin credential', { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
}

/** Whether `person` may answer this request; when not, why. */
export function mayApprove(r: Pick<ApprovalRecord, 'sponsor_id' | 'approvers'>, person: string, settings: ApprovalSettings): { ok: true } | { ok: false; why: string } {
  if (person === r.sponsor_id) {
    return r.approvers.sponsor
      ? { ok: true }
      : { ok: false, why: `${person} sponsors the requesting agent: a sponsor approves their own agent's request only when the rule says approvers: { sponsor: true }` };
  }
  if (r.approvers.people.includes(person)) return { ok: true };
  const roles = settings.people.get(person)?.roles ?? [];
  if (roles.some((role) => r.approvers.roles.includes(role))) return { ok: true };
  const who = [r.approvers.sponsor ? 'the sponsor' : '', r.approvers.people.length ? `people ${r.approvers.people.join(', ')}` : '', r.approvers.roles.length ? `roles ${r.approvers.roles.join(', ')}` : '']
    .filter(Boolean)
    .join('; ');
  return { ok: false, why: `${person} is not an approver of this request (approvers: ${who})` };
}
