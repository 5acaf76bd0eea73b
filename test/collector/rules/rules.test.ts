import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import {
  evaluate,
  evaluateCohorts,
  evaluateRules,
  parseCohort,
  parseThreshold,
  parseWindow,
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
  agent_instance_id?: string;
  policy_decision_id?: string;
}

/** A decision in the plane's own log. */
interface PlaneDecision {
  at: number;
  decision?: string;
  latency_ms?: number;
  cohort?: string;
  agent_instance_id?: string;
}

async function insertDecisions(rows: PlaneDecision[]): Promise<void> {
  const values = rows.map((d) => ({
    timestamp: iso(d.at),
    policy_decision_id: hex(8),
    decision: d.decision ?? 'allow',
    sponsor_id: 'alice',
    agent_instance_id: d.agent_instance_id ?? 'agent-1',
    tool_id: 'billing',
    action: 'charge',
    cohort: d.cohort ?? 'canary',
    enforced: (d.cohort ?? 'canary') === 'canary',
    latency_ms: d.latency_ms ?? 20,
  }));
  await store.client.insert({ table: 'custody.policy_decisions', values, format: 'JSONEachRow' });
}

/** n decisions spread over the 10 minutes before `now`. */
function spreadDecisions(now: number, n: number, make: (i: number) => Omit<PlaneDecision, 'at'> = () => ({})): PlaneDecision[] {
  return Array.from({ length: n }, (_, i) => ({ at: now - 10 * 60_000 + Math.floor((i * 600_000) / n), ...make(i) }));
}

async function insertCalls(calls: Call[]): Promise<void> {
  const values = calls.map((c) => ({
    timestamp: iso(c.at),
    end_timestamp: iso(c.at + 3),
    trace_id: hex(16),
    span_id: hex(8),
    sponsor_id: c.sponsor_id ?? 'alice',
    agent_instance_id: c.agent_instance_id ?? 'agent-1',
    tool_id: c.tool_id ?? 'billing',
    action: 'charge',
    decision: c.decision ?? 'allow',
    policy_decision_id: c.policy_decision_id ?? (c.decision === 'error' ? '' : hex(8)),
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


describe('rules on stored rows: a small canary decided soundly', () => {
  it('20 canary calls, 6 failed closed on a policy timeout: rollback', async () => {
    const now = nextNow();
    // the plane answered all 20; 6 answers came after 450 ms, too late for the agent's 200 ms
    await insertDecisions(spreadDecisions(now, 20, (i) => ({ latency_ms: i < 6 ? 450 : 35 })));
    await insertCalls(spread(now, 20, (i) => (i < 6 ? { decision: 'error', policy_latency_ms: 201 } : { policy_latency_ms: 36 })));
    const r = await evaluateRules(store, { now });
    expect(r.action).toBe('rollback');
    expect(r.sample_size).toBe(20);
    expect(r.inputs).toMatchObject({ plane_decisions: 20, plane_errors: 0, agent_failures: 6, agent_failures_counted: 6, instances: 1 });
    const errors = rule(r, 'policy_error_rate');
    expect(errors).toMatchObject({ verdict: 'breached', breached: true, value: 6 / 26, sample: 26 });
    expect(errors.lower!).toBeGreaterThan(0.01);
    // the plane's own clock saw 6 of 20 answers above 300 ms; the 6 timeouts count at >= 200 ms
    const p95 = rule(r, 'policy_latency_p95_ms');
    expect(p95).toMatchObject({ verdict: 'breached', value: 450, lower: 450, sample: 26 });
  });

  it('0 errors in 20 calls is not yet healthy: insufficient data, with the calls that would settle it', async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 20));
    await insertCalls(spread(now, 20));
    const r = await evaluateRules(store, { now });
    expect(r.action).toBe('insufficient_data');
    expect(rule(r, 'policy_error_rate')).toMatchObject({ verdict: 'undecided', value: 0, more_calls: 268 - 20 });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ verdict: 'undecided', value: 20, upper: null, more_calls: 59 - 20 });
    // missing sponsors need the most calls: 0 in n is healthy from n = 2703 at 0.1 %
    expect(rule(r, 'missing_sponsor_ratio')).toMatchObject({ verdict: 'undecided', scope: 'fleet', more_calls: 2703 - 20 });
    expect(r.more_calls).toBe(2703 - 20);
  });

  it('a healthy canary advances once every rule is settled', async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 3000, () => ({ latency_ms: 30 })));
    await insertCalls(spread(now, 3000));
    const r = await evaluateRules(store, { now });
    expect(r.rules.map((x) => x.verdict)).toEqual(['healthy', 'healthy', 'healthy']);
    expect(r).toMatchObject({ action: 'advance', more_calls: 0 });
  });

  it('missing_sponsor_ratio: a rate at the threshold never settles; well above it rolls back', async () => {
    const now = nextNow();
    await insertCalls(spread(now, 1000, (i) => ({ sponsor_id: i === 500 ? '' : 'alice' })));
    let r = await evaluateRules(store, { now });
    expect(rule(r, 'missing_sponsor_ratio')).toMatchObject({ value: 0.001, verdict: 'undecided', breached: false, more_calls: null });
    expect(r.action).toBe('insufficient_data');
    await insertCalls(spread(now, 9, () => ({ sponsor_id: '' })));
    r = await evaluateRules(store, { now });
    expect(rule(r, 'missing_sponsor_ratio')).toMatchObject({ value: 10 / 1009, verdict: 'breached' });
    expect(r.action).toBe('rollback');
  });

  it('an empty window has null values and insufficient_data', async () => {
    const now = nextNow();
    const r = await evaluateRules(store, { now });
    expect(r).toMatchObject({ action: 'insufficient_data', sample_size: 0, window_s: 900 });
    expect(r.rules.map((x) => x.value)).toEqual([null, null, null]);
  });
});

