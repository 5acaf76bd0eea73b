import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { afterAll, describe, expect, it } from 'vitest';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { createOtlpHandler } from '../../../collector/ingest/receiver';
import { createBatchWriter } from '../../../collector/ingest/writer';
import { openStore, type Store } from '../../../collector/store';
import { createLogger } from '../../../common/log';
import { auditEventsOf, runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../../helpers/policy';

/**
 * Exactly-once audit rows under at-least-once delivery. Real agents export through a loopback
 * relay that keeps every OTLP request it forwards; each request is then sent to custody again,
 * as an exporter does when it did not get the answer. And a request whose rows went into some
 * tables but not others (a real insert refused by ClickHouse) is sent again whole. Every table
 * must hold one row per call, the rollups must count each call once, and `custody audit verify`
 * must be CLEAN.
 */

interface Captured {
  body: Buffer;
  headers: Record<string, string>;
}

/** Forwards POST /v1/traces to `target` and keeps each request as it was sent. */
async function relay(target: string): Promise<{ url: string; captured: Captured[]; close(): Promise<void> }> {
  const captured: Captured[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const headers: Record<string, string> = {};
      for (const h of ['content-type', 'content-encoding']) if (req.headers[h]) headers[h] = String(req.headers[h]);
      const body = Buffer.concat(chunks);
      try {
        const r = await fetch(`${target}${req.url}`, { method: 'POST', body, headers });
        if (r.status === 200) captured.push({ body, headers });
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/octet-stream' });
        res.end(Buffer.from(await r.arrayBuffer()));
      } catch {
        res.writeHead(502).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, captured, close: () => new Promise((r) => server.close(() => r())) };
}

async function rows<T>(store: Store, query: string): Promise<T[]> {
  return (await store.client.query({ query, format: 'JSONEachRow' })).json<T>();
}

interface TableCounts {
  traces: number;
  traceSpans: number;
  audit: number;
  auditSpans: number;
  decisions: number;
  decisionIds: number;
  rollupCalls: number;
  rollupChecks: number;
  auditChecks: number;
}

/** Row counts and distinct keys per table; equal pairs mean no call is stored twice (plane checks as the rollup counts them: unverified spans' are not). */
async function counts(store: Store): Promise<TableCounts> {
  const [t] = await rows<{ n: string; u: string }>(store, 'SELECT count() AS n, uniqExact(TraceId, SpanId) AS u FROM custody.otel_traces');
  const [a] = await rows<{ n: string; u: string; checks: string }>(
    store,
    "SELECT count() AS n, uniqExact(trace_id, span_id) AS u, countIf((decision = 'error' OR (decision != '' AND NOT policy_cached)) AND trust != 'unverified') AS checks FROM custody.audit_events",
  );
  const [d] = await rows<{ n: string; u: string }>(store, 'SELECT count() AS n, uniqExact(policy_decision_id) AS u FROM custody.policy_decisions');
  const [r] = await rows<{ calls: string; checks: string }>(store, 'SELECT sum(calls) AS calls, sum(policy_checks) AS checks FROM custody.audit_rollup_1m');
  return {
    traces: Number(t!.n),
    traceSpans: Number(t!.u),
    audit: Number(a!.n),
    auditSpans: Number(a!.u),
    decisions: Number(d!.n),
    decisionIds: Number(d!.u),
    rollupCalls: Number(r!.calls),
    rollupChecks: Number(r!.checks),
    auditChecks: Number(a!.checks),
  };
}

function expectOncePerCall(c: TableCounts): void {
  expect(c.traces).toBe(c.traceSpans);
  expect(c.audit).toBe(c.auditSpans);
  expect(c.decisions).toBe(c.decisionIds);
  expect(c.rollupCalls).toBe(c.audit);
  expect(c.rollupChecks).toBe(c.auditChecks);
}

const verifyCli = (dataDir: string) => spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--json'], { cwd: ROOT, encoding: 'utf8' });

describe('a retried OTLP request is stored once (real agents, real custody up)', () => {
  const dataDir = tempDir('custody-dedup-up-');
  let custody: RunningCustody | undefined;
  let proxy: Awaited<ReturnType<typeof relay>> | undefined;
  let store: Store | undefined;
  afterAll(async () => {
    await proxy?.close();
    await custody?.stop();
    await store?.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('every request sent twice: one row per call in every table, rollups count once, verify CLEAN', async () => {
    const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' };
    custody = await startCustody({ dataDir, args: ['--policy', policyFile()], env });
    expect((await putRollout(custody.url, { percent: 100, reason: 'dedup test' })).status).toBe(200);
    proxy = await relay(custody.otlpUrl);

    const root = `dedup-${randomUUID()}`;
    const run = await runAgent('calls.cjs', {
      custody,
      timeoutMs: 120_000,
      env: { CALLS: '8', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: root, OTEL_EXPORTER_OTLP_ENDPOINT: proxy.url,
        // this test is about storage, not latency: a loaded machine must not fail the calls closed
        CUSTODY_POLICY_TIMEOUT_MS: '5000' },
    });
    expect(run.code, `${run.stderr}\n${custody.output()}`).toBe(0);
    expect(run.report.ended).toEqual(['ran', 'ERR_POLICY_DENIED', 'ran', 'ERR_POLICY_DENIED', 'ran', 'ERR_POLICY_DENIED', 'ran', 'ERR_POLICY_DENIED']);
    const first = await auditEventsOf(custody, root, 8);
    expect(proxy.captured.length).toBeGreaterThan(0);

    // the exporter did not get the answers: every request again, twice, and some at once
    for (const c of proxy.captured) {
      const again = await Promise.all([0, 1].map(() => fetch(`${custody!.otlpUrl}/v1/traces`, { method: 'POST', body: c.body, headers: c.headers })));
      for (const r of again) expect(r.status).toBe(200);
    }
    const after = await auditEventsOf(custody, root, 8);
    expect(after.length).toBe(first.length);
    // let the checkpointer seal what is there, then stop: verify runs on the stopped store
    await new Promise((r) => setTimeout(r, 3500));
    expect(await custody.stop()).toBe(0);
    custody = undefined;

    store = await openStore({ dataDir, migrate: false });
    const c = await counts(store);
    expect(c.audit).toBe(8);
    // denials always ask the plane; repeated allows may come from the enforcer's cache
    expect(c.decisions).toBeGreaterThanOrEqual(5);
    expectOncePerCall(c);
    await store.close();
    store = undefined;

    const out = verifyCli(dataDir);
    const report = JSON.parse(out.stdout) as VerifyReport;
    expect(report.findings, out.stdout).toEqual([]);
    expect(report.ok).toBe(true);
    expect(out.status).toBe(0);
    expect(report.checked.calls.calls).toBe(c.audit);
  }, 180_000);
});

describe('a request stored in some tables but not others, then sent again', () => {
  const dataDir = tempDir('custody-dedup-partial-');
  let store: Store | undefined;
  let server: http.Server | undefined;
  afterAll(async () => {
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    await store?.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  const hex = (n: number) => [...crypto.getRandomValues(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, '0')).join('');
  const t0 = BigInt(Date.now()) * 1_000_000n;
  const spans = Array.from({ length: 20 }, (_, i) => ({
    traceId: hex(16),
    spanId: hex(8),
    name: 'execute_tool crm.lookup',
    startTimeUnixNano: String(t0 + BigInt(i) * 1_000_000n),
    endTimeUnixNano: String(t0 + BigInt(i) * 1_000_000n + 3_000_000n),
    attributes: Object.entries({
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.name': 'crm.lookup',
      'custody.sponsor_id': 'alice',
      'custody.agent_instance_id': 'partial-agent',
      'custody.policy.decision': 'allow',
      'custody.policy_decision_id': `dec-${i}`,
      'custody.rollout.cohort': 'canary',
    }).map(([key, v]) => ({ key, value: { stringValue: v } })),
  }));
  const body = JSON.stringify({
    resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'partial' } }] }, scopeSpans: [{ spans }] }],
  });

  it('the retry fills the table that failed and adds nothing to the ones that held', async () => {
    store = await openStore({ dataDir });
    const writer = createBatchWriter({ store, probeIntervalMs: 50 });
    const handler = createOtlpHandler({ writer, log: createLogger('dedup-test', 'silent') });
    server = http.createServer((req, res) => void handler(req, res));
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/v1/traces`;
    const post = () => fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } });

    // ClickHouse refuses these rows in audit_events only (a real constraint, a real refused insert)
    await store.client.command({ query: "ALTER TABLE custody.audit_events ADD CONSTRAINT refuse_for_test CHECK tool_name != 'crm.lookup'" });
    const failed = await post();
    // rows ClickHouse refuses are this request's fault, not an outage: 400, and the storage stays in use
    expect(failed.status).toBe(400);
    const partial = await counts(store);
    expect(partial.audit).toBe(0);
    expect(partial.rollupCalls).toBe(0);

    await store.client.command({ query: 'ALTER TABLE custody.audit_events DROP CONSTRAINT refuse_for_test' });
    // the writer takes writes again once storage answers
    await eventually(async () => writer.available, 10_000, 20);
    const ok = await post();
    expect(ok.status).toBe(200);
    // and once more, as a client that lost the answer would
    expect((await post()).status).toBe(200);

    const c = await counts(store);
    expect(c.traces).toBe(spans.length);
    expect(c.audit).toBe(spans.length);
    expect(c.rollupCalls).toBe(spans.length);
    expectOncePerCall(c);
    // the partial state did happen: the raw spans were stored by the first attempt
    expect(partial.traces === 0 || partial.traces === spans.length).toBe(true);
    await writer.close();
  }, 60_000);
});
