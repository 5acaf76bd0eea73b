import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import { ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';

const LOAD = path.join(ROOT, 'test/fixtures/exporter-load.mjs');
const ENV = { CUSTODY_CHECKPOINTER: 'off' };
const dataDir = tempDir('custody-durability-');

let custody: RunningCustody | undefined;
let store: Store | undefined;

afterAll(async () => {
  await custody?.stop('SIGKILL');
  await store?.close();
});

async function postOne(otlpUrl: string, traceId: string): Promise<number> {
  const t = BigInt(Date.now()) * 1_000_000n;
  const body = JSON.stringify({
    resourceSpans: [
      {
        scopeSpans: [
          {
            spans: [
              { traceId, spanId: '00000000000000a1', name: 'execute_tool after.restart', startTimeUnixNano: String(t), endTimeUnixNano: String(t + 1000n) },
            ],
          },
        ],
      },
    ],
  });
  const res = await fetch(`${otlpUrl}/v1/traces`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
  return res.status;
}

describe('durable acknowledgements', () => {
  const acks: { traceId: string; spans: number }[] = [];
  const beforeRestart = 'feedfacefeedfacefeedfacefeedface';
  const afterRestart = 'cafebabecafebabecafebabecafebabe';

  it('kill -9 of the collector during load from a separate process', async () => {
    custody = await startCustody({ command: 'collector', dataDir, env: ENV });
    expect(await postOne(custody.otlpUrl, beforeRestart)).toBe(200);
    const load = spawn(process.execPath, [LOAD, custody.otlpUrl], {
      cwd: ROOT,
      env: { ...process.env, BATCHES: '1000', SPANS: '200', CONCURRENCY: '4', FAILURES: '2' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    load.stdout!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => load.once('exit', resolve));
    await eventually(async () => (out.match(/^ACK /gm)?.length ?? 0) >= 20, 90_000);
    const killed = custody.proc;
    killed.kill('SIGKILL');
    await new Promise((r) => killed.once('exit', r));
    expect(await exited).toBe(0);
    expect(out).toMatch(/^DONE$/m);
    for (const m of out.matchAll(/^ACK ([0-9a-f]{32}) (\d+)$/gm)) acks.push({ traceId: m[1]!, spans: Number(m[2]) });
    // the load was cut short by the kill, not finished
    expect(acks.length).toBeGreaterThanOrEqual(20);
    expect(acks.length).toBeLessThan(1000);
  }, 180_000);

  it('restarts on the same data directory and takes spans again', async () => {
    custody = await startCustody({ command: 'collector', dataDir, env: ENV });
    expect(await postOne(custody.otlpUrl, afterRestart)).toBe(200);
    expect(await custody.stop()).toBe(0);
    custody = undefined;
  }, 120_000);

  it('every acknowledged span is stored, in otel_traces and audit_events', async () => {
    store = await openStore({ dataDir, migrate: false });
    const ids = acks.map((a) => a.traceId);
    const traces = await (
      await store.client.query({
        query: 'SELECT TraceId, uniqExact(SpanId) AS n FROM custody.otel_traces WHERE TraceId IN {ids:Array(String)} GROUP BY TraceId',
        query_params: { ids },
        format: 'JSONEachRow',
      })
    ).json<{ TraceId: string; n: string }>();
    const audit = await (
      await store.client.query({
        query: 'SELECT trace_id, uniqExact(span_id) AS n FROM custody.audit_events WHERE trace_id IN {ids:Array(String)} GROUP BY trace_id',
        query_params: { ids },
        format: 'JSONEachRow',
      })
    ).json<{ trace_id: string; n: string }>();
    const stored = new Map(traces.map((r) => [r.TraceId, Number(r.n)]));
    const storedCalls = new Map(audit.map((r) => [r.trace_id, Number(r.n)]));
    const missing = acks.filter((a) => stored.get(a.traceId) !== a.spans || storedCalls.get(a.traceId) !== a.spans - 1);
    expect(missing).toEqual([]);
  });

  it('spans from before the crash and after the restart survive', async () => {
    const rows = await (
      await store!.client.query({
        query: 'SELECT TraceId FROM custody.otel_traces WHERE TraceId IN {ids:Array(String)} ORDER BY TraceId',
        query_params: { ids: [beforeRestart, afterRestart] },
        format: 'JSONEachRow',
      })
    ).json<{ TraceId: string }>();
    expect(rows.map((r) => r.TraceId)).toEqual([afterRestart, beforeRestart]);
  });
});
