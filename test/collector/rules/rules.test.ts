import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import {
  evaluate,
  evaluateCohorts,
  evaluateRules,
  parseCohort,
  parseWindow,
  resolveRulesConfig,
  ruleWindow,
  RuleInputError,
  type RuleEvaluation,
} from '../../../collector/rules/evaluate';
import { THRESHOLDS } from '../../../common/names';
import { tempDir } from '../../helpers/custody';

const dir = tempDir('custody-rules-');
let store: Store;

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
});
afterAll(async () => {
  await store?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

// Every test gets its own hour of the past, so windows never overlap; mid-minute "now".
const BASE = Math.floor(Date.now() / 3_600_000) * 3_600_000 - 2 * 3_600_000;
let slot = 0;
function nextNow(): number {
  slot += 1;
  return BASE - slot * 3_600_000 + 30_000;
}

const hex = (n: number) => randomBytes(n).toString('hex');
const iso = (ms: number) => new Date(ms).toISOString();

interface Call {
  at: number;
  sponsor_id?: string;
  cohort?: string;
  decision?: string;
  policy_latency_ms?: number;
  policy_cached?: boolean;
  tool_id?: string;
}

async function insertCalls(calls: Call[]): Promise<void> {
  const values = calls.map((c) => ({
    timestamp: iso(c.at),
    end_timestamp: iso(c.at + 3),
    trace_id: hex(16),
    span_id: hex(8),
    sponsor_id: c.sponsor_id ?? 'alice',
    agent_instance_id: 'agent-1',
    tool_id: c.tool_id ?? 'billing',
    action: 'charge',
    decision: c.decision ?? 'allow',
    policy_latency_ms: c.policy_latency_ms ?? 20,
    policy_cached: c.policy_cached ?? false,
    enforced: true,
    cohort: c.cohort ?? 'canary',
    status: 'ok',
  }));
  await store.client.insert({ table: 'custody.audit_events', values, format: 'JSONEachRow' });
}

async function insertTokens(at: number, issued: number, refused: number): Promise<void> {
  const values = [
    ...Array.from({ length: issued }, () => ({ timestamp: iso(at), result: 'issued', kind: 'issue', jti: hex(8) })),
    ...Array.from({ length: refused }, () => ({ timestamp: iso(at), result: 'refused', kind: 'issue', code: 'sponsor_required' })),
  ];
  await store.client.insert({ table: 'custody.token_events', values, format: 'JSONEachRow' });
}

/** n calls spread over the 10 minutes before `now`, all inside a 15-minute window. */
function spread(now: number, n: number, make: (i: number) => Omit<Call, 'at'> = () => ({})): Call[] {
  return Array.from({ length: n }, (_, i) => ({ at: now - 10 * 60_000 + Math.floor((i * 600_000) / n), ...make(i) }));
}

const rule = (r: RuleEvaluation, name: string) => r.rules.find((x) => x.rule === name)!;

describe('rules from crafted rows', () => {
  it('missing_sponsor_ratio: exactly 0.1 % is not a breach, one more missing call is', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 1000, (i) => ({ sponsor_id: i === 500 ? '' : 'alice' })));
    let r = await evaluateRules(store, { now });
    expect(r.sample_size).toBe(1000);
    expect(rule(r, 'missing_sponsor_ratio')).toEqual({ rule: 'missing_sponsor_ratio', value: 0.001, threshold: 0.001, breached: false });
    expect(r.action).toBe('advance');

    await insertCalls([{ at: now - 60_000, sponsor_id: '' }]);
    r = await evaluateRules(store, { now });
    expect(r.sample_size).toBe(1001);
    expect(rule(r, 'missing_sponsor_ratio').value).toBe(2 / 1001);
    expect(rule(r, 'missing_sponsor_ratio').breached).toBe(true);
    expect(r.action).toBe('rollback');
  });

  it('policy_error_rate is errors over calls that asked the plane: cached calls are not in the denominator', async () => {
    const now = nextNow();
    // 1000 calls: 500 answered by the decision cache, 500 asked the plane, 5 of those errored
    await insertCalls(
      spread(now, 1000, (i) => (i % 2 === 0 ? { policy_cached: true } : { decision: i < 10 ? 'error' : 'allow', policy_latency_ms: 40 })),
    );
    let r = await evaluateRules(store, { now });
    expect(r.sample_size).toBe(1000);
    expect(rule(r, 'policy_error_rate')).toEqual({ rule: 'policy_error_rate', value: 0.01, threshold: 0.01, breached: false });
    expect(r.action).toBe('advance');

    await insertCalls([{ at: now - 120_000, decision: 'error', policy_latency_ms: 200 }]);
    r = await evaluateRules(store, { now });
    expect(rule(r, 'policy_error_rate').value).toBe(6 / 501);
    expect(rule(r, 'policy_error_rate').breached).toBe(true);
    expect(r.action).toBe('rollback');
  });

  it('an error flagged as cached still counts as a plane call', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 200, (i) => (i < 100 ? { policy_cached: true } : i < 102 ? { decision: 'error', policy_cached: true } : {})));
    const r = await evaluateRules(store, { now });
    // plane calls: 98 not cached + 2 errors; errors: 2
    expect(rule(r, 'policy_error_rate').value).toBe(2 / 100);
  });

  it('policy_latency_p95_ms: 300 ms is not a breach (but fires the 200 ms alert: hold), 301 ms is', async () => {
    // 100 plane calls: quantileTiming's p95 of 100 values is the 96th smallest
    const at300 = nextNow();
    await insertCalls(spread(at300, 100, (i) => ({ policy_latency_ms: i < 95 ? 100 : 300 })));
    let r = await evaluateRules(store, { now: at300 });
    expect(rule(r, 'policy_latency_p95_ms')).toEqual({ rule: 'policy_latency_p95_ms', value: 300, threshold: 300, breached: false });
    expect(r.alerts.find((a) => a.alert === 'policy_latency_p95_ms')).toMatchObject({ value: 300, threshold: 200, firing: true });
    expect(r.action).toBe('hold');

    const at301 = nextNow();
    await insertCalls(spread(at301, 100, (i) => ({ policy_latency_ms: i < 95 ? 100 : 301 })));
    r = await evaluateRules(store, { now: at301 });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 301, breached: true });
    expect(r.action).toBe('rollback');
  });

  it('p95 follows quantileTiming exactly: x[floor(0.95 n)] in ascending 0-based order up to ~5670 values', async () => {
    // sorted: 94 x 100, 1 x 300 (index 94), 5 x 301 (index 95..99): p95 = index 95 = 301
    const now = nextNow();
    await insertCalls(spread(now, 100, (i) => ({ policy_latency_ms: i < 94 ? 100 : i === 94 ? 300 : 301 })));
    const r = await evaluateRules(store, { now });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 301, breached: true });

    // 40 values: floor(0.95 * 40) = 38 -> the 39th smallest; 38 x 10 ms then 300, 900
    const small = nextNow();
    await insertCalls(spread(small, 40, (i) => ({ policy_latency_ms: i < 38 ? 10 : i === 38 ? 300 : 900 })));
    const s = await evaluateRules(store, { now: small, minSample: 40 });
    expect(rule(s, 'policy_latency_p95_ms')).toMatchObject({ value: 300, breached: false });
  });

  it('latencies are rounded up to whole ms: 300.2 ms is over 300', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 100, (i) => ({ policy_latency_ms: i < 95 ? 99.1 : 300.2 })));
    const r = await evaluateRules(store, { now });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 301, breached: true });
  });

  it('above ~5670 plane calls the p95 is the nearest rank: smallest value reaching ceil(0.95 n)', async () => {
    // 10000 values: 9500 x 300 then 500 x 301 -> rank 9500 is 300
    const edge = nextNow();
    await insertCalls(spread(edge, 10_000, (i) => ({ policy_latency_ms: i < 9500 ? 300 : 301 })));
    let r = await evaluateRules(store, { now: edge });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 300, breached: false });

    const over = nextNow();
    await insertCalls(spread(over, 10_000, (i) => ({ policy_latency_ms: i < 9499 ? 300 : 301 })));
    r = await evaluateRules(store, { now: over });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 301, breached: true });
  });

  it('cached decisions are left out of the latency p95', async () => {
    const now = nextNow();
    // 200 calls: 100 cached with a made-up high latency, 100 plane calls at 50 ms
    await insertCalls(spread(now, 200, (i) => (i % 2 ? { policy_cached: true, policy_latency_ms: 5000 } : { policy_latency_ms: 50 })));
    const r = await evaluateRules(store, { now });
    expect(rule(r, 'policy_latency_p95_ms').value).toBe(50);
  });

  it('below the minimum sample the action is insufficient_data and nothing is breached', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 99, () => ({ sponsor_id: '', decision: 'error', policy_latency_ms: 900 })));
    let r = await evaluateRules(store, { now });
    expect(r.action).toBe('insufficient_data');
    expect(r.sample_size).toBe(99);
    expect(r.rules.map((x) => [x.rule, x.value, x.breached])).toEqual([
      ['missing_sponsor_ratio', 1, false],
      ['policy_error_rate', 1, false],
      ['policy_latency_p95_ms', 900, false],
    ]);
    r = await evaluateRules(store, { now, minSample: 99 });
    expect(r.action).toBe('rollback');
    expect(r.rules.every((x) => x.breached)).toBe(true);
  });

  it('an empty window has null values and insufficient_data', async () => {
    const now = nextNow();
    const r = await evaluateRules(store, { now });
    expect(r).toMatchObject({ action: 'insufficient_data', sample_size: 0, window_s: 900 });
    expect(r.rules.map((x) => x.value)).toEqual([null, null, null]);
  });

  it('keeps cohorts apart', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 300, (i) => ({ cohort: 'canary', sponsor_id: i < 30 ? '' : 'bob' })));
    await insertCalls(spread(now, 500, () => ({ cohort: 'baseline', policy_latency_ms: 12 })));
    await insertCalls(spread(now, 50, () => ({ cohort: '', sponsor_id: '' })));
    const [canary, baseline] = await evaluateCohorts(store, ['canary', 'baseline'], { now });
    expect(canary).toMatchObject({ cohort: 'canary', action: 'rollback', sample_size: 300 });
    expect(rule(canary!, 'missing_sponsor_ratio').value).toBe(0.1);
    expect(baseline).toMatchObject({ cohort: 'baseline', action: 'advance', sample_size: 500 });
    expect(rule(baseline!, 'missing_sponsor_ratio').value).toBe(0);
    expect(rule(baseline!, 'policy_latency_p95_ms').value).toBe(12);
    expect((await evaluateRules(store, { now, cohort: 'baseline' })).action).toBe('advance');
  });

  it('aligns the window to whole minutes: the current minute and the ones before it', async () => {
    const now = nextNow(); // hh:mm:30
    const minute = Math.floor(now / 60_000) * 60_000;
    const start = minute - 14 * 60_000;
    await insertCalls([
      { at: start - 1 }, // last ms before the window
      { at: start }, // first ms of the window
      { at: minute + 59_999 }, // end of the current minute: in
      { at: minute + 60_000 }, // next minute: out
      ...Array.from({ length: 10 }, (_, i) => ({ at: start + i * 60_000 + 1234 })),
    ]);
    const r = await evaluateRules(store, { now, minSample: 1 });
    expect(r.window_s).toBe(900);
    expect(r.window).toEqual({ start: iso(start), end: iso(minute + 60_000) });
    expect(r.sample_size).toBe(12);
    // a 90 s window is two minutes: this one and the one before
    const w = await evaluateRules(store, { now, windowS: 90, minSample: 1 });
    expect(w.window_s).toBe(120);
    expect(w.sample_size).toBe(1);
    // a window starting one minute earlier takes in the row before
    expect((await evaluateRules(store, { now, windowS: 960, minSample: 1 })).sample_size).toBe(13);
  });

  it('token issuance failure ratio: 0.5 % does not fire, more holds the rollout', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 200));
    await insertTokens(now - 5 * 60_000, 995, 5);
    let r = await evaluateRules(store, { now });
    expect(r.alerts.find((a) => a.alert === 'token_issue_failure_ratio')).toEqual({
      alert: 'token_issue_failure_ratio',
      value: 0.005,
      threshold: 0.005,
      firing: false,
    });
    expect(r.action).toBe('advance');
    await insertTokens(now - 4 * 60_000, 0, 1);
    r = await evaluateRules(store, { now });
    expect(r.alerts.find((a) => a.alert === 'token_issue_failure_ratio')).toMatchObject({ value: 6 / 1001, firing: true });
    expect(r.action).toBe('hold');
  });
});

