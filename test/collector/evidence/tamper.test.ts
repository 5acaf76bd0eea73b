import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainHash } from '../../../common/audit-chain';
import { openStore, type Store } from '../../../collector/store';
import type { Checkpointer } from '../../../collector/evidence/checkpoint';
import type { Finding } from '../../../collector/evidence/findings';
import type { CheckpointJournal } from '../../../collector/evidence/journal';
import { verifyAudit, type VerifyReport } from '../../../collector/evidence/verify';
import { CLI, ROOT, tempDir } from '../../helpers/custody';
import { Scenario, auditRow, checkpointerFor, command, insert, insertCalls, iso, minutesAgo, type Call } from '../../helpers/evidence';

/**
 * One store, nine sealed one-minute periods with three chained calls each (their decisions and
 * tokens too), then one kind of tampering per period: each must be reported at its place, and
 * the untouched period must stay quiet.
 */
const dir = tempDir('custody-evidence-tamper-');
const PERIOD = 60_000;
const base = minutesAgo(30);
const period = (k: number) => ({ start: base + k * PERIOD, end: base + (k + 1) * PERIOD });
let store: Store;
let cp: Checkpointer;
let journal: CheckpointJournal;
const scenario = new Scenario();
const byPeriod: Call[][] = [];

const verify = (): Promise<VerifyReport> =>
  verifyAudit({ store, journalDir: `${dir}/checkpoints`, journalRequired: true, localJwksFile: `${dir}/evidence/keys/jwks.json` });
const of = (r: VerifyReport, kind: Finding['kind']) => r.findings.filter((f) => f.kind === kind);
const key = (c: Call) => `${c.trace}/${c.span}`;

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
  ({ cp, journal } = await checkpointerFor(store, dir));
  for (let k = 0; k < 9; k++) {
    const { start } = period(k);
    const calls = [0, 1, 2].map((i) => scenario.call({ instance: `inst-${k}`, ts: start + 1000 + i * 5000 }));
    byPeriod.push(calls);
    await insertCalls(store, calls);
  }
  for (let k = 0; k < 9; k++) await cp.seal(period(k).start, period(k).end, 'periodic');
});