describe('trusted inputs', () => {
  it("plane errors and latency come from the plane's log, not from what agents write on their spans", async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 300, () => ({ latency_ms: 25 })));
    // an agent claims plane-backed errors and 5 s latencies on its own spans
    await insertCalls(spread(now, 300, () => ({ decision: 'error', policy_decision_id: hex(8), policy_latency_ms: 5000 })));
    const r = await evaluateRules(store, { now });
    expect(rule(r, 'policy_error_rate')).toMatchObject({ value: 0, verdict: 'healthy' });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 25, verdict: 'healthy' });
    expect(r.inputs.agent_failures).toBe(0);
  });

  it("with two or more instances, one instance's failure reports cannot roll back on their own", async () => {
    const now = nextNow();
    // the plane served two instances without a fault; a third floods failures nobody else sees
    await insertDecisions(spreadDecisions(now, 400, (i) => ({ agent_instance_id: i % 2 ? 'agent-a' : 'agent-b', latency_ms: 30 })));
    await insertCalls(spread(now, 500, () => ({ agent_instance_id: 'agent-forger', decision: 'error', policy_latency_ms: 60_000 })));
    let r = await evaluateRules(store, { now });
    expect(r.inputs).toMatchObject({ instances: 3, agent_failures: 500, agent_failures_counted: 0, excluded_instance: 'agent-forger' });
    expect(rule(r, 'policy_error_rate')).toMatchObject({ value: 0, breached: false });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 30, breached: false });
    expect(r.action).not.toBe('rollback');

    // a second instance seeing failures too is evidence: both count but the worst
    await insertCalls(spread(now, 30, () => ({ agent_instance_id: 'agent-a', decision: 'error', policy_latency_ms: 202 })));
    r = await evaluateRules(store, { now });
    expect(r.inputs).toMatchObject({ agent_failures: 530, agent_failures_counted: 30, excluded_instance: 'agent-forger' });
    expect(rule(r, 'policy_error_rate')).toMatchObject({ value: 30 / 430, verdict: 'breached' });
    expect(r.action).toBe('rollback');
  });

  it('a cohort of one instance: its reports are all there is, and count', async () => {
    const now = nextNow();
    // the plane was unreachable: nothing in its log, 12 failures from the one agent
    await insertCalls(spread(now, 12, () => ({ decision: 'error', policy_latency_ms: 3 })));
    const r = await evaluateRules(store, { now });
    expect(r.inputs).toMatchObject({ instances: 1, plane_decisions: 0, agent_failures_counted: 12, excluded_instance: null });
    expect(rule(r, 'policy_error_rate')).toMatchObject({ value: 1, verdict: 'breached' });
    // an unanswered call counts at no less than the 200 ms timeout
    expect(rule(r, 'policy_latency_p95_ms').value).toBe(200);
    expect(r.action).toBe('rollback');
  });

  it("p95: the plane's server-side latency can fire the rule; 300 ms itself is not above 300", async () => {
    const at300 = nextNow();
    await insertDecisions(spreadDecisions(at300, 100, (i) => ({ latency_ms: i < 80 ? 100 : 300 })));
    let r = await evaluateRules(store, { now: at300 });
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 300, breached: false, verdict: 'healthy' });
    expect(r.alerts.find((a) => a.alert === 'policy_latency_p95_ms')).toMatchObject({ value: 300, threshold: 200, firing: true });

    const over = nextNow();
    await insertDecisions(spreadDecisions(over, 100, (i) => ({ latency_ms: i < 80 ? 100 : 300.2 })));
    r = await evaluateRules(store, { now: over });
    // rounded up to whole ms: 300.2 is 301
    expect(rule(r, 'policy_latency_p95_ms')).toMatchObject({ value: 301, breached: true });
  });
});

