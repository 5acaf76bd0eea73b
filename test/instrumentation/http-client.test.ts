import http from 'node:http';
import { context, propagation } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEnv } from '../../common/env';
import { ConfigError } from '../../common/errors';
import { listen, type Listening } from '../../common/http';
import { HttpClientInstrumentation } from '../../instrumentation/http-client/instrumentation';
import { outgoingHeaders, requestOrigin } from '../../instrumentation/http-client/utils';
import { withToolCall } from '../../instrumentation/call-context';
import { configureRuntime } from '../../instrumentation/runtime';
import { AgentScope, setRootScope } from '../../instrumentation/scope';
import { toolCall } from '../../instrumentation/tool-call';
import type { EnforcerVerdict } from '../../instrumentation/types';

/**
 * Identity on the wire: inside a tool call, fetch and http/https requests carry traceparent to
 * any origin, and baggage and the call's token (x-custody-token) only to CUSTODY_TOOL_ORIGINS.
 * Outside a tool call nothing is added.
 */
const exporter = new InMemorySpanExporter();
const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer('test');
const TOKEN = 'header.payload.signature';
const allow: EnforcerVerdict = { decision: 'allow', allowed: true, policyDecisionId: 'd1', ruleId: 'r', reason: 'ok', cohort: 'canary', enforced: true, token: TOKEN };

let tool: Listening;
let other: Listening;
const instrumentation = new HttpClientInstrumentation({ enabled: false });
const echo: http.RequestListener = (req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(req.headers));
};
type Seen = Record<string, string | undefined>;

const viaFetch = async (url: string): Promise<Seen> => (await fetch(url)).json() as Promise<Seen>;
const viaHttp = (url: string, how: 'get' | 'request'): Promise<Seen> =>
  new Promise((resolve, reject) => {
    const done = (res: http.IncomingMessage) => {
      let body = '';
      res.on('data', (d) => (body += d)).on('end', () => resolve(JSON.parse(body)));
    };
    if (how === 'get') http.get(url, done).on('error', reject);
    else {
      const u = new URL(url);
      http.request({ hostname: u.hostname, port: u.port, path: '/', method: 'POST' }, done).on('error', reject).end('{}');
    }
  });

beforeAll(async () => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }));
  tool = await listen(echo, '127.0.0.1', 0);
  other = await listen(echo, '127.0.0.1', 0);
  instrumentation.setConfig({ toolOrigins: [new URL(tool.url).origin] });
  instrumentation.enable();
  // the builtins were loaded before the patch's hook: require them again so it applies
  require('node:http');
  setRootScope(new AgentScope({ agentInstanceId: 'inst-1', sponsorId: 'alice', role: 'support' }));
  configureRuntime({ tracer, toolMap: undefined, captureContent: false, rootContext: undefined, enforcer: { check: async () => allow } });
});
afterAll(async () => {
  instrumentation.disable();
  configureRuntime({ enforcer: null });
  await tool?.close();
  await other?.close();
});

describe('outgoing HTTP from a tool call', () => {
  for (const [name, send] of [
    ['fetch', viaFetch],
    ['http.get', (u: string) => viaHttp(u, 'get')],
    ['http.request', (u: string) => viaHttp(u, 'request')],
  ] as const) {
    it(`${name}: traceparent everywhere; baggage and the token only to the tool origins`, async () => {
      exporter.reset();
      const [atTool, atOther] = await toolCall('billing.refund', { amount: 5 }, async () => [await send(`${tool.url}/refunds`), await send(`${other.url}/elsewhere`)]);
      const span = exporter.getFinishedSpans().find((s) => s.name === 'execute_tool billing.refund')!;
      const traceparent = `00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`;
      expect(atTool!.traceparent).toBe(traceparent);
      expect(atTool!['x-custody-token']).toBe(TOKEN);
      expect(atTool!.baggage).toMatch(/custody\.sponsor_id=alice/);
      expect(atOther!.traceparent).toBe(traceparent);
      expect(atOther!['x-custody-token']).toBeUndefined();
      expect(atOther!.baggage).toBeUndefined();
    });
  }

  it('adds nothing outside a tool call, and keeps headers the caller set', async () => {
    const outside = await viaFetch(`${tool.url}/`);
    expect(outside.traceparent).toBeUndefined();
    expect(outside['x-custody-token']).toBeUndefined();
    const own = await toolCall('billing.refund', {}, async () => (await fetch(`${tool.url}/`, { headers: { 'x-custody-token': 'mine' } })).json() as Promise<Seen>);
    expect(own['x-custody-token']).toBe('mine');
  });
});

describe('the pure parts', () => {
  it('tells the origin of http.request arguments as Node reads them', () => {
    expect(requestOrigin(['http://127.0.0.1:9000/x'], 'http:')).toBe('http://127.0.0.1:9000');
    expect(requestOrigin([new URL('https://api.example.com/x')], 'https:')).toBe('https://api.example.com');
    expect(requestOrigin([{ hostname: 'localhost', port: 80 }], 'http:')).toBe('http://localhost');
    expect(requestOrigin([{ host: '127.0.0.1:9000', path: '/' }], 'http:')).toBe('http://127.0.0.1:9000');
    expect(requestOrigin(['http://a.example:1/', { hostname: 'b.example', port: 2 }], 'http:')).toBe('http://b.example:2');
    expect(requestOrigin([{ hostname: '::1', port: 9000 }], 'http:')).toBe('http://[::1]:9000');
  });

  it('sends the token to a listed origin only, never to a look-alike', () => {
    const ctx = withToolCall(context.active(), { tool: 'billing', action: 'refund', token: TOKEN });
    const origins = ['http://127.0.0.1:9000'];
    expect(outgoingHeaders(ctx, 'http://127.0.0.1:9000', origins, () => false)).toHaveProperty(['x-custody-token'], TOKEN);
    for (const o of ['http://127.0.0.1:9001', 'https://127.0.0.1:9000', 'http://localhost:9000', undefined]) {
      expect(outgoingHeaders(ctx, o, origins, () => false)).not.toHaveProperty(['x-custody-token']);
    }
  });

  it('CUSTODY_TOOL_ORIGINS: origins normalized; anything else refused naming the variable', () => {
    expect(readEnv({ CUSTODY_TOOL_ORIGINS: 'http://127.0.0.1:9000/, https://Billing.Example:443' }).CUSTODY_TOOL_ORIGINS).toEqual(['http://127.0.0.1:9000', 'https://billing.example']);
    expect(readEnv({}).CUSTODY_TOOL_ORIGINS).toBeUndefined();
    for (const bad of ['127.0.0.1:9000x', 'ftp://x', 'http://x/path', 'http://user:pw@x']) {
      expect(() => readEnv({ CUSTODY_TOOL_ORIGINS: bad })).toThrow(ConfigError);
      expect(() => readEnv({ CUSTODY_TOOL_ORIGINS: bad })).toThrow(/CUSTODY_TOOL_ORIGINS: '.*' is not an origin/);
    }
  });
});
