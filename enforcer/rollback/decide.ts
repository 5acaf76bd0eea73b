import { COHORT, type Cohort } from '../../common/names';

/**
 * The auto-rollback controller's decision, as a pure function of what the policy plane and the
 * collector say now and of the clock. Nothing is remembered between two steps: the rollout's
 * `updated_at` on the plane is when the current stage began, and the collector's rule status over
 * the window since then is the stage's health history. A restarted watcher, or a second one,
 * therefore reaches the same decision from the same inputs.
 */

export type StatusAction = 'rollback' | 'hold' | 'advance' | 'insufficient_data';

export interface RuleResult {
  rule: string;
  /** null when the window holds no data for the rule */
  value: number | null;
  threshold: number;
  breached: boolean;
}

/** GET /v1/rollback/status, as the public surface shapes it (README "Rollout control"). */
export interface RollbackStatus {
  action: StatusAction;
  window_s: number;
  sample_size: number;
  rules: RuleResult[];
  /** Alert-level signals (p95 over 200 ms, token failures): they do not roll back, they hold the stage. */
  alerts?: { alert: string; value: number | null; threshold: number; firing: boolean }[];
  rollout?: { percent: number };
  cohort?: string;
  /** With insufficient_data: more calls that would settle the rules. */
  more_calls?: number | null;
}

/** GET /v1/rollout, reduced to what the controller needs. */
export interface RolloutState {
  percent: number;
  /** Ascending stages, e.g. 10, 30, 60, 100; empty when the policy advances by an increment. */
  stages: readonly number[];
  /** Percent points per advance when there are no stages (the seed's `increment`). */
  increment?: number;
  /** The percent the plane says the next advance goes to (its policy decides); null at the last step. */
  nextPercent?: number | null;
  /** When the percent last changed (epoch ms); the start of the current stage. */
  updatedAt?: number;
  /** Opaque revision for compare-and-set, when the plane offers one. */
  revision?: string;
}

export interface Observed {
  /** The rules over the short rolling window (the rule window), read on every step. */
  recent: RollbackStatus;
  /** The rules over the whole time since the rollout last changed; read once the healthy period is over. */
  sinceChange?: RollbackStatus;
}

