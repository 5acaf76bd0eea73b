import { COHORT, DATABASE, DEFAULTS, ENV, TABLE, THRESHOLDS, type Cohort, type RuleName } from '../../common/names';
import { parseDuration } from '../../common/duration';
import { ConfigError, CustodyError } from '../../common/errors';
import type { Store } from '../store';

/**
 * The rollback rules, evaluated from the per-minute rollups only, so the cost depends on the
 * window and the number of tools, never on the number of stored spans.
 *
 * Definitions (all over the window, for one cohort):
 * - missing_sponsor_ratio = tool calls without sponsor_id / tool calls;
 * - policy_error_rate = calls whose decision is `error` / calls that asked the policy plane
 *   (decision present and not served from the decision cache; an error always counts as having
 *   asked). The denominator is plane calls, not all calls, so that a plane outage reads as a high
 *   rate however many calls the cache answers;
 * - policy_latency_p95_ms = p95 of the plane latency of those same calls, from ClickHouse's
 *   quantileTiming state over latencies rounded up to whole ms (see `latencyP95Ms`);
 * - token_issue_failure_ratio = refused / (issued + refused) token requests (all cohorts).
 * A rule breaches when value > threshold, strictly: 0.1 % missing is not a breach.
 *
 * Window: whole minutes. A window of W seconds is ceil(W/60) minute buckets: the current
 * (partial) minute and the ones before it, so it covers between W-60 s and W s of the past.
 *
 * Action: `insufficient_data` when fewer than minSample tool calls are in the window; else
 * `rollback` when any rule breaches; else `hold` when an alert fires (policy p95 > 200 ms or
 * token issuance failures > 0.5 %: keep the current stage, do not advance); else `advance`.
 */

export type RollbackAction = 'rollback' | 'hold' | 'advance' | 'insufficient_data';
export type AlertName = 'policy_latency_p95_ms' | 'token_issue_failure_ratio';

export interface RuleResult {
  rule: RuleName;
  /** null when the rule's denominator is empty in the window (no calls, or no plane calls). */
  value: number | null;
  threshold: number;
  /** value > threshold with at least minSample calls in the window. */
  breached: boolean;
}

export interface AlertResult {
  alert: AlertName;
  value: number | null;
  threshold: number;
  firing: boolean;
}

export interface RuleThresholds {
  missing_sponsor_ratio: number;
  policy_error_rate: number;
  policy_latency_p95_ms: number;
  token_issue_failure_ratio: number;
  alert_policy_latency_p95_ms: number;
}

/** What the rollups hold for one cohort over the window. */
export interface CohortAggregates {
  calls: number;
  missingSponsor: number;
  policyErrors: number;
  /** Calls that asked the policy plane (not cached, or failed). */
  policyChecks: number;
  /**
   * p95 of plane latency in whole ms, null without plane calls. ClickHouse quantileTiming:
   * up to about 5670 values it keeps them all and returns x[floor(0.95 n)] of the ascending
   * 0-based order (so 100 values give the 96th smallest); above that it keeps a histogram exact
   * to 1 ms below 1024 ms (16 ms steps up to 30 s, where it saturates) and returns the smallest
   * value whose cumulative count reaches ceil(0.95 n).
   */
  latencyP95Ms: number | null;
}

export interface TokenAggregates {
  issued: number;
  refused: number;
}

export interface RuleWindow {
  /** Effective window length: whole minutes. */
  windowS: number;
  /** First minute bucket (epoch s, inclusive). */
  startS: number;
  /** End of the current minute (epoch s, exclusive). */
  endS: number;
}

export interface RulesConfig {
  windowS: number;
  cohort: Cohort;
  minSample: number;
  thresholds: RuleThresholds;
}

export interface RuleEvaluation {
  action: RollbackAction;
  cohort: Cohort;
  window_s: number;
  window: { start: string; end: string };
  sample_size: number;
  rules: RuleResult[];
  alerts: AlertResult[];
}

export const COHORTS: readonly Cohort[] = [COHORT.CANARY, COHORT.BASELINE];
/** Longest window accepted: the default audit retention, which the rollups share. */
export const MAX_WINDOW_S = 90 * 86_400;

