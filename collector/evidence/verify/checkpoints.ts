import type { JSONWebKeySet } from 'jose';
import { canonicalJson } from '../../../common/canonical';
import { TABLE } from '../../../common/names';
import type { Store } from '../../store';
import type { Findings } from '../findings';
import type { CheckpointJournal } from '../journal';
import { GENESIS_HASH, checkSignature, checkpointHash, parseSignedCheckpoint, type SignedCheckpoint } from '../record';
import { msOf, type Walked } from './types';

interface TableRow {
  seq: string | number;
  kind: string;
  period_start_ms: string | number;
  period_end_ms: string | number;
  row_count: string | number;
  merkle_root: string;
  prev_checkpoint_hash: string;
  checkpoint_hash: string;
  kid: string;
  signature: string;
  body: string;
}

const PAGE = 5000;

/** The rows of custody.audit_checkpoints in seq order, read a page at a time. */
export class CheckpointTable {
  readonly name: string;
  private buf: TableRow[] = [];
  private after = -1;
  private done = false;

  constructor(private readonly store: Store) {
    this.name = `${store.database}.${TABLE.AUDIT_CHECKPOINTS}`;
  }

  async next(): Promise<TableRow | undefined> {
    if (!this.buf.length && !this.done) {
      this.buf = await this.store.rows<TableRow>(
        `SELECT seq, kind, toUnixTimestamp64Milli(period_start) AS period_start_ms, toUnixTimestamp64Milli(period_end) AS period_end_ms,
          row_count, merkle_root, prev_checkpoint_hash, checkpoint_hash, kid, signature, body
        FROM ${this.name} WHERE seq > ${this.after} ORDER BY seq LIMIT ${PAGE}`,
      );
      if (this.buf.length < PAGE) this.done = true;
      if (this.buf.length) this.after = Number(this.buf[this.buf.length - 1]!.seq);
    }
    return this.buf.shift();
  }

  async peekSeq(): Promise<number | undefined> {
    if (!this.buf.length) {
      const r = await this.next();
      if (!r) return undefined;
      this.buf.unshift(r);
    }
    return Number(this.buf[0]!.seq);
  }

  /** The row's signed checkpoint, or why it cannot be taken (unparsable, or columns that disagree with its signed body). */
  parse(r: TableRow): SignedCheckpoint | string {
    try {
      const s = parseSignedCheckpoint({ checkpoint: JSON.parse(r.body), checkpoint_hash: r.checkpoint_hash, signature: r.signature }, `${this.name} seq ${r.seq}`);
      const c = s.checkpoint;
      const typed: [string, unknown, unknown][] = [
        ['seq', Number(r.seq), c.seq],
        ['kind', r.kind, c.kind],
        ['period_start', Number(r.period_start_ms), msOf(c.period_start)],
        ['period_end', Number(r.period_end_ms), msOf(c.period_end)],
        ['row_count', Number(r.row_count), c.row_count],
        ['merkle_root', r.merkle_root, c.merkle_root],
        ['prev_checkpoint_hash', r.prev_checkpoint_hash, c.prev_checkpoint_hash],
        ['kid', r.kid, c.kid],
      ];
      const off = typed.filter(([, a, b]) => a !== b).map(([n]) => n);
      if (off.length) return `its columns ${off.join(', ')} do not match its signed body`;
      return s;
    } catch (err) {
      return (err as Error).message;
    }
  }
}

export interface WalkResult {
  first?: Walked;
  last?: Walked;
  count: number;
}

/**
 * Walks the checkpoint chain over both copies (table and journal files) in seq order: each
 * checkpoint's copies must agree, its signature verify with a trusted key, its hash be the hash of
 * its body, and it must chain to the one before (seq, prev_checkpoint_hash, adjacent periods).
 * Every walked checkpoint is handed to `accept` in order.
 */
