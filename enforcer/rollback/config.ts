import { ConfigError } from '../../common/errors';
import type { CustodyEnv } from '../../common/env';
import { ENV } from '../../common/names';
import { WATCH_DEFAULTS } from './watch';

/** The rollback watch's settings, from flags (standalone) or environment (inside `custody up`). */
export interface WatchSettings {
  enabled: boolean;
  intervalS: number;
  windowS: number;
  healthyPeriodS: number;
  minSample: number;
  manualGates: boolean;
  dryRun: boolean;
}

export function parseMinSample(text: string, what = '--min-sample'): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n)) throw new ConfigError(`${what} '${text}' must be a whole number of calls (0 or more)`);
  return n;
}

/**
 * Advancing needs a person's approval unless CUSTODY_ROLLBACK_AUTO_ADVANCE=on (or, as before,
 * CUSTODY_ROLLBACK_MANUAL_GATES=off). Rolling back never waits for anyone.
 */
function manualGates(env: RollbackEnv): boolean {
  const auto = env[ENV.ROLLBACK_AUTO_ADVANCE] ?? false;
  const gates = env[ENV.ROLLBACK_MANUAL_GATES] ?? !auto;
  if (gates === auto) {
    const onOff = (b: boolean) => (b ? 'on' : 'off');
    throw new ConfigError(`${ENV.ROLLBACK_AUTO_ADVANCE}=${onOff(auto)} contradicts ${ENV.ROLLBACK_MANUAL_GATES}=${onOff(gates)}`);
  }
  return gates;
}

type RollbackEnv = Pick<
  CustodyEnv,
  | typeof ENV.ROLLBACK_WATCH
  | typeof ENV.ROLLBACK_INTERVAL
  | typeof ENV.ROLLBACK_WINDOW
  | typeof ENV.ROLLBACK_HEALTHY_PERIOD
  | typeof ENV.ROLLBACK_MIN_SAMPLE
  | typeof ENV.ROLLBACK_AUTO_ADVANCE
  | typeof ENV.ROLLBACK_MANUAL_GATES
  | typeof ENV.ROLLBACK_DRY_RUN
>;

/** The watch's settings from the CUSTODY_ROLLBACK_* variables (parsed by common/env.ts); unset ones take the defaults. */
export function watchSettingsFromEnv(env: RollbackEnv): WatchSettings {
  return {
    enabled: env[ENV.ROLLBACK_WATCH] ?? true,
    intervalS: env[ENV.ROLLBACK_INTERVAL] ?? WATCH_DEFAULTS.intervalS,
    windowS: env[ENV.ROLLBACK_WINDOW] ?? WATCH_DEFAULTS.windowS,
    healthyPeriodS: env[ENV.ROLLBACK_HEALTHY_PERIOD] ?? WATCH_DEFAULTS.healthyPeriodS,
    minSample: env[ENV.ROLLBACK_MIN_SAMPLE] ?? WATCH_DEFAULTS.minSample,
    manualGates: manualGates(env),
    dryRun: env[ENV.ROLLBACK_DRY_RUN] ?? false,
  };
}