export interface Clock {
  /** epoch ms */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

export interface DecideOptions {
  /** How long a stage must stay healthy before the next one, in seconds (default 24 h). */
  healthyPeriodS: number;
  /** Calls the canary must have made since the stage began before it may advance. */
  minSample: number;
  /** Never advance alone: report that the stage is ready and wait for `custody rollback approve` (the default). */
  manualGates: boolean;
}

export type WatchAction =
  /** Set the rollout to 0 now. */
  | { kind: 'rollback'; from: number; to: 0; reason: string; breached: string[] }
  /** Move to the next stage now. */
  | { kind: 'advance'; from: number; to: number; reason: string }
  /** The next stage is earned; a person has to approve it. */
  | { kind: 'await_approval'; from: number; to: number; reason: string }
  /** Nothing to do yet; `need` asks the caller to read the status since the last change and decide again. */
  | { kind: 'hold'; percent: number; reason: string; need?: 'since_change'; remainingS?: number };

/**
 * Which cohort's rules judge the current stage: the canary while it has traffic; at 0 % no call is
 * enforced, so the shadow (baseline) cohort, whose decisions the plane still evaluates, says
 * whether the gate is healthy enough to start again.
 */
export function statusCohort(percent: number): Cohort {
  return percent > 0 ? COHORT.CANARY : COHORT.BASELINE;
}

/** The stage after `percent`, or undefined at the last one. */
export function nextStage(percent: number, stages: readonly number[]): number | undefined {
  return [...stages].sort((a, b) => a - b).find((s) => s > percent);
}

/**
 * Where the next advance goes: what the plane says (`next_percent`, from its policy), else the next
 * stage, else the percent plus the increment (at most 100). undefined at the last step.
 */
export function nextPercent(state: RolloutState): number | undefined {
  if (state.nextPercent !== undefined) return state.nextPercent === null || state.nextPercent <= state.percent ? undefined : state.nextPercent;
  if (state.stages.length > 0) return nextStage(state.percent, state.stages);
  if (state.increment && state.percent < 100) return Math.min(100, state.percent + state.increment);
  return undefined;
}

/** Seconds the current stage has lasted, or undefined when the plane does not say when it began. */
export function stageAgeS(state: RolloutState, clock: Clock): number | undefined {
  if (state.updatedAt === undefined) return undefined;
  return Math.max(0, (clock.now() - state.updatedAt) / 1000);
}

function describeBreach(status: RollbackStatus): { names: string[]; text: string } {
  const breached = status.rules.filter((r) => r.breached);
  const text = breached.map((r) => `${r.rule} ${formatValue(r.value)} > ${r.threshold}`).join(', ');
  return { names: breached.map((r) => r.rule), text };
}

function describeAlerts(status: RollbackStatus): string {
  const firing = (status.alerts ?? []).filter((a) => a.firing);
  if (firing.length === 0) return 'the collector says hold';
  return firing.map((a) => `${a.alert} ${formatValue(a.value)} > ${a.threshold}`).join(', ');
}

function formatValue(v: number | null): string {
  if (v === null) return 'n/a';
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function isBreached(status: RollbackStatus): boolean {
  return status.action === 'rollback' || status.rules.some((r) => r.breached);
}

export function nextAction(state: RolloutState, observed: Observed, clock: Clock, options: DecideOptions): WatchAction {
  const { percent } = state;
  const { recent } = observed;

  // A breach rolls back at once, whatever the stage's age; at 0 there is nothing left to undo.
  if (isBreached(recent)) {
    const { names, text } = describeBreach(recent);
    const why = `${text || 'rules breached'} over ${recent.window_s}s (${recent.sample_size} calls)`;
    if (percent > 0) return { kind: 'rollback', from: percent, to: 0, reason: `rollback: ${why}`, breached: names };
    return { kind: 'hold', percent, reason: `held at 0: ${why}` };
  }

  const to = nextPercent(state);
  if (to === undefined) return { kind: 'hold', percent, reason: `fully rolled out at ${percent}%` };

  const age = stageAgeS(state, clock);
  if (age === undefined) {
    return { kind: 'hold', percent, reason: 'the policy plane does not say when the rollout last changed; cannot time the healthy period' };
  }
  if (age < options.healthyPeriodS) {
    const remainingS = options.healthyPeriodS - age;
    return {
      kind: 'hold',
      percent,
      remainingS,
      reason: `stage ${percent}% healthy for ${Math.floor(age)}s of ${options.healthyPeriodS}s`,
    };
  }

  if (recent.action === 'hold') return { kind: 'hold', percent, reason: `not advancing: ${describeAlerts(recent)} now` };

  const since = observed.sinceChange;
  if (!since) return { kind: 'hold', percent, need: 'since_change', reason: 'healthy period over; reading the rules since the last change' };
  if (isBreached(since)) {
    const { text } = describeBreach(since);
    return { kind: 'hold', percent, reason: `not advancing: ${text || 'rules breached'} since the last change (${since.window_s}s)` };
  }
  if (since.action === 'hold') {
    return { kind: 'hold', percent, reason: `not advancing: ${describeAlerts(since)} since the last change (${since.window_s}s)` };
  }
  if (since.action === 'insufficient_data') {
    const more = since.more_calls === undefined ? '' : since.more_calls === null ? '; no number of calls at the rates seen would settle it' : `; about ${since.more_calls} more calls would settle it`;
    return { kind: 'hold', percent, reason: `not advancing: ${since.sample_size} calls since the last change do not yet show the stage healthy at 95 % confidence${more}` };
  }
  if (since.sample_size < options.minSample) {
    return { kind: 'hold', percent, reason: `not advancing: ${since.sample_size} calls since the last change, too few (minimum ${options.minSample})` };
  }
  const reason = `advance ${percent}% → ${to}%: healthy for ${Math.floor(age)}s (≥ ${options.healthyPeriodS}s) over ${since.sample_size} calls`;
  if (options.manualGates) return { kind: 'await_approval', from: percent, to, reason: `${reason}; waiting for approval` };
  return { kind: 'advance', from: percent, to, reason };
}
