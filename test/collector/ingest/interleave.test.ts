import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../../collector/store';
import { startCustody, type RunningCustody } from '../../helpers/custody';
import { collectorTrace, hex, jsonBody, jsonSpan, pbSpan } from '../../helpers/otlp-bodies';

/**
 * One span with a lone UTF-16 surrogate (what the stock OTel JS JSON exporter sends when a length
 * limit cuts a string inside an emoji) used to make ClickHouse refuse the whole insert, which the
 * collector took for a storage outage: every request after it got 503. Interleaved with good
 * batches, every good span must be acknowledged and stored, and the cut span too, with U+FFFD.
 */

const GOOD_REQUESTS = 24;
const SPANS_PER_REQUEST = 200;
const BAD_REQUESTS = 12;
const GOOD_SERVICE = `interleave-good-${hex(3)}`;
const BAD_SERVICE = `interleave-cut-${hex(3)}`;

let custody: RunningCustody;

beforeAll(async () => {
  custody = await startCustody({ command: 'collector', env: { CUSTODY_CHECKPOINTER: 'off' } });
});

afterAll(async () => {
  await custody?.stop();
});

/** What the stock serializer writes for tool calls whose note the SDK's length limit cut inside an emoji. */
function cutSpansBody(calls: number): { body: Buffer; spanIds: string[] } {
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': BAD_SERVICE }),
    spanLimits: { attributeValueLengthLimit: 3 },
    spanProcessors: [new SimpleSpanProcessor(memory)],
  });
  const tracer = provider.getTracer('interleave');
  for (let i = 0; i < calls; i++) tracer.startSpan('execute_tool notes.write', { attributes: { 'custody.sponsor_id': 'alice', note: '😀😀' } }).end();
  const spans = memory.getFinishedSpans();
  return { body: Buffer.from(JsonTraceSerializer.serializeRequest(spans)!), spanIds: spans.map((s) => s.spanContext().spanId) };
}

function goodRequest(i: number): { body: Buffer | string; type: string; spanIds: string[] } {
  if (i % 2 === 0) {
    const spans = Array.from({ length: SPANS_PER_REQUEST }, () => jsonSpan('execute_tool billing.refund', { attributes: [{ key: 'custody.sponsor_id', value: { stringValue: 'bob' } }] }));
    return { body: jsonBody(spans, GOOD_SERVICE), type: 'application/json', spanIds: spans.map((s) => s.spanId as string) };
  }
  const spans = Array.from({ length: SPANS_PER_REQUEST }, () => pbSpan('execute_tool billing.refund', { attributes: [{ key: 'custody.sponsor_id', value: { stringValue: 'bob' } }] }));
  const body = collectorTrace.ExportTraceServiceRequest.encode(
    collectorTrace.ExportTraceServiceRequest.fromObject({
      resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: GOOD_SERVICE } }] }, scopeSpans: [{ spans }] }],
    }),
  ).finish();
  return { body: Buffer.from(body), type: 'application/x-protobuf', spanIds: spans.map((s) => (s.spanId as Buffer).toString('hex')) };
}

describe('a span with a lone surrogate among good batches', () => {
  const good: string[] = [];
  const cut: string[] = [];

  it('every request is acknowledged in full, good spans and cut ones', async () => {
    const requests: { body: Buffer | string; type: string; spanIds: string[]; good: boolean }[] = [];
    for (let i = 0; i < GOOD_REQUESTS; i++) {
      requests.push({ ...goodRequest(i), good: true });
      if (i % 2 === 0 && requests.filter((r) => !r.good).length < BAD_REQUESTS) {
        const { body, spanIds } = cutSpansBody(1 + (i % 3));
        requests.push({ body, type: 'application/json', spanIds, good: false });
      }
    }
    expect(requests.filter((r) => !r.good)).toHaveLength(BAD_REQUESTS);
    // several in flight at once, so that cut spans and good ones share inserts
    const answers: { status: number; text: string; good: boolean }[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: 6 }, async () => {
        while (next < requests.length) {
          const r = requests[next++]!;
          const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', body: r.body, headers: { 'Content-Type': r.type } });
          const answer = Buffer.from(await res.arrayBuffer());
          answers.push({ status: res.status, text: r.type === 'application/json' ? answer.toString() : '', good: r.good });
          if (res.status === 200) (r.good ? good : cut).push(...r.spanIds);
        }
      }),
    );
    expect(answers.map((a) => a.status)).toEqual(Array(requests.length).fill(200));
    // nothing refused: the cut value is repaired, not a reason to drop the span
    for (const a of answers.filter((x) => x.text)) expect(JSON.parse(a.text)).toEqual({});
    expect(good).toHaveLength(GOOD_REQUESTS * SPANS_PER_REQUEST);
    expect((await fetch(`${custody.url}/readyz`)).status).toBe(200);
  });

  it('every acknowledged span is stored; the cut value reads as the emoji and U+FFFD', async () => {
    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, migrate: false });
    try {
      const q = async <T>(query: string, params: Record<string, unknown>) =>
        (await store.client.query({ query, query_params: params, format: 'JSONEachRow' })).json<T>();
      const stored = await q<{ n: string }>(`SELECT count() AS n FROM custody.otel_traces WHERE SpanId IN {ids:Array(String)}`, { ids: good });
      expect(Number(stored[0]!.n)).toBe(good.length);
      const audit = await q<{ n: string }>(`SELECT count() AS n FROM custody.audit_events WHERE span_id IN {ids:Array(String)}`, { ids: good });
      expect(Number(audit[0]!.n)).toBe(good.length);
      const notes = await q<{ SpanId: string; note: string }>(
        `SELECT SpanId, SpanAttributes['note'] AS note FROM custody.otel_traces WHERE ServiceName = {service:String}`,
        { service: BAD_SERVICE },
      );
      expect(notes.map((r) => r.SpanId).sort()).toEqual([...cut].sort());
      expect(new Set(notes.map((r) => r.note))).toEqual(new Set(['😀\ufffd']));
    } finally {
      await store.close();
    }
  });
});
