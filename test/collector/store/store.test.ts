import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { migrate, openStore, type Store } from '../../../collector/store';
import { migrations } from '../../../collector/store/schema';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-store-'));
let store: Store | undefined;

afterAll(async () => {
  await store?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('embedded store', () => {
  it('creates every table on first open and is idempotent on the next', async () => {
    store = await openStore({ dataDir: dir });
    const rs = await store.client.query({
      query: "SELECT name FROM system.tables WHERE database = 'custody' ORDER BY name",
      format: 'JSONEachRow',
    });
    const names = (await rs.json<{ name: string }>()).map((r) => r.name);
    expect(names).toEqual(
      expect.arrayContaining(['otel_traces', 'audit_events', 'policy_decisions', 'token_events', 'rollout_events', 'audit_rollup_1m', 'token_rollup_1m', 'schema_migrations']),
    );
    expect(await migrate(store)).toEqual([]);
    const versions = migrations().map((m) => m.version);
    const applied = await store.client.query({ query: 'SELECT version FROM custody.schema_migrations FINAL ORDER BY version', format: 'JSONEachRow' });
    expect((await applied.json<{ version: number }>()).map((r) => Number(r.version))).toEqual(versions);
  });

  it('keeps audit retention at 90 days by default', async () => {
    const rs = await store!.client.query({ query: "SELECT engine_full FROM system.tables WHERE database='custody' AND name='audit_events'", format: 'JSONEachRow' });
    const [row] = await rs.json<{ engine_full: string }>();
    expect(row!.engine_full).toMatch(/TTL toDateTime\(timestamp\) \+ toIntervalDay\(90\)/);
  });

  it('fills the per-minute rollup from audit rows through the materialized view', async () => {
    // recent rows: older ones would fall to the 90-day TTL
    const base = Math.floor(Date.now() / 60_000) * 60_000 - 5 * 60_000;
    const rows = Array.from({ length: 100 }, (_, i) => ({
      timestamp: new Date(base + i * 100).toISOString(),
      end_timestamp: new Date(base + i * 100 + 5).toISOString(),
      sponsor_id: i < 2 ? '' : 'alice',
      agent_instance_id: 'a1',
      cohort: 'canary',
      tool_id: 'billing',
      decision: i === 5 ? 'error' : 'allow',
      policy_latency_ms: i + 0.5,
    }));
    await store!.client.insert({ table: 'custody.audit_events', values: rows, format: 'JSONEachRow' });
    const rs = await store!.client.query({
      query: `SELECT sum(calls) AS calls, sum(missing_sponsor) AS missing, sum(policy_errors) AS errors,
        quantilesTimingMerge(0.5, 0.95, 0.99)(latency_ms) AS q
        FROM custody.audit_rollup_1m WHERE cohort = 'canary'`,
      format: 'JSONEachRow',
    });
    const [r] = await rs.json<{ calls: string; missing: string; errors: string; q: number[] }>();
    expect(Number(r!.calls)).toBe(100);
    expect(Number(r!.missing)).toBe(2);
    expect(Number(r!.errors)).toBe(1);
    // latencies 0.5..99.5 rounded up: 1..100; p95 of 1..100 by quantileTiming
    expect(r!.q[1]).toBeGreaterThanOrEqual(95);
    expect(r!.q[1]).toBeLessThanOrEqual(96);
  });
});
