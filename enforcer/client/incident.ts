import type { Logger } from '../../common/log';
import { ENV } from '../../common/names';
import type { EnforcerSettings } from './settings';

/**
 * The incident switch: from the environment at start, or the plane's (learned with the rollout).
 * It only ever lengthens how long an allow is reused, and says so loudly.
 */
export interface IncidentSwitch {
  /** How long an allow is reused now, ms. */
  ttlMs(): number;
  /** Whether the switch lengthens the TTL now. */
  active(): boolean;
  /** The plane's incident TTL, s (null: none). */
  setPlane(ttlS: number | null): void;
}

export function createIncidentSwitch(settings: Readonly<EnforcerSettings>, logger: () => Logger): IncidentSwitch {
  let planeS: number | null = null;
  let logged = false;
  const ttlMs = () => Math.max(settings.cacheTtlS, settings.incidentCacheTtlS ?? 0, planeS ?? 0) * 1000;
  const active = () => ttlMs() > settings.cacheTtlS * 1000;
  const announce = () => {
    if (active()) {
      logger().warn(
        { cacheTtlS: ttlMs() / 1000, normalTtlS: settings.cacheTtlS, source: planeS ? 'policy plane' : ENV.INCIDENT_CACHE_TTL_S },
        `INCIDENT MODE: cached allows are reused for ${ttlMs() / 1000} s instead of ${settings.cacheTtlS} s; enforcement stays on`,
      );
      logged = true;
    } else if (logged) {
      logger().warn({ cacheTtlS: settings.cacheTtlS }, 'incident mode over: normal decision cache TTL');
      logged = false;
    }
  };
  if (settings.incidentCacheTtlS !== null) announce();
  return {
    ttlMs,
    active,
    setPlane(ttlS) {
      planeS = ttlS;
      announce();
    },
  };
}
