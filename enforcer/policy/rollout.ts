import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../../common/errors';
import { COHORT, type Cohort } from '../../common/names';
import type { RolloutConfig, RolloutScope } from './compile';
import { RolloutConflictError } from '../errors';

/**
 * Where an agent instance falls on the 0–100 rollout scale: the first 32 bits of the SHA-256 of
 * its id, scaled. Stable across processes, machines and restarts, so an instance stays in its
 * cohort while the percent only grows.
 */
export function cohortBucket(agentInstanceId: string): number {
  const digest = createHash('sha256').update(agentInstanceId).digest();
  return (digest.readUInt32BE(0) / 2 ** 32) * 100;
}

/**
 * Canary (enforced) when the instance's bucket is below the percent; baseline (shadow) otherwise.
 * With a scope (a tier-scoped canary), only calls whose attributes are in it can be canary.
 */
export function cohortOf(agentInstanceId: string, percent: number, scope?: RolloutScope, attributes?: Readonly<Record<string, string>>): Cohort {
  if (scope && !inScope(scope, attributes)) return COHORT.BASELINE;
  return cohortBucket(agentInstanceId) < percent ? COHORT.CANARY : COHORT.BASELINE;
}

/** Every attribute the scope names has one of its values. */
export function inScope(scope: RolloutScope, attributes: Readonly<Record<string, string>> | undefined): boolean {
  for (const [name, values] of Object.entries(scope)) {
    const v = attributes?.[name];
    if (v === undefined || !values.includes(v)) return false;
  }
  return true;
}

/** The incident switch: allows stay cached longer while the plane is in trouble. Never turns enforcement off. */
export interface IncidentState {
  cache_ttl_s: number;
  reason: string;
  actor: string;
  since: string;
}

export interface RolloutState {
  percent: number;
  /** Grows by one with every change: for If-Match / optimistic concurrency. */
  revision: number;
  reason: string;
  actor: string;
  /** When the percent last changed, ISO 8601. */
  updated_at: string;
  incident: IncidentState | null;
}

/** What GET /v1/rollout answers: the state plus where it stands among the stages. */
export interface RolloutView extends RolloutState {
  /** How many of `stages` the percent has reached (0: below the first, stages.length: all). */
  stage: number;
  stages: readonly number[];
  /** The percent the next advance goes to; null at 100. */
  next_percent: number | null;
  increment: number | null;
  /** The tier-scoped canary's scope (the policy's `rollout.scope`), null when every instance can be canary. */
  scope: RolloutScope | null;
}

/** Longest incident cache TTL: an hour keeps the seed's 30-minute rollback path inside it. */
export const MAX_INCIDENT_CACHE_TTL_S = 3600;

export function rolloutView(state: RolloutState, config: RolloutConfig): RolloutView {
  const stages = config.stages;
  const stage = stages.filter((s) => s <= state.percent).length;
  let next: number | null = null;
  if (state.percent < 100) {
    next = stages.find((s) => s > state.percent) ?? (config.increment ? Math.min(100, state.percent + config.increment) : null);
  }
  return { ...state, stage, stages, next_percent: next, increment: config.increment ?? null, scope: config.scope ?? null };
}

const incidentSchema = z.strictObject({
  cache_ttl_s: z.number().gt(0).max(MAX_INCIDENT_CACHE_TTL_S),
  reason: z.string(),
  actor: z.string(),
  since: z.string(),
});
const stateSchema = z.strictObject({
  percent: z.number().min(0).max(100),
  revision: z.int().min(0).default(0),
  reason: z.string(),
  actor: z.string(),
  updated_at: z.string(),
  incident: incidentSchema.nullable().default(null),
});

export { RolloutConflictError };

export interface RolloutChange {
  percent: number;
  reason: string;
  actor: string;
  /** Refuse the change unless the state is still at this revision / percent. */
  ifRevision?: number | undefined;
  ifPercent?: number | undefined;
}

export interface RolloutStore {
  readonly file: string;
  get(): RolloutState;
  /** Moves the percent; resolves once the new state is on disk. */
  setPercent(change: RolloutChange): Promise<{ from: number; state: RolloutState }>;
  /** Sets (cache_ttl_s > 0) or ends (null) the incident switch. */
  setIncident(change: { cache_ttl_s: number | null; reason: string; actor: string }): Promise<{ from: IncidentState | null; state: RolloutState }>;
}

/**
 * The rollout state, persisted as JSON under the data directory so it survives restarts. The
 * policy file's `rollout.percent` is only the starting point: once a percent has been set (by an
 * admin or the rollback job), the stored one wins. A stored file that cannot be read is refused
 * at start rather than guessed at.
 */
export function openRolloutStore(file: string, initialPercent: number, options: { now?: () => number } = {}): RolloutStore {
  const now = options.now ?? Date.now;
  let state: RolloutState;
  if (fs.existsSync(file)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`${file}: rollout state is not readable JSON (${(err as Error).message}); fix or remove it`, { cause: err });
    }
    const result = stateSchema.safeParse(parsed);
    if (!result.success) {
      const issue = result.error.issues[0]!;
      throw new ConfigError(`${file}: rollout state field '${issue.path.join('.') || '(top level)'}': ${issue.message}; fix or remove it`);
    }
    state = result.data;
  } else {
    state = { percent: initialPercent, revision: 0, reason: 'initial percent from the policy file', actor: 'policy', updated_at: new Date(now()).toISOString(), incident: null };
  }

  // Changes are serialized (each starts from the state the previous one left) and written
  // atomically (a temporary file, then rename) before they take effect.
  let chain: Promise<unknown> = Promise.resolve();
  const update = <R>(change: (current: RolloutState) => { next: RolloutState; result: R }): Promise<R> => {
    const run = chain.then(async () => {
      const { next, result } = change(state);
      await fs.promises.mkdir(path.dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      await fs.promises.writeFile(tmp, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
      await fs.promises.rename(tmp, file);
      state = next;
      return result;
    });
    chain = run.catch(() => undefined);
    return run;
  };

  return {
    file,
    get: () => state,
    setPercent: ({ percent, reason, actor, ifRevision, ifPercent }) =>
      update((current) => {
        if (ifRevision !== undefined && ifRevision !== current.revision) {
          throw new RolloutConflictError('revision', `the rollout is at revision ${current.revision}, not ${ifRevision}: it changed since it was read`);
        }
        if (ifPercent !== undefined && ifPercent !== current.percent) {
          throw new RolloutConflictError('percent', `the rollout is at ${current.percent}%, not ${ifPercent}%: it changed since it was read`);
        }
        const next: RolloutState = { ...current, percent, reason, actor, revision: current.revision + 1, updated_at: new Date(now()).toISOString() };
        return { next, result: { from: current.percent, state: next } };
      }),
    setIncident: ({ cache_ttl_s, reason, actor }) =>
      update((current) => {
        const t = new Date(now()).toISOString();
        const incident = cache_ttl_s === null ? null : { cache_ttl_s, reason, actor, since: current.incident?.since ?? t };
        // updated_at stays: it is when the percent last moved, which the rollback job times stages by.
        const next: RolloutState = { ...current, incident, revision: current.revision + 1 };
        return { next, result: { from: current.incident, state: next } };
      }),
  };
}
