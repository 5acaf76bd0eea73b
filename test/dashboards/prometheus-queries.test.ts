import fs from 'node:fs';
import path from 'node:path';
import { SpanStatusCode } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ATTR } from '../../common/names';
import { ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, calls, decisions, getRollout, putRollout, seedStore } from '../helpers/rollback';
import { hasPrometheus, instant, interpolateProm, rateInterval, startPrometheus, type RunningPrometheus, type Sample } from '../helpers/prometheus';

/**
 * Every PromQL expression of the "Rollout health" dashboard and of alerts/custody.rules.yml,
 * evaluated by a real Prometheus scraping a real `custody up` that holds known data:
 * - audit rows written before start (inside the 15-minute rule window): canary 400 calls, 8
 *   without a sponsor (2 %), 10 policy errors (2.5 %), p95 latency 250 ms; baseline 200 healthy;
 * - live traffic after Prometheus has scraped: token requests (issued and refused) and policy
 *   checks through the HTTP API, tool-call spans through the stock OTLP exporter (timestamped
 *   30 minutes ago, so they count on the collector's counters but stay out of the rule window),
 *   one malformed span;
 * - the rollback role, which rolls the breached canary back to 0, and a person putting it to 30
 *   again, which it rolls back again.
 */

if (!hasPrometheus) console.warn('prometheus/promtool not found: PromQL tests skipped (apt-get install prometheus)');

const RULES_FILE = path.join(ROOT, 'alerts/custody.rules.yml');
const SCRAPE_S = 0.5;
// What Grafana substitutes on a 24-hour dashboard (interval 1m): max(1m + scrape, 4 × scrape).
const RATE_INTERVAL = rateInterval(60, SCRAPE_S);

