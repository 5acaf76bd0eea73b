import { readEnv } from '../../common/env';
import { ConfigError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { DEFAULTS, ENV } from '../../common/names';
import { MAX_INCIDENT_CACHE_TTL_S } from '../policy/rollout';

export interface EnforcerOptions {
  /** Control API. Default $CUSTODY_URL or http://127.0.0.1:8080. */
  url?: string;
  /** Policy plane. Default $CUSTODY_POLICY_URL or `url`. */
  policyUrl?: string;
  /** Token service. Default $CUSTODY_TOKEN_URL or `url`. */
  tokenUrl?: string;
  /**
   * The one budget from "tool called" to "tool runs" (name resolution, sponsor lookup, token,
   * check), ms. Default $CUSTODY_POLICY_TIMEOUT_MS or 200.
   */
  timeoutMs?: number;
  /** How long an allow is reused, s (0: never). Default $CUSTODY_DECISION_CACHE_TTL_S or 30. */
  cacheTtlS?: number;
  /** The incident switch: a longer TTL for allows, s. Default $CUSTODY_INCIDENT_CACHE_TTL_S (unset: off). */
  incidentCacheTtlS?: number;
  /** Ask GET /v1/rollout again after this long, ms; also how late a revocation may reach cached allows. Default 2000. */
  rolloutRefreshMs?: number;
  /** A rollout answer older than this is unknown (calls are enforced), ms. Default 30000. */
  rolloutMaxAgeMs?: number;
  /** Decision cache entries kept at most. Default 10000. */
  cacheMaxEntries?: number;
  /** Token lifetime to ask for, s. Default: the token service's. */
  tokenTtlS?: number;
  /** Set the decision attributes on the active span (trace.getActiveSpan()). Default true. */
  recordOnActiveSpan?: boolean;
  /** The clock, epoch ms. */
  now?: () => number;
  log?: Logger;
  /** Environment to read defaults from (parsed with common/env.ts). Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Staging: a call without a sponsor fails with ERR_SPONSOR_MISSING in every cohort. Default $CUSTODY_ENV=staging (or the plane's say-so). */
  staging?: boolean;
  /** The agent's own attributes, which a tier-scoped canary's scope is matched on. Default the resource attributes in $OTEL_RESOURCE_ATTRIBUTES. */
  attributes?: Readonly<Record<string, string>>;
}

export interface EnforcerSettings {
  policyUrl: string;
  tokenUrl: string;
  timeoutMs: number;
  cacheTtlS: number;
  incidentCacheTtlS: number | null;
  rolloutRefreshMs: number;
  rolloutMaxAgeMs: number;
  /** $CUSTODY_LOG_LEVEL, for the enforcer's own log. */
  logLevel: string;
  /** $CUSTODY_ENV=staging: calls without a sponsor fail in every cohort (the plane can also say so). */
  staging: boolean;
  /** The agent's attributes for a tier-scoped canary (options.attributes, else $OTEL_RESOURCE_ATTRIBUTES). */
  attributes: Readonly<Record<string, string>>;
}

/** The variables the enforcer reads (common/env.ts). */
const ENFORCER_ENV = [
  ENV.URL,
  ENV.POLICY_URL,
  ENV.TOKEN_URL,
  ENV.POLICY_TIMEOUT_MS,
  ENV.DECISION_CACHE_TTL_S,
  ENV.INCIDENT_CACHE_TTL_S,
  ENV.LOG_LEVEL,
  ENV.ENVIRONMENT,
] as const;

/**
 * The options with the environment's defaults, validated once and frozen. The environment is
 * `options.env`, else the process's: createEnforcer is where an agent that uses the library alone
 * starts custody, so it is read here, once.
 */
export function resolveSettings(options: EnforcerOptions): Readonly<EnforcerSettings> {
  const env = readEnv(options.env ?? process.env, ENFORCER_ENV);
  const base = options.url ?? env[ENV.URL] ?? DEFAULTS.URL;
  const settings: EnforcerSettings = Object.freeze({
    policyUrl: trimSlash(options.policyUrl ?? (env[ENV.POLICY_URL] || base)),
    tokenUrl: trimSlash(options.tokenUrl ?? (env[ENV.TOKEN_URL] || base)),
    timeoutMs: options.timeoutMs ?? env[ENV.POLICY_TIMEOUT_MS] ?? DEFAULTS.POLICY_TIMEOUT_MS,
    cacheTtlS: options.cacheTtlS ?? env[ENV.DECISION_CACHE_TTL_S] ?? DEFAULTS.DECISION_CACHE_TTL_S,
    incidentCacheTtlS: options.incidentCacheTtlS ?? env[ENV.INCIDENT_CACHE_TTL_S] ?? null,
    rolloutRefreshMs: options.rolloutRefreshMs ?? 2_000,
    rolloutMaxAgeMs: options.rolloutMaxAgeMs ?? 30_000,
    logLevel: env[ENV.LOG_LEVEL] || 'info',
    staging: options.staging ?? env[ENV.ENVIRONMENT] === 'staging',
    attributes: Object.freeze({ ...(options.attributes ?? resourceAttributes((options.env ?? process.env).OTEL_RESOURCE_ATTRIBUTES)) }),
  });
  for (const [name, v] of Object.entries({ timeoutMs: settings.timeoutMs, cacheTtlS: settings.cacheTtlS })) {
    if (!Number.isFinite(v) || v < 0) throw new ConfigError(`enforcer option '${name}' must be a number ≥ 0, got ${v}`);
  }
  if (settings.incidentCacheTtlS !== null && !(settings.incidentCacheTtlS > 0 && settings.incidentCacheTtlS <= MAX_INCIDENT_CACHE_TTL_S)) {
    throw new ConfigError(`enforcer option 'incidentCacheTtlS' must be from 1 to ${MAX_INCIDENT_CACHE_TTL_S} s`);
  }
  return settings;
}

/**
 * OTEL_RESOURCE_ATTRIBUTES as the OpenTelemetry SDK reads it: `key=value` pairs separated by
 * commas, values percent-decoded; a malformed pair is skipped, as the SDK does.
 */
export function resourceAttributes(raw: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (raw ?? '').split(',')) {
    const i = pair.indexOf('=');
    if (i <= 0) continue;
    const key = pair.slice(0, i).trim();
    try {
      out[key] = decodeURIComponent(pair.slice(i + 1).trim());
    } catch {
      /* not percent-encoded properly: skipped */
    }
  }
  return out;
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}