describe('the whole fleet', () => {
  it("a stock-SDK agent's calls without sponsor land in the unmanaged cohort and count fleet-wide", async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 300));
    await insertCalls(spread(now, 300, () => ({ cohort: 'canary' })));
    await insertCalls(spread(now, 200, () => ({ cohort: 'baseline' })));
    await insertCalls(spread(now, 156, () => ({ cohort: '', sponsor_id: '', agent_instance_id: 'py-agent', decision: '', policy_decision_id: '' })));
    const [canary, baseline, unmanaged] = await evaluateCohorts(store, ['canary', 'baseline', 'unmanaged'], { now });
    const expected = { canary: { calls: 300, missing_sponsor: 0 }, baseline: { calls: 200, missing_sponsor: 0 }, unmanaged: { calls: 156, missing_sponsor: 156 } };
    for (const e of [canary!, baseline!, unmanaged!]) {
      expect(e.by_cohort).toEqual(expected);
      expect(rule(e, 'missing_sponsor_ratio')).toMatchObject({ scope: 'fleet', value: 156 / 656, verdict: 'breached', sample: 656 });
      expect(e.action).toBe('rollback');
    }
    expect(unmanaged).toMatchObject({ cohort: 'unmanaged', sample_size: 156 });
    expect(rule(unmanaged!, 'policy_error_rate').value).toBeNull();
  });

  it('keeps plane-call rules per cohort', async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 300, (i) => ({ cohort: 'canary', decision: i < 30 ? 'error' : 'allow' })));
    await insertDecisions(spreadDecisions(now, 500, () => ({ cohort: 'baseline', latency_ms: 12 })));
    const [canary, baseline] = await evaluateCohorts(store, ['canary', 'baseline'], { now });
    expect(rule(canary!, 'policy_error_rate')).toMatchObject({ value: 0.1, breached: true });
    expect(rule(baseline!, 'policy_error_rate')).toMatchObject({ value: 0, verdict: 'healthy' });
    expect(rule(baseline!, 'policy_latency_p95_ms').value).toBe(12);
  });
});