interface Target {
  expr: string;
  refId: string;
}
const dashboard = JSON.parse(fs.readFileSync(path.join(ROOT, 'dashboards/rollout-health.json'), 'utf8')) as {
  panels: { title: string; type: string; targets?: Target[] }[];
};
const panelQueries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ key: `${p.title} ${t.refId}`, expr: t.expr })));
const alertRules = (parse(fs.readFileSync(RULES_FILE, 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);

// the live tool calls: one of each kind before Prometheus starts, then the counted ones
const PLAN: [string, 'allow' | 'deny' | 'error', number][] = [
  ['billing', 'allow', 12],
  ['billing', 'deny', 3],
  ['search', 'allow', 8],
  ['search', 'error', 2],
];
const WARM_UP = PLAN.map(([tool, decision]) => [tool, decision, 1] as [string, 'allow' | 'deny' | 'error', number]);

const byLabel = (samples: Sample[], label: string) => Object.fromEntries(samples.map((s) => [s.metric[label] ?? '', s.value]));

const GATEWAY_TOKEN = 'prom-test-gateway-credential';

describe.skipIf(!hasPrometheus)('PromQL of the dashboards and alerts on a real Prometheus (apt-get install prometheus)', () => {
  let custody: RunningCustody;
  let prom: RunningPrometheus;
  const sent = { issued: 0, refused: 0, checks: 0, toolCalls: { allow: 0, deny: 0, error: 0 }, rejected: 0, puts: 0 };
  let evalAt = 0;

  beforeAll(async () => {
    const dataDir = tempDir('custody-prom-');
    const now = Date.now();
    seedStore(dataDir, {
      audit_events: [
        ...calls(400, now, (i) => ({
          cohort: 'canary',
          ...(i % 50 === 0 ? { sponsor_id: '' } : {}),
          // a failure only the agent saw (no plane decision behind it)
          ...(i % 40 === 0 ? { decision: 'error', error_type: 'policy_unavailable', policy_decision_id: '' } : {}),
          policy_latency_ms: i % 20 === 0 ? 250 : 5,
        })),
        ...calls(200, now, () => ({ cohort: 'baseline', policy_latency_ms: 3 })),
      ],
      // the plane's own log: what the latency rule reads
      policy_decisions: [
        ...decisions(400, now, (i) => ({ cohort: 'canary', latency_ms: i % 20 === 0 ? 250 : 5 })),
        ...decisions(200, now, () => ({ cohort: 'baseline', latency_ms: 3 })),
      ],
    });
    custody = await startCustody({
      dataDir,
      // the spans below come through a gateway's credential: spans nobody vouches for are not plane evidence
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_INTERVAL: '3s', CUSTODY_INGEST_TOKEN: GATEWAY_TOKEN },
    });
    expect(custody.otlpUrl, 'custody up names its OTLP receiver').toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    // the role's first tick rolls the breached canary back at once
    await eventually(async () => (await getRollout(custody.url)).percent === 0);

    // One of each counter series before Prometheus's first scrape, so increases are counted from there.
    await issue('support', 'search');
    await issue(undefined, 'search');
    await sendToolSpans(WARM_UP, false);
    await sendMalformedSpan(false);
    await eventually(async () => /custody_spans_rejected_total\{[^}]*\} [1-9]/.test(await (await fetch(`${custody.url}/metrics`)).text()));

    prom = await startPrometheus({ targets: [new URL(custody.url).host], ruleFiles: [RULES_FILE], scrapeInterval: `${SCRAPE_S * 1000}ms` });
    await eventually(async () => (await instant(prom.url, 'up{job="custody"}'))[0]?.value === 1, 20_000);
    await sleep(1500);

    // A person moves the rollout to 30; the role rolls it back. Prometheus must see both.
    await eventually(
      async () => {
        if ((await getRollout(custody.url)).percent === 0) {
          expect((await putRollout(custody.url, 30, 'test: try 30 again')).status).toBe(200);
          sent.puts++;
        }
        await sleep(1200);
        return (await instant(prom.url, 'max_over_time(custody_rollout_percent[1m])'))[0]?.value === 30;
      },
      30_000,
      0,
    );
    await eventually(async () => (await getRollout(custody.url)).percent === 0, 10_000);

    // Live traffic: tokens, checks, tool-call spans, a malformed span.
    for (let i = 0; i < 40; i++) {
      const token = await issue(i % 4 === 0 ? 'user' : 'support', i % 4 === 0 ? 'billing' : 'search');
      await check(token!, i % 4 === 0 ? 'billing' : 'search', i % 4 === 0 ? 'refund' : 'call');
    }
    for (let i = 0; i < 3; i++) await issue(undefined, 'billing');
    await sendToolSpans(PLAN, true);
    await sendMalformedSpan(true);
    await sendMalformedSpan(true);
    // let the rule gauges' cache and two scrapes pass
    await sleep(7000);
    evalAt = Date.now();
  }, 180_000);

  afterAll(async () => {
    await prom?.stop();
    await custody?.stop();
  });

  async function issue(role: string | undefined, tool: string): Promise<string | undefined> {
    const res = await fetch(`${custody.url}/issue`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tool, ttl: 60, ...(role ? { sponsor_id: 'alice', role } : {}), agent_instance_id: `prom-agent-${sent.issued}` }),
    });
    if (res.status === 201) {
      sent.issued++;
      return ((await res.json()) as { token: string }).token;
    }
    expect(res.status).toBe(400);
    sent.refused++;
    return undefined;
  }

  async function check(token: string, tool: string, action: string): Promise<void> {
    const res = await fetch(`${custody.url}/v1/check`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, tool, action }) });
    expect(res.status).toBe(200);
    sent.checks++;
  }

  async function sendToolSpans(plan: [tool: string, decision: 'allow' | 'deny' | 'error', n: number][], count: boolean): Promise<void> {
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ [ATTR.SERVICE_NAME]: 'prom-test-agent' }),
      // one request per span, all at once: each is its own insert, so give them a loaded machine's time
      spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${custody.otlpUrl}/v1/traces`, timeoutMillis: 60_000, headers: { authorization: `Bearer ${GATEWAY_TOKEN}` } }))],
    });
    const tracer = provider.getTracer('prom-test');
    const past = Date.now() - 30 * 60_000;
    let k = count ? 1000 : 0;
    for (const [tool, decision, n] of plan) {
      for (let i = 0; i < n; i++, k++) {
        const span = tracer.startSpan(`execute_tool ${tool}`, {
          startTime: past + k,
          attributes: {
            [ATTR.GEN_AI_OPERATION_NAME]: 'execute_tool',
            [ATTR.GEN_AI_TOOL_NAME]: tool,
            [ATTR.TOOL_ID]: tool,
            [ATTR.SPONSOR_ID]: 'alice',
            [ATTR.AGENT_INSTANCE_ID]: `span-agent-${k % 3}`,
            [ATTR.POLICY_DECISION]: decision,
            [ATTR.POLICY_DECISION_ID]: `pd-span-${k}`,
            [ATTR.POLICY_LATENCY_MS]: 4,
            [ATTR.ROLLOUT_COHORT]: 'canary',
            [ATTR.ENFORCED]: true,
          },
        });
        if (decision !== 'allow') span.setStatus({ code: SpanStatusCode.ERROR });
        span.end(past + k + 2);
        if (count) sent.toolCalls[decision]++;
      }
    }
    await provider.forceFlush();
    await provider.shutdown();
  }

  async function sendMalformedSpan(count: boolean): Promise<void> {
    const body = {
      resourceSpans: [
        {
          resource: { attributes: [] },
          scopeSpans: [{ scope: { name: 't' }, spans: [{ traceId: 'not-hex', spanId: 'zz', name: 'broken', startTimeUnixNano: '1', endTimeUnixNano: '2' }] }],
        },
      ],
    };
    const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${GATEWAY_TOKEN}` }, body: JSON.stringify(body) });
    expect(res.status).toBeLessThan(500);
    if (count) sent.rejected++;
  }

  const q = (expr: string, cohort: string[] | { all: string } = ['canary']) =>
    instant(prom.url, interpolateProm(expr, { cohort }, { __rate_interval: RATE_INTERVAL }), evalAt);

  /** The expected result of each dashboard query, by "panel title refId". */
  const expectations: Record<string, (r: Sample[]) => Promise<void> | void> = {
    'Rollback rules, canary A': (r) => expect(byLabel(r, 'rule')).toEqual({ missing_sponsor_ratio: 1, policy_error_rate: 1, policy_latency_p95_ms: 0 }),
    'Missing sponsor_id A': (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: 0.02 }),
    // 10 agent-side failures over 7 instances; the worst instance's 2 are left out: 8 over 400 plane decisions + 8
    'Policy error rate A': (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: expect.closeTo(8 / 408, 9) }),
    'Policy latency p95 A': (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: 0.25 }),
    'Rollout now A': (r) => expect(r.map((s) => s.value)).toEqual([0]),
    'Rollout percent over time A': (r) => expect(r.map((s) => s.value)).toEqual([0]),
    // the example policy has no rollout.scope: every instance can be canary
    'Canary scope A': (r) => expect(r.map((s) => [s.metric.attribute, s.metric.values, s.value])).toEqual([['*', '*', 1]]),
    'Rollback watch A': (r) => {
      // the rollback after the person's 30 (the first one happened before the first scrape)
      expect(Object.keys(byLabel(r, 'action'))).toEqual(['rollback']);
      expect(r[0]!.value).toBeGreaterThanOrEqual(1);
      expect(r[0]!.value).toBeLessThan(sent.puts + 0.5);
    },
    'Rollback watch B': (r) => expect(r).toEqual([]),
    'Tool calls by decision A': (r) => {
      const rates = byLabel(r, 'decision');
      expect(Object.keys(rates).sort()).toEqual(['allow', 'deny', 'error']);
      // the same scrapes: the rates stand in the ratio of the calls sent (up to rate()'s extrapolation)
      expect(rates.deny! / rates.allow!).toBeCloseTo(sent.toolCalls.deny / sent.toolCalls.allow, 2);
      expect(rates.error! / rates.allow!).toBeCloseTo(sent.toolCalls.error / sent.toolCalls.allow, 2);
    },
    'Tool calls by tool and decision A': (r) => {
      const keys = r.map((s) => `${s.metric.tool} ${s.metric.decision}`).sort();
      expect(keys).toEqual(['billing allow', 'billing deny', 'search allow', 'search error']);
      const rate = (k: string) => r.find((s) => `${s.metric.tool} ${s.metric.decision}` === k)!.value;
      expect(rate('billing allow') / rate('search allow')).toBeCloseTo(12 / 8, 2);
    },
    'Decision latency (policy plane) A': (r) => expectLatency(r),
    'Decision latency (policy plane) B': (r) => expectLatency(r),
    'Decision latency (policy plane) C': (r) => expectLatency(r),
    'Token issuance failures A': (r) => expect(r.map((s) => s.value)).toEqual([sent.refused / (sent.issued + sent.refused)]),
    'Tokens by result A': (r) => {
      const rates = byLabel(r, 'result');
      expect(Object.keys(rates).sort()).toEqual(['issued', 'refused']);
      // both series existed before the first scrape: the increases are the live requests (40 + 2 first ones excluded)
      expect(rates.refused! / rates.issued!).toBeCloseTo(3 / 40, 2);
    },
    'Spans ingested and rejected A': (r) => {
      expect(r).toHaveLength(1);
      expect(r[0]!.value).toBeGreaterThan(0);
    },
    'Spans ingested and rejected B': (r) => {
      expect(r.length).toBeGreaterThanOrEqual(1);
      expect(r.every((s) => s.value > 0 && s.metric.reason)).toBe(true);
    },
    'Scrape up A': (r) => expect(r.map((s) => s.value)).toEqual([1]),
  };

  function expectLatency(r: Sample[]): void {
    expect(r).toHaveLength(1);
    const v = r[0]!.value;
    expect(Number.isFinite(v)).toBe(true);
    expect(v).toBeGreaterThan(0);
    expect(v).toBeLessThan(0.2);
  }

  it('every dashboard query has an expectation and Prometheus returns it', async () => {
    expect(Object.keys(expectations).sort()).toEqual(panelQueries.map((p) => p.key).sort());
    for (const { key, expr } of panelQueries) {
      const result = await q(expr);
      try {
        await expectations[key]!(result);
      } catch (err) {
        throw new Error(`${key}: ${expr}\n→ ${JSON.stringify(result)}\n${(err as Error).message}`);
      }
    }
  });

  it('the latency quantiles are ordered and count every check', async () => {
    const [p50, p95, p99] = await Promise.all(
      ['0.5', '0.95', '0.99'].map(async (l) => (await q(`histogram_quantile(${l}, sum by (le) (rate(custody_policy_decision_duration_seconds_bucket[$__rate_interval])))`))[0]!.value),
    );
    expect(p50).toBeLessThanOrEqual(p95!);
    expect(p95).toBeLessThanOrEqual(p99!);
    const count = (await q('sum(increase(custody_policy_decision_duration_seconds_count[$__rate_interval]))'))[0]!.value;
    expect(count).toBeGreaterThanOrEqual(sent.checks);
    expect(count).toBeLessThan(sent.checks * 1.25);
  });

  it('the cohort variable set to All reads both cohorts', async () => {
    const missing = panelQueries.find((p) => p.key === 'Missing sponsor_id A')!.expr;
    // with All, the fleet series (every call, whatever its cohort) comes along: the canary's missing sponsors over all calls
    expect(byLabel(await q(missing, { all: '.*' }), 'cohort')).toEqual({ canary: 0.02, baseline: 0, fleet: expect.closeTo(0.0133, 3) });
    const latency = panelQueries.find((p) => p.key === 'Policy latency p95 A')!.expr;
    // the baseline's seeded decisions took 3 ms; the test's own live checks (baseline too) add what they took on this machine
    const p95 = byLabel(await q(latency, ['canary', 'baseline']), 'cohort');
    expect(Object.keys(p95).sort()).toEqual(['baseline', 'canary']);
    expect(p95.canary).toBe(0.25);
    expect(p95.baseline).toBeGreaterThanOrEqual(0.003);
    expect(p95.baseline).toBeLessThan(0.2);
  });

  it('every alert expression returns what the data says', async () => {
    const expected: Record<string, (r: Sample[]) => void> = {
      CustodyMissingSponsor: (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: 0.02, fleet: expect.closeTo(0.0133, 3) }),
      CustodyPolicyLatencyP95High: (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: 0.25 }),
      CustodyPolicyLatencyP95Rollback: (r) => expect(r).toEqual([]),
      CustodyPolicyErrorRate: (r) => expect(byLabel(r, 'cohort')).toEqual({ canary: expect.closeTo(8 / 408, 9) }),
      CustodyTokenIssueFailures: (r) => expect(r.map((s) => s.value)).toEqual([sent.refused / (sent.issued + sent.refused)]),
      CustodyRollbackRuleBreached: (r) =>
        expect(r.map((s) => `${s.metric.rule}/${s.metric.cohort}`).sort()).toEqual(['missing_sponsor_ratio/canary', 'policy_error_rate/canary']),
      CustodyRolledBack: (r) => expect(r).toHaveLength(1),
      CustodyRollbackWatchFailing: (r) => expect(r).toEqual([]),
      CustodyIngestRejecting: async () => undefined,
      CustodyScrapeDown: (r) => expect(r).toEqual([]),
    };
    expect(Object.keys(expected).sort()).toEqual(alertRules.map((a) => a.alert).sort());
    for (const rule of alertRules) {
      const result = await q(rule.expr);
      if (rule.alert === 'CustodyIngestRejecting') {
        // the ratio from the raw counters decides whether it must return a sample
        const rej = (await q('sum(rate(custody_spans_rejected_total[5m]))'))[0]?.value ?? 0;
        const ing = (await q('sum(rate(custody_spans_ingested_total[5m]))'))[0]?.value ?? 0;
        expect(rej).toBeGreaterThan(0);
        const ratio = rej / (ing + rej);
        if (ratio > 0.01) expect(result[0]!.value).toBeCloseTo(ratio, 9);
        else expect(result).toEqual([]);
        continue;
      }
      try {
        expected[rule.alert]!(result);
      } catch (err) {
        throw new Error(`${rule.alert}: ${rule.expr}\n→ ${JSON.stringify(result)}\n${(err as Error).message}`);
      }
    }
  });

  it('Prometheus loads the rules file and fires the alerts without a `for` at once', async () => {
    const rules = (await (await fetch(`${prom.url}/api/v1/rules`)).json()) as {
      data: { groups: { rules: { name: string; health: string; state: string }[] }[] };
    };
    const loaded = rules.data.groups.flatMap((g) => g.rules);
    expect(loaded).toHaveLength(alertRules.length);
    expect(loaded.every((r) => r.health === 'ok')).toBe(true);
    const state = Object.fromEntries(loaded.map((r) => [r.name, r.state]));
    expect(state.CustodyRollbackRuleBreached).toBe('firing');
    expect(state.CustodyRolledBack).toBe('firing');
    expect(state.CustodyMissingSponsor).toBe('pending');
    expect(state.CustodyPolicyLatencyP95Rollback).toBe('inactive');
  });

  it('the scrape-down alert expression fires once custody is gone', async () => {
    const panel = panelQueries.find((p) => p.key === 'Scrape up A')!.expr;
    expect(JSON.stringify((await instant(prom.url, panel)).map((s) => s.value))).toBe('[1]');
    // the panel remembers targets gone down through a subquery in 15 s steps: wait until a step has seen custody
    const memory = /max_over_time\(.+\[1h:15s\]\)/.exec(panel)![0];
    await eventually(async () => (await instant(prom.url, memory)).length === 1, 60_000);
    await custody.stop();
    const expr = alertRules.find((a) => a.alert === 'CustodyScrapeDown')!.expr;
    const down = await eventually(async () => {
      const r = await instant(prom.url, expr);
      return r.length === 1 ? r : undefined;
    }, 60_000).catch(async (err: Error) => {
      // say what Prometheus saw of the target, to tell a scrape that still succeeds from one never made
      const targets = await (await fetch(`${prom.url}/api/v1/targets`)).text();
      const up = await instant(prom.url, 'up');
      throw new Error(`${err.message}; up=${JSON.stringify(up)}; targets=${targets}; custody exit=${custody.proc.exitCode} signal=${custody.proc.signalCode}`);
    });
    expect(down[0]!.metric).toMatchObject({ job: 'custody', instance: new URL(custody.url).host });
    // the panel reads the same scrape: once Prometheus has recorded it, it says DOWN
    await eventually(async () => JSON.stringify((await instant(prom.url, panel)).map((s) => s.value)) === '[0]', 60_000);
  });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
