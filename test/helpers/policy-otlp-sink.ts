import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import generatedRoot from 'otlp-proto-root/build/src/generated/root';

/** A span as the sink received it: attributes flattened to plain values. */
export interface SunkSpan {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  service: string;
  status: number;
  attributes: Record<string, string | number | boolean>;
}

export interface OtlpSink {
  url: string;
  spans: SunkSpan[];
  /** While true the sink answers 503 and keeps nothing (a collector that is down). */
  failing: boolean;
  close(): Promise<void>;
}

interface PbValue {
  stringValue?: string | null;
  boolValue?: boolean | null;
  intValue?: number | { toNumber(): number } | null;
  doubleValue?: number | null;
}
interface PbKeyValue {
  key: string;
  value: PbValue | null;
}

const hex = (b: Uint8Array | null | undefined) => (b ? Buffer.from(b).toString('hex') : '');
const root = generatedRoot as unknown as {
  opentelemetry: { proto: { collector: { trace: { v1: { ExportTraceServiceRequest: { decode(b: Uint8Array): any } } } } } };
};

function value(v: PbValue | null): string | number | boolean {
  if (!v) return '';
  // protobufjs exposes the set member of the `value` oneof by name
  switch ((v as { value?: string }).value) {
    case 'boolValue':
      return Boolean(v.boolValue);
    case 'intValue':
      return typeof v.intValue === 'number' ? v.intValue : Number(v.intValue?.toNumber());
    case 'doubleValue':
      return v.doubleValue ?? 0;
    default:
      return v.stringValue ?? '';
  }
}

function attrs(list: PbKeyValue[] | null): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const kv of list ?? []) out[kv.key] = value(kv.value);
  return out;
}

/**
 * An OTLP/HTTP protobuf receiver on 127.0.0.1 that keeps every span it is sent, decoded with the
 * code generated from the official protos, so tests see exactly what a collector would.
 */
export async function startOtlpSink(): Promise<OtlpSink> {
  const spans: SunkSpan[] = [];
  const state = { failing: false };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (state.failing) return void res.writeHead(503, { 'retry-after': '0' }).end();
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = zlib.gunzipSync(body);
      const msg = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest.decode(body);
      for (const rs of msg.resourceSpans ?? []) {
        const resource = attrs(rs.resource?.attributes ?? null);
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            spans.push({
              name: s.name,
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              service: String(resource['service.name'] ?? ''),
              status: s.status?.code ?? 0,
              attributes: attrs(s.attributes),
            });
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    get failing() {
      return state.failing;
    },
    set failing(v: boolean) {
      state.failing = v;
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
