import { Writable } from 'node:stream';
import { trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../../common/errors';
import { createEnforcer, type Enforcer, type EnforcerDecision, type EnforcerIdentity } from '../../../enforcer/client/enforcer';
import { PolicyDeniedError } from '../../../enforcer/errors';
import { isDecisionId } from '../../../enforcer/policy/ids';
import { startOutageSwitch } from '../../../cli/demo/proxy';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { startOtlpSink, type OtlpSink } from '../../helpers/policy-otlp-sink';
import { ADMIN_TOKEN, issue, policyFile, putRollout } from '../../helpers/policy';

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
provider.register();
const tracer = trace.getTracer('enforcer-test');

const support = (instance: string, sponsorId = 'alice'): EnforcerIdentity => ({ sponsorId, agentInstanceId: instance, role: 'support' });
const user = (instance: string): EnforcerIdentity => ({ sponsorId: 'alice', agentInstanceId: instance, role: 'user' });

function captureLog() {
  const lines: string[] = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    }),
  );
  return { log, lines };
}

// The enforcer in this process; tokens from a real `custody up`, decisions from a real
// `custody policy-plane` that reports its decision log to a test OTLP receiver.
describe('enforcer against real token service and policy plane processes', () => {
  let sink: OtlpSink;
  let tokens: RunningCustody;
  let plane: RunningCustody;
  let url: string;
  const enforcers: Enforcer[] = [];
  const make = (o: Parameters<typeof createEnforcer>[0] = {}) => {
    const e = createEnforcer({ tokenUrl: tokens.url, policyUrl: plane.url, timeoutMs: 2000, ...o });
    enforcers.push(e);
    return e;
  };
  const setPercent = async (percent: number) => expect((await putRollout(plane.url, { percent, reason: 'test' })).status).toBe(200);

  beforeAll(async () => {
    sink = await startOtlpSink();
    tokens = await startCustody();
    url = tokens.url;
    plane = await startCustody({
      command: 'policy-plane',
      args: ['--token-url', tokens.url, '--policy', policyFile(), '--otlp-url', sink.url],
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    await setPercent(100);
  });
  afterAll(async () => {
    for (const e of enforcers) await e.close();
    await plane?.stop();
    await tokens?.stop();
    await sink?.close();
  });

  it('takes its settings from the CUSTODY_* environment and refuses bad values', () => {
    const e = createEnforcer({
      env: { CUSTODY_URL: 'http://127.0.0.1:1/', CUSTODY_POLICY_TIMEOUT_MS: '150', CUSTODY_DECISION_CACHE_TTL_S: '5', CUSTODY_TOKEN_URL: 'http://127.0.0.1:2' },
    });
    expect(e.settings).toMatchObject({ policyUrl: 'http://127.0.0.1:1', tokenUrl: 'http://127.0.0.1:2', timeoutMs: 150, cacheTtlS: 5, incidentCacheTtlS: null });
    void e.close();
    expect(createEnforcer({ env: {} }).settings).toMatchObject({ policyUrl: 'http://127.0.0.1:8080', timeoutMs: 200, cacheTtlS: 30 });
    expect(() => createEnforcer({ env: { CUSTODY_POLICY_TIMEOUT_MS: 'soon' } })).toThrow(ConfigError);
    expect(() => createEnforcer({ env: { CUSTODY_INCIDENT_CACHE_TTL_S: '999999' } })).toThrow(/CUSTODY_INCIDENT_CACHE_TTL_S/);
  });

  it('allows with the plane\'s decision id, and denies with a typed error', async () => {
    const e = make();
    const ok = await e.check({ tool: 'search', action: 'call', identity: support('e-1') });
    expect(ok).toMatchObject({ decision: 'allow', allowed: true, ruleId: 'allow-support-search', cohort: 'canary', enforced: true, cached: false, policyVersion: 'starter-1' });
    expect(isDecisionId(ok.policyDecisionId)).toBe(true);
    expect(ok.tokenJti).toMatch(/\S/);
    // the call's token, for the tool's own guard: the one the plane decided on
    expect(JSON.parse(Buffer.from(ok.token!.split('.')[1]!, 'base64url').toString()).jti).toBe(ok.tokenJti);
    expect(ok.latencyMs).toBeGreaterThan(0);
    expect(ok.error).toBeUndefined();

    const no = await e.check({ tool: 'billing', action: 'charge', identity: user('e-1u') });
    expect(no).toMatchObject({ decision: 'deny', allowed: false, ruleId: 'default-deny', enforced: true });
    expect(no.error).toBeInstanceOf(PolicyDeniedError);
    expect(no.token).toBeUndefined();
    expect(no.error).toMatchObject({ code: 'ERR_POLICY_DENIED', type: 'policy_denied', policyDecisionId: no.policyDecisionId, tool: 'billing', action: 'charge' });
  });

  it('caches allows for the TTL, per sponsor, instance, tool and action; never denies', async () => {
    const e = make({ cacheTtlS: 1 });
    const first = await e.check({ tool: 'search', action: 'call', identity: support('c-1') });
    const again = await e.check({ tool: 'search', action: 'call', identity: support('c-1') });
    expect(again).toMatchObject({ cached: true, allowed: true, policyDecisionId: first.policyDecisionId, token: first.token });
    for (const [tool, action, identity] of [
      ['search', 'lookup', support('c-1')],
      ['search', 'call', support('c-2')],
      ['search', 'call', support('c-1', 'bob')],
    ] as const) {
      const d = await e.check({ tool, action, identity });
      expect(d.cached).toBe(false);
      expect(d.policyDecisionId).not.toBe(first.policyDecisionId);
    }
    await new Promise((r) => setTimeout(r, 1100));
    const expired = await e.check({ tool: 'search', action: 'call', identity: support('c-1') });
    expect(expired.cached).toBe(false);
    expect(expired.policyDecisionId).not.toBe(first.policyDecisionId);

    const denies = [];
    for (let i = 0; i < 3; i++) denies.push(await e.check({ tool: 'file-store', action: 'read', identity: support('c-1') }));
    expect(denies.every((d) => d.decision === 'deny' && !d.cached)).toBe(true);
    expect(new Set(denies.map((d) => d.policyDecisionId)).size).toBe(3);
  });

  it('reuses a valid token for the same tool, but never for single-use tools, whose allows are not cached either', async () => {
    const e = make();
    const a = await e.check({ tool: 'search', action: 'call', identity: support('t-1') });
    const b = await e.check({ tool: 'search', action: 'lookup', identity: support('t-1') });
    expect(b.cached).toBe(false);
    expect(b.tokenJti).toBe(a.tokenJti);
    const refunds: EnforcerDecision[] = [];
    for (let i = 0; i < 3; i++) refunds.push(await e.check({ tool: 'billing', action: 'refund', identity: support('t-1') }));
    expect(refunds.every((d) => d.allowed && d.decision === 'allow' && !d.cached)).toBe(true);
    expect(new Set(refunds.map((d) => d.tokenJti)).size).toBe(3);
  });

  it('refuses a call without a sponsor or an instance before asking anyone', async () => {
    const e = make({ tokenUrl: 'http://127.0.0.1:9', policyUrl: 'http://127.0.0.1:9' });
    const d = await e.check({ tool: 'search', action: 'call', identity: { agentInstanceId: 'no-sponsor', role: 'support' } });
    expect(d).toMatchObject({ decision: 'deny', allowed: false, ruleId: 'sponsor-required', policyDecisionId: '', enforced: true });
    expect(d.error).toMatchObject({ code: 'ERR_POLICY_DENIED' });
    const n = await e.check({ tool: 'search', action: 'call', identity: { sponsorId: 'alice', agentInstanceId: '' } });
    expect(n).toMatchObject({ decision: 'deny', allowed: false, ruleId: 'instance-required' });
  });

  it('a token service refusal is a deny', async () => {
    const e = make();
    const d = await e.check({ tool: 'shell', action: 'exec', identity: support('ts-1') });
    expect(d).toMatchObject({ decision: 'deny', allowed: false, ruleId: 'token-refused' });
    expect(d.reason).toContain('tool_not_supported');
  });

  it('records the decision on the active span, and the plane\'s decision joins its trace', async () => {
    const e = make();
    exporter.reset();
    const d = await tracer.startActiveSpan('execute_tool search', async (span) => {
      const r = await e.check({ tool: 'search', action: 'call', identity: support('span-1') });
      span.end();
      return r;
    });
    const [span] = exporter.getFinishedSpans();
    expect(span!.attributes).toMatchObject({
      'custody.policy.decision': 'allow',
      'custody.policy_decision_id': d.policyDecisionId,
      'custody.policy.rule_id': 'allow-support-search',
      'custody.policy.cached': false,
      'custody.enforced': true,
      'custody.rollout.cohort': 'canary',
      'custody.token.jti': d.tokenJti,
    });
    expect(span!.attributes['custody.policy.latency_ms']).toBe(d.latencyMs);
    const logged = await eventually(async () => sink.spans.find((s) => s.attributes['custody.policy_decision_id'] === d.policyDecisionId));
    expect(logged.traceId).toBe(span!.spanContext().traceId);
    expect(logged.parentSpanId).toBe(span!.spanContext().spanId);
  });

  it('sub-agents exchange their delegation token; the decision names the parent', async () => {
    const parent = await issue(url, { tool: 'search', tools: ['search', 'billing'], sponsor_id: 'carol', agent_instance_id: 'parent-1', role: 'support' });
    const e = make();
    const d = await e.check({ tool: 'search', action: 'call', identity: { agentInstanceId: 'child-1', delegationToken: parent.token } });
    expect(d).toMatchObject({ decision: 'allow', allowed: true });
    const logged = await eventually(async () => sink.spans.find((s) => s.attributes['custody.policy_decision_id'] === d.policyDecisionId));
    expect(logged.attributes).toMatchObject({
      'custody.sponsor_id': 'carol',
      'custody.agent_instance_id': 'child-1',
      'custody.parent_agent_id': 'parent-1',
      'custody.role': 'support',
    });
    // the parent's tools bound the child: file-store is not among them
    const wider = await e.check({ tool: 'file-store', action: 'read', identity: { agentInstanceId: 'child-1', delegationToken: parent.token } });
    expect(wider).toMatchObject({ allowed: false, decision: 'deny', ruleId: 'token-refused' });
  });

  it('resolves framework tool names with the plane\'s tool_map', async () => {
    const e = make();
    expect(await e.resolveTool('refund_customer')).toEqual({ tool: 'billing', action: 'refund', mapped: true });
    expect(await e.resolveTool('billing.charge')).toEqual({ tool: 'billing', action: 'charge', mapped: false });
    expect(await e.resolveTool('search')).toEqual({ tool: 'search', action: 'call', mapped: false });
  });

  it('the incident switch lengthens the cache TTL, loudly, and never turns enforcement off', async () => {
    const { log, lines } = captureLog();
    const e = make({ cacheTtlS: 1, incidentCacheTtlS: 60, log });
    expect(lines.join('')).toContain('INCIDENT MODE');
    const first = await e.check({ tool: 'search', action: 'call', identity: support('inc-1') });
    await new Promise((r) => setTimeout(r, 1100));
    exporter.reset();
    const later = await tracer.startActiveSpan('execute_tool search', async (span) => {
      const r = await e.check({ tool: 'search', action: 'call', identity: support('inc-1') });
      span.end();
      return r;
    });
    expect(later).toMatchObject({ cached: true, incident: true, policyDecisionId: first.policyDecisionId });
    expect(exporter.getFinishedSpans()[0]!.attributes).toMatchObject({ 'custody.policy.incident_mode': true, 'custody.policy.cache_ttl_s': 60 });
    // denies are still asked for and enforced
    const no = await e.check({ tool: 'billing', action: 'charge', identity: user('inc-1u') });
    expect(no).toMatchObject({ allowed: false, decision: 'deny', cached: false, incident: true });
  });

  it('follows the plane\'s incident switch, read with the rollout', async () => {
    const { log, lines } = captureLog();
    const e = make({ cacheTtlS: 1, log });
    const first = await e.check({ tool: 'search', action: 'call', identity: support('inc-2') });
    expect((await putRollout(plane.url, { cache_ttl_s: 120, reason: 'plane maintenance' }, undefined, '/v1/rollout/incident')).status).toBe(200);
    try {
      expect(await e.refreshRollout()).toMatchObject({ percent: 100, incidentCacheTtlS: 120 });
      expect(lines.join('')).toContain('INCIDENT MODE');
      await new Promise((r) => setTimeout(r, 1100));
      expect(await e.check({ tool: 'search', action: 'call', identity: support('inc-2') })).toMatchObject({ cached: true, policyDecisionId: first.policyDecisionId });
    } finally {
      await putRollout(plane.url, { cache_ttl_s: null, reason: 'over' }, undefined, '/v1/rollout/incident');
    }
    await e.refreshRollout();
    expect(lines.join('')).toContain('incident mode over');
    expect((await e.check({ tool: 'search', action: 'call', identity: support('inc-2') })).cached).toBe(false);
  });

  it('baseline instances run at once; the real decision arrives in shadow', async () => {
    await setPercent(0);
    try {
      const e = make();
      expect(await e.refreshRollout()).toMatchObject({ percent: 0 });
      exporter.reset();
      let shadow: EnforcerDecision | undefined;
      const d = await tracer.startActiveSpan('execute_tool billing', async (span) => {
        const r = await e.check({ tool: 'billing', action: 'charge', identity: user('base-1') });
        shadow = await r.shadow;
        span.end();
        return r;
      });
      expect(d).toMatchObject({ decision: 'allow', allowed: true, enforced: false, cohort: 'baseline', cached: false, policyDecisionId: '' });
      // a baseline call gets no token unless its body may reach a guarded tool
      expect(d.token).toBeUndefined();
      const guarded = await e.check({ tool: 'search', action: 'call', identity: user('base-2'), withToken: true });
      expect(guarded).toMatchObject({ cohort: 'baseline', enforced: false });
      expect(guarded.token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      await guarded.shadow;
      expect(shadow).toMatchObject({ decision: 'deny', allowed: true, enforced: false, cohort: 'baseline', ruleId: 'default-deny' });
      expect(isDecisionId(shadow!.policyDecisionId)).toBe(true);
      // the span got the real decision once it arrived
      expect(exporter.getFinishedSpans()[0]!.attributes).toMatchObject({
        'custody.policy.decision': 'deny',
        'custody.policy_decision_id': shadow!.policyDecisionId,
        'custody.enforced': false,
        'custody.rollout.cohort': 'baseline',
      });
      const logged = await eventually(async () => sink.spans.find((s) => s.attributes['custody.policy_decision_id'] === shadow!.policyDecisionId));
      expect(logged.attributes).toMatchObject({ 'custody.enforced': false, 'custody.rollout.cohort': 'baseline' });
    } finally {
      await setPercent(100);
    }
  });

  it('a baseline instance that has read the rollout runs while the plane is cut off; one that has not fails closed', async () => {
    await setPercent(0);
    const outage = await startOutageSwitch({ host: '127.0.0.1', port: Number(new URL(plane.url).port) });
    try {
      const knows = make({ policyUrl: outage.url });
      expect(await knows.refreshRollout()).toMatchObject({ percent: 0 });
      const fresh = make({ policyUrl: outage.url });
      outage.cut();
      const shadow = await knows.check({ tool: 'search', action: 'call', identity: support('outage-baseline-1') });
      expect(shadow).toMatchObject({ allowed: true, enforced: false, cohort: 'baseline' });
      // the decision it could not get is recorded as an error, without blocking the call
      expect(await shadow.shadow).toMatchObject({ decision: 'error', allowed: true, enforced: false });
      // never having read the rollout, an instance does not know it is baseline: it enforces, and fails closed
      const unknown = await fresh.check({ tool: 'search', action: 'call', identity: support('outage-baseline-2') });
      expect(unknown).toMatchObject({ decision: 'error', allowed: false, enforced: true, cohort: 'canary' });
    } finally {
      outage.restore();
      await outage.close();
      await setPercent(100);
    }
  });
  it('tells which tool names a role may ever call; a delegated agent learns its role from its token', async () => {
    const e = make();
    const names = ['search.query', 'billing.refund', 'billing.read', 'file-store.delete', 'refund_customer'];
    expect(await e.mayEverCall(names, { sponsorId: 'alice', agentInstanceId: 'lister-1', role: 'support' })).toEqual([true, true, false, false, true]);
    expect(await e.mayEverCall(names, { sponsorId: 'alice', agentInstanceId: 'lister-2', role: 'admin' })).toEqual([false, true, true, true, true]);
    // no role given: the role is the one the parent's token carries through the exchange
    const parent = await issue(url, { tool: 'search', tools: ['search'], sponsor_id: 'alice', agent_instance_id: 'lister-parent', role: 'user' });
    expect(await e.mayEverCall(['search.query', 'billing.refund'], { agentInstanceId: 'lister-child', delegationToken: parent.token })).toEqual([true, false]);
    // the list is never a decision: the per-call check still decides (and refuses what the list left out)
    const d = await e.check({ tool: 'file-store', action: 'delete', identity: { sponsorId: 'alice', agentInstanceId: 'lister-1', role: 'support' } });
    expect(d).toMatchObject({ decision: 'deny', allowed: false });
    // the plane's endpoint names what was wrong with a bad role
    for (const q of ['role=', 'role=a&role=b']) {
      const res = await fetch(`${plane.url}/v1/policy/callable?${q}`);
      expect(res.status).toBe(400);
      expect(await res.text()).toMatch(/'role' must be one role name/);
    }
    // no plane: unknown, and the caller offers its list whole
    const off = make({ policyUrl: 'http://127.0.0.1:1', timeoutMs: 200 });
    expect(await off.mayEverCall(['search.query'], { sponsorId: 'alice', agentInstanceId: 'lister-3', role: 'support' }, { timeoutMs: 300 })).toBeUndefined();
  });
});
