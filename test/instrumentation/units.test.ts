import fs from 'node:fs';
import path from 'node:path';
import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../common/errors';
import { ATTR, BAGGAGE, ENV, PROPAGATION } from '../../common/names';
import { wrapAiTool, wrapToolSet } from '../../instrumentation/ai-sdk/utils';
import { withChildEnv } from '../../instrumentation/child-process/utils';
import { readIdentity, readSettings } from '../../instrumentation/identity';
import { ownerOf } from '../../instrumentation/langchain/utils';
import { loadToolMap, mapTool } from '../../instrumentation/mapping';
import { methodOfSchema, serverLocation, trustedServer } from '../../instrumentation/mcp/utils';
import { withWrappedExecute } from '../../instrumentation/openai-agents/utils';
import { configureRuntime, getRuntime } from '../../instrumentation/runtime';
import { AgentScope, currentScope, setRootScope } from '../../instrumentation/scope';
import { ensureSponsor } from '../../instrumentation/sponsor';
import { childEnv, contextFromEnv, currentAgent, propagationHeaders, runAsRemoteCallee, startSubAgent, w3cCarrier } from '../../instrumentation/subagent';
import { tempDir } from '../helpers/custody';

const exporter = new InMemorySpanExporter();
const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer('units');

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
});
beforeEach(() => {
  exporter.reset();
  setRootScope(new AgentScope({ agentInstanceId: 'root-1', sponsorId: 'alice', role: 'support' }));
  configureRuntime({
    tracer,
    enforcer: null,
    toolMap: undefined,
    rootContext: undefined,
    // nothing listens here: delegation fails fast and the calls fall back as documented
    settings: { ...readSettings({}), url: 'http://127.0.0.1:9', tokenUrl: 'http://127.0.0.1:9', policyUrl: 'http://127.0.0.1:9' },
  });
});