export async function walkCheckpoints(
  o: { store: Store; journal?: CheckpointJournal; journalPresent: boolean; trusted: JSONWebKeySet; findings: Findings },
  accept: (w: Walked, count: number) => Promise<void>,
): Promise<WalkResult> {
  const { findings, journal, trusted } = o;
  const table = new CheckpointTable(o.store);
  const fileSeqs = o.journalPresent ? journal!.list().seqs : [];
  const result: WalkResult = { count: 0 };

  const checkOne = async (seq: number, file: SignedCheckpoint | string | undefined, row: SignedCheckpoint | string | undefined, fileName?: string) => {
    const at = { checkpoint_seq: seq, ...(fileName ? { file: fileName } : {}) };
    if (typeof file === 'string') findings.add('checkpoint_unreadable', `checkpoint file ${fileName}: ${file}`, at);
    if (typeof row === 'string') findings.add('checkpoint_unreadable', `${table.name} seq ${seq}: ${row}`, at);
    const f = typeof file === 'object' ? file : undefined;
    const r = typeof row === 'object' ? row : undefined;
    if (o.journalPresent && file === undefined) findings.add('checkpoint_file_missing', `checkpoint ${seq} is in ${table.name} but its file ${fileName} is missing`, at);
    if (row === undefined && file !== undefined) findings.add('checkpoint_row_missing', `checkpoint ${seq} (${fileName}) has no row in ${table.name}`, at);
    const checks = new Map<SignedCheckpoint, Awaited<ReturnType<typeof checkSignature>>>();
    for (const s of [f, r]) if (s) checks.set(s, await checkSignature(s, trusted));
    let chosen: SignedCheckpoint | undefined;
    let from: Walked['from'] = 'file';
    if (f && r) {
      if (canonicalJson(f.checkpoint) !== canonicalJson(r.checkpoint) || f.signature !== r.signature) {
        const fOk = checks.get(f)!.ok;
        const rOk = checks.get(r)!.ok;
        findings.add(
          'checkpoint_copies_differ',
          `checkpoint ${seq}: the file ${fileName} and the row in ${table.name} differ (file signature ${fOk ? 'valid' : 'invalid'}, row signature ${rOk ? 'valid' : 'invalid'}); ${fOk || !rOk ? 'the file' : 'the row'} is used`,
          at,
        );
        chosen = fOk || !rOk ? f : r;
        from = chosen === f ? 'file' : 'table';
      } else chosen = f;
    } else {
      chosen = f ?? r;
      from = f ? 'file' : 'table';
    }
    if (!chosen) return;
    const c = chosen.checkpoint;
    const sig = checks.get(chosen)!;
    const hereAt = { ...at, period_start: c.period_start, period_end: c.period_end };
    if (!sig.ok) {
      findings.add(sig.code === 'unknown_key' ? 'checkpoint_unknown_key' : 'checkpoint_signature_invalid', `checkpoint ${seq} (${from === 'file' ? fileName : table.name}): ${sig.message}`, hereAt);
    }
    const recomputed = checkpointHash(c);
    if (chosen.checkpoint_hash && chosen.checkpoint_hash !== recomputed) {
      findings.add('checkpoint_chain_broken', `checkpoint ${seq}: its recorded checkpoint_hash is not the hash of its body`, hereAt);
    }
    if (c.seq !== seq) findings.add('checkpoint_chain_broken', `checkpoint ${seq} says it is checkpoint ${c.seq}`, hereAt);
    const w: Walked = { signed: { ...chosen, checkpoint_hash: recomputed }, start: msOf(c.period_start), end: msOf(c.period_end), from };
    if (!(w.end >= w.start)) findings.add('checkpoint_chain_broken', `checkpoint ${seq}: its period ends before it starts`, hereAt);
    const prev = result.last;
    if (!prev) {
      if (seq !== 1 || c.prev_checkpoint_hash !== GENESIS_HASH) {
        findings.add('checkpoint_chain_broken', seq !== 1 ? `checkpoints 1 to ${seq - 1} are missing from both copies` : `checkpoint 1 does not start the chain (prev_checkpoint_hash is not the genesis hash)`, hereAt);
      }
    } else {
      const p = prev.signed.checkpoint;
      if (seq !== p.seq + 1) findings.add('checkpoint_chain_broken', `checkpoints ${p.seq + 1} to ${seq - 1} are missing from both copies`, hereAt);
      else if (c.prev_checkpoint_hash !== prev.signed.checkpoint_hash) {
        findings.add('checkpoint_chain_broken', `checkpoint ${seq} does not chain to checkpoint ${p.seq} (prev_checkpoint_hash ${c.prev_checkpoint_hash.slice(0, 12)}…, hash of ${p.seq} ${prev.signed.checkpoint_hash.slice(0, 12)}…)`, hereAt);
      }
      if (w.start !== prev.end) {
        findings.add('checkpoint_chain_broken', `checkpoint ${seq} starts at ${c.period_start} but checkpoint ${p.seq} ended at ${p.period_end}`, hereAt);
      }
    }
    result.first ??= w;
    result.last = w;
    result.count += 1;
    await accept(w, result.count);
  };

  let fi = 0;
  for (;;) {
    const ts = await table.peekSeq();
    const fs_ = fi < fileSeqs.length ? fileSeqs[fi]! : undefined;
    if (ts === undefined && fs_ === undefined) break;
    const seq = ts === undefined ? fs_! : fs_ === undefined ? ts : Math.min(ts, fs_);
    let row: SignedCheckpoint | string | undefined;
    if (ts === seq) {
      row = table.parse((await table.next())!);
      while ((await table.peekSeq()) === seq) {
        await table.next();
        findings.add('checkpoint_copies_differ', `${table.name} holds more than one row for checkpoint ${seq}`, { checkpoint_seq: seq });
      }
    }
    let file: SignedCheckpoint | string | undefined;
    if (fs_ === seq) {
      fi += 1;
      try {
        file = journal!.read(seq);
      } catch (err) {
        file = (err as Error).message;
      }
    }
    await checkOne(seq, file, row, journal ? journal.fileFor(seq) : undefined);
  }
  return result;
}
