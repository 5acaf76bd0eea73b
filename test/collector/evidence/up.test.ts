import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../../collector/store';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { auditEventsOf, runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../../helpers/policy';

/**
 * The evidence layer end to end, through real processes: `custody up` sealing every 2 s, agents
 * making real tool calls (tokens from the token service, decisions from the policy plane, spans
 * through the OTLP receiver, chained by custody/register), a key rotation, a restart, and then
 * `custody audit verify` on the stopped store: clean, and after one UPDATE, not.
 */
const dataDir = tempDir('custody-evidence-up-');
const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' };
const policy = policyFile();
let custody: RunningCustody;

const verifyCli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, ...args], { cwd: ROOT, encoding: 'utf8' });
const up = () => startCustody({ dataDir, args: ['--policy', policy], env });

async function checkpoints(): Promise<Array<{ checkpoint: { seq: number; row_count: number; kind: string; kid: string } }>> {
  const res = await fetch(`${custody.url}/v1/audit/checkpoints?limit=1000`);
  expect(res.status).toBe(200);
  return (await res.json()).checkpoints;
}

async function agentRound(tag: string): Promise<string[]> {
  const root = `${tag}-${randomUUID()}`;
  const log = path.join(tempDir('custody-mcp-'), 'mcp.log');
  const run = await runAgent('chain.cjs', { custody, env: { MCP_LOG: log, CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: root } });
  expect(run.code, run.stderr).toBe(0);
  const sub = run.report.sub.agent.agentInstanceId as string;
  const child = run.report.child.agent.agentInstanceId as string;
  await auditEventsOf(custody, root, 1);
  await auditEventsOf(custody, sub, 2);
  await auditEventsOf(custody, child, 2);
  return [root, sub, child];
}

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('evidence through a real custody up', () => {
  let kids: string[] = [];
  beforeAll(async () => {
    custody = await up();
    expect((await putRollout(custody.url, { percent: 100, reason: 'evidence test' })).status).toBe(200);
  });

  it('publishes its checkpoint key and seals periods as agents work', async () => {
    const jwks = await (await fetch(`${custody.url}/v1/audit/keys`)).json();
    const wellKnown = await (await fetch(`${custody.url}/.well-known/custody-audit-jwks.json`)).json();
    expect(wellKnown).toEqual(jwks);
    expect(jwks.keys).toEqual([expect.objectContaining({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig' })]);
    expect(jwks.keys[0].d).toBeUndefined();
    kids = [jwks.keys[0].kid];

    await agentRound('before-rotation');
    // the rows are sealed within a period plus the lag
    await eventually(async () => (await checkpoints()).some((c) => c.checkpoint.row_count > 0), 20_000);
    expect(custody.output()).toMatch(/checkpoints\s+every 2s \(lag 1s\)/);
  });

  it('rotates its key on the admin API and keeps the retired one published', async () => {
    const refused = await fetch(`${custody.url}/v1/audit/keys/rotate`, { method: 'POST' });
    expect(refused.status).toBe(401);
    const res = await fetch(`${custody.url}/v1/audit/keys/rotate`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.retired).toBe(kids[0]);
    kids.push(body.kid);
    const jwks = await (await fetch(`${custody.url}/v1/audit/keys`)).json();
    expect(jwks.keys.map((k: { kid: string }) => k.kid)).toEqual([body.kid, kids[0]]);
    await agentRound('after-rotation');
    await eventually(async () => (await checkpoints()).some((c) => c.checkpoint.kid === body.kid && c.checkpoint.row_count > 0), 20_000);
  });

  it('refuses to verify the embedded store while custody runs on it', () => {
    const out = verifyCli();
    expect(out.status).toBe(2);
    expect(out.stderr).toMatch(/in use by another process/);
  });

  it('verifies clean once stopped, across a restart, every call authorized', async () => {
    expect(await custody.stop()).toBe(0);
    custody = await up();
    await agentRound('after-restart');
    expect(await custody.stop()).toBe(0);
    const out = verifyCli('--json');
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(r.findings, out.stdout).toEqual([]);
    expect(out.status).toBe(0);
    expect(r.ok).toBe(true);
    expect(r.checked.rows_unsealed_after_last).toBe(0);
    expect(r.checked.calls.gated_executed).toBeGreaterThanOrEqual(12);
    expect(r.checked.calls.blocked).toBeGreaterThanOrEqual(3);
    expect(r.checked.chained_calls).toBe(r.checked.calls.calls);
    expect(r.keys.map((k) => k.kid).sort()).toEqual([...kids].sort());
    const files = fs.readdirSync(path.join(dataDir, 'checkpoints')).filter((f) => f.endsWith('.json'));
    expect(files).toHaveLength(r.checked.checkpoints);
    const kinds = files.map((f) => JSON.parse(fs.readFileSync(path.join(dataDir, 'checkpoints', f), 'utf8')).checkpoint.kind);
    expect(kinds.filter((k) => k === 'shutdown')).toHaveLength(2);
    expect(kinds.filter((k) => k === 'startup')).toHaveLength(1);
  });

  it('after an UPDATE of one stored call, names it and exits 1', async () => {
    const store = await openStore({ dataDir, migrate: false });
    const rs = await store.client.query({ query: `SELECT trace_id, span_id, agent_instance_id, audit_seq FROM custody.audit_events WHERE audit_seq = 1 AND status = 'ok' LIMIT 1`, format: 'JSONEachRow' });
    const [row] = await rs.json<{ trace_id: string; span_id: string; agent_instance_id: string; audit_seq: number }>();
    await store.client.command({ query: `ALTER TABLE custody.audit_events UPDATE purpose = 'nothing to see' WHERE span_id = '${row!.span_id}' SETTINGS mutations_sync = 2` });
    await store.close();
    const out = verifyCli('--json');
    expect(out.status).toBe(1);
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(r.findings.filter((f) => f.kind === 'row_altered')).toEqual([expect.objectContaining({ table: 'audit_events', row_key: `${row!.trace_id}/${row!.span_id}` })]);
    // purpose is not in the agent's chain, so only the Merkle check sees this one
    expect(Object.keys(r.counts).sort()).toEqual(['period_altered', 'row_altered']);
  });
});

describe('the seed scenario (npm start) verifies clean', () => {
  const seedDir = tempDir('custody-evidence-seed-');
  let seed: RunningCustody | undefined;
  afterAll(async () => {
    await seed?.stop();
    fs.rmSync(seedDir, { recursive: true, force: true });
  });

  it('sponsors, sub-agents, denials, an outage, an agent without a sponsor and a rollback: clean', async () => {
    seed = await startCustody({ demo: true, dataDir: seedDir });
    await eventually(async () => seed!.output().includes('custody keeps serving'), 240_000, 500);
    expect(await seed.stop()).toBe(0);
    seed = undefined;
    const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', seedDir, '--json'], { cwd: ROOT, encoding: 'utf8' });
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(r.findings, out.stdout).toEqual([]);
    expect(out.status).toBe(0);
    const calls = r.checked.calls;
    // how many ran enforced before the rollback depends on the machine's speed (a loaded one refuses
    // more calls for want of a decision within 200 ms, and rolls back sooner); some always do
    expect(calls.gated_executed).toBeGreaterThan(0);
    expect(calls.blocked).toBeGreaterThan(0); // denials and the outage, failed closed
    expect(calls.shadow).toBeGreaterThan(0); // the fleet outside the canary, and everyone after the rollback
    expect(r.checked.chained_calls).toBe(calls.calls);
    // the agent without a sponsor was refused: listed, not a finding
    expect(r.blocked_without_sponsor.calls).toBeGreaterThan(0);
    expect(r.blocked_without_sponsor.listed.every((c) => c.agent_instance_id.startsWith('unsponsored'))).toBe(true);
  }, 300_000);
});