afterAll(async () => {
  await store?.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('tamper evidence', () => {
  it('a store as written verifies clean', async () => {
    const r = await verify();
    expect(r.counts).toEqual({});
    expect(r.ok).toBe(true);
    expect(r.checked.checkpoints).toBe(9);
    expect(r.checked.rows_verified).toBe(81);
    expect(r.checked.chained_calls).toBe(27);
    expect(r.head?.seq).toBe(9);
  });

  describe('after tampering', () => {
    let r: VerifyReport;
    let forged: Call;
    beforeAll(async () => {
      // period 1: one call's tool changed
      await command(store, `ALTER TABLE custody.audit_events UPDATE tool_id = 'admin-console' WHERE span_id = '${byPeriod[1]![1]!.span}'`);
      // period 2: one call deleted
      await command(store, `ALTER TABLE custody.audit_events DELETE WHERE span_id = '${byPeriod[2]![1]!.span}'`);
      // period 3: a forged call, chained correctly after the instance's last call, backdated into the sealed period
      const last = byPeriod[3]![2]!;
      forged = new Scenario().call({ instance: 'inst-3', ts: last.ts + 2000, ingested: last.ingested + 2000 });
      forged.seq = 4;
      forged.prevHash = chainHash({
        agent_instance_id: last.instance, seq: last.seq, prev_hash: last.prevHash, trace_id: last.trace, span_id: last.span,
        sponsor_id: last.sponsor, parent_agent_id: last.parent, tool_id: last.tool, action: last.action,
        policy_decision_id: last.decisionId, request_hash: last.requestHash, response_hash: last.requestHash, status: 'ok',
      });
      await insert(store, 'audit_events', [auditRow(forged)]);
      // period 4: the whole period dropped from all three tables
      for (const t of ['audit_events', 'policy_decisions', 'token_events']) {
        await command(store, `ALTER TABLE custody.${t} DELETE WHERE ingested_at >= fromUnixTimestamp64Milli(toInt64(${period(4).start})) AND ingested_at < fromUnixTimestamp64Milli(toInt64(${period(4).end}))`);
      }
      // checkpoint 6 (period 5): the file replaced by one with another root
      const file6 = journal.fileFor(6);
      const replaced = JSON.parse(fs.readFileSync(file6, 'utf8'));
      replaced.checkpoint.merkle_root = 'f'.repeat(64);
      fs.chmodSync(file6, 0o644);
      fs.writeFileSync(file6, JSON.stringify(replaced, null, 2));
      // checkpoint 7 (period 6): the file removed
      fs.unlinkSync(journal.fileFor(7));
      // period 7: a decision edited and the leaf index of checkpoint 8 rewritten to hide it
      await command(store, `ALTER TABLE custody.policy_decisions UPDATE decision = 'deny' WHERE policy_decision_id = '${byPeriod[7]![0]!.decisionId}'`);
      await command(store, `ALTER TABLE custody.audit_checkpoint_leaves DELETE WHERE checkpoint_seq = 8 AND source = 'policy_decisions'`);
      // checkpoint 9 (period 8): its row removed from the table
      await command(store, `ALTER TABLE custody.audit_checkpoints DELETE WHERE seq = 9`);
      // a token event written before the first checkpoint began
      const early = new Scenario().call({ instance: 'inst-early', ts: base - 600_000 });
      await insert(store, 'token_events', [{ timestamp: iso(early.ts), result: 'issued', kind: 'issue', jti: 'jti-early', sponsor_id: 'mallory', agent_instance_id: 'inst-early', tool_id: 'billing', ingested_at: iso(base - 300_000) }]);
      r = await verify();
    });

    it('names the altered row, and the chain break it causes', () => {
      const c = byPeriod[1]![1]!;
      expect(of(r, 'row_altered')).toEqual([expect.objectContaining({ checkpoint_seq: 2, table: 'audit_events', row_key: key(c) })]);
      expect(of(r, 'period_altered').map((f) => f.checkpoint_seq)).toContain(2);
      expect(of(r, 'chain_break')).toEqual([expect.objectContaining({ agent_instance_id: 'inst-1', seq: 3 })]);
      // the changed tool matches neither the call's decision nor its token
      expect(of(r, 'self_authorized').find((f) => f.span_id === c.span)?.reasons).toEqual([
        `decision ${c.decisionId} is for another tool`,
        `token ${c.jti} was issued for another tool`,
      ]);
    });

    it('names the deleted row, and the gap in the chain', () => {
      const c = byPeriod[2]![1]!;
      expect(of(r, 'row_removed').filter((f) => f.checkpoint_seq === 3)).toEqual([expect.objectContaining({ table: 'audit_events', row_key: key(c) })]);
      expect(of(r, 'chain_gap')).toEqual([expect.objectContaining({ agent_instance_id: 'inst-2', seq: 3 })]);
    });

    it('names the forged row, even with a well-formed chain, and calls it self-authorized', () => {
      expect(of(r, 'row_inserted')).toEqual([expect.objectContaining({ checkpoint_seq: 4, table: 'audit_events', row_key: key(forged) })]);
      expect(of(r, 'chain_break').concat(of(r, 'chain_gap'), of(r, 'chain_duplicate')).filter((f) => f.agent_instance_id === 'inst-3')).toEqual([]);
      expect(of(r, 'self_authorized').filter((f) => f.agent_instance_id === 'inst-3')).toEqual([
        expect.objectContaining({ seq: 4, span_id: forged.span, severity: 'critical' }),
      ]);
    });

    it('reports the dropped period with every row it held', () => {
      const dropped = of(r, 'row_removed').filter((f) => f.checkpoint_seq === 5);
      expect(dropped).toHaveLength(9);
      expect(new Set(dropped.map((f) => f.table))).toEqual(new Set(['audit_events', 'policy_decisions', 'token_events']));
      expect(dropped.map((f) => f.row_key)).toEqual(expect.arrayContaining(byPeriod[4]!.map(key)));
      const p = of(r, 'period_altered').find((f) => f.checkpoint_seq === 5)!;
      expect(p.message).toMatch(/9 rows sealed, 0 now/);
    });

    it('detects the replaced and the removed checkpoint file', () => {
      expect(of(r, 'checkpoint_copies_differ')).toEqual([expect.objectContaining({ checkpoint_seq: 6, file: journal.fileFor(6) })]);
      expect(of(r, 'checkpoint_signature_invalid')).toEqual([]); // the row's copy verifies and is used
      expect(of(r, 'checkpoint_file_missing')).toEqual([expect.objectContaining({ checkpoint_seq: 7 })]);
      expect(of(r, 'checkpoint_row_missing')).toEqual([expect.objectContaining({ checkpoint_seq: 9 })]);
      // periods 5 and 6 themselves are intact
      expect(of(r, 'period_altered').map((f) => f.checkpoint_seq).sort()).toEqual([2, 3, 4, 5, 8]);
    });

    it('says when the leaf index was rewritten too, so rows cannot be named', () => {
      expect(of(r, 'leaf_index_altered')).toEqual([expect.objectContaining({ checkpoint_seq: 8 })]);
      expect(of(r, 'period_altered').find((f) => f.checkpoint_seq === 8)?.message).toMatch(/policy_decisions 3→3/);
    });

    it('reports rows written before the first checkpoint', () => {
      expect(of(r, 'rows_unsealed')).toEqual([expect.objectContaining({ table: 'token_events', row_key: 'jti-early' })]);
    });

    it('leaves the untouched period alone and fails the run', () => {
      expect(r.findings.filter((f) => f.checkpoint_seq === 1)).toEqual([]);
      expect(r.findings.filter((f) => f.agent_instance_id === 'inst-0')).toEqual([]);
      expect(r.ok).toBe(false);
    });

    it('refuses to open the store while another process holds it (exit 2)', () => {
      const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir], { cwd: ROOT, encoding: 'utf8' });
      expect(out.status).toBe(2);
      expect(out.stderr).toMatch(/in use by another process.*stop it first/);
    });

    it('custody audit verify reports the same, exit 1, once the store is free', async () => {
      await store.close();
      const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir, '--json'], { cwd: ROOT, encoding: 'utf8' });
      expect(out.status, out.stderr).toBe(1);
      const cli = JSON.parse(out.stdout) as VerifyReport;
      expect(cli.counts).toEqual(r.counts);
      const text = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir], { cwd: ROOT, encoding: 'utf8' });
      expect(text.status).toBe(1);
      expect(text.stdout).toMatch(/CRITICAL row_altered/);
      expect(text.stdout).toMatch(/FINDINGS/);
    });
  });
});