describe('windows and alerts', () => {
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
    const r = await evaluateRules(store, { now });
    expect(r.window_s).toBe(900);
    expect(r.window).toEqual({ start: iso(start), end: iso(minute + 60_000) });
    expect(r.sample_size).toBe(12);
    const w = await evaluateRules(store, { now, windowS: 90 });
    expect(w.window_s).toBe(120);
    expect(w.sample_size).toBe(1);
    expect((await evaluateRules(store, { now, windowS: 960 })).sample_size).toBe(13);
  });

  it('token issuance failures hold the rollout when their lower bound is above 0.5 %', async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 3000));
    await insertCalls(spread(now, 3000));
    await insertTokens(now - 5 * 60_000, 995, 5);
    let r = await evaluateRules(store, { now });
    expect(r.alerts.find((a) => a.alert === 'token_issue_failure_ratio')).toEqual({ alert: 'token_issue_failure_ratio', value: 0.005, threshold: 0.005, firing: false });
    expect(r.action).toBe('advance');
    await insertTokens(now - 4 * 60_000, 0, 20);
    r = await evaluateRules(store, { now });
    expect(r.alerts.find((a) => a.alert === 'token_issue_failure_ratio')).toMatchObject({ value: 25 / 1020, firing: true });
    expect(r.action).toBe('hold');
  });

  it('thresholds can be overridden per evaluation', async () => {
    const now = nextNow();
    await insertDecisions(spreadDecisions(now, 300, (i) => ({ decision: i < 9 ? 'error' : 'allow' })));
    const strict = await evaluateRules(store, { now });
    expect(rule(strict, 'policy_error_rate').breached).toBe(true);
    const lenient = await evaluateRules(store, { now, thresholds: { ...THRESHOLDS, policy_error_rate: 0.1 } });
    expect(rule(lenient, 'policy_error_rate')).toMatchObject({ threshold: 0.1, verdict: 'healthy' });
  });
});

describe('rule inputs and pure evaluation', () => {
  it('parses windows, cohorts and thresholds, naming the parameter when wrong', () => {
    expect(parseWindow('15m')).toBe(900);
    expect(parseWindow('1h')).toBe(3600);
    expect(parseWindow('900s')).toBe(900);
    expect(ruleWindow(parseWindow('30s'), Date.now()).windowS).toBe(60);
    for (const bad of ['', 'abc', '0m', '91d', '-5m']) {
      expect(() => parseWindow(bad)).toThrow(RuleInputError);
    }
    expect(parseCohort('unmanaged')).toBe('unmanaged');
    expect(() => parseCohort('everyone')).toThrow(/cohort 'everyone' must be one of canary, baseline, unmanaged/);
    expect(parseThreshold('policy_error_rate', '0.02')).toBe(0.02);
    expect(parseThreshold('policy_latency_p95_ms', '250')).toBe(250);
    for (const [r, bad] of [['policy_error_rate', '1'], ['policy_error_rate', '0'], ['policy_error_rate', '-0.1'], ['policy_error_rate', 'NaN'], ['missing_sponsor_ratio', '5%'], ['policy_latency_p95_ms', '0'], ['policy_latency_p95_ms', '2.5'], ['policy_latency_p95_ms', '1e9']] as const) {
      expect(() => parseThreshold(r, bad)).toThrow(RuleInputError);
    }
    expect(() => parseThreshold('token_issue_failure_ratio', '0.1')).toThrow(/unknown rule/);
  });

  it('ruleWindow covers ceil(W/60) minute buckets ending with the current one', () => {
    const now = Date.UTC(2030, 0, 1, 12, 0, 45);
    expect(ruleWindow(900, now)).toEqual({ windowS: 900, startS: Date.UTC(2030, 0, 1, 11, 46) / 1000, endS: Date.UTC(2030, 0, 1, 12, 1) / 1000 });
    expect(ruleWindow(61, now).windowS).toBe(120);
  });

  it('evaluate: without plane calls the plane rules stay undecided', () => {
    const r = evaluate(
      { calls: new Map([['canary', { calls: 5000, missingSponsor: 0 }]]), plane: new Map(), tokens: { issued: 0, refused: 0 } },
      'canary',
      THRESHOLDS,
    );
    expect(r.rules.map((x) => [x.value, x.verdict])).toEqual([[0, 'healthy'], [null, 'undecided'], [null, 'undecided']]);
    expect(r.action).toBe('insufficient_data');
  });
});
