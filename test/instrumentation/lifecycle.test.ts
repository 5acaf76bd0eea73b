import { context, propagation, trace, SpanStatusCode } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AuditChain, CHAIN_GENESIS } from '../../common/audit-chain';
import { canonicalJson, hashValue } from '../../common/canonical';
import { ATTR, BAGGAGE } from '../../common/names';
import { PolicyDeniedError, PolicyUnavailableError } from '../../enforcer/errors';
import { configureRuntime } from '../../instrumentation/runtime';
import { AgentScope, setRootScope } from '../../instrumentation/scope';
import { errorType, toolCall, wrapTool } from '../../instrumentation/tool-call';
import type { EnforcerCheck, EnforcerLike, EnforcerVerdict } from '../../instrumentation/types';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('test');

const allow = (extra: Partial<EnforcerVerdict> = {}): EnforcerVerdict => ({
  decision: 'allow', allowed: true, policyDecisionId: 'dec-allow', ruleId: 'allow-support-billing', reason: 'allowed',
  cohort: 'canary', enforced: true, cached: false, latencyMs: 1.5, tokenJti: 'jti-1', ...extra,
});

/** An enforcer that answers from a function and remembers what it was asked. */
function scripted(answer: (req: EnforcerCheck) => EnforcerVerdict | Promise<EnforcerVerdict>): EnforcerLike & { asked: EnforcerCheck[] } {
  const asked: EnforcerCheck[] = [];
  return { asked, check: async (req) => { asked.push(req); return answer(req); } };
}

const spans = (): ReadableSpan[] => exporter.getFinishedSpans();
const only = (): ReadableSpan => {
  expect(spans()).toHaveLength(1);
  return spans()[0]!;
};

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }));
});

beforeEach(() => {
  exporter.reset();
  setRootScope(new AgentScope({ agentInstanceId: 'inst-1', sponsorId: 'alice', role: 'support', agentName: 'support-bot' }));
  configureRuntime({ tracer, toolMap: { refund_customer: { tool: 'billing', action: 'refund' } }, captureContent: false, rootContext: undefined });
});
afterEach(() => configureRuntime({ enforcer: null }));