describe('tool mapping', () => {
  it('splits tool.action, applies the map and overrides, and defaults to action call', () => {
    const map = { refund_customer: { tool: 'billing', action: 'refund' }, lookup: { tool: 'billing' } };
    expect(mapTool('billing.refund', map)).toEqual({ tool: 'billing', action: 'refund' });
    expect(mapTool('refund_customer', map)).toEqual({ tool: 'billing', action: 'refund' });
    expect(mapTool('lookup', map)).toEqual({ tool: 'billing', action: 'call' });
    expect(mapTool('weather', map)).toEqual({ tool: 'weather', action: 'call' });
    expect(mapTool('billing.refund', map, { action: 'charge' })).toEqual({ tool: 'billing', action: 'charge' });
    expect(mapTool('.hidden', undefined)).toEqual({ tool: '.hidden', action: 'call' });
  });

  it('reads CUSTODY_TOOL_MAP inline, from a bare map file, and from a policy config', () => {
    expect(loadToolMap('{"lookup_invoice":"billing.read","ws":{"tool":"search"}}')).toEqual({
      lookup_invoice: { tool: 'billing', action: 'read' },
      ws: { tool: 'search' },
    });
    const dir = tempDir('custody-toolmap-');
    const bare = path.join(dir, 'map.yaml');
    fs.writeFileSync(bare, 'refund_customer: billing.refund\n');
    expect(loadToolMap(bare)).toEqual({ refund_customer: { tool: 'billing', action: 'refund' } });
    const policy = path.resolve(__dirname, '../..', 'policy-config.yaml');
    expect(loadToolMap(policy)).toMatchObject({ refund_customer: { tool: 'billing', action: 'refund' }, web_search: { tool: 'search', action: 'call' } });
  });

  it('refuses a bad map with an error naming the file, the line and the field', () => {
    const file = path.join(tempDir('custody-toolmap-'), 'map.yaml');
    fs.writeFileSync(file, 'ok: billing.refund\nbad:\n  tool: 3\n');
    expect(() => loadToolMap(file)).toThrow(ConfigError);
    expect(() => loadToolMap(file)).toThrow(/map\.yaml:\d+: field 'bad/);
    expect(() => loadToolMap('/nonexistent/map.yaml')).toThrow(/cannot read the tool map/);
  });
});

describe('identity and settings from the environment', () => {
  it('reads the CUSTODY_* identity and makes up an instance id when none is given', () => {
    expect(readIdentity({ CUSTODY_SPONSOR_ID: 'alice', CUSTODY_AGENT_INSTANCE_ID: 'i-1', CUSTODY_PARENT_AGENT_ID: ' p-0 ', CUSTODY_ROLE: 'support', CUSTODY_DELEGATION_TOKEN: 'tok' })).toEqual({
      agentInstanceId: 'i-1', sponsorId: 'alice', parentAgentId: 'p-0', role: 'support', delegationToken: 'tok',
    });
    const a = readIdentity({});
    const b = readIdentity({});
    expect(a.agentInstanceId).toMatch(/^[0-9a-f-]{36}$/);
    expect(a.agentInstanceId).not.toBe(b.agentInstanceId);
    expect(readIdentity({ CUSTODY_SPONSOR_ID: '  ' }).sponsorId).toBeUndefined();
  });

  it('reads the settings with their defaults', () => {
    expect(readSettings({})).toEqual({ url: 'http://127.0.0.1:8080', tokenUrl: 'http://127.0.0.1:8080', policyUrl: 'http://127.0.0.1:8080', captureContent: false, propagateRegister: true, toolOrigins: [] });
    expect(readSettings({ CUSTODY_URL: 'http://h:1/', CUSTODY_TOKEN_URL: 'http://t:2', CUSTODY_CAPTURE_CONTENT: 'true', CUSTODY_DELEGATE_TOOLS: 'billing, search', CUSTODY_PROPAGATE_REGISTER: '0', CUSTODY_TOOL_ORIGINS: 'http://127.0.0.1:9000' })).toMatchObject({
      url: 'http://h:1', tokenUrl: 'http://t:2', policyUrl: 'http://h:1', captureContent: true, delegateTools: ['billing', 'search'], propagateRegister: false, toolOrigins: ['http://127.0.0.1:9000'],
    });
  });
});

describe('child_process arguments', () => {
  const env = () => ({ MARK: '1' });
  it('puts the env into the options wherever the call form has them', () => {
    const cb = () => undefined;
    expect(withChildEnv(['node'], env)).toEqual(['node', { env: { MARK: '1' } }]);
    expect(withChildEnv(['node', ['a']], env)).toEqual(['node', ['a'], { env: { MARK: '1' } }]);
    expect(withChildEnv(['node', ['a'], { cwd: '/x' }], env)).toEqual(['node', ['a'], { cwd: '/x', env: { MARK: '1' } }]);
    expect(withChildEnv(['ls', { cwd: '/x' }, cb], env)).toEqual(['ls', { cwd: '/x', env: { MARK: '1' } }, cb]);
    expect(withChildEnv(['ls', cb], env)).toEqual(['ls', { env: { MARK: '1' } }, cb]);
    expect(withChildEnv(['f', ['a'], cb], env)).toEqual(['f', ['a'], { env: { MARK: '1' } }, cb]);
    expect(withChildEnv(['f', undefined, { shell: true }], env)).toEqual(['f', undefined, { shell: true, env: { MARK: '1' } }]);
    expect(withChildEnv(['f', null, cb], env)).toEqual(['f', { env: { MARK: '1' } }, cb]);
  });
  it('hands the given env to the maker', () => {
    let seen: unknown;
    withChildEnv(['x', [], { env: { A: 'b' } }], (e) => ((seen = e), {}));
    expect(seen).toEqual({ A: 'b' });
  });
});

describe('childEnv', () => {
  afterEach(() => {
    delete process.env[ENV.AGENT_INSTANCE_ID];
  });

  it('makes the child a sub-agent of the current instance and continues the trace', () => {
    process.env[ENV.AGENT_INSTANCE_ID] = 'root-1';
    const span = tracer.startSpan('spawning');
    const env = context.with(trace.setSpan(context.active(), span), () => childEnv());
    span.end();
    expect(env[ENV.PARENT_AGENT_ID]).toBe('root-1');
    expect(env[ENV.SPONSOR_ID]).toBe('alice');
    expect(env[ENV.ROLE]).toBe('support');
    expect(env[ENV.AGENT_INSTANCE_ID]).toBeUndefined();
    expect(env[ENV.DELEGATION_TOKEN]).toBeUndefined(); // no token service here
    expect(env.TRACEPARENT).toBe(`00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`);
    expect(decodeURIComponent(env.BAGGAGE!)).toContain(`${BAGGAGE.SPONSOR_ID}=alice`);
    expect(env.NODE_OPTIONS).toMatch(/--require \S*dist\/instrumentation\/register\.js/);
    const back = contextFromEnv(env)!;
    expect(trace.getSpanContext(back)?.spanId).toBe(span.spanContext().spanId);
    expect(propagation.getBaggage(back)?.getEntry(BAGGAGE.AGENT_INSTANCE_ID)?.value).toBe('root-1');
  });

  it('keeps what the caller set explicitly, fills a reduced env with custody config, and can skip the preload', () => {
    process.env.CUSTODY_URL_TEST_MARK = 'x';
    const env = childEnv({ PATH: '/bin', [ENV.PARENT_AGENT_ID]: 'chosen', NODE_OPTIONS: '--require custody/register' });
    delete process.env.CUSTODY_URL_TEST_MARK;
    expect(env[ENV.PARENT_AGENT_ID]).toBe('chosen');
    expect(env.PATH).toBe('/bin');
    expect(env.CUSTODY_URL_TEST_MARK).toBe('x');
    expect(env.NODE_OPTIONS).toBe('--require custody/register');
    configureRuntime({ settings: { ...getRuntime().settings, propagateRegister: false } });
    expect(childEnv({}).NODE_OPTIONS).toBeUndefined();
  });
});

describe('sub-agents in process', () => {
  it('runs inside a child instance whose parent is the current one, under an invoke_agent span', async () => {
    const seen = await startSubAgent({ name: 'researcher', purpose: 'triage' }, async (agent) => {
      const inner = await startSubAgent(async (grandchild) => ({ grandchild, scope: currentScope().identity }));
      return { agent, current: currentAgent(), inner, purpose: currentScope().purpose };
    });
    expect(seen.agent).toMatchObject({ parentAgentId: 'root-1', sponsorId: 'alice', role: 'support', agentName: 'researcher' });
    expect(seen.current).toEqual(seen.agent);
    expect(seen.inner.grandchild.parentAgentId).toBe(seen.agent.agentInstanceId);
    expect(seen.inner.grandchild.sponsorId).toBe('alice');
    expect(seen.purpose).toBe('triage');
    expect(currentAgent().agentInstanceId).toBe('root-1');
    const spans = exporter.getFinishedSpans();
    expect(spans.map((s) => s.name)).toEqual(['invoke_agent researcher', 'invoke_agent researcher']);
    const outer = spans[1]!;
    expect(outer.attributes).toMatchObject({ [ATTR.GEN_AI_OPERATION_NAME]: 'invoke_agent', [ATTR.PARENT_AGENT_ID]: 'root-1', [ATTR.SPONSOR_ID]: 'alice' });
    expect(spans[0]!.parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
  });

  it('records a sub-agent that throws, and rethrows', async () => {
    await expect(startSubAgent('x', () => { throw new TypeError('bad'); })).rejects.toBeInstanceOf(TypeError);
    expect(exporter.getFinishedSpans()[0]!.attributes[ATTR.ERROR_TYPE]).toBe('TypeError');
  });
});

describe('learning the sponsor', () => {
  it('a delegated agent without CUSTODY_SPONSOR_ID takes sponsor and role from its delegation token', async () => {
    const payload = Buffer.from(JSON.stringify({ sub: 'parent-1', sponsor_id: 'carol', role: 'user', tools: ['search'] })).toString('base64url');
    const scope = new AgentScope({ agentInstanceId: 'child-1', parentAgentId: 'parent-1', delegationToken: `eyJhbGciOiJFZERTQSJ9.${payload}.c2ln` });
    await ensureSponsor(scope, 'search');
    expect(scope.identity).toMatchObject({ sponsorId: 'carol', role: 'user', agentInstanceId: 'child-1' });
    expect(ensureSponsor(scope, 'search')).toBeUndefined();
    const bag = propagation.getBaggage(scope.withBaggage(context.active()));
    expect(bag?.getEntry(BAGGAGE.SPONSOR_ID)?.value).toBe('carol');
  });

  it('an agent with neither sponsor nor credential has nothing to learn (the enforcer refuses its calls)', () => {
    expect(ensureSponsor(new AgentScope({ agentInstanceId: 'x' }), 'search')).toBeUndefined();
  });
});

describe('remote callers', () => {
  it('serves a caller as one sub-agent instance per calling instance, and the spawning agent as itself', () => {
    setRootScope(new AgentScope({ agentInstanceId: 'server-1', parentAgentId: 'spawner', sponsorId: 'alice' }));
    const carrierFrom = (instance: string, sponsor: string) => {
      const bag = propagation.createBaggage({ [BAGGAGE.AGENT_INSTANCE_ID]: { value: instance }, [BAGGAGE.SPONSOR_ID]: { value: sponsor } });
      return w3cCarrierWithBaggage(bag);
    };
    const who = (carrier: Record<string, string>) => runAsRemoteCallee(carrier, () => currentScope().identity);
    expect(who(carrierFrom('spawner', 'alice')).agentInstanceId).toBe('server-1');
    const other = who(carrierFrom('agent-b', 'bob'));
    expect(other).toMatchObject({ parentAgentId: 'agent-b', sponsorId: 'bob' });
    expect(who(carrierFrom('agent-b', 'bob')).agentInstanceId).toBe(other.agentInstanceId);
    expect(runAsRemoteCallee({}, () => currentScope().identity.agentInstanceId)).toBe('server-1');
  });
});

describe('remote sub-agents over HTTP', () => {
  it('sends the trace, the baggage and (when one can be had) the delegation token as headers; the callee serves the caller as its sub-agent', async () => {
    const span = tracer.startSpan('calling');
    const headers = await context.with(trace.setSpan(context.active(), span), () => propagationHeaders());
    span.end();
    expect(headers.traceparent).toBe(`00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`);
    expect(decodeURIComponent(headers.baggage!)).toContain('custody.agent_instance_id=root-1');
    expect(headers[PROPAGATION.HTTP_DELEGATION_TOKEN]).toBeUndefined(); // no token service here

    setRootScope(new AgentScope({ agentInstanceId: 'http-server-1', sponsorId: 'ops' }));
    const served = runAsRemoteCallee({ ...headers, [PROPAGATION.HTTP_DELEGATION_TOKEN]: 'tok' }, (ctx) => ({
      identity: currentScope().identity,
      traceId: trace.getSpanContext(ctx)?.traceId,
    }));
    expect(served.identity).toMatchObject({ parentAgentId: 'root-1', sponsorId: 'alice', delegationToken: 'tok' });
    expect(served.identity.agentInstanceId).not.toBe('http-server-1');
    expect(served.traceId).toBe(span.spanContext().traceId);
  });
});

function w3cCarrierWithBaggage(bag: ReturnType<typeof propagation.createBaggage>): Record<string, string> {
  return w3cCarrier(propagation.setBaggage(context.active(), bag));
}

describe('framework helpers', () => {
  it('reads the JSON-RPC method of the MCP SDK’s own request schemas', () => {
    expect(methodOfSchema(CallToolRequestSchema)).toBe('tools/call');
    expect(methodOfSchema(ListToolsRequestSchema)).toBe('tools/list');
    expect(methodOfSchema({})).toBeUndefined();
  });

  it('tells where an MCP server runs from its transport, and trusts only local servers and tool origins', () => {
    expect(serverLocation({ _serverParams: { command: 'node' } })).toBe('local');
    expect(serverLocation({ _otherTransport: {} })).toBe('local');
    expect(serverLocation({ _url: new URL('http://127.0.0.1:9000/mcp') })).toBe('http://127.0.0.1:9000');
    expect(serverLocation({ _url: 'https://mcp.example.com/sse' })).toBe('https://mcp.example.com');
    expect(serverLocation({})).toBeUndefined();
    expect(serverLocation(undefined)).toBeUndefined();
    expect(trustedServer('local', [])).toBe(true);
    expect(trustedServer('http://127.0.0.1:9000', ['http://127.0.0.1:9000'])).toBe(true);
    expect(trustedServer('https://mcp.example.com', ['http://127.0.0.1:9000'])).toBe(false);
    expect(trustedServer(undefined, ['http://127.0.0.1:9000'])).toBe(false);
  });

  it('finds the prototype that defines a method', () => {
    class A { m() {} }
    class B extends A {}
    class C extends B { m() {} }
    expect(ownerOf(B.prototype, 'm')).toBe(A.prototype);
    expect(ownerOf(C.prototype, 'm')).toBe(C.prototype);
    expect(ownerOf(C.prototype, 'nope')).toBeUndefined();
  });

  it('wraps AI SDK tools without touching the caller’s objects, once per tool and name', () => {
    const execute = async () => 1;
    const t = { description: 'd', execute };
    const set = { a: t, b: { description: 'provider-executed' } };
    const wrapped = wrapToolSet(set);
    expect(set.a.execute).toBe(execute);
    expect(wrapped.a).not.toBe(t);
    expect(wrapped.b).toBe(set.b);
    expect(wrapToolSet(set).a).toBe(wrapped.a);
    expect(wrapAiTool('a', wrapped.a!)).toBe(wrapped.a);
  });

  it('keeps the OpenAI Agents tool name a nameless tool takes from its function', () => {
    async function lookup_order() {
      return 1;
    }
    const opts = withWrappedExecute({ execute: lookup_order })!;
    expect(opts.execute).not.toBe(lookup_order);
    expect(opts.execute.name).toBe('lookup_order');
    expect(withWrappedExecute({ execute: undefined as never })).toBeUndefined();
  });
});
