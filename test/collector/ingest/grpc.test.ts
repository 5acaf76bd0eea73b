import { Client, Metadata, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grpcPortOf } from '../../../cli/options';
import { GRPC_SERVICES } from '../../../collector/ingest/grpc';
import { collectorTrace, hex, nowNs } from '../../helpers/otlp-bodies';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';

const INGEST_TOKEN = 'grpc-test-gateway-credential';
const MAX_BODY = 256 * 1024;

let custody: RunningCustody;

beforeAll(async () => {
  // a gateway credential makes one required; a small body limit to test it cheaply
  custody = await startCustody({ env: { CUSTODY_INGEST_TOKEN: INGEST_TOKEN, CUSTODY_INGEST_MAX_BODY_BYTES: String(MAX_BODY) } });
});
afterAll(async () => {
  await custody?.stop();
});

const bearer = (token = INGEST_TOKEN) => {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
};

/** Spans made by the stock SDK: a GenAI tool call and an OpenLLMetry one, under resource identity. */
function sdkSpans(run: string): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      'service.name': `grpc-agent-${run}`,
      'custody.sponsor_id': 'grace@example.com',
      'custody.agent_instance_id': `grpc-${run}`,
      'custody.role': 'support',
    }),
    spanProcessors: [new SimpleSpanProcessor(memory)],
  });
  const tracer = provider.getTracer('grpc-fixture');
  tracer.startSpan('execute_tool search', { kind: SpanKind.INTERNAL, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search' } }).end();
  tracer
    .startSpan('refund.tool', {
      attributes: { 'traceloop.span.kind': 'tool', 'traceloop.entity.name': 'refund', 'traceloop.entity.input': '{"args": [], "kwargs": {"amount": 5}}' },
    })
    .end();
  return memory.getFinishedSpans() as ReadableSpan[];
}

function exportWith(exporter: OTLPTraceExporter, spans: ReadableSpan[]) {
  return new Promise<{ code: number; error?: Error }>((resolve) => exporter.export(spans, resolve));
}

/** A raw unary call on one of the Export services, bytes in and out. */
function rawCall(path: string, body: Buffer, metadata = bearer()): Promise<{ err: ServiceError | null; response?: Buffer }> {
  const client = new Client(custody.otlpGrpcUrl.replace('http://', ''), credentials.createInsecure());
  const id = (b: Buffer) => b;
  return new Promise((resolve) =>
    client.makeUnaryRequest(path, id, id, body, metadata, (err, response) => {
      client.close();
      resolve({ err, ...(response ? { response } : {}) });
    }),
  );
}

interface Event {
  tool_id: string;
  sponsor_id: string;
  role: string;
  convention: string;
  trust: string;
}

async function events(query: string): Promise<Event[]> {
  return ((await (await fetch(`${custody.url}/v1/audit/events?${query}`)).json()) as { events: Event[] }).events;
}

describe('--otlp-grpc-port', () => {
  it('defaults to 4317, to any free port beside --otlp-port 0, and 0 turns gRPC off', () => {
    expect(grpcPortOf({ otlpPort: 4318 })).toBe(4317);
    expect(grpcPortOf({ otlpPort: 0 })).toBe(0);
    expect(grpcPortOf({ otlpPort: 0, otlpGrpcPort: 0 })).toBeUndefined();
    expect(grpcPortOf({ otlpPort: 4318, otlpGrpcPort: 14317 })).toBe(14317);
  });
});

describe('OTLP/gRPC receiver', () => {
  it('custody up prints its gRPC endpoint (any free port when --otlp-port is 0)', () => {
    expect(custody.otlpGrpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(custody.otlpGrpcUrl).not.toMatch(/:4317$/);
  });

  it('the stock gRPC trace exporter (gzip) delivers spans that become audit events, with the gateway credential in metadata', async () => {
    const exporter = new OTLPTraceExporter({ url: custody.otlpGrpcUrl, metadata: bearer(), compression: 'gzip' as never, timeoutMillis: 30_000 });
    const result = await exportWith(exporter, sdkSpans('a'));
    await exporter.shutdown();
    expect(result.error).toBeUndefined();
    expect(result.code).toBe(0);
    const got = await eventually(async () => {
      const e = await events('agent_instance_id=grpc-a');
      return e.length === 2 ? e : undefined;
    });
    const byTool = Object.fromEntries(got.map((e) => [e.tool_id, e]));
    expect(byTool.search).toMatchObject({ convention: 'gen_ai', sponsor_id: 'grace@example.com', role: 'support', trust: 'gateway' });
    expect(byTool.refund).toMatchObject({ convention: 'openllmetry', sponsor_id: 'grace@example.com' });
  });

  it('without a credential, or with a wrong one: UNAUTHENTICATED, nothing stored', async () => {
    const exporter = new OTLPTraceExporter({ url: custody.otlpGrpcUrl, timeoutMillis: 30_000 });
    const result = await exportWith(exporter, sdkSpans('b'));
    await exporter.shutdown();
    expect(result.code).toBe(1);
    const raw = await rawCall(GRPC_SERVICES.traces, Buffer.alloc(0), bearer('wrong'));
    expect(raw.err?.code).toBe(status.UNAUTHENTICATED);
    expect(raw.err?.details).toMatch(/^unauthorized: /);
    expect(await events('agent_instance_id=grpc-b')).toEqual([]);
  });

  it('partial success: a span with a bad trace id is refused and named, the others stored', async () => {
    const t = nowNs();
    const span = (traceId: Buffer, name: string) => ({
      traceId,
      spanId: Buffer.from(hex(8), 'hex'),
      name,
      startTimeUnixNano: t,
      endTimeUnixNano: t + 1_000_000n,
      attributes: [
        { key: 'gen_ai.operation.name', value: { stringValue: 'execute_tool' } },
        { key: 'custody.agent_instance_id', value: { stringValue: 'grpc-partial' } },
      ],
    });
    const request = collectorTrace.ExportTraceServiceRequest.fromObject({
      resourceSpans: [{ scopeSpans: [{ spans: [span(Buffer.from(hex(16), 'hex'), 'execute_tool good'), span(Buffer.from('abc'), 'execute_tool bad')] }] }],
    });
    const body = Buffer.from(collectorTrace.ExportTraceServiceRequest.encode(request).finish());
    const { err, response } = await rawCall(GRPC_SERVICES.traces, body);
    expect(err).toBeNull();
    const answer = collectorTrace.ExportTraceServiceResponse.toObject(collectorTrace.ExportTraceServiceResponse.decode(response!), { longs: Number });
    expect(answer.partialSuccess.rejectedSpans).toBe(1);
    expect(answer.partialSuccess.errorMessage).toMatch(/trace/i);
    expect((await eventually(async () => events('agent_instance_id=grpc-partial'))).map((e) => e.tool_id)).toEqual(['good']);
  });

  it('a malformed message is INVALID_ARGUMENT; one over the body limit RESOURCE_EXHAUSTED', async () => {
    const bad = await rawCall(GRPC_SERVICES.traces, Buffer.from([0x0a, 0xff, 0xff, 0xff]));
    expect(bad.err?.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.err?.details).toMatch(/^invalid_request: /);
    const big = await rawCall(GRPC_SERVICES.traces, Buffer.alloc(MAX_BODY + 1024, 0));
    expect(big.err?.code).toBe(status.RESOURCE_EXHAUSTED);
  });

  it('the metrics and logs Export services answer OK with an empty response, and are counted', async () => {
    for (const path of [GRPC_SERVICES.metrics, GRPC_SERVICES.logs]) {
      const { err, response } = await rawCall(path, Buffer.alloc(0));
      expect(err, path).toBeNull();
      expect(response!.length).toBe(0);
    }
    const text = await (await fetch(`${custody.url}/metrics`)).text();
    expect(text).toMatch(/^custody_otlp_signals_dropped_total\{signal="metrics"\} 1$/m);
    expect(text).toMatch(/^custody_otlp_signals_dropped_total\{signal="logs"\} 1$/m);
    expect(text).toMatch(/^custody_ingest_grpc_requests_total\{method="traces",code="OK"\} [1-9]/m);
    expect(text).toMatch(/^custody_ingest_grpc_requests_total\{method="traces",code="UNAUTHENTICATED"\} [1-9]/m);
  });
});