describe('an allowed call', () => {
  it('asks the enforcer before the body, runs it, and records one execute_tool span with the contract attributes', async () => {
    const order: string[] = [];
    const enforcer = scripted(() => {
      order.push('check');
      return allow();
    });
    configureRuntime({ enforcer });
    const result = await toolCall('billing.refund', { amount: 10, currency: 'EUR' }, async (args) => {
      order.push('body');
      return { refunded: args.amount };
    }, { purpose: 'ticket 42', toolCallId: 'call-7' });

    expect(result).toEqual({ refunded: 10 });
    expect(order).toEqual(['check', 'body']);
    expect(enforcer.asked).toEqual([
      {
        tool: 'billing',
        action: 'refund',
        purpose: 'ticket 42',
        identity: expect.objectContaining({ agentInstanceId: 'inst-1', sponsorId: 'alice', role: 'support' }),
        // when the call began waiting: the enforcer's budget counts from there
        startedAt: expect.any(Number),
        // the enforcer sends the plane only the fields the tool discloses
        args: { amount: 10, currency: 'EUR' },
      },
    ]);
    const span = only();
    expect(span.name).toBe('execute_tool billing.refund');
    expect(span.status.code).toBe(SpanStatusCode.OK);
    expect(span.attributes).toMatchObject({
      [ATTR.GEN_AI_OPERATION_NAME]: 'execute_tool',
      [ATTR.GEN_AI_TOOL_NAME]: 'billing.refund',
      [ATTR.GEN_AI_TOOL_CALL_ID]: 'call-7',
      [ATTR.GEN_AI_AGENT_ID]: 'inst-1',
      [ATTR.GEN_AI_AGENT_NAME]: 'support-bot',
      [ATTR.SPONSOR_ID]: 'alice',
      [ATTR.AGENT_INSTANCE_ID]: 'inst-1',
      [ATTR.ROLE]: 'support',
      [ATTR.TOOL_ID]: 'billing',
      [ATTR.ACTION]: 'refund',
      [ATTR.PURPOSE]: 'ticket 42',
      [ATTR.REQUEST_HASH]: hashValue({ currency: 'EUR', amount: 10 }),
      [ATTR.RESPONSE_HASH]: hashValue({ refunded: 10 }),
      [ATTR.POLICY_DECISION_ID]: 'dec-allow',
      [ATTR.POLICY_DECISION]: 'allow',
      [ATTR.POLICY_RULE_ID]: 'allow-support-billing',
      [ATTR.POLICY_LATENCY_MS]: 1.5,
      [ATTR.POLICY_CACHED]: false,
      [ATTR.ENFORCED]: true,
      [ATTR.ROLLOUT_COHORT]: 'canary',
      [ATTR.TOKEN_JTI]: 'jti-1',
      [ATTR.AUDIT_SEQ]: 1,
      [ATTR.AUDIT_PREV_HASH]: CHAIN_GENESIS,
    });
    expect(span.attributes[ATTR.PARENT_AGENT_ID]).toBeUndefined();
    expect(span.attributes[ATTR.REQUEST_CONTENT]).toBeUndefined();
  });

  it('numbers calls per agent instance with the hash of the previous record, as the verifier recomputes it', async () => {
    configureRuntime({ enforcer: scripted(() => allow()) });
    await toolCall('search.query', { q: 'a' }, () => 'one');
    await toolCall('search.query', { q: 'b' }, () => 'two');
    const [a, b] = spans();
    const chain = new AuditChain();
    const record = (s: ReadableSpan, response: string) => ({
      agent_instance_id: 'inst-1', trace_id: s.spanContext().traceId, span_id: s.spanContext().spanId, sponsor_id: 'alice',
      parent_agent_id: '', tool_id: 'search', action: 'query', policy_decision_id: 'dec-allow',
      request_hash: String(s.attributes[ATTR.REQUEST_HASH]), response_hash: hashValue(response), status: 'ok',
    });
    const first = chain.next(record(a!, 'one'));
    const second = chain.next(record(b!, 'two'));
    expect(a!.attributes[ATTR.AUDIT_SEQ]).toBe(1);
    expect(b!.attributes[ATTR.AUDIT_SEQ]).toBe(2);
    expect(b!.attributes[ATTR.AUDIT_PREV_HASH]).toBe(first.hash);
    expect(second.prevHash).toBe(first.hash);
  });

  it('runs the body inside the span, with the custody baggage, so nested work joins the trace', async () => {
    configureRuntime({ enforcer: scripted(() => allow()) });
    let inner: { traceId: string; parent: string | undefined; sponsor?: string; instance?: string } | undefined;
    await toolCall('search.query', {}, () => {
      const child = tracer.startSpan('inner');
      const bag = propagation.getBaggage(context.active());
      inner = {
        traceId: child.spanContext().traceId,
        parent: (child as unknown as ReadableSpan).parentSpanContext?.spanId,
        sponsor: bag?.getEntry(BAGGAGE.SPONSOR_ID)?.value,
        instance: bag?.getEntry(BAGGAGE.AGENT_INSTANCE_ID)?.value,
      };
      child.end();
    });
    const tool = spans().find((s) => s.name === 'execute_tool search.query')!;
    expect(inner).toEqual({ traceId: tool.spanContext().traceId, parent: tool.spanContext().spanId, sponsor: 'alice', instance: 'inst-1' });
  });

  it('maps names through the tool map, and an unmapped name is still checked as its own tool with action call', async () => {
    const enforcer = scripted(() => allow());
    configureRuntime({ enforcer });
    await toolCall('refund_customer', { id: 1 }, () => 1);
    await toolCall('weather', {}, () => 2);
    await toolCall('lookup', {}, () => 3, { tool: 'billing', action: 'read' });
    expect(enforcer.asked.map((r) => `${r.tool}/${r.action}`)).toEqual(['billing/refund', 'weather/call', 'billing/read']);
    expect(spans().map((s) => s.name)).toEqual(['execute_tool refund_customer', 'execute_tool weather', 'execute_tool lookup']);
  });

  it('uses the enforcer’s resolver (the plane’s tool_map) for names the local map does not have', async () => {
    const enforcer = { ...scripted(() => allow()), resolveTool: async (name: string) => (name === 'lookup_invoice' ? { tool: 'billing', action: 'read' } : { tool: name, action: 'call' }) };
    configureRuntime({ enforcer });
    await toolCall('lookup_invoice', {}, () => 1);
    expect(enforcer.asked[0]).toMatchObject({ tool: 'billing', action: 'read' });
  });

  it('captures content only when asked to', async () => {
    configureRuntime({ enforcer: scripted(() => allow()), captureContent: true });
    await toolCall('search.query', { q: 'x', a: 1 }, () => ({ hits: [1] }));
    expect(only().attributes).toMatchObject({ [ATTR.REQUEST_CONTENT]: canonicalJson({ q: 'x', a: 1 }), [ATTR.RESPONSE_CONTENT]: '{"hits":[1]}' });
  });
});

