import type { Gauge } from 'prom-client';
import { gauge } from '../../common/metrics';
import { METRIC } from '../../common/names';
import type { Logger } from '../../common/log';
import { COHORTS, evaluateCohorts, type RuleEvaluation, type RulesConfig } from './evaluate';
import type { Store } from '../store';

/**
 * The rule gauges on /metrics, computed when Prometheus scrapes. One rollup read serves every
 * gauge and every scrape within `cacheMs`, so scrapes (several Prometheus replicas, dashboards)
 * never multiply storage reads. When storage cannot answer, the rule series are left out rather
 * than reported stale: telemetry fails open and the rest of /metrics is served.
 */
export interface RuleMetricsOptions {
  config: Readonly<RulesConfig>;
  log: Logger;
  /** How long one evaluation serves scrapes (default 5000 ms). */
  cacheMs?: number;
  now?: () => number;
}

type Load = () => Promise<RuleEvaluation[]>;

// The gauges are registered once per process; a collector started again (tests) swaps the source.
let source: Load | undefined;

async function current(): Promise<RuleEvaluation[] | undefined> {
  return source?.();
}

function ruleGauge(name: string, help: string, labelNames: string[], fill: (g: Gauge<string>, evals: RuleEvaluation[]) => void): void {
  gauge({
    name,
    help,
    labelNames,
    async collect() {
      // collect runs as `this` = the gauge
      const self = this as unknown as Gauge<string>;
      const evals = await current().catch(() => undefined);
      self.reset();
      if (evals) fill(self, evals);
    },
  });
}

function setEach(g: Gauge<string>, evals: RuleEvaluation[], pick: (e: RuleEvaluation) => number | null): void {
  for (const e of evals) {
    const v = pick(e);
    if (v !== null) g.set({ cohort: e.cohort }, v);
  }
}

const ruleValue = (e: RuleEvaluation, rule: string) => e.rules.find((r) => r.rule === rule)?.value ?? null;

/** A loader that runs `load` at most once per `ttlMs` and shares an in-flight read. */
export function cachedLoader<T>(load: () => Promise<T>, ttlMs: number, now: () => number = Date.now): () => Promise<T> {
  let entry: { at: number; promise: Promise<T> } | undefined;
  return () => {
    if (entry && now() - entry.at < ttlMs) return entry.promise;
    const mine = { at: now(), promise: load() };
    entry = mine;
    // a failed read is not cached: the next scrape tries again
    mine.promise.catch(() => {
      if (entry === mine) entry = undefined;
    });
    return mine.promise;
  };
}

export function registerRuleMetrics(store: Store, options: RuleMetricsOptions): { read: Load; close(): void } {
  const { config, log } = options;
  const read = cachedLoader(
    () =>
      evaluateCohorts(store, COHORTS, {
        windowS: config.windowS,
        thresholds: config.thresholds,
        ...(options.now ? { now: options.now() } : {}),
      }).catch((err: unknown) => {
        log.warn({ err }, 'rule gauges: storage did not answer');
        throw err;
      }),
    options.cacheMs ?? 5000,
    options.now,
  );
  source = read;

  const window = `${config.windowS / 60} min`;
  // Per cohort (canary, baseline, unmanaged) and cohort="fleet", the value the rule judges.
  ruleGauge(METRIC.MISSING_SPONSOR_RATIO, `Tool calls without sponsor_id / tool calls, last ${window}`, ['cohort'], (g, evals) => {
    const first = evals[0];
    if (!first) return;
    for (const [cohort, c] of Object.entries(first.by_cohort)) if (c.calls > 0) g.set({ cohort }, c.missing_sponsor / c.calls);
    const fleet = ruleValue(first, 'missing_sponsor_ratio');
    if (fleet !== null) g.set({ cohort: 'fleet' }, fleet);
  });
  ruleGauge(METRIC.POLICY_ERROR_RATE, `Policy errors (plane's log and agents' failures) / plane calls, last ${window}`, ['cohort'], (g, evals) =>
    setEach(g, evals, (e) => ruleValue(e, 'policy_error_rate')),
  );
  ruleGauge(METRIC.POLICY_LATENCY_P95_SECONDS, `p95 of policy plane latency, server-side from arrival, agents' failures at the timeout or more, last ${window}`, ['cohort'], (g, evals) =>
    setEach(g, evals, (e) => {
      const ms = ruleValue(e, 'policy_latency_p95_ms');
      return ms === null ? null : ms / 1000;
    }),
  );
  // unlabelled, so prom-client keeps its one series at 0 after reset: no token requests read 0
  ruleGauge(METRIC.TOKEN_ISSUE_FAILURE_RATIO, `Refused / requested tokens, last ${window}`, [], (g, evals) => {
    const v = evals[0]?.alerts.find((a) => a.alert === 'token_issue_failure_ratio')?.value ?? null;
    if (v !== null) g.set(v);
  });
  ruleGauge(
    METRIC.ROLLBACK_RULE_BREACHED,
    `1 when a rollback rule is breached at 95 % confidence, last ${window}`,
    ['rule', 'cohort'],
    (g, evals) => {
      for (const e of evals) for (const r of e.rules) g.set({ rule: r.rule, cohort: e.cohort }, r.breached ? 1 : 0);
    },
  );

  return {
    read,
    close() {
      if (source === read) source = undefined;
    },
  };
}
