import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sampleBucket } from '../../../common/audit-sample';
import { openStore, type Store } from '../../../collector/store';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, EXAMPLE_POLICY, metric, policyFile, putRollout } from '../../helpers/policy';

/**
 * Audit sampling that keeps the proof, through real processes: the example policy with
 * `audit: { sample: 0.01 }` on the low-risk `search`, one agent making 10,000 calls to it, another
 * whose `file-store` calls the plane denies. About 1 % of the search calls are stored whole and
 * the rest as stubs, exactly those whose bucket is past the rate; every denied call is stored
 * whole; the rollups count every call; and `custody audit verify` stays CLEAN and says how many calls were sampled out per tool.
 */
const CALLS = 10_000;
const RATE = 0.01;
const dataDir = tempDir('custody-sampling-');
const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' };
const policy = policyFile(
  fs.readFileSync(EXAMPLE_POLICY, 'utf8').replace(/(\n  search:\n    risk: low\n)/, `$1    audit: { sample: ${RATE} }\n`),
);
const searcher = `searcher-${randomUUID()}`;
const denied = `denied-${randomUUID()}`;
let custody: RunningCustody;

interface Row {
  trace_id: string;
  span_id: string;
  tool_id: string;
  decision: string;
  audit_sampled: boolean | number;
  attrs: string | number;
  purpose: string;
}

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('audit sampling through a real custody up', () => {
  beforeAll(async () => {
    expect(fs.readFileSync(policy, 'utf8')).toContain(`audit: { sample: ${RATE} }`);
    custody = await startCustody({ dataDir, args: ['--policy', policy], env });
    expect((await putRollout(custody.url, { percent: 100, reason: 'sampling test' })).status).toBe(200);
  }, 120_000);

  it(`makes ${CALLS} search calls and a few the plane denies`, async () => {
    const run = await runAgent('sequential-calls.cjs', {
      custody,
      env: { CALLS: String(CALLS), CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: searcher },
      timeoutMs: 540_000,
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report.results.filter((r: { ok: boolean }) => r.ok)).toHaveLength(CALLS);
    // search.query is allowed (sampled), file-store.delete denied (never sampled)
    const other = await runAgent('calls.cjs', { custody, env: { CALLS: '40', CUSTODY_SPONSOR_ID: 'bob', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: denied } });
    expect(other.code, other.stderr).toBe(0);
    expect(other.report.ended.filter((e: string) => e === 'ERR_POLICY_DENIED')).toHaveLength(20);
    await eventually(async () => ((await metric(custody.url, 'custody_tool_calls_total', { tool: 'search', decision: 'allow', cohort: 'canary' })) ?? 0) >= CALLS + 20, 120_000, 500);
  }, 600_000);

  it('counts the stubs on /metrics', async () => {
    expect(await metric(custody.url, 'custody_audit_sampled_out_total', { tool: 'search' })).toBeGreaterThan(CALLS * 0.9);
    expect(await metric(custody.url, 'custody_audit_sample_refused_total')).toBeUndefined();
    // the audit API says which calls are stubs
    const page = await (await fetch(`${custody.url}/v1/audit/events?agent_instance_id=${searcher}&limit=1000`)).json();
    const events = page.events as { audit_sampled: boolean; purpose: string; decision: string }[];
    expect(events).toHaveLength(1000);
    expect(events.filter((e) => e.audit_sampled).length).toBeGreaterThan(900);
    expect(events.every((e) => e.decision === 'allow')).toBe(true);
  });

  describe('once stopped', () => {
    let store: Store;
    let rows: Row[];
    beforeAll(async () => {
      expect(await custody.stop()).toBe(0);
      store = await openStore({ dataDir, migrate: false });
      rows = await store.rows<Row>(
        `SELECT trace_id, span_id, tool_id, decision, audit_sampled, length(attributes) AS attrs, purpose
          FROM custody.audit_events WHERE agent_instance_id IN ({a:String}, {b:String})`,
        { a: searcher, b: denied },
      );
    }, 120_000);
    afterAll(async () => {
      await store?.close();
    });

    it(`keeps about ${RATE * 100} % of the search calls whole: exactly those whose bucket is under the rate`, () => {
      const search = rows.filter((r) => r.tool_id === 'search');
      expect(search.length).toBeGreaterThanOrEqual(CALLS + 20);
      for (const r of search) expect(!!Number(r.audit_sampled), `${r.trace_id}/${r.span_id}`).toBe(sampleBucket(r.trace_id, r.span_id) >= RATE);
      const kept = search.filter((r) => !Number(r.audit_sampled)).length;
      // binomial(10,020, 0.01): mean 100, sd 10; five sd either way
      expect(kept).toBeGreaterThan(50);
      expect(kept).toBeLessThan(150);
      const stubs = search.filter((r) => Number(r.audit_sampled));
      expect(stubs.every((r) => Number(r.attrs) === 0 && r.purpose === '')).toBe(true);
    });

    it('never samples a denied call', () => {
      const deny = rows.filter((r) => r.decision === 'deny');
      expect(deny).toHaveLength(20);
      expect(deny.every((r) => !Number(r.audit_sampled) && Number(r.attrs) > 0)).toBe(true);
    });

    it('stores a stub without an otel_traces row, and the rollups count every call', async () => {
      const [traces] = await store.rows<{ n: string }>(
        `SELECT count() AS n FROM custody.otel_traces WHERE SpanAttributes['custody.agent_instance_id'] = {a:String} AND SpanName LIKE 'execute_tool%'`,
        { a: searcher },
      );
      const kept = rows.filter((r) => r.tool_id === 'search' && !Number(r.audit_sampled) && r.trace_id).length;
      const keptSearcher = (await store.rows<{ n: string }>(
        `SELECT count() AS n FROM custody.audit_events WHERE agent_instance_id = {a:String} AND NOT audit_sampled`, { a: searcher },
      ))[0]!;
      expect(Number(traces!.n)).toBe(Number(keptSearcher.n));
      expect(kept).toBeGreaterThan(0);
      const [rollup] = await store.rows<{ calls: string }>(`SELECT sum(calls) AS calls FROM custody.audit_rollup_1m WHERE tool_id = 'search'`);
      const [all] = await store.rows<{ calls: string }>(`SELECT count() AS calls FROM custody.audit_events WHERE tool_id = 'search'`);
      expect(Number(rollup!.calls)).toBe(Number(all!.calls));
      expect(Number(rollup!.calls)).toBeGreaterThanOrEqual(CALLS + 20);
    });

    it('verifies CLEAN and reports the calls sampled out per tool', async () => {
      await store.close();
      const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--json'], { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
      const r = JSON.parse(out.stdout) as VerifyReport;
      expect(r.findings, out.stdout.slice(0, 4000)).toEqual([]);
      expect(out.status).toBe(0);
      expect(r.ok).toBe(true);
      const stubs = rows.filter((r) => Number(r.audit_sampled)).length;
      expect(r.sampled_out.calls).toBe(stubs);
      expect(r.sampled_out.by_tool).toEqual({ search: stubs });
      expect(r.checked.chained_calls).toBe(r.checked.calls.calls);
      const text = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir], { cwd: ROOT, encoding: 'utf8' });
      expect(text.stdout).toMatch(/result: CLEAN/);
      expect(text.stdout).toMatch(new RegExp(`sampled out: ${stubs} calls stored as chained stubs.*search ${stubs}`));
    }, 300_000);
  });
});
