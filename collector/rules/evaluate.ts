import { COHORT, DATABASE, DEFAULTS, TABLE, THRESHOLDS, UNMANAGED_COHORT, type Cohort, type RuleName } from '../../common/names';
import { parseDuration } from '../../common/duration';
import { CustodyError } from '../../common/errors';
import type { Store } from '../store';
import { countAbove, mergeHistograms, p95Test, rateTest, type Histogram, type Verdict } from './stats';

/**
 * The rollback rules, evaluated from per-minute rollups only, so the cost depends on the window,
 * the tools and the instances that reported failures, never on the number of stored spans.
 *
 * Inputs, by who can vouch for them:
 * - policy_error_rate and policy_latency_p95_ms, for one cohort: the plane's own decision log
 *   (every decision, errors among them, latency measured by the plane from the request's arrival),
 *   plus failures only agents can see (timeout, unreachable, a garbage or 5xx answer: an `error`
 *   call with no plane decision behind it), each counted as an error and as a latency of at least
 *   the policy timeout. Where two or more instances are in the cohort, the reports of the instance
 *   that would weigh most on the rule are left out, so that no single instance carries a rule over
 *   its threshold on its own. error rate = (plane errors + agent failures) / (plane decisions +
 *   agent failures); p95 over the plane's latencies and the failures' latencies.
 * - missing_sponsor_ratio, for the whole fleet: every tool call stored from an accepted source,
 *   whatever its cohort — custody's agents, other instrumentations' GenAI `execute_tool` spans,
 *   gateways — with calls that carry no custody cohort in a cohort of their own, `unmanaged`.
 *   The status lists the split by cohort.
 *
 * Decision (see stats.ts): a rule breaches when the 95 % lower bound of its value is above the
 * threshold (Wilson score bound for the rates, an order statistic for the p95), is healthy when the
 * upper bound is at or below it, and is otherwise undecided. Action: `rollback` when a rule
 * breaches; else `insufficient_data` while a rule is undecided (with how many more calls would
 * settle it); else `hold` when an alert fires (p95 above 200 ms or token failures above 0.5 %, by
 * the same test); else `advance`.
 *
 * Window: whole minutes. A window of W seconds is ceil(W/60) minute buckets: the current
 * (partial) minute and the ones before it, so it covers between W-60 s and W s of the past.
 */

export type RollbackAction = 'rollback' | 'hold' | 'advance' | 'insufficient_data';
export type AlertName = 'policy_latency_p95_ms' | 'token_issue_failure_ratio';
export type RuleCohort = Cohort | typeof UNMANAGED_COHORT;

