import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry } from '../../../common/metrics';
import { openStore, type Store } from '../../../collector/store';
import { Checkpointer } from '../../../collector/evidence/checkpoint';
import { CheckpointJournal } from '../../../collector/evidence/journal';
import { openAuditKeyRing, type AuditKeyRing } from '../../../collector/evidence/keys';
import { verifyAudit } from '../../../collector/evidence/verify';
import { tempDir } from '../../helpers/custody';
import { Scenario, command, insertCalls, minutesAgo } from '../../helpers/evidence';

/** The checkpointer's own life: ticking, catching up, late rows, repair after a crash, restarts. */
const dir = tempDir('custody-evidence-cp-');
let store: Store;
let keys: AuditKeyRing;
let journal: CheckpointJournal;
const s = new Scenario();

const make = (o: Partial<ConstructorParameters<typeof Checkpointer>[0]> = {}) =>
  new Checkpointer({ store, keys, journal, periodMs: 1000, lagMs: 0, ...o });
const verify = () => verifyAudit({ store, journalDir: journal.dir, journalRequired: true, localJwksFile: path.join(keys.dir, 'jwks.json') });
const tableSeqs = async () =>
  (await (await store.client.query({ query: 'SELECT seq FROM custody.audit_checkpoints ORDER BY seq', format: 'JSONEachRow' })).json<{ seq: string }>()).map((r) => Number(r.seq));
const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(await registry.metrics())?.[1] ?? 0);

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
  keys = await openAuditKeyRing({ dir: path.join(dir, 'evidence', 'keys') });
  journal = new CheckpointJournal(path.join(dir, 'checkpoints'));
});

afterAll(async () => {
  await store?.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the checkpointer', () => {
  it('seals rows already stored on its first tick, in several checkpoints when they are many', async () => {
    // an hour of history written before any checkpointer ran
    const base = minutesAgo(60);
    await insertCalls(store, Array.from({ length: 30 }, (_, i) => s.call({ instance: `legacy-${i % 3}`, ts: base + i * 60_000 })));
    const cp = make({ periodMs: 60_000, maxRowsPerCheckpoint: 40 });
    await cp.open();
    const sealed = await cp.tick();
    expect(sealed.length).toBeGreaterThan(2);
    expect(sealed.reduce((n, c) => n + c.checkpoint.row_count, 0)).toBe(90);
    expect(sealed[0]!.checkpoint.period_start).toBe(new Date(base).toISOString());
    for (const c of sealed) expect(c.checkpoint.row_count).toBeLessThanOrEqual(40 + 9);
    await cp.close();
    expect((await verify()).findings).toEqual([]);
  });

  it('ticks on its own at every period boundary and seals the open period at close', async () => {
    const cp = make();
    await cp.open();
    const first = cp.last!.checkpoint.seq;
    cp.start();
    const t = Date.now();
    // written now (the crafted decision and token rows are stamped up to 500 ms before the call's)
    await insertCalls(store, [s.call({ instance: 'live', ts: t, ingested: t + 600 })]);
    await new Promise((r) => setTimeout(r, 2600));
    await cp.close();
    const last = cp.last!.checkpoint;
    expect(last.kind).toBe('shutdown');
    expect(last.seq).toBeGreaterThanOrEqual(first + 2);
    expect(await tableSeqs()).toEqual(journal.list().seqs);
    expect((await verify()).findings).toEqual([]);
  });

  it('counts rows that land in a period after it was sealed', async () => {
    const cp = make({ periodMs: 2000 });
    await cp.open();
    await new Promise((r) => setTimeout(r, 2100));
    expect((await cp.tick()).length).toBe(1);
    const before = await metric('custody_audit_late_rows_total');
    const sealedEnd = Date.parse(cp.last!.checkpoint.period_end);
    // a row whose write time falls inside the period just sealed (an insert slower than the lag)
    await insertCalls(store, [s.call({ instance: 'late', ts: sealedEnd - 1500, ingested: sealedEnd - 100 })]);
    await new Promise((r) => setTimeout(r, 2100));
    await cp.tick();
    expect((await metric('custody_audit_late_rows_total')) - before).toBe(3);
    await cp.close();
    const r = await verify();
    expect(r.counts.row_inserted).toBe(3);
    // and it is taken out again for the rest of the file's checks
    await command(store, `ALTER TABLE custody.audit_events DELETE WHERE agent_instance_id = 'late'`);
    await command(store, `ALTER TABLE custody.policy_decisions DELETE WHERE agent_instance_id = 'late'`);
    await command(store, `ALTER TABLE custody.token_events DELETE WHERE agent_instance_id = 'late'`);
    expect((await verify()).findings).toEqual([]);
  });

  it('finishes a seal cut short after the file was written: the row is inserted at the next start', async () => {
    const cp = make();
    await cp.open();
    await cp.close();
    const seq = cp.last!.checkpoint.seq;
    await command(store, `ALTER TABLE custody.audit_checkpoints DELETE WHERE seq = ${seq}`);
    expect(await tableSeqs()).not.toContain(seq);
    const again = make();
    await again.open({ startupSeal: false });
    expect(await tableSeqs()).toContain(seq);
    expect(again.last!.checkpoint.seq).toBe(seq);
    expect((await verify()).findings).toEqual([]);
  });

  it('calls out rows written between a clean shutdown and the next start', async () => {
    const cp = make();
    await cp.open();
    await cp.close();
    const stoppedAt = Date.parse(cp.last!.checkpoint.period_end);
    // written while nothing was running
    await insertCalls(store, [s.call({ instance: 'while-stopped', ts: stoppedAt + 100, ingested: stoppedAt + 700 })]);
    await new Promise((r) => setTimeout(r, 900));
    const next = make();
    await next.open();
    expect(next.last!.checkpoint).toMatchObject({ kind: 'startup', row_count: 3 });
    await next.close();
    const r = await verify();
    expect(r.findings).toEqual([expect.objectContaining({ kind: 'rows_written_while_stopped', checkpoint_seq: next.last!.checkpoint.seq - 1 })]);
  });
});
