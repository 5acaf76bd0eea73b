import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../../common/canonical';
import { RECEIPT_TYPE, ReceiptKeys, type PolicyReceipt } from '../../../common/receipt';
import { openStore } from '../../../collector/store';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { jsonBody, jsonSpan } from '../../helpers/otlp-bodies';
import { ADMIN_TOKEN, EXAMPLE_POLICY, metric, policyFile, putRollout, replaceFile } from '../../helpers/policy';

/**
 * Policy changes are audit events: the plane records each load and each refused reload (version,
 * content hash, source, result) as its own record with a signed receipt; GET /v1/audit/policy lists
 * them; a change forged on the public OTLP port is not one; `custody audit verify` checks the
 * receipts and that every decision names a version a recorded load put in force.
 */
const dataDir = tempDir('custody-policy-events-');
const example = fs.readFileSync(EXAMPLE_POLICY, 'utf8');
const v2 = example.replace('version: starter-1', 'version: starter-2');
const bad = v2.replace('effect: deny', 'effect: maybe');
const file = policyFile(example);
let custody: RunningCustody;

interface Listed {
  time: string;
  result: string;
  version: string;
  hash: string;
  source: string;
  error: string;
  receipt: string;
}
const listed = async (): Promise<Listed[]> => (await (await fetch(`${custody.url}/v1/audit/policy`)).json()).events;
const decisions = async (n: number) => {
  const run = await runAgent('calls.cjs', { custody, env: { CALLS: String(n), CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support' } });
  expect(run.code, run.stderr).toBe(0);
};
const verifyCli = () => spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--json'], { cwd: ROOT, encoding: 'utf8' });

beforeAll(async () => {
  custody = await startCustody({ dataDir, args: ['--policy', file], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' } });
  expect((await putRollout(custody.url, { percent: 100, reason: 'policy events test' })).status).toBe(200);
}, 120_000);

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('policy changes as audit events', () => {
  it('records the load at start, a reload and a refused reload, each signed by the plane', async () => {
    await decisions(4);
    await eventually(async () => (await listed()).length === 1, 30_000, 200);
    replaceFile(file, v2);
    await eventually(async () => (await listed()).length === 2, 30_000, 200);
    await decisions(4);
    replaceFile(file, bad);
    const events = await eventually(async () => {
      const e = await listed();
      return e.length === 3 ? e : undefined;
    }, 30_000, 200);
    expect(events.map((e) => [e.result, e.version, e.hash])).toEqual([
      ['refused', 'starter-2', sha256Hex(bad)],
      ['loaded', 'starter-2', sha256Hex(v2)],
      ['loaded', 'starter-1', sha256Hex(example)],
    ]);
    expect(events.every((e) => e.source === file)).toBe(true);
    expect(events[0]!.error).toMatch(/rules\.\d+\.effect/);
    // signed like decisions: the plane's published keys verify each receipt, which says the same
    const keys = new ReceiptKeys(await (await fetch(`${custody.url}/v1/policy/jwks.json`)).json());
    for (const e of events) {
      const check = keys.verify<PolicyReceipt>(e.receipt, RECEIPT_TYPE.POLICY);
      expect(check.ok, e.receipt).toBe(true);
      expect(check.ok && check.payload).toMatchObject({ result: e.result, version: e.version, hash: e.hash, source: e.source });
    }
    // the last good policy stays in force
    expect(await metric(custody.url, 'custody_policy_reload_errors_total')).toBe(1);
  }, 180_000);

  it('a policy change sent to the public OTLP port is kept in otel_traces only', async () => {
    const forged = jsonSpan('custody.policy.change', {
      attributes: [
        ['custody.policy.change.result', 'loaded'], ['custody.policy.version', 'evil-1'], ['custody.policy.hash', 'f'.repeat(64)],
        ['custody.policy.source', '/tmp/evil.yaml'], ['custody.policy.change.receipt', 'not.a.receipt'],
      ].map(([key, v]) => ({ key, value: { stringValue: v } })),
    });
    const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: jsonBody([forged]) });
    expect(res.status).toBe(200);
    await eventually(async () => ((await metric(custody.url, 'custody_spans_unverified_total', { reason: 'service_record_from_other_source' })) ?? 0) >= 1, 15_000, 200);
    expect((await listed()).map((e) => e.version)).not.toContain('evil-1');
  });

  it('custody audit verify: CLEAN, every decision names a loaded version', async () => {
    expect(await custody.stop()).toBe(0);
    const out = verifyCli();
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(r.findings, out.stdout.slice(0, 3000)).toEqual([]);
    expect(out.status).toBe(0);
    expect(r.policy).toMatchObject({ events: 3, loaded: 2, refused: 1, versions: ['starter-1', 'starter-2'] });
    // each run: one search decision (the second call reuses the cached allow), two denies
    expect(r.policy.decisions_checked).toBeGreaterThanOrEqual(6);
  }, 120_000);

  it('a policy change altered after the fact: its receipt no longer matches, and the decisions of that version name none', async () => {
    const store = await openStore({ dataDir, migrate: false });
    await store.client.command({ query: `ALTER TABLE custody.policy_events UPDATE version = 'starter-9' WHERE result = 'loaded' AND version = 'starter-2' SETTINGS mutations_sync = 2` });
    await store.close();
    const out = verifyCli();
    expect(out.status).toBe(1);
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(Object.keys(r.counts).sort()).toEqual(['policy_receipt_invalid', 'policy_version_unknown']);
    expect(r.findings.find((f) => f.kind === 'policy_version_unknown')!.message).toMatch(/name policy version 'starter-2'/);
  }, 120_000);
});