export interface RuleResult {
  rule: RuleName;
  /** The observed value (a rate, or the p95 in whole ms); null without data. */
  value: number | null;
  threshold: number;
  /** The 95 % lower bound of the value is above the threshold. */
  breached: boolean;
  verdict: Verdict;
  /** 95 % one-sided bounds of the value (null where the data cannot bound it yet). */
  lower: number | null;
  upper: number | null;
  /** Observations the rule was judged on (calls, or plane calls plus counted agent failures). */
  sample: number;
  /** More calls that would settle an undecided rule at the rate seen so far; 0 when decided, null when none would. */
  more_calls: number | null;
  /** `cohort`: the queried cohort's calls; `fleet`: every cohort's. */
  scope: 'cohort' | 'fleet';
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

export interface CallCounts {
  calls: number;
  missingSponsor: number;
}

/** One instance's failures that no plane decision backs. */
export interface AgentFailures {
  instance: string;
  failures: number;
  latency: Histogram;
}

/** What the rollups hold for one cohort's plane calls over the window. */
export interface PlaneAggregates {
  decisions: number;
  errors: number;
  latency: Histogram;
  /** Agent-reported failures, per instance. */
  failures: AgentFailures[];
  /** Distinct instances the plane decided for or that reported failures. */
  instances: number;
}

export interface RuleInputs {
  /** Tool calls by cohort (canary, baseline, unmanaged), from every accepted source. */
  calls: Map<RuleCohort, CallCounts>;
  plane: Map<RuleCohort, PlaneAggregates>;
  tokens: TokenAggregates;
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
  cohort: RuleCohort;
  thresholds: RuleThresholds;
}

/** How the plane-call rules were fed, so that an operator can see what was counted and left out. */
export interface PlaneInputs {
  plane_decisions: number;
  plane_errors: number;
  agent_failures: number;
  agent_failures_counted: number;
  instances: number;
  /** The instance whose reports were left out of policy_error_rate, if any. */
  excluded_instance: string | null;
}

export interface RuleEvaluation {
  action: RollbackAction;
  cohort: RuleCohort;
  window_s: number;
  window: { start: string; end: string };
  /** Tool calls of the cohort in the window. */
  sample_size: number;
  /** With insufficient_data: more calls that would settle every undecided rule (null: no number would). */
  more_calls: number | null;
  rules: RuleResult[];
  alerts: AlertResult[];
  inputs: PlaneInputs;
  /** Calls and missing sponsors per cohort: what missing_sponsor_ratio (fleet) is made of. */
  by_cohort: Record<RuleCohort, { calls: number; missing_sponsor: number }>;
}

/** The cohorts the rules know: custody's two, and the agents custody does not manage. */
export const COHORTS: readonly RuleCohort[] = [COHORT.CANARY, COHORT.BASELINE, UNMANAGED_COHORT];
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

export function parseCohort(text: string): RuleCohort {
  if ((COHORTS as readonly string[]).includes(text)) return text as RuleCohort;
  throw new RuleInputError('cohort', `cohort '${text}' must be one of ${COHORTS.join(', ')}`);
}

/** The thresholds a caller may override, with what each accepts. */
export const THRESHOLD_PARAMETERS = {
  missing_sponsor_ratio: 'ratio',
  policy_error_rate: 'ratio',
  policy_latency_p95_ms: 'ms',
} as const satisfies Partial<Record<keyof RuleThresholds, 'ratio' | 'ms'>>;
export type ThresholdParameter = keyof typeof THRESHOLD_PARAMETERS;

/** A rule threshold: a ratio strictly between 0 and 1, or whole ms from 1 to 60000. */
export function parseThreshold(rule: string, text: string): number {
  if (!(rule in THRESHOLD_PARAMETERS)) {
    throw new RuleInputError('threshold', `unknown rule '${rule}' (expected ${Object.keys(THRESHOLD_PARAMETERS).join(', ')})`);
  }
  const kind = THRESHOLD_PARAMETERS[rule as ThresholdParameter];
  const n = Number(text);
  if (kind === 'ratio') {
    if (!/^(0|0?\.\d+|\d+(\.\d+)?e-\d+)$/i.test(text.trim()) || !(n > 0 && n < 1)) {
      throw new RuleInputError(rule, `${rule} threshold '${text}' must be a ratio between 0 and 1 (0.01 is 1 %)`);
    }
    return n;
  }
  if (!/^\d+$/.test(text.trim()) || !(n >= 1 && n <= 60_000)) {
    throw new RuleInputError(rule, `${rule} threshold '${text}' must be whole milliseconds from 1 to 60000`);
  }
  return n;
}

/** Defaults; read once at start. */
export function resolveRulesConfig(): Readonly<RulesConfig> {
  return Object.freeze({
    windowS: DEFAULTS.RULE_WINDOW_S,
    cohort: COHORT.CANARY,
    thresholds: Object.freeze({ ...THRESHOLDS }),
  });
}

/** The minute buckets a window covers at `now` (epoch ms). */
export function ruleWindow(windowS: number, now: number): RuleWindow {
  const minutes = Math.max(1, Math.ceil(windowS / 60));
  const current = Math.floor(now / 60_000) * 60;
  return { windowS: minutes * 60, startS: current - (minutes - 1) * 60, endS: current + 60 };
}

const EMPTY_PLANE: PlaneAggregates = { decisions: 0, errors: 0, latency: new Map(), failures: [], instances: 0 };
const EMPTY_CALLS: CallCounts = { calls: 0, missingSponsor: 0 };

/**
 * The agents' failure reports that count: all of them with one instance in the cohort; with two
 * or more, all but those of the instance that weighs most by `weight`.
 */
export function countedFailures(plane: PlaneAggregates, weight: (f: AgentFailures) => number): { counted: AgentFailures[]; excluded: AgentFailures | null } {
  if (plane.instances < 2 || plane.failures.length === 0) return { counted: plane.failures, excluded: null };
  let worst = plane.failures[0]!;
  for (const f of plane.failures) if (weight(f) > weight(worst)) worst = f;
  return { counted: plane.failures.filter((f) => f !== worst), excluded: worst };
}

function latencyTest(plane: PlaneAggregates, threshold: number) {
  const { counted } = countedFailures(plane, (f) => countAbove(f.latency, threshold));
  return p95Test(mergeHistograms(plane.latency, ...counted.map((f) => f.latency)), threshold);
}

function fromRate(rule: RuleName, threshold: number, scope: RuleResult['scope'], x: number, n: number): RuleResult {
  const t = rateTest(x, n, threshold);
  return { rule, value: t.value, threshold, breached: t.verdict === 'breached', verdict: t.verdict, lower: n > 0 ? t.lower : null, upper: n > 0 ? t.upper : null, sample: n, more_calls: t.more_calls, scope };
}

/** Pure: the rules, alerts and action for one cohort from the window's inputs. */
export function evaluate(
  inputs: RuleInputs,
  cohort: RuleCohort,
  thresholds: RuleThresholds,
): Pick<RuleEvaluation, 'action' | 'sample_size' | 'more_calls' | 'rules' | 'alerts' | 'inputs' | 'by_cohort'> {
  const t = thresholds;
  const byCohort = Object.fromEntries(
    COHORTS.map((c) => {
      const v = inputs.calls.get(c) ?? EMPTY_CALLS;
      return [c, { calls: v.calls, missing_sponsor: v.missingSponsor }];
    }),
  ) as RuleEvaluation['by_cohort'];
  let fleetCalls = 0;
  let fleetMissing = 0;
  for (const v of inputs.calls.values()) {
    fleetCalls += v.calls;
    fleetMissing += v.missingSponsor;
  }

  const plane = inputs.plane.get(cohort) ?? EMPTY_PLANE;
  const errors = countedFailures(plane, (f) => f.failures);
  const agentFailures = plane.failures.reduce((n, f) => n + f.failures, 0);
  const counted = errors.counted.reduce((n, f) => n + f.failures, 0);
  const latency = latencyTest(plane, t.policy_latency_p95_ms);

  const rules: RuleResult[] = [
    fromRate('missing_sponsor_ratio', t.missing_sponsor_ratio, 'fleet', fleetMissing, fleetCalls),
    fromRate('policy_error_rate', t.policy_error_rate, 'cohort', plane.errors + counted, plane.decisions + counted),
    {
      rule: 'policy_latency_p95_ms',
      value: latency.value,
      threshold: t.policy_latency_p95_ms,
      breached: latency.verdict === 'breached',
      verdict: latency.verdict,
      lower: latency.lower,
      upper: latency.upper,
      sample: latency.n,
      more_calls: latency.more_calls,
      scope: 'cohort',
    },
  ];

  const alertLatency = latencyTest(plane, t.alert_policy_latency_p95_ms);
  const tokenTotal = inputs.tokens.issued + inputs.tokens.refused;
  const tokenTest = rateTest(inputs.tokens.refused, tokenTotal, t.token_issue_failure_ratio);
  const alerts: AlertResult[] = [
    { alert: 'policy_latency_p95_ms', value: alertLatency.value, threshold: t.alert_policy_latency_p95_ms, firing: alertLatency.verdict === 'breached' },
    { alert: 'token_issue_failure_ratio', value: tokenTest.value, threshold: t.token_issue_failure_ratio, firing: tokenTest.verdict === 'breached' },
  ];

  const undecided = rules.filter((r) => r.verdict === 'undecided');
  const action: RollbackAction = rules.some((r) => r.breached)
    ? 'rollback'
    : undecided.length > 0
      ? 'insufficient_data'
      : alerts.some((a) => a.firing)
        ? 'hold'
        : 'advance';
  const more =
    action !== 'insufficient_data' ? 0 : undecided.some((r) => r.more_calls === null) ? null : Math.max(...undecided.map((r) => r.more_calls!));
  return {
    action,
    sample_size: (inputs.calls.get(cohort) ?? EMPTY_CALLS).calls,
    more_calls: more,
    rules,
    alerts,
    inputs: {
      plane_decisions: plane.decisions,
      plane_errors: plane.errors,
      agent_failures: agentFailures,
      agent_failures_counted: counted,
      instances: plane.instances,
      excluded_instance: errors.excluded?.instance ?? null,
    },
    by_cohort: byCohort,
  };
}

type Num = string | number;
const num = (v: Num | undefined | null): number => Number(v ?? 0);
const histogram = (h: [Num[], Num[]] | undefined | null): Histogram => {
  const out: Histogram = new Map();
  if (!h) return out;
  const [keys, counts] = h;
  keys.forEach((k, i) => out.set(Number(k), num(counts[i])));
  return out;
};

/** SQL: the rule cohort of a stored cohort value (anything but custody's two is unmanaged). */
const RULE_COHORT_SQL = `if(cohort IN ('${COHORT.CANARY}', '${COHORT.BASELINE}'), cohort, '${UNMANAGED_COHORT}')`;

/** Reads the window's rule inputs: a handful of small rollup reads. */
export async function readInputs(store: Store, window: RuleWindow, cohorts: readonly RuleCohort[]): Promise<RuleInputs> {
  const db = store.database ?? DATABASE;
  const query_params = { start: window.startS, end: window.endS, cohorts: [...cohorts] };
  const inWindow = `minute >= toDateTime({start:UInt32}) AND minute < toDateTime({end:UInt32})`;
  const read = async <T>(query: string): Promise<T[]> => (await store.client.query({ query, query_params, format: 'JSONEachRow' })).json<T>();

  const [callRows, decisionRows, failureRows, instanceRows, tokenRows] = await Promise.all([
    read<{ c: string; calls: Num; missing: Num }>(
      `SELECT ${RULE_COHORT_SQL} AS c, sum(calls) AS calls, sum(missing_sponsor) AS missing
       FROM ${db}.${TABLE.AUDIT_ROLLUP_1M} WHERE ${inWindow} GROUP BY c`,
    ),
    read<{ c: string; decisions: Num; errors: Num; hist: [Num[], Num[]] }>(
      `SELECT ${RULE_COHORT_SQL} AS c, sum(decisions) AS decisions, sum(errors) AS errors, sumMap(latency_hist) AS hist
       FROM ${db}.${TABLE.DECISION_ROLLUP_1M} WHERE ${inWindow} AND c IN {cohorts:Array(String)} GROUP BY c`,
    ),
    read<{ c: string; instance: string; failures: Num; hist: [Num[], Num[]] }>(
      `SELECT ${RULE_COHORT_SQL} AS c, agent_instance_id AS instance, sum(failures) AS failures, sumMap(latency_hist) AS hist
       FROM ${db}.${TABLE.AGENT_FAILURE_ROLLUP_1M} WHERE ${inWindow} AND c IN {cohorts:Array(String)} GROUP BY c, instance`,
    ),
    read<{ c: string; n: Num }>(
      `SELECT c, uniqExactMerge(s) AS n FROM (
         SELECT ${RULE_COHORT_SQL} AS c, instances AS s FROM ${db}.${TABLE.DECISION_ROLLUP_1M} WHERE ${inWindow}
         UNION ALL
         SELECT ${RULE_COHORT_SQL} AS c, uniqExactState(agent_instance_id) AS s FROM ${db}.${TABLE.AGENT_FAILURE_ROLLUP_1M} WHERE ${inWindow} GROUP BY c
       ) WHERE c IN {cohorts:Array(String)} GROUP BY c`,
    ),
    read<{ issued: Num; refused: Num }>(
      `SELECT sum(issued) AS issued, sum(refused) AS refused FROM ${db}.${TABLE.TOKEN_ROLLUP_1M} WHERE ${inWindow}`,
    ),
  ]);

  const calls = new Map<RuleCohort, CallCounts>();
  for (const r of callRows) calls.set(r.c as RuleCohort, { calls: num(r.calls), missingSponsor: num(r.missing) });
  const plane = new Map<RuleCohort, PlaneAggregates>();
  const planeOf = (c: string): PlaneAggregates => {
    let p = plane.get(c as RuleCohort);
    if (!p) plane.set(c as RuleCohort, (p = { decisions: 0, errors: 0, latency: new Map(), failures: [], instances: 0 }));
    return p;
  };
  for (const r of decisionRows) Object.assign(planeOf(r.c), { decisions: num(r.decisions), errors: num(r.errors), latency: histogram(r.hist) });
  for (const r of failureRows) planeOf(r.c).failures.push({ instance: r.instance, failures: num(r.failures), latency: histogram(r.hist) });
  for (const r of instanceRows) planeOf(r.c).instances = num(r.n);
  const [tok] = tokenRows;
  return { calls, plane, tokens: { issued: num(tok?.issued), refused: num(tok?.refused) } };
}

export interface EvaluateOptions {
  windowS?: number;
  thresholds?: RuleThresholds;
  /** Clock (epoch ms); default Date.now(). */
  now?: number;
}

/** Evaluates the rules for several cohorts from one read (the metrics use every cohort). */
export async function evaluateCohorts(store: Store, cohorts: readonly RuleCohort[], options: EvaluateOptions = {}): Promise<RuleEvaluation[]> {
  const window = ruleWindow(options.windowS ?? DEFAULTS.RULE_WINDOW_S, options.now ?? Date.now());
  const inputs = await readInputs(store, window, cohorts);
  const thresholds = options.thresholds ?? THRESHOLDS;
  const span = { start: new Date(window.startS * 1000).toISOString(), end: new Date(window.endS * 1000).toISOString() };
  return cohorts.map((cohort) => ({ ...evaluate(inputs, cohort, thresholds), cohort, window_s: window.windowS, window: span }));
}

/** The rollback rules for one cohort (default canary) over the window (default 15 min). */
export async function evaluateRules(store: Store, options: EvaluateOptions & { cohort?: RuleCohort } = {}): Promise<RuleEvaluation> {
  const [result] = await evaluateCohorts(store, [options.cohort ?? COHORT.CANARY], options);
  return result!;
}