export class RuleInputError extends CustodyError {
  readonly parameter: string;
  constructor(parameter: string, message: string) {
    super('ERR_RULE_INPUT', message);
    this.parameter = parameter;
  }
}

/** `15m`, `1h`, `900s`: up to 90 days; evaluation rounds it up to whole minutes. */
export function parseWindow(text: string): number {
  let seconds: number;
  try {
    seconds = parseDuration(text, 'window');
  } catch (err) {
    throw new RuleInputError('window', (err as Error).message);
  }
  if (seconds > MAX_WINDOW_S) throw new RuleInputError('window', `window '${text}' is longer than ${MAX_WINDOW_S / 86_400}d`);
  return seconds;
}

export function parseCohort(text: string): Cohort {
  if ((COHORTS as readonly string[]).includes(text)) return text as Cohort;
  throw new RuleInputError('cohort', `cohort '${text}' must be one of ${COHORTS.join(', ')}`);
}

export function parseMinSample(text: string, what = 'min_sample'): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new RuleInputError(what, `${what} '${text}' must be a whole number of calls, at least 1`);
  }
  return n;
}

/** Defaults, with CUSTODY_RULE_MIN_SAMPLE applied; read once at start. */
export function resolveRulesConfig(env: NodeJS.ProcessEnv = process.env): Readonly<RulesConfig> {
  let minSample: number = DEFAULTS.RULE_MIN_SAMPLE;
  const raw = env[ENV.RULE_MIN_SAMPLE];
  if (raw !== undefined && raw !== '') {
    try {
      minSample = parseMinSample(raw, ENV.RULE_MIN_SAMPLE);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  return Object.freeze({
    windowS: DEFAULTS.RULE_WINDOW_S,
    cohort: COHORT.CANARY,
    minSample,
    thresholds: Object.freeze({ ...THRESHOLDS }),
  });
}

/** The minute buckets a window covers at `now` (epoch ms). */
export function ruleWindow(windowS: number, now: number): RuleWindow {
  const minutes = Math.max(1, Math.ceil(windowS / 60));
  const current = Math.floor(now / 60_000) * 60;
  return { windowS: minutes * 60, startS: current - (minutes - 1) * 60, endS: current + 60 };
}

const ratio = (part: number, whole: number): number | null => (whole > 0 ? part / whole : null);
const above = (value: number | null, threshold: number): boolean => value !== null && value > threshold;

/** Pure: rule values, breaches and the action from the window's aggregates. */
export function evaluate(
  agg: CohortAggregates,
  tokens: TokenAggregates,
  options: { minSample: number; thresholds: RuleThresholds },
): Pick<RuleEvaluation, 'action' | 'sample_size' | 'rules' | 'alerts'> {
  const t = options.thresholds;
  const enough = agg.calls >= options.minSample;
  const values: Record<RuleName, number | null> = {
    missing_sponsor_ratio: ratio(agg.missingSponsor, agg.calls),
    policy_error_rate: ratio(agg.policyErrors, agg.policyChecks),
    policy_latency_p95_ms: agg.policyChecks > 0 ? agg.latencyP95Ms : null,
  };
  const rules: RuleResult[] = (Object.keys(values) as RuleName[]).map((rule) => ({
    rule,
    value: values[rule],
    threshold: t[rule],
    breached: enough && above(values[rule], t[rule]),
  }));
  const tokenTotal = tokens.issued + tokens.refused;
  const tokenRatio = ratio(tokens.refused, tokenTotal);
  const alerts: AlertResult[] = [
    {
      alert: 'policy_latency_p95_ms',
      value: values.policy_latency_p95_ms,
      threshold: t.alert_policy_latency_p95_ms,
      firing: enough && above(values.policy_latency_p95_ms, t.alert_policy_latency_p95_ms),
    },
    {
      alert: 'token_issue_failure_ratio',
      value: tokenRatio,
      threshold: t.token_issue_failure_ratio,
      firing: tokenTotal >= options.minSample && above(tokenRatio, t.token_issue_failure_ratio),
    },
  ];
  const action: RollbackAction = !enough
    ? 'insufficient_data'
    : rules.some((r) => r.breached)
      ? 'rollback'
      : alerts.some((a) => a.firing)
        ? 'hold'
        : 'advance';
  return { action, sample_size: agg.calls, rules, alerts };
}

const EMPTY: CohortAggregates = { calls: 0, missingSponsor: 0, policyErrors: 0, policyChecks: 0, latencyP95Ms: null };

interface CohortRow {
  cohort: string;
  calls: string | number;
  missing_sponsor: string | number;
  policy_errors: string | number;
  policy_checks: string | number;
  latency_q: (number | null)[];
}

/** Reads the window's aggregates per cohort and for token issuance: two small rollup reads. */
export async function readAggregates(
  store: Store,
  window: RuleWindow,
  cohorts: readonly Cohort[],
): Promise<{ cohorts: Map<Cohort, CohortAggregates>; tokens: TokenAggregates }> {
  const db = store.database ?? DATABASE;
  const query_params = { start: window.startS, end: window.endS, cohorts: [...cohorts] };
  // The quantile levels must match the state's type in audit_rollup_1m.
  const rs = await store.client.query({
    query: `SELECT cohort,
        sum(calls) AS calls,
        sum(missing_sponsor) AS missing_sponsor,
        sum(policy_errors) AS policy_errors,
        sum(policy_checks) AS policy_checks,
        quantilesTimingMerge(0.5, 0.95, 0.99)(latency_ms) AS latency_q
      FROM ${db}.${TABLE.AUDIT_ROLLUP_1M}
      WHERE cohort IN {cohorts:Array(String)}
        AND minute >= toDateTime({start:UInt32}) AND minute < toDateTime({end:UInt32})
      GROUP BY cohort`,
    query_params,
    format: 'JSONEachRow',
  });
  const byCohort = new Map<Cohort, CohortAggregates>(cohorts.map((c) => [c, EMPTY]));
  for (const r of await rs.json<CohortRow>()) {
    const checks = Number(r.policy_checks);
    const p95 = r.latency_q?.[1];
    byCohort.set(r.cohort as Cohort, {
      calls: Number(r.calls),
      missingSponsor: Number(r.missing_sponsor),
      policyErrors: Number(r.policy_errors),
      policyChecks: checks,
      latencyP95Ms: checks > 0 && typeof p95 === 'number' && Number.isFinite(p95) ? p95 : null,
    });
  }
  const ts = await store.client.query({
    query: `SELECT sum(issued) AS issued, sum(refused) AS refused
      FROM ${db}.${TABLE.TOKEN_ROLLUP_1M}
      WHERE minute >= toDateTime({start:UInt32}) AND minute < toDateTime({end:UInt32})`,
    query_params,
    format: 'JSONEachRow',
  });
  const [t] = await ts.json<{ issued: string | number; refused: string | number }>();
  return { cohorts: byCohort, tokens: { issued: Number(t?.issued ?? 0), refused: Number(t?.refused ?? 0) } };
}

export interface EvaluateOptions {
  windowS?: number;
  minSample?: number;
  thresholds?: RuleThresholds;
  /** Clock (epoch ms); default Date.now(). */
  now?: number;
}

/** Evaluates the rules for several cohorts from one read (the metrics use both cohorts). */
export async function evaluateCohorts(
  store: Store,
  cohorts: readonly Cohort[],
  options: EvaluateOptions = {},
): Promise<RuleEvaluation[]> {
  const window = ruleWindow(options.windowS ?? DEFAULTS.RULE_WINDOW_S, options.now ?? Date.now());
  const agg = await readAggregates(store, window, cohorts);
  const settings = {
    minSample: options.minSample ?? DEFAULTS.RULE_MIN_SAMPLE,
    thresholds: options.thresholds ?? THRESHOLDS,
  };
  const span = { start: new Date(window.startS * 1000).toISOString(), end: new Date(window.endS * 1000).toISOString() };
  return cohorts.map((cohort) => ({
    ...evaluate(agg.cohorts.get(cohort) ?? EMPTY, agg.tokens, settings),
    cohort,
    window_s: window.windowS,
    window: span,
  }));
}

/** The rollback rules for one cohort (default canary) over the window (default 15 min). */
export async function evaluateRules(store: Store, options: EvaluateOptions & { cohort?: Cohort } = {}): Promise<RuleEvaluation> {
  const [result] = await evaluateCohorts(store, [options.cohort ?? COHORT.CANARY], options);
  return result!;
}
