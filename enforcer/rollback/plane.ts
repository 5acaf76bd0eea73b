import { z } from 'zod';
import { CustodyError } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';
import { DEFAULTS } from '../../common/names';
import { RolloutConflictError } from '../errors';
import type { RollbackStatus, RolloutState } from './decide';

/**
 * What the rollback controller reads and writes: the rollout on the policy plane and the rule
 * status on the collector. Over HTTP when the watcher runs alone; `custody up` hands the role the
 * same interface backed by the control API it hosts.
 */
export interface RolloutPlane {
  getRollout(): Promise<RolloutState>;
  /**
   * Sets the percent. `expected` is the state the decision was taken on: when it no longer holds
   * (another watcher or a person changed the rollout meanwhile) the change is refused with
   * RolloutConflictError instead of undoing theirs.
   */
  setRollout(change: { percent: number; reason: string; actor: string; expected: RolloutState }): Promise<RolloutState>;
  status(query: { windowS: number; cohort: string }): Promise<RollbackStatus>;
}

/** The plane or the collector could not be asked: no change is made. */
export class PlaneUnreachableError extends CustodyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PLANE_UNREACHABLE', message, options);
  }
}

/** The plane answered, but not with what the contract promises (or refused the request). */
export class PlaneResponseError extends CustodyError {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
}

/** Someone else changed the rollout between our read and our write (one class with the plane's own). */
export { RolloutConflictError };

const timeValue = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = typeof v === 'number' ? (v < 1e12 ? v * 1000 : v) : Date.parse(v);
  if (!Number.isFinite(ms)) {
    ctx.addIssue({ code: 'custom', message: `'${v}' is not a time` });
    return z.NEVER;
  }
  return ms;
});

const rolloutSchema = z
  .object({
    percent: z.number().min(0).max(100),
    stages: z.array(z.number().min(0).max(100)).optional(),
    updated_at: timeValue.optional(),
    revision: z.union([z.string(), z.number()]).optional(),
    next_percent: z.number().min(0).max(100).nullable().optional(),
    increment: z.number().gt(0).max(100).nullable().optional(),
  })
  .loose();

const statusSchema = z
  .object({
    action: z.enum(['rollback', 'hold', 'advance', 'insufficient_data']),
    window_s: z.number(),
    sample_size: z.number(),
    rules: z.array(
      z.object({ rule: z.string(), value: z.number().nullable(), threshold: z.number(), breached: z.boolean() }).loose(),
    ),
    more_calls: z.number().nullable().optional(),
    // null: the collector knows no policy plane; the watcher reads the percent from the plane itself
    rollout: z.object({ percent: z.number().nullable() }).loose().optional(),
    cohort: z.string().optional(),
  })
  .loose();

/** Turns a GET /v1/rollout body into the controller's state; a missing stage list means the contract's default. */
export function parseRollout(body: unknown): RolloutState {
  const r = rolloutSchema.safeParse(body);
  if (!r.success) {
    throw new PlaneResponseError(200, 'ERR_PLANE_RESPONSE', `GET /v1/rollout answered an unexpected body: ${r.error.issues[0]?.message ?? ''}`);
  }
  const { percent, stages, updated_at, revision, next_percent, increment } = r.data;
  return {
    percent,
    // a policy with `increment` and no `stages` has none: it advances by the increment
    stages: stages && stages.length > 0 ? stages : increment ? [] : DEFAULTS.ROLLOUT_STAGES,
    ...(increment ? { increment } : {}),
    ...(next_percent !== undefined ? { nextPercent: next_percent } : {}),
    ...(updated_at !== undefined ? { updatedAt: updated_at } : {}),
    ...(revision !== undefined ? { revision: String(revision) } : {}),
  };
}

export function parseStatus(body: unknown): RollbackStatus {
  const r = statusSchema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new PlaneResponseError(
      200,
      'ERR_PLANE_RESPONSE',
      `GET /v1/rollback/status answered an unexpected body: ${issue ? `${issue.path.join('.')}: ${issue.message}` : ''}`,
    );
  }
  return r.data as RollbackStatus;
}

export interface HttpPlaneOptions {
  /** Control API base URL: the collector's GET /v1/rollback/status (and the rollout, unless policyUrl says otherwise). */
  url: string;
  /** The policy plane's control API, for GET/PUT /v1/rollout, when it is not at `url`. */
  policyUrl?: string;
  /** CUSTODY_ADMIN_TOKEN, for PUT /v1/rollout. */
  adminToken?: string;
  timeoutMs?: number;
  /** Tests inject a fetch; production uses the global one. */
  fetch?: typeof fetch;
}

/** The control API over HTTP, every call bounded by a timeout. */
export function httpPlane(options: HttpPlaneOptions): RolloutPlane {
  const base = options.url.replace(/\/+$/, '');
  const policyBase = (options.policyUrl ?? options.url).replace(/\/+$/, '');
  const timeoutMs = options.timeoutMs ?? 5_000;
  const doFetch = options.fetch ?? fetch;

  async function call(method: string, path: string, init: { body?: unknown; headers?: Record<string, string>; base?: string } = {}): Promise<unknown> {
    const at = init.base ?? base;
    try {
      const answer = await fetchJson(`${at}${path}`, {
        method,
        ...(init.body !== undefined ? { body: init.body } : {}),
        ...(init.headers ? { headers: init.headers } : {}),
        timeoutMs,
        fetch: doFetch,
      });
      return answer.body;
    } catch (err) {
      if (!(err instanceof JsonRequestError)) throw err;
      if (err.kind === 'timeout' || err.kind === 'aborted' || err.kind === 'unreachable') {
        throw new PlaneUnreachableError(`${method} ${at}${path}: ${err.reason}`, { cause: err.cause });
      }
      // a 2xx without JSON: the parsers below say what was expected
      if (err.kind === 'malformed') return undefined;
      const code = err.apiError?.code ?? `http_${err.status}`;
      const message = `${method} ${at}${path}: ${err.status} ${err.apiError?.message ?? err.text.slice(0, 200)}`;
      if (err.status === 409 || err.status === 412) throw new RolloutConflictError(err.status === 412 ? 'revision' : 'percent', message);
      if (err.status >= 500) throw new PlaneUnreachableError(message);
      throw new PlaneResponseError(err.status, code, message);
    }
  }

  return {
    async getRollout() {
      return parseRollout(await call('GET', '/v1/rollout', { base: policyBase }));
    },
    async setRollout({ percent, reason, actor, expected }) {
      const headers: Record<string, string> = {};
      if (options.adminToken) headers.authorization = `Bearer ${options.adminToken}`;
      if (expected.revision !== undefined) headers['if-match'] = `"${expected.revision}"`;
      const body = { percent, reason, actor, expected_percent: expected.percent };
      return parseRollout(await call('PUT', '/v1/rollout', { body, headers, base: policyBase }));
    },
    async status({ windowS, cohort }) {
      const q = new URLSearchParams({ window: `${statusWindowS(windowS)}s`, cohort });
      return parseStatus(await call('GET', `/v1/rollback/status?${q}`));
    },
  };
}

/** The collector evaluates whole minutes, from one minute to a week. */
export const STATUS_WINDOW = { MIN_S: 60, MAX_S: 7 * 86_400 } as const;

export function statusWindowS(windowS: number): number {
  return Math.min(STATUS_WINDOW.MAX_S, Math.max(STATUS_WINDOW.MIN_S, Math.ceil(windowS / 60) * 60));
}
