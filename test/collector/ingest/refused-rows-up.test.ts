import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import { startCustody, type RunningCustody } from '../../helpers/custody';

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

async function count(store: Store, query: string, params: Record<string, unknown>): Promise<number> {
  const rs = await store.client.query({ query, query_params: params, format: 'JSONEachRow' });
  return Number((await rs.json<{ n: string }>())[0]!.n);
}

describe('custody up: a request ClickHouse refuses, interleaved with good ones', () => {
  let custody: RunningCustody;
  beforeAll(async () => {
    custody = await startCustody({ command: 'collector', env: { CUSTODY_CHECKPOINTER: 'off' } });
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('every good request is acknowledged and stored; the bad ones never turn into 503s for others', async () => {
    const service = `interleaved-${hex(4)}`;
    const post = (text: string) =>
      fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', body: text, headers: { 'Content-Type': 'application/json' } }).then(async (r) => ({
        status: r.status,
        text: await r.text(),
      }));
    const goodIds: string[] = [];
    const badIds: string[] = [];
    const sends: Promise<{ status: number; text: string; bad: boolean }>[] = [];
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 8; i++) {
        const ids = [hex(8), hex(8)];
        goodIds.push(...ids);
        sends.push(post(body(service, ids.map((spanId) => ({ spanId, name: 'execute_tool ok', attrs: { 'custody.sponsor_id': 'alice' } })))).then((r) => ({ ...r, bad: false })));
      }
      const badId = hex(8);
      badIds.push(badId);
      // a lone surrogate, as a JSON exporter sends when it cuts a string inside an emoji
      const text = body(service, [{ spanId: badId, name: 'execute_tool cut', attrs: { 'custody.sponsor_id': 'alice', note: POISON } }]).replace(POISON, 'a\\ud800b');
      sends.push(post(text).then((r) => ({ ...r, bad: true })));
    }
    const results = await Promise.all(sends);
    if (results.some((r) => r.status >= 500)) console.log(custody.output());
    for (const r of results.filter((x) => !x.bad)) expect(r.status, r.text).toBe(200);
    for (const r of results.filter((x) => x.bad)) {
      // refused as bad input naming the span, or (when the decoder makes the value safe) stored
      expect([200, 400], r.text).toContain(r.status);
      if (r.status === 400) expect(r.text).toMatch(/rows_refused|span/);
    }
    const ready = await fetch(`${custody.url}/readyz`);
    expect(ready.status).toBe(200);
    // what was acknowledged is stored: read it back through a separate process once custody stopped
    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, migrate: false });
    try {
      const stored = await count(store, 'SELECT uniqExact(SpanId) AS n FROM custody.otel_traces WHERE SpanId IN {ids:Array(String)}', { ids: goodIds });
      expect(stored).toBe(goodIds.length);
    } finally {
      await store.close();
    }
  }, 180_000);
});
