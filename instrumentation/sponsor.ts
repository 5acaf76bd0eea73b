import { diag } from '@opentelemetry/api';
import { decodeJwt } from 'jose';
import { issueToken } from '../identity/client';
import { getRuntime } from './runtime';
import type { AgentScope } from './scope';

/**
 * A registered agent (CUSTODY_AGENT_CREDENTIAL) or a delegated one (CUSTODY_DELEGATION_TOKEN) may
 * start without CUSTODY_SPONSOR_ID: its sponsor and role are its registration's, or its parent's.
 * Every audit row must still name the sponsor, so the instance learns them once, before its first
 * call: from the delegation token's claims (read locally; the plane verifies the token itself), or
 * from the claims of a token issued for the call's tool with the credential.
 */
const TIMEOUT_MS = 2_000;
const RETRY_AFTER_MS = 10_000;

/** A promise to wait for when the sponsor still has to be learned; undefined when there is nothing to do. */
export function ensureSponsor(scope: AgentScope, tool: string): Promise<void> | undefined {
  const id = scope.identity;
  if (id.sponsorId || (!id.credential && !id.delegationToken)) return undefined;
  if (scope.learning) return scope.learning;
  if (scope.learnFailedAt !== undefined && Date.now() - scope.learnFailedAt < RETRY_AFTER_MS) return undefined;
  return (scope.learning = learn(scope, tool));
}

async function learn(scope: AgentScope, tool: string): Promise<void> {
  const id = scope.identity;
  try {
    let claims: { sponsor_id?: unknown; role?: unknown };
    if (id.delegationToken) {
      claims = decodeJwt(id.delegationToken);
    } else {
      const got = await issueToken(
        getRuntime().settings.tokenUrl,
        { tool, agent_instance_id: id.agentInstanceId },
        { credential: id.credential!, timeoutMs: TIMEOUT_MS },
      );
      claims = got.claims;
    }
    const details: { sponsorId?: string; role?: string } = {};
    if (typeof claims.sponsor_id === 'string' && claims.sponsor_id) details.sponsorId = claims.sponsor_id;
    if (typeof claims.role === 'string' && claims.role) details.role = claims.role;
    scope.learn(details);
  } catch (err) {
    // the call itself is still decided by the enforcer (and refused if the credential is bad)
    scope.learning = undefined;
    scope.learnFailedAt = Date.now();
    diag.warn(`custody: agent ${id.agentInstanceId} could not learn its sponsor from its ${id.delegationToken ? 'delegation token' : 'credential'}: ${(err as Error).message}`);
  }
}
