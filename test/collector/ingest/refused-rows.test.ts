import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RowsRefusedError, WriteRefusedError, createBatchWriter, type BatchWriter, type WriteRequest } from '../../../collector/ingest/writer';
import { mapSpans } from '../../../collector/ingest/mapping';
import { decodeJson } from '../../../collector/otlp';
import { openStore, type Store } from '../../../collector/store';
import { eventually, tempDir } from '../../helpers/custody';

const hex = (n: number) => [...crypto.getRandomValues(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, '0')).join('');
const POISON = 'POISON-VALUE';

function body(service: string, spans: { spanId: string; name: string; attrs?: Record<string, string> }[]): string {
  const t = BigInt(Date.now()) * 1_000_000n;
  return JSON.stringify({
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
        scopeSpans: [
          {
            spans: spans.map((s) => ({
              traceId: hex(16),
              spanId: s.spanId,
              name: s.name,
              startTimeUnixNano: String(t),
              endTimeUnixNano: String(t + 1_000_000n),
              attributes: Object.entries(s.attrs ?? {}).map(([key, v]) => ({ key, value: { stringValue: v } })),
            })),
          },
        ],
      },
    ],
  });
}

/** One request's rows, as the receiver hands them to the writer. */
function request(service: string, spans: { spanId: string; name: string; attrs?: Record<string, string> }[]): WriteRequest {
  const mapped = mapSpans(decodeJson(body(service, spans)).spans);
  return { rows: mapped.rows, counts: mapped.counts };
}

/**
 * The same rows with one value made into something ClickHouse refuses to parse (a lone UTF-16
 * surrogate escape: code 25), written into the serialized rows so that it reaches the insert
 * whatever the decoders do with such input.
 */
function poisoned(req: WriteRequest): WriteRequest {
  const rows: Record<string, Buffer> = {};
  for (const [table, buf] of Object.entries(req.rows)) rows[table] = Buffer.from(buf!.toString('utf8').split(POISON).join('a\\ud800b'));
  return { rows, counts: req.counts };
}

async function count(store: Store, query: string, params: Record<string, unknown>): Promise<number> {
  const rs = await store.client.query({ query, query_params: params, format: 'JSONEachRow' });
  return Number((await rs.json<{ n: string }>())[0]!.n);
}

describe('batching writer on real chDB: ClickHouse refusing one request’s rows', () => {
  let store: Store;
  let writer: BatchWriter;

  beforeAll(async () => {
    store = await openStore({ dataDir: tempDir('custody-refused-') });
    // a long linger puts every concurrent request into the same insert
    writer = createBatchWriter({ store, lingerMs: 50, probeIntervalMs: 100 });
  });

  afterAll(async () => {
    await writer?.close();
    await store?.close();
  });

  it('refuses only the offending request, naming span and column; every other request in the same insert is stored', async () => {
    const service = `mixed-${hex(4)}`;
    const badSpan = hex(8);
    const goods = Array.from({ length: 24 }, (_, i) => request(service, [{ spanId: hex(8), name: `execute_tool good${i}`, attrs: { 'custody.sponsor_id': 'alice' } }, { spanId: hex(8), name: 'work' }]));
    const bad = poisoned(
      request(service, [
        { spanId: hex(8), name: 'fine neighbour' },
        { spanId: badSpan, name: 'execute_tool bad', attrs: { 'custody.sponsor_id': 'alice', note: POISON } },
      ]),
    );
    // the bad request sits in the middle of the batch
    const all = [...goods.slice(0, 12), bad, ...goods.slice(12)];
    const results = await Promise.allSettled(all.map((r) => writer.write(r)));
    const refused = results[12]!;
    expect(refused.status).toBe('rejected');
    const err = (refused as PromiseRejectedResult).reason;
    expect(err).toBeInstanceOf(RowsRefusedError);
    expect(err.spanId).toBe(badSpan);
    expect(err.column).toMatch(/^(SpanAttributes|attributes)$/);
    expect(err.message).toContain(badSpan);
    expect(err.message).toMatch(/surrogate/);
    for (const [i, r] of results.entries()) if (i !== 12) expect(r.status, `request ${i}`).toBe('fulfilled');
    expect(writer.available).toBe(true);
    expect(await count(store, 'SELECT count() AS n FROM custody.otel_traces WHERE ServiceName = {s:String}', { s: service })).toBe(24 * 2);
    expect(await count(store, 'SELECT count() AS n FROM custody.audit_events WHERE service_name = {s:String}', { s: service })).toBe(24);
    expect(await count(store, "SELECT count() AS n FROM custody.otel_traces WHERE SpanName = 'execute_tool bad'", {})).toBe(0);
  });

  it('a refused request alone does not stop the writer: the next request is stored at once', async () => {
    const service = `alone-${hex(4)}`;
    const bad = poisoned(request(service, [{ spanId: hex(8), name: 'execute_tool bad', attrs: { note: POISON } }]));
    await expect(writer.write(bad)).rejects.toBeInstanceOf(RowsRefusedError);
    expect(writer.available).toBe(true);
    await writer.write(request(service, [{ spanId: hex(8), name: 'after' }]));
    expect(await count(store, 'SELECT count() AS n FROM custody.otel_traces WHERE ServiceName = {s:String}', { s: service })).toBe(1);
  });

  it('a real outage (the table gone) is still 503 for everyone, and writes resume once it is back', async () => {
    const service = `outage-${hex(4)}`;
    await store.client.command({ query: 'RENAME TABLE custody.otel_traces TO custody.otel_traces_away' });
    try {
      const results = await Promise.allSettled([1, 2, 3].map((i) => writer.write(request(service, [{ spanId: hex(8), name: `s${i}` }]))));
      for (const r of results) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(WriteRefusedError);
        expect((r as PromiseRejectedResult).reason.status).toBe(503);
      }
      expect(writer.available).toBe(false);
    } finally {
      await store.client.command({ query: 'RENAME TABLE custody.otel_traces_away TO custody.otel_traces' });
    }
    await eventually(async () => writer.available, 30_000);
    await writer.write(request(service, [{ spanId: hex(8), name: 'back' }]));
    expect(await count(store, 'SELECT count() AS n FROM custody.otel_traces WHERE ServiceName = {s:String}', { s: service })).toBe(1);
  });
});
