import type { Router } from 'express';
import { z } from 'zod';
import { SCOPE, requireScope, type ServiceCredentials } from '../../common/credentials';
import { HttpError, badRequest } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';
import type { Logger } from '../../common/log';
import { TOKEN_ERROR, TokenError } from '../../identity/errors';
import type { ReplayCache } from '../../identity/replay';
import type { IncidentState, RolloutState } from '../policy/rollout';

/**
 * Policy-plane replicas that agree. One plane owns the shared state (the one holding the data
 * directory, usually `custody up`): the rollout (percent, incident switch, revision) and the
 * single-use token claims. Every other plane started with `--state-url <owner>` is a replica:
 *
 * - it reads the rollout from the owner every `pollMs` (500 ms: a change made anywhere is in force
 *   on every replica within a second) and answers checks and GET /v1/rollout from that copy;
 * - it hands rollout changes (PUT /v1/rollout, the incident switch) to the owner as they came, with
 *   the caller's credential and If-Match, so revisions are the owner's, global and compare-and-set;
 * - it claims single-use tokens at the owner (POST /v1/state/replay, with CUSTODY_STATE_TOKEN, by
 *   default the service credential), so
 *   a token used at one replica is refused at all of them.
 *
 * When the owner cannot be reached a replica keeps the last rollout it read and says so on /readyz;
 * before it has read one it answers no check (503), and single-use tokens are refused (a claim
 * nobody can vouch for is not made).
 */

export const STATE_PATHS = {
  REPLAY: '/v1/state/replay',
} as const;

/** How often a replica reads the owner's rollout. */
export const STATE_POLL_MS = 500;
/** One read or claim at the owner: a claim holds a check, so it stays well inside the agents' 200 ms. */
export const STATE_REQUEST_TIMEOUT_MS = 150;

const incidentSchema = z.object({ cache_ttl_s: z.number(), reason: z.string(), actor: z.string(), since: z.string() });
const ownerRollout = z.object({
  percent: z.number().min(0).max(100),
  revision: z.int().min(0),
  reason: z.string(),
  actor: z.string(),
  updated_at: z.string(),
  incident: incidentSchema.nullable().optional(),
});

export interface SharedRollout {
  /** The owner's rollout as last read; throws StateUnavailableError before the first read. */
  get(): RolloutState;
  /** Takes an answer of the owner (a forwarded change's body) as the newest state, if it is newer. */
  accept(body: unknown): void;
  /** Known, and when it was last read. */
  status(): { known: boolean; fresh: boolean; revision: number | null; lastReadAt: number | null };
  /** Resolves after the first read (true) or after `waitMs` without one (false). */
  ready(waitMs: number): Promise<boolean>;
  close(): void;
}

/** No rollout read yet: nothing can be decided or shown, wherever it is asked (503). */
export class StateUnavailableError extends HttpError {
  constructor(message: string) {
    super(503, 'state_unavailable', message, { 'retry-after': '1' });
  }
}

