import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore } from '../../../collector/store';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { runAgent } from '../../helpers/agents';
import { CLI, ROOT, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../../helpers/policy';

/**
 * The edges of the evidence: a run shorter than one checkpoint period stopped with SIGTERM is
 * sealed whole; rows younger than a period plus the lag are pending, not a finding; and deleting
 * the last checkpoints with their rows verifies clean on its own but not against an anchored head.
 */
const AGENT_ENV = { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_POLICY_TIMEOUT_MS: '5000' };
const dirs: string[] = [];
let custody: RunningCustody | undefined;
afterAll(async () => {
  await custody?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const verify = (dataDir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) => {
  const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--json', ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: out.status, stderr: out.stderr, stdout: out.stdout, report: out.stdout ? (JSON.parse(out.stdout) as VerifyReport) : undefined };
};

async function run(dataDir: string, env: NodeJS.ProcessEnv = {}, callsMs = 3000): Promise<void> {
  custody = await startCustody({ dataDir, args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, ...env } });
  expect((await putRollout(custody.url, { percent: 100, reason: 'edges test' })).status).toBe(200);
  const agent = await runAgent('receipt-calls.cjs', { custody, env: { ...AGENT_ENV, CUSTODY_AGENT_INSTANCE_ID: `edges-${randomUUID()}`, CALLS_MS: String(callsMs) }, timeoutMs: 150_000 });
  expect(agent.code, agent.stderr).toBe(0);
  // SIGTERM: the graceful stop
  expect(await custody.stop('SIGTERM')).toBe(0);
  custody = undefined;
}

describe('a graceful stop seals everything stored', () => {
  const dataDir = tempDir('custody-edges-sigterm-');
  dirs.push(dataDir);
  let head: VerifyReport['head'];

  it('a few seconds of calls, then SIGTERM: CLEAN, nothing left unsealed', { timeout: 300_000 }, async () => {
    await run(dataDir);
    const v = verify(dataDir);
    expect(v.report!.findings, v.stdout).toEqual([]);
    expect(v.status).toBe(0);
    expect(v.report!.checked.rows_unsealed_after_last).toBe(0);
    expect(v.report!.checked.rows_pending).toBe(0);
    expect(v.report!.checked.calls.gated_executed).toBeGreaterThan(2);
    expect(v.report!.receipts.checked).toBe(true);
    const kinds = fs.readdirSync(path.join(dataDir, 'checkpoints')).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(fs.readFileSync(path.join(dataDir, 'checkpoints', f), 'utf8')).checkpoint.kind);
    expect(kinds).toContain('shutdown');
    head = v.report!.head;
    expect(head?.checkpoint_hash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('deleting the last checkpoints with their rows verifies clean alone, and fails against the anchored head', { timeout: 300_000 }, async () => {
    const anchored = head!;
    await run(dataDir);
    const full = verify(dataDir, ['--expect-head', verify(dataDir).report!.head!.checkpoint_hash]);
    expect(full.status, full.stdout).toBe(0);
    const newHead = full.report!.head!;
    expect(newHead.seq).toBeGreaterThan(anchored.seq);
    expect(full.report!.anchor).toEqual({ expected_head: newHead.checkpoint_hash, found: true });

    // the truncation: every checkpoint after the first run's head, its file, its leaf index and its rows
    const store = await openStore({ dataDir, migrate: false });
    const from = `fromUnixTimestamp64Milli(toInt64(${Date.parse(anchored.period_end)}))`;
    for (const t of ['audit_events', 'policy_decisions', 'token_events']) {
      await store.client.command({ query: `ALTER TABLE custody.${t} DELETE WHERE ingested_at >= ${from} SETTINGS mutations_sync = 2` });
    }
    await store.client.command({ query: `ALTER TABLE custody.audit_checkpoints DELETE WHERE seq > ${anchored.seq} SETTINGS mutations_sync = 2` });
    await store.client.command({ query: `ALTER TABLE custody.audit_checkpoint_leaves DELETE WHERE checkpoint_seq > ${anchored.seq} SETTINGS mutations_sync = 2` });
    await store.close();
    for (const f of fs.readdirSync(path.join(dataDir, 'checkpoints'))) {
      const m = /^0*(\d+)\.json$/.exec(f);
      if (m && Number(m[1]) > anchored.seq) fs.rmSync(path.join(dataDir, 'checkpoints', f));
    }

    const alone = verify(dataDir);
    expect(alone.report!.findings, alone.stdout).toEqual([]);
    expect(alone.status).toBe(0);
    expect(alone.report!.head).toEqual(anchored);

    const byHead = verify(dataDir, ['--expect-head', newHead.checkpoint_hash]);
    expect(byHead.status).toBe(1);
    expect(byHead.report!.counts).toEqual({ anchor_missing: 1 });
    expect(byHead.report!.findings[0]!.message).toContain(`the chain ends at checkpoint ${anchored.seq}`);
    const bySeq = verify(dataDir, ['--expect-seq', String(newHead.seq)]);
    expect(bySeq.status).toBe(1);
    expect(bySeq.report!.counts).toEqual({ anchor_missing: 1 });

    const usage = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--expect-head', 'not-a-hash'], { cwd: ROOT, encoding: 'utf8' });
    expect(usage.status).toBe(2);
    expect(usage.stderr).toMatch(/not a checkpoint hash/);
  });
});

describe('rows not sealed yet', () => {
  const dataDir = tempDir('custody-edges-pending-');
  dirs.push(dataDir);

  it('are pending while younger than a period plus the lag, and a finding after', { timeout: 300_000 }, async () => {
    await run(dataDir, { CUSTODY_CHECKPOINTER: 'off' }, 0);
    // the checkpoint directory an operator would keep, empty: nothing was sealed
    fs.mkdirSync(path.join(dataDir, 'checkpoints'), { recursive: true });
    const young = verify(dataDir);
    expect(young.report!.findings, young.stdout).toEqual([]);
    expect(young.status).toBe(0);
    expect(young.report!.checked.rows_pending).toBeGreaterThan(0);
    expect(young.report!.notes.join('\n')).toMatch(/pending, not yet sealed/);
    // the same rows, judged by a checkpointer that should have sealed them by now
    await new Promise((r) => setTimeout(r, 1500));
    const old = verify(dataDir, [], { CUSTODY_CHECKPOINT_PERIOD: '1s', CUSTODY_CHECKPOINT_LAG: '0s' });
    expect(old.status).toBe(1);
    expect(old.report!.counts).toEqual({ no_checkpoints: 1 });
  });
});
