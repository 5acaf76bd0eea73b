import os from 'node:os';
import { CustodyError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { counter, gauge } from '../../common/metrics';
import { DEFAULTS, METRIC } from '../../common/names';
import {
  nextAction,
  stageAgeS,
  statusCohort,
  systemClock,
  type Clock,
  type DecideOptions,
  type RolloutState,
  type WatchAction,
} from './decide';
import { RolloutConflictError, type RolloutPlane } from './plane';

export { nextAction, statusCohort, nextStage, systemClock } from './decide';
export type { Clock, DecideOptions, Observed, RollbackStatus, RolloutState, WatchAction } from './decide';

/**
 * The auto-rollback loop: on every tick it reads the rollout and the rules, asks `nextAction` what
 * to do, and does it. It keeps no state of its own between ticks (see decide.ts), so ticks are
 * idempotent and a restart loses nothing. Several watchers may run: each write is conditional on
 * the rollout it decided on, so a decision taken on a stale read is dropped rather than undoing a
 * newer one, and a rollback holds at 0 until a healthy period or a person moves it.
 */

export const WATCH_DEFAULTS = {
  intervalS: 60,
  windowS: DEFAULTS.RULE_WINDOW_S,
  healthyPeriodS: 24 * 3600,
  minSample: 100,
  timeoutMs: 5_000,
} as const;

export interface WatcherOptions extends DecideOptions {
  plane: RolloutPlane;
  /** Seconds between two ticks. */
  intervalS: number;
  /** The rule window for the breach check, in seconds (default 15 min). */
  windowS: number;
  /** Say what would be done; change nothing. */
  dryRun: boolean;
  /** Who the rollout change is attributed to. */
  actor?: string;
  clock?: Clock;
  log: Logger;
}

export interface TickResult {
  action?: WatchAction;
  /** True when the rollout was changed by this tick. */
  applied: boolean;
  /** Why nothing was changed although the action asked for it. */
  skipped?: string;
  error?: CustodyError;
  state?: RolloutState;
}

export interface RollbackWatcher {
  /** One evaluation; never throws. */
  tick(): Promise<TickResult>;
  /** Ticks now and then every interval until stop(). */
  start(): void;
  stop(): Promise<void>;
}

const errors = counter<'reason'>({
  name: METRIC.ROLLBACK_WATCH_ERRORS_TOTAL,
  help: 'Rollback watch ticks that could not read or change the rollout, by error code',
  labelNames: ['reason'],
});
const changes = counter<'action'>({
  name: METRIC.ROLLBACK_WATCH_CHANGES_TOTAL,
  help: 'Rollout changes made by the rollback watch (rollback, advance)',
  labelNames: ['action'],
});
const lastSuccess = gauge({
  name: METRIC.ROLLBACK_WATCH_LAST_SUCCESS,
  help: 'Unix time of the last rollback watch tick that read the plane and the rules',
});
const awaiting = gauge({
  name: METRIC.ROLLBACK_WATCH_AWAITING_APPROVAL,
  help: '1 while a stage has earned its advance and waits for `custody rollback approve`',
});

/**
 * The window that judges a stage before it advances: all of it, plus one minute so that the
 * minute bucket in which it began is read too, and never less than the rule window (a stage shorter
 * than the window, only seen with test settings, is judged on the whole window).
 */
export function sinceChangeWindowS(state: RolloutState, clock: Clock, options: { healthyPeriodS: number; windowS: number }): number {
  return Math.max((stageAgeS(state, clock) ?? options.healthyPeriodS) + 60, options.windowS);
}

export function defaultActor(): string {
  return `custody-rollback-watch@${os.hostname()}:${process.pid}`;
}

export function createRollbackWatcher(options: WatcherOptions): RollbackWatcher {
  const clock = options.clock ?? systemClock;
  const { plane, log } = options;
  const actor = options.actor ?? defaultActor();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<TickResult> | undefined;
  let stopped = true;

  async function decide(state: RolloutState): Promise<WatchAction> {
    const cohort = statusCohort(state.percent);
    const recent = await plane.status({ windowS: options.windowS, cohort });
    let action = nextAction(state, { recent }, clock, options);
    if (action.kind === 'hold' && action.need === 'since_change') {
      const sinceChange = await plane.status({ windowS: sinceChangeWindowS(state, clock, options), cohort });
      action = nextAction(state, { recent, sinceChange }, clock, options);
    }
    return action;
  }

  async function apply(action: WatchAction & { kind: 'rollback' | 'advance' }, state: RolloutState): Promise<TickResult> {
    const verb = action.kind === 'rollback' ? 'roll back' : 'advance';
    if (options.dryRun) {
      log.warn({ dryRun: true, from: action.from, to: action.to, reason: action.reason }, `dry run: would ${verb} the rollout ${action.from}% → ${action.to}%`);
      return { action, applied: false, skipped: 'dry run', state };
    }
    // Re-read just before writing: a decision taken on a rollout that has moved since is dropped.
    const fresh = await plane.getRollout();
    if (fresh.percent !== state.percent || fresh.updatedAt !== state.updatedAt || fresh.revision !== state.revision) {
      const skipped = `the rollout changed meanwhile (${state.percent}% → ${fresh.percent}%); deciding again next tick`;
      log.info({ from: state.percent, now: fresh.percent }, skipped);
      return { action, applied: false, skipped, state: fresh };
    }
    try {
      const next = await plane.setRollout({ percent: action.to, reason: action.reason, actor, expected: fresh });
      changes.inc({ action: action.kind });
      const line = { from: action.from, to: action.to, reason: action.reason, actor };
      if (action.kind === 'rollback') log.warn(line, `rolled back the rollout ${action.from}% → 0%`);
      else log.info(line, `advanced the rollout ${action.from}% → ${action.to}%`);
      return { action, applied: true, state: next };
    } catch (err) {
      if (err instanceof RolloutConflictError) {
        log.info({ err: err.message }, 'another decision landed first; deciding again next tick');
        return { action, applied: false, skipped: err.message, state: fresh };
      }
      throw err;
    }
  }

  async function tickOnce(): Promise<TickResult> {
    let state: RolloutState | undefined;
    try {
      state = await plane.getRollout();
      const action = await decide(state);
      lastSuccess.set(clock.now() / 1000);
      awaiting.set(action.kind === 'await_approval' ? 1 : 0);
      if (action.kind === 'rollback' || action.kind === 'advance') return await apply(action, state);
      if (action.kind === 'await_approval') log.info({ from: action.from, to: action.to }, action.reason);
      else log.debug({ percent: action.percent }, action.reason);
      return { action, applied: false, state };
    } catch (err) {
      const error = err instanceof CustodyError ? err : new CustodyError('ERR_ROLLBACK_WATCH', (err as Error)?.message ?? String(err), { cause: err });
      errors.inc({ reason: error.code });
      // Loud on purpose: a watcher that cannot see the plane protects nothing.
      log.error({ code: error.code, err: error.message }, 'rollback watch: cannot evaluate the rollout; no change made');
      return { applied: false, error, ...(state ? { state } : {}) };
    }
  }

  const tick = (): Promise<TickResult> => {
    // Ticks never overlap: a slow plane delays the next one instead of stacking requests.
    running ??= tickOnce().finally(() => {
      running = undefined;
    });
    return running;
  };

  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      void tick().finally(schedule);
    }, options.intervalS * 1000);
    timer.unref?.();
  };

  return {
    tick,
    start() {
      if (!stopped) return;
      stopped = false;
      void tick().finally(schedule);
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
}
