import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import generatedRoot from 'otlp-proto-root/build/src/generated/root';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import { ROOT, startCustody, type RunningCustody } from '../../helpers/custody';

const run = promisify(execFile);
const collectorTrace = (generatedRoot as any).opentelemetry.proto.collector.trace.v1;
const FIXTURE = path.join(ROOT, 'test/fixtures/exporter-otlp.mjs');

interface Exported {
  code: number;
  error?: string;
  spans: { traceId: string; spanId: string; name: string; sponsor?: string }[];
}

/** A child node process exporting spans with the stock exporters. */
async function exportFrom(kind: 'http' | 'proto', base: string, tag: string, opts: { gzip?: boolean; token?: string } = {}): Promise<Exported> {
  const { stdout } = await run(process.execPath, [FIXTURE, kind, base, ...(opts.gzip ? ['gzip'] : [])], {
    cwd: ROOT,
    env: { ...process.env, RUN: tag, ...(opts.token ? { INGEST_TOKEN: opts.token } : {}) },
    timeout: 60_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

const now = () => BigInt(Date.now()) * 1_000_000n;
const hex = (n: number) => [...crypto.getRandomValues(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, '0')).join('');

function jsonBody(spans: object[]) {
  return JSON.stringify({
    resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'raw-client' } }] }, scopeSpans: [{ spans }] }],
  });
}

function span(name: string, attrs: Record<string, string> = {}, over: Record<string, unknown> = {}) {
  const t = now();
  return {
    traceId: hex(16),
    spanId: hex(8),
    name,
    startTimeUnixNano: String(t),
    endTimeUnixNano: String(t + 2_000_000n),
    attributes: Object.entries(attrs).map(([key, v]) => ({ key, value: { stringValue: v } })),
    ...over,
  };
}

