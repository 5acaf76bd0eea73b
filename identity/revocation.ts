import crypto from 'node:crypto';
import { z } from 'zod';
import type { TokenClaims } from './claims';
import { TOKEN_ERROR, TokenError } from './errors';

/**
 * Revocations: what makes a token that still verifies refused anyway. A sponsor's offboarding
 * revokes every token naming that sponsor issued until then; a revoked agent's tokens (and its
 * delegates') are refused whatever their `exp`; a rotated or revoked credential takes the tokens
 * issued with it along. The token service keeps the list in its registry file and publishes it at
 * GET /v1/tokens/revocations; the policy plane and offline verifiers check every token against it.
 */
export type Revocation =
  | { kind: 'sponsor'; sponsor_id: string; revoked_at: number }
  | { kind: 'agent'; agent_id: string; revoked_at: number }
  | { kind: 'credential'; agent_id: string; credential_id: string; revoked_at: number };

/** GET /v1/tokens/revocations */
export interface RevocationFeedBody {
  issuer: string;
  /** Changes whenever the list does: a digest of it. */
  version: string;
  /** How often readers should ask again, seconds. */
  refresh_seconds: number;
  revocations: Revocation[];
}

export const REVOCATIONS_PATH = '/v1/tokens/revocations';

const id = z.string().min(1).max(256);
const at = z.number().int().nonnegative();
export const revocationSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('sponsor'), sponsor_id: id, revoked_at: at }),
  z.strictObject({ kind: z.literal('agent'), agent_id: id, revoked_at: at }),
  z.strictObject({ kind: z.literal('credential'), agent_id: id, credential_id: id, revoked_at: at }),
]);
const feedSchema = z.object({ version: z.string().min(1).max(128), revocations: z.array(revocationSchema).max(1_000_000) });

/** A digest of the list: equal lists, equal versions, in any process. */
export function revocationsVersion(list: readonly Revocation[]): string {
  const h = crypto.createHash('sha256');
  for (const r of list) h.update(JSON.stringify([r.kind, r.kind === 'sponsor' ? r.sponsor_id : r.agent_id, r.kind === 'credential' ? r.credential_id : '', r.revoked_at])).update('\n');
  return h.digest('hex').slice(0, 24);
}

/** A list indexed for lookups. */
export interface RevocationIndex {
  readonly version: string;
  readonly count: number;
  /** The revocation that refuses this token, if any. */
  match(claims: Pick<TokenClaims, 'sponsor_id' | 'agent_id' | 'credential_id' | 'iat'>): Revocation | undefined;
}

export function indexRevocations(list: readonly Revocation[], version = revocationsVersion(list)): RevocationIndex {
  // Maps, not objects: ids are user input ('__proto__').
  const sponsors = new Map<string, Revocation & { kind: 'sponsor' }>();
  const agents = new Map<string, Revocation>();
  const credentials = new Map<string, Revocation>();
  for (const r of list) {
    if (r.kind === 'sponsor') {
      const seen = sponsors.get(r.sponsor_id);
      if (!seen || seen.revoked_at < r.revoked_at) sponsors.set(r.sponsor_id, r);
    } else if (r.kind === 'agent') agents.set(r.agent_id, r);
    else credentials.set(`${r.agent_id}\0${r.credential_id}`, r);
  }
  return {
    version,
    count: list.length,
    match(c) {
      if (c.sponsor_id !== undefined) {
        const s = sponsors.get(c.sponsor_id);
        // issued before (or in the second of) the offboarding; a reinstated sponsor's new tokens pass
        if (s && c.iat * 1000 <= s.revoked_at) return s;
      }
      if (c.agent_id === undefined) return undefined;
      const a = agents.get(c.agent_id);
      if (a) return a;
      return c.credential_id !== undefined ? credentials.get(`${c.agent_id}\0${c.credential_id}`) : undefined;
    },
  };
}

export function describeRevocation(r: Revocation): string {
  const when = new Date(r.revoked_at).toISOString();
  if (r.kind === 'sponsor') return `sponsor '${r.sponsor_id}' was offboarded at ${when}`;
  if (r.kind === 'agent') return `agent ${r.agent_id} was revoked at ${when}`;
  return `the credential of agent ${r.agent_id} this token was issued with was revoked at ${when}`;
}

