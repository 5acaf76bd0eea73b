import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { startOtlpSink, type OtlpSink } from '../../helpers/policy-otlp-sink';
import { ADMIN_TOKEN, check, issue, policyFile, putRollout } from '../../helpers/policy';

// The decision log as the plane sends it over OTLP: `custody policy-plane` alone, reporting to a
// test receiver, tokens from a separate `custody up`.
function loggedPlane(env: Record<string, string>) {
  const started = { sink: undefined as unknown as OtlpSink, tokens: undefined as unknown as RunningCustody, plane: undefined as unknown as RunningCustody };
  beforeAll(async () => {
    started.sink = await startOtlpSink();
    started.tokens = await startCustody();
    started.plane = await startCustody({
      command: 'policy-plane',
      args: ['--token-url', started.tokens.url, '--policy', policyFile(), '--otlp-url', started.sink.url],
      env,
    });
  });
  afterAll(async () => {
    await started.plane?.stop();
    await started.tokens?.stop();
    await started.sink?.close();
  });
  return started;
}

describe('decision log', () => {
  const setup = loggedPlane({ CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN });
  let sink: OtlpSink;
  let tokens: RunningCustody;
  let plane: RunningCustody;
  beforeAll(() => void ({ sink, tokens, plane } = setup));

  it('reports every decision to the collector, joined to the caller\'s trace', async () => {
    const t = await issue(tokens.url, { tool: 'search', sponsor_id: 'bob', agent_instance_id: 'trace-1', role: 'support', purpose: 'ticket:42' });
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parent = '00f067aa0ba902b7';
    const r = await check(plane.url, { token: t.token, tool: 'search', action: 'call' }, { traceparent: `00-${traceId}-${parent}-01` });
    const id = r.body.policy_decision_id;
    const span = await eventually(async () => sink.spans.find((s) => s.attributes['custody.policy_decision_id'] === id));
    expect(span.name).toBe('custody.policy.decision');
    expect(span.traceId).toBe(traceId);
    expect(span.parentSpanId).toBe(parent);
    expect(span.attributes).toMatchObject({
      'custody.policy.decision': 'allow',
      'custody.policy.rule_id': 'allow-support-search',
      'custody.sponsor_id': 'bob',
      'custody.agent_instance_id': 'trace-1',
      'custody.role': 'support',
      'custody.tool_id': 'search',
      'custody.action': 'call',
      'custody.purpose': 'ticket:42',
      'custody.rollout.cohort': r.body.cohort,
      'custody.enforced': r.body.enforced,
      'custody.token.jti': t.claims.jti,
      'custody.policy.version': 'starter-1',
    });
    expect(span.attributes['custody.policy.reason']).toBe(r.body.reason);
    expect(typeof span.attributes['custody.policy.latency_ms']).toBe('number');

    // a denied bad token is logged too, without an identity
    const bad = await check(plane.url, { token: 'x.y.z', tool: 'billing', action: 'refund' });
    const logged = await eventually(async () => sink.spans.find((s) => s.attributes['custody.policy_decision_id'] === bad.body.policy_decision_id));
    expect(logged.attributes).toMatchObject({ 'custody.policy.decision': 'deny', 'custody.policy.rule_id': 'token-invalid', 'custody.tool_id': 'billing' });
    expect(logged.attributes['custody.sponsor_id']).toBeUndefined();
  });


  it('reports every rollout change and incident switch', async () => {
    expect((await putRollout(plane.url, { percent: 30, reason: 'healthy for 24h', actor: 'ops-alice' })).status).toBe(200);
    // the rollout in force at start is reported (signed) first; then each change
    const start = await eventually(async () => sink.spans.find((s) => s.name === 'custody.rollout.change' && s.attributes['custody.rollout.actor'] === 'policy-plane'));
    expect(start.attributes).toMatchObject({ 'custody.rollout.from_percent': 10, 'custody.rollout.to_percent': 10, 'custody.rollout.reason': 'in force at policy plane start' });
    const span = await eventually(async () => sink.spans.find((s) => s.name === 'custody.rollout.change' && s.attributes['custody.rollout.actor'] === 'ops-alice'));
    expect(String(span.attributes['custody.rollout.receipt'])).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(span.attributes).toMatchObject({
      'custody.rollout.from_percent': 10,
      'custody.rollout.to_percent': 30,
      'custody.rollout.reason': 'healthy for 24h',
      'custody.rollout.actor': 'ops-alice',
    });
    expect((await putRollout(plane.url, { cache_ttl_s: 600, reason: 'plane degraded' }, undefined, '/v1/rollout/incident')).status).toBe(200);
    const incident = await eventually(async () => sink.spans.find((s) => String(s.attributes['custody.rollout.reason']).includes('incident switch on')));
    expect(incident.attributes).toMatchObject({ 'custody.rollout.from_percent': 30, 'custody.rollout.to_percent': 30 });
    expect(String(incident.attributes['custody.rollout.reason'])).toContain('plane degraded');
  });
});

// No decision unrecorded: a plane whose collector does not acknowledge its decision log keeps the
// records (bounded), refuses to decide once the bound is reached, and delivers every record later.
const QUEUE_MAX = 30;

describe('the decision log when the collector is down', () => {
  const setup = loggedPlane({ CUSTODY_REPORT_QUEUE_MAX: String(QUEUE_MAX) });
  let sink: OtlpSink;
  let tokens: RunningCustody;
  let plane: RunningCustody;
  beforeAll(async () => {
    ({ sink, tokens, plane } = setup);
    // the plane's start record has arrived: from here on, only decisions are reported
    await eventually(async () => sink.spans.some((s) => s.name === 'custody.rollout.change'));
  });

  it('decides while records fit, answers 503 once they do not, and loses none', async () => {
    const { token } = await issue(tokens.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'durable-1' });
    sink.failing = true;
    const decided: string[] = [];
    let refused: { status: number; body: any } | undefined;
    for (let i = 0; i < QUEUE_MAX * 2 && !refused; i++) {
      const r = await check(plane.url, { token, tool: 'search', action: 'call' });
      if (r.status === 200) decided.push(r.body.policy_decision_id);
      else refused = r;
    }
    expect(refused, 'a full decision log refuses the check').toBeDefined();
    expect(refused!.status).toBe(503);
    expect(refused!.body.error.code).toBe('decision_log_full');
    expect(decided.length).toBeGreaterThan(0);
    expect(decided.length).toBeLessThanOrEqual(QUEUE_MAX);
    const before = sink.spans.filter((s) => s.name === 'custody.policy.decision').length;
    expect(before).toBe(0);

    // the collector is back: every decision made meanwhile arrives, and checks are decided again
    sink.failing = false;
    await eventually(async () => {
      const got = new Set(sink.spans.map((s) => s.attributes['custody.policy_decision_id']));
      return decided.every((id) => got.has(id));
    }, 60_000, 200);
    const after = await eventually(async () => {
      const r = await check(plane.url, { token, tool: 'search', action: 'call' });
      return r.status === 200 ? r : undefined;
    }, 30_000, 200);
    expect(after.body.decision).toBe('allow');
  });
});