async function post(url: string, body: Buffer | string, headers: Record<string, string>) {
  const res = await fetch(`${url}/v1/traces`, { method: 'POST', body, headers });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

let custody: RunningCustody;
const exported: Exported[] = [];
const posted = { good: [] as string[], partialKept: [] as string[], noSponsor: '' };

beforeAll(async () => {
  custody = await startCustody();
});

afterAll(async () => {
  await custody?.stop();
});

describe('custody up ingests what the stock OTel JS exporters send', () => {
  it('prints the OTLP receiver address in its banner', () => {
    expect(custody.otlpUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(custody.output()).toMatch(/^ {2}OTLP {10}http:\/\/127\.0\.0\.1:\d+$/m);
  });

  for (const [kind, gzip] of [
    ['http', false],
    ['proto', false],
    ['proto', true],
    ['http', true],
  ] as const) {
    it(`${kind === 'http' ? 'OTLP/JSON' : 'OTLP/protobuf'}${gzip ? ' with gzip' : ''}: every span acknowledged`, async () => {
      const out = await exportFrom(kind, custody.otlpUrl, `${kind}${gzip ? '-gz' : ''}`, { gzip });
      expect(out.error).toBeUndefined();
      expect(out.code).toBe(0);
      expect(out.spans).toHaveLength(6);
      exported.push(out);
    });
  }
});

describe('bad input', () => {
  it('keeps the good spans of a request with one bad span and reports the bad one in partial_success', async () => {
    const good = [span('execute_tool a', { 'custody.sponsor_id': 'alice' }), span('plain work')];
    const bad = span('execute_tool b', {}, { traceId: '0'.repeat(32) });
    const res = await post(custody.otlpUrl, jsonBody([good[0]!, bad, good[1]!]), { 'Content-Type': 'application/json' });
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body.toString());
    expect(body.partialSuccess.rejectedSpans).toBe('1');
    expect(body.partialSuccess.errorMessage).toMatch(/execute_tool b.*trace_id/);
    posted.partialKept.push(...good.map((s) => s.spanId));
  });

  it('answers a protobuf request in protobuf, partial_success included', async () => {
    const request = collectorTrace.ExportTraceServiceRequest.fromObject({
      resourceSpans: [
        {
          scopeSpans: [
            {
              spans: [
                { traceId: Buffer.from(hex(16), 'hex'), spanId: Buffer.from(hex(8), 'hex'), name: 'ok', startTimeUnixNano: String(now()), endTimeUnixNano: String(now()) },
                { traceId: Buffer.from(hex(16), 'hex'), spanId: Buffer.from('ab', 'hex'), name: 'short id', startTimeUnixNano: String(now()), endTimeUnixNano: String(now()) },
                { traceId: Buffer.from(hex(16), 'hex'), spanId: Buffer.from(hex(8), 'hex'), name: 'no start', endTimeUnixNano: String(now()) },
              ],
            },
          ],
        },
      ],
    });
    const res = await post(custody.otlpUrl, Buffer.from(collectorTrace.ExportTraceServiceRequest.encode(request).finish()), {
      'Content-Type': 'application/x-protobuf',
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/x-protobuf');
    const response = collectorTrace.ExportTraceServiceResponse.decode(res.body);
    expect(Number(response.partialSuccess.rejectedSpans)).toBe(2);
    expect(response.partialSuccess.errorMessage).toMatch(/span_id must be 8 bytes.*start_time_unix_nano/);
  });

  it('malformed protobuf → 400 with a google.rpc.Status body', async () => {
    const res = await post(custody.otlpUrl, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]), { 'Content-Type': 'application/x-protobuf' });
    expect(res.status).toBe(400);
    // google.rpc.Status: field 1 code (3, INVALID_ARGUMENT), field 2 message
    expect([...res.body.subarray(0, 2)]).toEqual([0x08, 3]);
    expect(res.body.subarray(4).toString()).toMatch(/malformed OTLP protobuf/);
  });

  it('malformed JSON → 400 naming the problem', async () => {
    for (const [body, message] of [
      ['{"resourceSpans": [', /malformed OTLP JSON/],
      [jsonBody([span('x', {}, { attributes: [{ key: 'k', value: { intValue: 'ten' } }] })]), /intValue must be an integer/],
    ] as const) {
      const res = await post(custody.otlpUrl, body, { 'Content-Type': 'application/json' });
      expect(res.status).toBe(400);
      const parsed = JSON.parse(res.body.toString());
      expect(parsed.code).toBe(3);
      expect(parsed.error.code).toBe('invalid_request');
      expect(parsed.error.message).toMatch(message);
    }
  });

  it('wrong content type → 415', async () => {
    const res = await post(custody.otlpUrl, 'hello', { 'Content-Type': 'text/plain' });
    expect(res.status).toBe(415);
    expect(JSON.parse(res.body.toString()).error.code).toBe('unsupported_media_type');
  });

  it('a body over the limit → 413, also when only its gzip is small', async () => {
    const big = Buffer.alloc(17 * 1024 * 1024, 0x20);
    const res = await post(custody.otlpUrl, big, { 'Content-Type': 'application/json' });
    expect(res.status).toBe(413);
    const bomb = zlib.gzipSync(big);
    expect(bomb.length).toBeLessThan(100_000);
    const res2 = await post(custody.otlpUrl, bomb, { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' });
    expect(res2.status).toBe(413);
    expect(JSON.parse(res2.body.toString()).error.message).toMatch(/decompressed request body is over/);
  });

  it('a broken gzip body → 400; an unknown encoding → 415', async () => {
    const res = await post(custody.otlpUrl, Buffer.from('not gzip'), { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' });
    expect(res.status).toBe(400);
    const res2 = await post(custody.otlpUrl, Buffer.from('{}'), { 'Content-Type': 'application/json', 'Content-Encoding': 'br' });
    expect(res2.status).toBe(415);
  });

  it('only POST, and only the OTLP signal paths', async () => {
    expect((await fetch(`${custody.otlpUrl}/v1/traces`)).status).toBe(405);
    expect((await fetch(`${custody.otlpUrl}/v1/profiles`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } })).status).toBe(404);
  });

  it('the receiver is still up and stores after all that', async () => {
    const s = span('execute_tool after-bad-input');
    posted.noSponsor = s.spanId;
    const res = await post(custody.otlpUrl, jsonBody([s]), { 'Content-Type': 'application/json' });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({});
    posted.good.push(s.spanId);
  });
});

describe('metrics', () => {
  it('counts ingested and rejected spans and tool calls', async () => {
    const text = await (await fetch(`${custody.url}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    const spans = exported.reduce((n, e) => n + e.spans.length, 0) + posted.partialKept.length + 1 + 1;
    // custody's own roles report spans too: at least ours
    expect(value(/^custody_spans_ingested_total (\d+)/m)).toBeGreaterThanOrEqual(spans);
    expect(value(/^custody_spans_rejected_total\{reason="invalid_trace_id"\} (\d+)/m)).toBe(1);
    expect(value(/^custody_spans_rejected_total\{reason="invalid_span_id"\} (\d+)/m)).toBe(1);
    expect(value(/^custody_spans_rejected_total\{reason="invalid_timestamp"\} (\d+)/m)).toBe(1);
    // four exporter runs, each with two allowed canary calls with a sponsor and one without
    expect(value(/^custody_tool_calls_total\{tool="billing",decision="allow",cohort="canary"\} (\d+)/m)).toBe(12);
    expect(value(/^custody_tool_calls_total\{tool="billing",decision="deny",cohort="canary"\} (\d+)/m)).toBe(4);
  });
});

describe('batching', () => {
  it('inserts each request on its own (its deduplication token covers exactly its rows), none lost when many arrive at once', async () => {
    const inserts = async () => {
      const text = await (await fetch(`${custody.url}/metrics`)).text();
      return {
        count: Number(/^custody_ingest_insert_rows_count\{table="otel_traces"\} (\d+)/m.exec(text)?.[1] ?? 0),
        rows: Number(/^custody_ingest_insert_rows_sum\{table="otel_traces"\} (\d+)/m.exec(text)?.[1] ?? 0),
      };
    };
    const before = await inserts();
    const requests = 12;
    const statuses = await Promise.all(
      Array.from({ length: requests }, () =>
        post(custody.otlpUrl, jsonBody(Array.from({ length: 100 }, () => span('batched work'))), { 'Content-Type': 'application/json' }).then((r) => r.status),
      ),
    );
    expect(statuses).toEqual(Array(requests).fill(200));
    const after = await inserts();
    // custody's own roles may report a few spans meanwhile: count only what grew
    expect(after.rows - before.rows).toBeGreaterThanOrEqual(requests * 100);
    expect(after.count - before.count).toBeGreaterThanOrEqual(requests);
  });
});

describe('stored rows', () => {
  let store: Store;
  beforeAll(async () => {
    expect(await custody.stop()).toBe(0);
    store = await openStore({ dataDir: custody.dataDir, migrate: false });
  });
  afterAll(async () => {
    await store?.close();
  });

  const q = async <T>(query: string, params: Record<string, unknown> = {}) =>
    (await store.client.query({ query, query_params: params, format: 'JSONEachRow' })).json<T>();

  it('every exported span is in otel_traces, as the ClickHouse exporter writes it', async () => {
    const ids = exported.flatMap((e) => e.spans.map((s) => s.spanId));
    const rows = await q<{ SpanId: string; SpanName: string; SpanKind: string; StatusCode: string; ServiceName: string; Duration: string; pid: string; latency: string; events: string[]; links: number }>(
      `SELECT SpanId, SpanName, SpanKind, StatusCode, ServiceName, Duration, ResourceAttributes['process.pid'] AS pid,
        SpanAttributes['custody.policy.latency_ms'] AS latency, Events.Name AS events, length(Links.SpanId) AS links
       FROM custody.otel_traces WHERE SpanId IN {ids:Array(String)}`,
      { ids },
    );
    expect(rows.map((r) => r.SpanId).sort()).toEqual([...ids].sort());
    const byName = (n: string) => rows.filter((r) => r.SpanName === n);
    expect(new Set(byName('invoke_agent support').map((r) => r.SpanKind))).toEqual(new Set(['Server']));
    expect(new Set(byName('GET /refunds').map((r) => r.SpanKind))).toEqual(new Set(['Client']));
    expect(byName('GET /refunds').every((r) => Number(r.links) === 1)).toBe(true);
    const calls = byName('execute_tool billing.refund');
    expect(calls).toHaveLength(16);
    expect(new Set(calls.map((r) => r.SpanKind))).toEqual(new Set(['Internal']));
    expect(new Set(calls.map((r) => r.StatusCode))).toEqual(new Set(['Ok', 'Error']));
    expect(calls.every((r) => Number(r.Duration) === 5_000_000 && r.pid !== '' && r.events[0] === 'tool.started')).toBe(true);
    expect(new Set(calls.map((r) => r.latency))).toEqual(new Set(['12.5', '13.5', '14.5', '15.5']));
  });

  it('tool calls are in audit_events with typed columns; other spans are not', async () => {
    const all = exported.flatMap((e) => e.spans);
    const calls = all.filter((s) => s.name.startsWith('execute_tool'));
    const rows = await q<Record<string, unknown>>(`SELECT * EXCEPT (attributes), attributes FROM custody.audit_events WHERE span_id IN {ids:Array(String)}`, {
      ids: all.map((s) => s.spanId),
    });
    expect(rows.map((r) => r.span_id).sort()).toEqual(calls.map((s) => s.spanId).sort());
    const denied = rows.filter((r) => r.decision === 'deny');
    expect(denied).toHaveLength(4);
    for (const r of denied) {
      expect(r).toMatchObject({
        sponsor_id: 'alice@example.com',
        role: 'support',
        tool_id: 'billing',
        tool_name: 'billing.refund',
        action: 'refund',
        purpose: 'ticket 1',
        rule_id: 'support-may-refund',
        policy_latency_ms: 13.5,
        policy_cached: false,
        enforced: true,
        cohort: 'canary',
        status: 'error',
        error_type: 'policy_denied',
      });
      // 64-bit integers come back as numbers or strings depending on the output settings
      expect([Number(r.audit_seq), Number(r.duration_ns)]).toEqual([2, 5_000_000]);
      expect(r.agent_instance_id).toMatch(/^inst-/);
      expect(r.parent_agent_id).toMatch(/^parent-/);
      expect(r.attributes).toEqual({ 'x.tags': '["a","b"]', 'x.counts': '[1,2,3]' });
    }
    expect(rows.filter((r) => r.policy_cached === true)).toHaveLength(4);
    expect(new Set(rows.filter((r) => r.decision === 'allow').map((r) => r.status))).toEqual(new Set(['ok']));
  });

  it('a tool call without a sponsor is stored, and counted in the rollup the rules read', async () => {
    const missing = exported.flatMap((e) => e.spans.filter((s) => s.name.startsWith('execute_tool') && !s.sponsor).map((s) => s.spanId));
    expect(missing).toHaveLength(4);
    const rows = await q<{ span_id: string; sponsor_id: string }>(`SELECT span_id, sponsor_id FROM custody.audit_events WHERE span_id IN {ids:Array(String)}`, {
      ids: [...missing, posted.noSponsor],
    });
    expect(rows).toHaveLength(5);
    expect(rows.every((r) => r.sponsor_id === '')).toBe(true);
    const [rollup] = await q<{ missing: string }>(`SELECT sum(missing_sponsor) AS missing FROM custody.audit_rollup_1m WHERE tool_id IN ('billing', 'after-bad-input')`);
    expect(Number(rollup!.missing)).toBe(5);
  });

  it('the good spans of the partial request are stored, the bad one is not', async () => {
    const rows = await q<{ SpanName: string }>(`SELECT SpanName FROM custody.otel_traces WHERE ServiceName = 'raw-client' AND SpanName != 'batched work' ORDER BY SpanName`);
    expect(rows.map((r) => r.SpanName)).toEqual(['execute_tool a', 'execute_tool after-bad-input', 'plain work']);
  });
});

describe('bearer token', () => {
  let guarded: RunningCustody;
  beforeAll(async () => {
    guarded = await startCustody({ command: 'collector', env: { CUSTODY_INGEST_TOKEN: 's3cret', CUSTODY_CHECKPOINTER: 'off' } });
  });
  afterAll(async () => {
    await guarded?.stop();
  });

  it('401 without the token or with a wrong one; the stock exporter with it gets through', async () => {
    const body = jsonBody([span('x')]);
    expect((await post(guarded.otlpUrl, body, { 'Content-Type': 'application/json' })).status).toBe(401);
    const wrong = await post(guarded.otlpUrl, body, { 'Content-Type': 'application/json', Authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toBe('Bearer');
    expect((await post(guarded.otlpUrl, body, { 'Content-Type': 'application/json', Authorization: 'Bearer s3cret' })).status).toBe(200);
    const denied = await exportFrom('proto', guarded.otlpUrl, 'no-token');
    expect(denied.code).not.toBe(0);
    const out = await exportFrom('proto', guarded.otlpUrl, 'token', { token: 's3cret' });
    expect(out.code).toBe(0);
  });
});