describe('a refused call', () => {
  it('throws the typed denial, never runs the body, and ends the span in error with error.type', async () => {
    const error = new PolicyDeniedError({ tool: 'billing', action: 'refund', policyDecisionId: 'dec-deny', ruleId: 'default-deny', reason: 'no rule allows it' });
    configureRuntime({ enforcer: scripted(() => ({ ...allow(), decision: 'deny', allowed: false, policyDecisionId: 'dec-deny', ruleId: 'default-deny', error })) });
    let ran = false;
    const call = toolCall('billing.refund', { amount: 5 }, () => {
      ran = true;
    });
    await expect(call).rejects.toBe(error);
    await expect(call).rejects.toMatchObject({ code: 'ERR_POLICY_DENIED' });
    expect(ran).toBe(false);
    const span = only();
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
    expect(span.attributes).toMatchObject({
      [ATTR.ERROR_TYPE]: 'policy_denied',
      [ATTR.POLICY_DECISION]: 'deny',
      [ATTR.POLICY_DECISION_ID]: 'dec-deny',
      [ATTR.AUDIT_SEQ]: 1,
    });
    expect(span.attributes[ATTR.RESPONSE_HASH]).toBeUndefined();
    expect(span.events.map((e) => e.name)).toEqual(['exception']);
  });

  it('fails closed with ERR_POLICY_UNAVAILABLE on an error decision, a throwing enforcer, or a decision without its error', async () => {
    let ran = 0;
    const body = () => void ran++;
    configureRuntime({ enforcer: scripted(() => ({ ...allow(), decision: 'error', allowed: false, policyDecisionId: '', error: new PolicyUnavailableError('billing', 'refund', 'timeout') })) });
    await expect(toolCall('billing.refund', {}, body)).rejects.toMatchObject({ code: 'ERR_POLICY_UNAVAILABLE' });
    configureRuntime({ enforcer: { check: () => Promise.reject(new Error('boom')) } });
    await expect(toolCall('billing.refund', {}, body)).rejects.toBeInstanceOf(PolicyUnavailableError);
    configureRuntime({ enforcer: scripted(() => ({ decision: 'error', allowed: false })) });
    await expect(toolCall('billing.refund', {}, body)).rejects.toMatchObject({ code: 'ERR_POLICY_UNAVAILABLE' });
    configureRuntime({ enforcer: scripted(() => ({ decision: 'deny', allowed: false, reason: 'nope' })) });
    await expect(toolCall('billing.refund', {}, body)).rejects.toMatchObject({ code: 'ERR_POLICY_DENIED' });
    expect(ran).toBe(0);
    expect(spans().map((s) => s.attributes[ATTR.ERROR_TYPE])).toEqual(['policy_unavailable', 'policy_unavailable', 'policy_unavailable', 'policy_denied']);
    expect(spans().map((s) => s.attributes[ATTR.AUDIT_SEQ])).toEqual([1, 2, 3, 4]);
  });
});

