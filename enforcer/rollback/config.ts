import { ConfigError } from '../../common/errors';
import { parseDuration } from '../../common/duration';
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

function bool(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const v = env[name]?.trim().toLowerCase();
  if (v === undefined || v === '') return fallback;
  if (['1', 'true', 'on', 'yes'].includes(v)) return true;
  if (['0', 'false', 'off', 'no'].includes(v)) return false;
  throw new ConfigError(`${name}='${env[name]}' must be on or off (true/false, 1/0)`);
}

function duration(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const v = env[name];
  if (v === undefined || v.trim() === '') return fallback;
  try {
    return parseDuration(v, name);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
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
function manualGates(env: NodeJS.ProcessEnv): boolean {
  const auto = bool(env, ENV.ROLLBACK_AUTO_ADVANCE, false);
  const gates = bool(env, ENV.ROLLBACK_MANUAL_GATES, !auto);
  if (gates === auto) {
    throw new ConfigError(`${ENV.ROLLBACK_AUTO_ADVANCE}=${env[ENV.ROLLBACK_AUTO_ADVANCE]} contradicts ${ENV.ROLLBACK_MANUAL_GATES}=${env[ENV.ROLLBACK_MANUAL_GATES]}`);
  }
  return gates;
}

/** Reads CUSTODY_ROLLBACK_* (see common/names.ts ENV); unset variables take the defaults. */
export function watchSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): WatchSettings {
  const minSample = env[ENV.ROLLBACK_MIN_SAMPLE];
  return {
    enabled: bool(env, ENV.ROLLBACK_WATCH, true),
    intervalS: duration(env, ENV.ROLLBACK_INTERVAL, WATCH_DEFAULTS.intervalS),
    windowS: duration(env, ENV.ROLLBACK_WINDOW, WATCH_DEFAULTS.windowS),
    healthyPeriodS: duration(env, ENV.ROLLBACK_HEALTHY_PERIOD, WATCH_DEFAULTS.healthyPeriodS),
    minSample: minSample !== undefined && minSample.trim() !== '' ? parseMinSample(minSample, ENV.ROLLBACK_MIN_SAMPLE) : WATCH_DEFAULTS.minSample,
    manualGates: manualGates(env),
    dryRun: bool(env, ENV.ROLLBACK_DRY_RUN, false),
  };
}