/** Where a verifier gets revocations: the feed URL (fetched, refreshed), or a getter of the current list (same process). */
export type RevocationSource = URL | string | (() => RevocationIndex);

export interface RevocationCheckerOptions {
  /** Remote feed: ask again once the copy is older than this, ms. Default 2000. */
  refreshMs?: number;
  /** Remote feed: with no successful answer for this long, refuse every token (fail closed), ms. Default 60000. */
  maxStaleMs?: number;
  /** Remote feed: fetch timeout, ms. Default 1000. */
  timeoutMs?: number;
  now?: () => number;
}

export interface RevocationChecker {
  /** The list as known now (a remote one refreshed first when due). Throws REVOCATIONS_UNAVAILABLE when too stale. */
  current(): Promise<RevocationIndex>;
  /** Throws ERR_TOKEN_REVOKED when the token is revoked. */
  check(claims: TokenClaims): Promise<void>;
}

/**
 * Checks tokens against a revocation source. A remote feed is renewed in the background once the
 * copy is half `refreshMs` old, and waited for when it is `refreshMs` old (concurrent callers share
 * one request, bounded by `timeoutMs`); while the feed cannot be reached the last copy is used, for
 * at most `maxStaleMs`, after which every token is refused.
 */
export function createRevocationChecker(source: RevocationSource, o: RevocationCheckerOptions = {}): RevocationChecker {
  const now = o.now ?? Date.now;
  let current: () => Promise<RevocationIndex>;
  if (typeof source === 'function') {
    current = async () => source();
  } else {
    const url = source instanceof URL ? source : new URL(source);
    const refreshMs = o.refreshMs ?? 2000;
    const maxStaleMs = o.maxStaleMs ?? 60_000;
    const timeoutMs = o.timeoutMs ?? 1000;
    if (!(refreshMs >= 100 && maxStaleMs >= refreshMs && timeoutMs > 0)) {
      throw new TypeError('revocations: refreshMs must be at least 100 and maxStaleMs at least refreshMs');
    }
    let copy: { index: RevocationIndex; at: number } | undefined;
    let inflight: Promise<void> | undefined;
    let lastAttempt = -Infinity;
    let healthy = true;
    let lastError = 'not fetched yet';
    const fetchFeed = async () => {
      try {
        const res = await fetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(timeoutMs) });
        if (!res.ok) throw new Error(`${url} answered ${res.status}`);
        const parsed = feedSchema.safeParse(await res.json());
        if (!parsed.success) throw new Error(`${url} answered something that is not a revocation feed`);
        copy = { index: indexRevocations(parsed.data.revocations as Revocation[], parsed.data.version), at: now() };
        healthy = true;
      } catch (err) {
        healthy = false;
        lastError = (err as Error).message;
      } finally {
        inflight = undefined;
      }
    };
    current = async () => {
      const t = now();
      const age = copy ? t - copy.at : Infinity;
      // Busy: the copy is renewed in the background from half its interval, and no check waits.
      if (age >= refreshMs / 2 && !inflight && t - lastAttempt >= Math.min(refreshMs, 1000) / 2) {
        lastAttempt = t;
        inflight = fetchFeed();
      }
      // Due: a feed that answers is waited for (a revocation counts from the next check); one that
      // does not is not, until the copy is too old to use.
      if (inflight && ((age >= refreshMs && healthy) || age >= maxStaleMs)) await inflight;
      if (!copy || now() - copy.at >= maxStaleMs) {
        throw new TokenError(
          TOKEN_ERROR.REVOCATIONS_UNAVAILABLE,
          `the revocation feed ${url} has not been read for ${copy ? `${Math.round((now() - copy.at) / 1000)} s` : 'ever'} (${lastError}): no token is accepted`,
        );
      }
      return copy.index;
    };
  }
  return {
    current: () => current(),
    async check(claims) {
      const hit = (await current()).match(claims);
      if (hit) throw new TokenError(TOKEN_ERROR.REVOKED, describeRevocation(hit));
    },
  };
}