/** The replica's copy of the owner's rollout, read every `pollMs`. */
export function sharedRollout(owner: string, o: { log: Logger; pollMs?: number; onChange?: (from: RolloutState | undefined, to: RolloutState) => void }): SharedRollout {
  const pollMs = o.pollMs ?? STATE_POLL_MS;
  const url = new URL('/v1/rollout', owner);
  let state: RolloutState | undefined;
  let lastReadAt: number | null = null;
  let error: string | null = null;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  const waiters = new Set<() => void>();

  const take = (body: unknown): void => {
    const r = ownerRollout.safeParse(body);
    if (!r.success) throw new Error(`${url.origin} answered a rollout without '${r.error.issues[0]!.path.join('.')}'`);
    const next: RolloutState = { ...r.data, incident: (r.data.incident ?? null) as IncidentState | null };
    // never backwards: a slow answer older than a change already taken is dropped
    if (state && next.revision < state.revision) return;
    const before = state;
    state = next;
    if (!before || before.revision !== next.revision) o.onChange?.(before, next);
    for (const w of waiters) w();
    waiters.clear();
  };

  const poll = async (): Promise<void> => {
    try {
      const { body } = await fetchJson(url, { timeoutMs: Math.max(STATE_REQUEST_TIMEOUT_MS, pollMs) });
      take(body);
      lastReadAt = Date.now();
      if (error) o.log.warn({ owner }, 'shared state reachable again');
      error = null;
    } catch (err) {
      const why = (err as Error).message;
      if (error === null) o.log.error({ owner, err: why }, 'shared state unreachable: keeping the last rollout read');
      error = why;
    } finally {
      if (!closed) timer = setTimeout(() => void poll(), pollMs);
    }
  };
  void poll();

  return {
    get() {
      if (!state) throw new StateUnavailableError(`the shared rollout state at ${owner} has not been read yet${error ? ` (${error})` : ''}: nothing can be decided`);
      return state;
    },
    accept(body) {
      try {
        take(body);
      } catch (err) {
        o.log.warn({ err: (err as Error).message }, 'ignoring an unreadable rollout answer');
      }
    },
    status: () => ({
      known: state !== undefined,
      fresh: error === null && lastReadAt !== null,
      revision: state?.revision ?? null,
      lastReadAt,
    }),
    ready(waitMs) {
      if (state) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = () => {
          clearTimeout(t);
          resolve(true);
        };
        const t = setTimeout(() => {
          waiters.delete(done);
          resolve(false);
        }, waitMs);
        waiters.add(done);
      });
    },
    close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}

/**
 * Single-use claims made at the owner. The answer decides: first use, or a replay; no answer
 * (unreachable, slow, refused credential) refuses the token, since nobody can say it is unused.
 */
export function sharedReplayCache(owner: string, stateToken: string | undefined): ReplayCache {
  const url = new URL(STATE_PATHS.REPLAY, owner);
  let claims = 0;
  return {
    async use(jti, expSeconds) {
      if (!stateToken) {
        throw new TokenError(TOKEN_ERROR.REPLAY_UNAVAILABLE, `single-use tokens need the shared state: set CUSTODY_STATE_TOKEN (or CUSTODY_SERVICE_TOKEN) to claim them at ${url.origin}`);
      }
      try {
        await fetchJson(url, { method: 'POST', body: { jti, exp: expSeconds }, headers: { authorization: `Bearer ${stateToken}` }, timeoutMs: STATE_REQUEST_TIMEOUT_MS });
        claims++;
      } catch (err) {
        if (err instanceof JsonRequestError && err.status === 409) throw new TokenError(TOKEN_ERROR.REPLAY, `token ${jti} was already used`);
        throw new TokenError(TOKEN_ERROR.REPLAY_UNAVAILABLE, `cannot claim single-use token ${jti} at the shared state: ${(err as Error).message}`);
      }
    },
    get size() {
      return claims;
    },
    clear() {
      claims = 0;
    },
  };
}

const claimBody = z.strictObject({
  jti: z.string({ error: "'jti' is required" }).min(1).max(256),
  exp: z.int({ error: "'exp' is required: the token's expiry, seconds since the epoch" }).min(0),
});

/** The owner's side: POST /v1/state/replay claims a jti in this plane's own replay cache (service credential). */
export function mountStateRoutes(router: Router, o: { replay: ReplayCache; credential: string | undefined }): void {
  const credentials: ServiceCredentials = { service: o.credential };
  const service = requireScope(SCOPE.SERVICE, credentials, { what: 'shared-state claims', disabled: { status: 403, code: 'forbidden' } });
  router.post(STATE_PATHS.REPLAY, service, async (req, res) => {
    const r = claimBody.safeParse(req.body ?? {});
    if (!r.success) {
      const issue = r.error.issues[0]!;
      throw badRequest('invalid_request', `${issue.path.length ? `'${issue.path.join('.')}': ` : ''}${issue.message}`);
    }
    try {
      await o.replay.use(r.data.jti, r.data.exp);
    } catch (err) {
      if (err instanceof TokenError && err.code === TOKEN_ERROR.REPLAY) {
        return void res.status(409).json({ error: { code: 'token_replayed', message: err.message } });
      }
      throw err;
    }
    res.json({ claimed: r.data.jti });
  });
}