describe('rule inputs and pure evaluation', () => {
  it('parses windows and cohorts, naming the parameter when wrong', () => {
    expect(parseWindow('15m')).toBe(900);
    expect(parseWindow('1h')).toBe(3600);
    expect(parseWindow('900s')).toBe(900);
    expect(parseWindow('900')).toBe(900);
    expect(parseWindow('30s')).toBe(30);
    expect(ruleWindow(parseWindow('30s'), Date.now()).windowS).toBe(60);
    for (const bad of ['', 'abc', '0m', '91d', '-5m']) {
      expect(() => parseWindow(bad)).toThrow(RuleInputError);
      try {
        parseWindow(bad);
      } catch (err) {
        expect((err as RuleInputError).parameter).toBe('window');
      }
    }
    expect(parseCohort('baseline')).toBe('baseline');
    expect(() => parseCohort('everyone')).toThrow(/cohort 'everyone' must be one of canary, baseline/);
  });

  it('reads the minimum sample from the environment and refuses a bad one', () => {
    expect(resolveRulesConfig({}).minSample).toBe(100);
    expect(resolveRulesConfig({ CUSTODY_RULE_MIN_SAMPLE: '25' }).minSample).toBe(25);
    expect(() => resolveRulesConfig({ CUSTODY_RULE_MIN_SAMPLE: 'lots' })).toThrow(/CUSTODY_RULE_MIN_SAMPLE 'lots'/);
  });

  it('ruleWindow covers ceil(W/60) minute buckets ending with the current one', () => {
    const now = Date.UTC(2030, 0, 1, 12, 0, 45);
    expect(ruleWindow(900, now)).toEqual({ windowS: 900, startS: Date.UTC(2030, 0, 1, 11, 46) / 1000, endS: Date.UTC(2030, 0, 1, 12, 1) / 1000 });
    expect(ruleWindow(61, now).windowS).toBe(120);
  });

  it('evaluate: a plane-free window has no error rate or latency, and enough calls advance', () => {
    const r = evaluate(
      { calls: 500, missingSponsor: 0, policyErrors: 0, policyChecks: 0, latencyP95Ms: null },
      { issued: 0, refused: 0 },
      { minSample: 100, thresholds: THRESHOLDS },
    );
    expect(r.action).toBe('advance');
    expect(r.rules.map((x) => x.value)).toEqual([0, null, null]);
    expect(r.alerts.every((a) => !a.firing)).toBe(true);
  });
});