describe('a failing tool', () => {
  it('rethrows the tool’s own error, records it, and still ends the span exactly once', async () => {
    configureRuntime({ enforcer: scripted(() => allow()) });
    class BillingDown extends Error {
      readonly code = 'BILLING_DOWN';
    }
    await expect(toolCall('billing.refund', {}, () => { throw new BillingDown('503'); })).rejects.toBeInstanceOf(BillingDown);
    const span = only();
    expect(span.attributes[ATTR.ERROR_TYPE]).toBe('BILLING_DOWN');
    expect(span.status).toEqual({ code: SpanStatusCode.ERROR, message: '503' });
    expect(span.ended).toBe(true);
  });
});

describe('enforcement off and shadow decisions', () => {
  it('with enforcement off, records the span only', async () => {
    configureRuntime({ enforcer: null });
    expect(await toolCall('search.query', { q: 1 }, () => 'ok')).toBe('ok');
    const span = only();
    expect(span.attributes[ATTR.POLICY_DECISION]).toBeUndefined();
    expect(span.attributes[ATTR.AUDIT_SEQ]).toBe(1);
  });

  it('a baseline call runs at once; its span waits for the shadow decision, not the caller', async () => {
    let settle!: (v: EnforcerVerdict) => void;
    const shadow = new Promise<EnforcerVerdict>((r) => (settle = r));
    configureRuntime({ enforcer: scripted(() => ({ decision: 'allow', allowed: true, policyDecisionId: '', cohort: 'baseline', enforced: false, shadow })) });
    expect(await toolCall('billing.refund', {}, () => 'done')).toBe('done');
    expect(spans()).toHaveLength(0);
    settle({ decision: 'deny', allowed: true, policyDecisionId: 'dec-shadow', ruleId: 'default-deny', cohort: 'baseline', enforced: false });
    await new Promise((r) => setTimeout(r, 10));
    expect(only().attributes).toMatchObject({
      [ATTR.POLICY_DECISION]: 'deny',
      [ATTR.POLICY_DECISION_ID]: 'dec-shadow',
      [ATTR.ENFORCED]: false,
      [ATTR.ROLLOUT_COHORT]: 'baseline',
    });
    expect(only().status.code).toBe(SpanStatusCode.OK);
  });
});

describe('wrapTool', () => {
  it('returns an enforced function that passes this and extra arguments through', async () => {
    const enforcer = scripted(() => allow());
    configureRuntime({ enforcer });
    const obj = {
      factor: 3,
      times: wrapTool('math.times', function (this: { factor: number }, args: { n: number }, extra: number) {
        return args.n * this.factor + extra;
      }),
    };
    expect(await obj.times({ n: 2 }, 1)).toBe(7);
    expect(obj.times.name).toBe('math.times');
    expect(enforcer.asked[0]).toMatchObject({ tool: 'math', action: 'times' });
  });
});

describe('errorType', () => {
  it('prefers the policy type, then a code, then the class name', () => {
    expect(errorType(new PolicyUnavailableError('t', 'a', 'x'))).toBe('policy_unavailable');
    expect(errorType(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe('ECONNRESET');
    expect(errorType(new TypeError('x'))).toBe('TypeError');
    expect(errorType('plain')).toBe('_OTHER');
  });
});

describe('the root context from a parent process', () => {
  it('parents calls made outside any span on the context handed down', async () => {
    configureRuntime({ enforcer: null });
    const parent = tracer.startSpan('parent-process');
    configureRuntime({ rootContext: trace.setSpan(context.active(), parent) });
    await toolCall('search.query', {}, () => 1);
    const span = spans().find((s) => s.name === 'execute_tool search.query')!;
    expect(span.spanContext().traceId).toBe(parent.spanContext().traceId);
    expect(span.parentSpanContext?.spanId).toBe(parent.spanContext().spanId);
    parent.end();
  });
});
