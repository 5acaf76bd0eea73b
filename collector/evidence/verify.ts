import fs from 'node:fs';
import type { JSONWebKeySet, JWK } from 'jose';
import { canonicalJson } from '../../common/canonical';
import { TABLE } from '../../common/names';
import type { Store } from '../store';
import { chainBreaksSql, type ChainBreak } from './chain';
import { problemsSql, reportProblem, totalsSql, type CompletenessTotals, type ListedCall, type ProblemRow } from './completeness';
import { Findings, type Finding, type FindingKind } from './findings';
import { CheckpointJournal } from './journal';
import { readJwksFile } from './keys';
import { EMPTY_ROOT } from './merkle';
import { countRows, diffPeriod, leafIndexCount, rootOfLeafIndex, rootsOfPeriods, rowsInRange, type PeriodBounds, type PeriodTotals } from './periods';
import { GENESIS_HASH, checkSignature, checkpointHash, parseSignedCheckpoint, type SignedCheckpoint } from './record';
import { SEALED_TABLES } from './rows';

/**
 * `custody audit verify`, offline: the stored rows against the signed checkpoints (both copies,
 * their signatures, their hash chain, every period's Merkle root), every agent instance's audit
 * chain, and the completeness of authorization. Work is done in pages (batches of periods,
 * ranges of agent instances), with hashing inside ClickHouse, so memory stays flat however much
 * is stored; findings are counted in full and listed up to a cap per kind.
 */

export interface VerifyProgress {
  phase: 'checkpoints' | 'periods' | 'calls';
  done: number;
  total?: number;
}

export interface VerifyOptions {
  store: Store;
  /** The checkpoint directory; `journalRequired` makes its absence a finding. */
  journalDir?: string;
  journalRequired?: boolean;
  /** Trusted public keys; when given, the only ones accepted. */
  jwks?: JSONWebKeySet;
  /** The collector's own key set file (<data-dir>/evidence/keys/jwks.json), if at hand. */
  localJwksFile?: string;
  /** Verify periods, chains and calls from this time on (epoch ms); the checkpoint chain is always walked whole. */
  sinceMs?: number;
  nowMs?: number;
  clockSkewMs?: number;
  maxListedPerKind?: number;
  /** Rows per page (periods batch, instance range). */
  pageRows?: number;
  /** Audit retention; removed rows older than this are expired, not findings. Default: the table's TTL. */
  retentionDays?: number;
  onProgress?: (p: VerifyProgress) => void;
}

export interface VerifyReport {
  ok: boolean;
  checked: {
    checkpoints: number;
    periods_verified: number;
    rows_verified: number;
    rows_unsealed_after_last: number;
    instances: number;
    chained_calls: number;
    unchained_calls: number;
    calls: CompletenessTotals;
  };
  head?: { seq: number; checkpoint_hash: string; period_end: string };
  keys: { kid: string; source: string }[];
  findings: Finding[];
  counts: Partial<Record<FindingKind, number>>;
  not_listed: number;
  shadow: { calls: number; would_deny: number; listed: ListedCall[] };
  /** Calls without a sponsor that custody refused: listed, not findings. */
  blocked_without_sponsor: { calls: number; listed: ListedCall[] };
  notes: string[];
}

interface Walked {
  signed: SignedCheckpoint;
  start: number;
  end: number;
  /** Where the copy used came from. */
  from: 'table' | 'file';
}

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

async function query<T>(store: Store, sql: string, params?: Record<string, unknown>): Promise<T[]> {
  const rs = await store.client.query({ query: sql, format: 'JSONEachRow', ...(params ? { query_params: params } : {}) });
  return rs.json<T>();
}

const iso = (ms: number) => new Date(ms).toISOString();
const msOf = (text: string) => Date.parse(text);

async function tableRetentionDays(store: Store): Promise<number | undefined> {
  const [r] = await query<{ engine_full: string }>(
    store,
    `SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}`,
    { db: store.database, t: TABLE.AUDIT_EVENTS },
  );
  const m = r ? /toIntervalDay\((\d+)\)/.exec(r.engine_full) : null;
  return m ? Number(m[1]) : undefined;
}

export async function verifyAudit(options: VerifyOptions): Promise<VerifyReport> {
  const { store } = options;
  const now = options.nowMs ?? Date.now();
  const pageRows = options.pageRows ?? 200_000;
  const maxListed = options.maxListedPerKind ?? 200;
  const skew = options.clockSkewMs ?? 1000;
  const progress = options.onProgress ?? (() => undefined);
  const findings = new Findings(maxListed);
  const notes: string[] = [];
  const retentionDays = options.retentionDays ?? (await tableRetentionDays(store)) ?? 90;
  const expiredBefore = now - retentionDays * 86_400_000;

  // ---- keys --------------------------------------------------------------------------------
  const journal = options.journalDir ? new CheckpointJournal(options.journalDir) : undefined;
  const journalPresent = !!journal && journal.exists();
  const keySources = new Map<string, { jwk: JWK; source: string }>();
  if (options.jwks) {
    for (const k of options.jwks.keys) if (k.kid) keySources.set(k.kid, { jwk: k, source: 'pinned' });
  } else {
    const local = options.localJwksFile && fs.existsSync(options.localJwksFile) ? readJwksFile(options.localJwksFile) : undefined;
    for (const k of local?.keys ?? []) if (k.kid) keySources.set(k.kid, { jwk: k, source: options.localJwksFile! });
    if (journalPresent) {
      const { jwks, problems } = journal!.keys();
      for (const p of problems) findings.add('journal_stray_file', `unreadable key file ${p}`);
      for (const k of jwks.keys) {
        const known = keySources.get(k.kid!);
        if (!known) {
          if (local) findings.add('key_unrecognised', `key ${k.kid} is published in ${journal!.keysDir} but is not one of the collector's keys (${options.localJwksFile})`, { file: `${journal!.keysDir}/${k.kid}.json` });
          else keySources.set(k.kid!, { jwk: k, source: journal!.keysDir });
        } else if (canonicalJson({ ...known.jwk, kid: k.kid }) !== canonicalJson({ ...k })) {
          findings.add('key_unrecognised', `key ${k.kid} in ${journal!.keysDir} differs from the collector's key with that kid`, { file: `${journal!.keysDir}/${k.kid}.json` });
        }
      }
    }
  }
  const trusted: JSONWebKeySet = { keys: [...keySources.values()].map((v) => v.jwk) };
  if (!trusted.keys.length) notes.push('no public keys found: pass --jwks FILE (the set published at /v1/audit/keys) or --data-dir');

  // ---- checkpoints: both copies, signatures, chain -------------------------------------------
  if (journal && !journalPresent && options.journalRequired) {
    findings.add('journal_missing', `the checkpoint directory ${journal.dir} does not exist: the copies outside the database cannot be compared (pass --checkpoints DIR)`, { file: journal.dir });
  }
  const list = journalPresent ? journal!.list() : { seqs: [], strays: [] };
  for (const s of list.strays) findings.add('journal_stray_file', `${journal!.dir}/${s} is not a checkpoint file`, { file: `${journal!.dir}/${s}` });
  const fileSeqs = list.seqs;

  const cpTable = `${store.database}.${TABLE.AUDIT_CHECKPOINTS}`;
  let tableBuf: TableRow[] = [];
  let tableAfter = -1;
  let tableDone = false;
  const nextTableRow = async (): Promise<TableRow | undefined> => {
    if (!tableBuf.length && !tableDone) {
      tableBuf = await query<TableRow>(
        store,
        `SELECT seq, kind, toUnixTimestamp64Milli(period_start) AS period_start_ms, toUnixTimestamp64Milli(period_end) AS period_end_ms,
          row_count, merkle_root, prev_checkpoint_hash, checkpoint_hash, kid, signature, body
        FROM ${cpTable} WHERE seq > ${tableAfter} ORDER BY seq LIMIT 5000`,
      );
      if (tableBuf.length < 5000) tableDone = true;
      if (tableBuf.length) tableAfter = Number(tableBuf[tableBuf.length - 1]!.seq);
    }
    return tableBuf.shift();
  };
  const peekTableSeq = async (): Promise<number | undefined> => {
    if (!tableBuf.length) {
      const r = await nextTableRow();
      if (!r) return undefined;
      tableBuf.unshift(r);
    }
    return Number(tableBuf[0]!.seq);
  };

  const fromRow = (r: TableRow): SignedCheckpoint | string => {
    try {
      const s = parseSignedCheckpoint({ checkpoint: JSON.parse(r.body), checkpoint_hash: r.checkpoint_hash, signature: r.signature }, `${cpTable} seq ${r.seq}`);
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
  };

  let prev: Walked | undefined;
  let first: Walked | undefined;
  let walkedCount = 0;
  let stoppedCleanly = false;
  const startupChecks: Walked[] = [];
  const batch: Walked[] = [];
  let batchRows = 0;
  let periodsVerified = 0;
  let rowsVerified = 0;

  const verifyBatch = async () => {
    if (!batch.length) return;
    const bounds: PeriodBounds[] = batch.map((w) => ({ start: w.start, end: w.end }));
    const got = await rootsOfPeriods(store, bounds);
    for (let i = 0; i < batch.length; i++) {
      const w = batch[i]!;
      const want = w.signed.checkpoint;
      const have: PeriodTotals = got.get(i) ?? { row_count: 0, counts: {}, merkle_root: EMPTY_ROOT };
      periodsVerified += 1;
      rowsVerified += have.row_count;
      if (have.row_count === want.row_count && have.merkle_root === want.merkle_root) continue;
      await locate(w, have);
    }
    const strays = got.get(-1);
    if (strays && strays.row_count > 0) {
      for (let i = 1; i < batch.length; i++) {
        const gap = { start: batch[i - 1]!.end, end: batch[i]!.start };
        if (gap.end > gap.start) await reportUnsealed(gap, `between checkpoints ${batch[i - 1]!.signed.checkpoint.seq} and ${batch[i]!.signed.checkpoint.seq}`);
      }
    }
    progress({ phase: 'periods', done: periodsVerified });
    batch.length = 0;
    batchRows = 0;
  };

  const where = (w: Walked) => ({
    checkpoint_seq: w.signed.checkpoint.seq,
    period_start: w.signed.checkpoint.period_start,
    period_end: w.signed.checkpoint.period_end,
  });

  const locate = async (w: Walked, have: PeriodTotals) => {
    const c = w.signed.checkpoint;
    const countsText = SEALED_TABLES.map((t) => `${t.name} ${c.counts[t.name] ?? 0}→${have.counts[t.name] ?? 0}`).join(', ');
    const indexRows = await leafIndexCount(store, c.seq);
    let index: PeriodTotals | undefined;
    if (indexRows > 0 || c.row_count === 0) index = await rootOfLeafIndex(store, c.seq);
    if (!index || index.merkle_root !== c.merkle_root || index.row_count !== c.row_count) {
      findings.add('period_altered', `period ${c.period_start} – ${c.period_end} (checkpoint ${c.seq}) no longer matches its checkpoint: ${c.row_count} rows sealed, ${have.row_count} now (${countsText})`, where(w));
      findings.add('leaf_index_altered', `the leaf index of checkpoint ${c.seq} ${indexRows ? 'does not reproduce its signed root' : 'is missing'}, so the changed rows cannot be named`, where(w));
      return;
    }
    const diff = await diffPeriod(store, c.seq, { start: w.start, end: w.end }, maxListed * 4 + 1);
    const byKey = new Map<string, { current?: (typeof diff)[number]; sealed?: (typeof diff)[number] }[]>();
    for (const d of diff) {
      const k = `${d.source}\u0000${d.row_key}`;
      const list = byKey.get(k) ?? [];
      const open = list.find((p) => !p[d.side]);
      if (open) open[d.side] = d;
      else list.push({ [d.side]: d });
      byKey.set(k, list);
    }
    let altered = 0;
    let expired = 0;
    for (const pairs of byKey.values()) {
      for (const p of pairs) {
        const row = (p.current ?? p.sealed)!;
        const at = { ...where(w), table: row.source, row_key: row.row_key, row: row.label };
        if (p.current && p.sealed) {
          altered += 1;
          findings.add('row_altered', `${row.source} row ${row.row_key} (${row.label}) was changed after it was sealed in checkpoint ${c.seq}`, at);
        } else if (p.sealed) {
          if (p.sealed.row_time_ms < expiredBefore) {
            expired += 1;
            continue;
          }
          altered += 1;
          findings.add('row_removed', `${row.source} row ${row.row_key} (${row.label}) sealed in checkpoint ${c.seq} is gone`, at);
        } else {
          altered += 1;
          findings.add('row_inserted', `${row.source} row ${row.row_key} (${row.label}) was written into period ${c.period_start} – ${c.period_end} after checkpoint ${c.seq} sealed it`, at);
        }
      }
    }
    if (expired) notes.push(`checkpoint ${c.seq}: ${expired} sealed rows are past the ${retentionDays}-day retention and were removed by it`);
    if (altered || diff.length > maxListed * 4) {
      findings.add('period_altered', `period ${c.period_start} – ${c.period_end} (checkpoint ${c.seq}) no longer matches its checkpoint: ${c.row_count} rows sealed, ${have.row_count} now (${countsText})`, where(w));
    }
  };

  const reportUnsealed = async (range: PeriodBounds, what: string) => {
    const n = await countRows(store, range.start, range.end);
    if (!n) return;
    const rows = await rowsInRange(store, range.start, range.end, Math.min(n, maxListed));
    for (const r of rows) {
      findings.add('rows_unsealed', `${r.source} row ${r.row_key} (${r.label}) was written at ${iso(r.ingested_ms)}, ${what}, where no checkpoint covers it`, {
        table: r.source,
        row_key: r.row_key,
        row: r.label,
      });
    }
    findings.count('rows_unsealed', n - rows.length);
  };

  const accept = async (w: Walked) => {
    const c = w.signed.checkpoint;
    if (c.kind === 'startup' && stoppedCleanly && c.row_count > 0) startupChecks.push(w);
    stoppedCleanly = c.kind === 'shutdown';
    const inRange = options.sinceMs === undefined || w.end > options.sinceMs;
    if (!inRange) return;
    batch.push(w);
    batchRows += c.row_count;
    if (batchRows >= pageRows || batch.length >= 2000) await verifyBatch();
  };

  const checkOne = async (seq: number, file: SignedCheckpoint | string | undefined, row: SignedCheckpoint | string | undefined, fileName?: string) => {
    const at = { checkpoint_seq: seq, ...(fileName ? { file: fileName } : {}) };
    if (typeof file === 'string') findings.add('checkpoint_unreadable', `checkpoint file ${fileName}: ${file}`, at);
    if (typeof row === 'string') findings.add('checkpoint_unreadable', `${cpTable} seq ${seq}: ${row}`, at);
    const f = typeof file === 'object' ? file : undefined;
    const r = typeof row === 'object' ? row : undefined;
    if (journalPresent && file === undefined) findings.add('checkpoint_file_missing', `checkpoint ${seq} is in ${cpTable} but its file ${fileName} is missing`, at);
    if (row === undefined && file !== undefined) findings.add('checkpoint_row_missing', `checkpoint ${seq} (${fileName}) has no row in ${cpTable}`, at);
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
          `checkpoint ${seq}: the file ${fileName} and the row in ${cpTable} differ (file signature ${fOk ? 'valid' : 'invalid'}, row signature ${rOk ? 'valid' : 'invalid'}); ${fOk || !rOk ? 'the file' : 'the row'} is used`,
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
      findings.add(sig.code === 'unknown_key' ? 'checkpoint_unknown_key' : 'checkpoint_signature_invalid', `checkpoint ${seq} (${from === 'file' ? fileName : cpTable}): ${sig.message}`, hereAt);
    }
    const recomputed = checkpointHash(c);
    if (chosen.checkpoint_hash && chosen.checkpoint_hash !== recomputed) {
      findings.add('checkpoint_chain_broken', `checkpoint ${seq}: its recorded checkpoint_hash is not the hash of its body`, hereAt);
    }
    if (c.seq !== seq) findings.add('checkpoint_chain_broken', `checkpoint ${seq} says it is checkpoint ${c.seq}`, hereAt);
    const w: Walked = { signed: { ...chosen, checkpoint_hash: recomputed }, start: msOf(c.period_start), end: msOf(c.period_end), from };
    if (!(w.end >= w.start)) findings.add('checkpoint_chain_broken', `checkpoint ${seq}: its period ends before it starts`, hereAt);
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
    first ??= w;
    prev = w;
    walkedCount += 1;
    if (walkedCount % 1000 === 0) progress({ phase: 'checkpoints', done: walkedCount });
    await accept(w);
  };

  let fi = 0;
  for (;;) {
    const ts = await peekTableSeq();
    const fs_ = fi < fileSeqs.length ? fileSeqs[fi]! : undefined;
    if (ts === undefined && fs_ === undefined) break;
    const seq = ts === undefined ? fs_! : fs_ === undefined ? ts : Math.min(ts, fs_);
    let row: SignedCheckpoint | string | undefined;
    if (ts === seq) {
      row = fromRow((await nextTableRow())!);
      while ((await peekTableSeq()) === seq) {
        await nextTableRow();
        findings.add('checkpoint_copies_differ', `${cpTable} holds more than one row for checkpoint ${seq}`, { checkpoint_seq: seq });
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
  await verifyBatch();
  progress({ phase: 'checkpoints', done: walkedCount, total: walkedCount });

  for (const w of startupChecks) {
    const c = w.signed.checkpoint;
    findings.add(
      'rows_written_while_stopped',
      `${c.row_count} rows were written between a clean shutdown (${c.period_start}) and the next start (${c.period_end}), while nothing was sealing: checkpoint ${c.seq}`,
      where(w),
    );
  }

  // rows outside every checkpoint
  let unsealedAfter = 0;
  if (first && prev) {
    if (first.signed.checkpoint.seq === 1 && (options.sinceMs === undefined || options.sinceMs < first.start)) {
      await reportUnsealed({ start: 0, end: first.start }, 'before the first checkpoint');
    }
    unsealedAfter = await countRows(store, prev.end, 8_640_000_000_000);
    if (unsealedAfter) notes.push(`${unsealedAfter} rows were written after the last checkpoint (${prev.signed.checkpoint.period_end}) and are not sealed yet`);
  } else {
    const n = await countRows(store, 0, 8_640_000_000_000);
    if (n) findings.add('no_checkpoints', `${n} evidence rows are stored but there is no checkpoint: nothing vouches for them (was the checkpointer off?)`);
  }

  // ---- per-instance chains and completeness, by ranges of instances --------------------------
  const completeness = { database: store.database, clockSkewMs: skew, ...(options.sinceMs !== undefined ? { sinceMs: options.sinceMs } : {}) };
  const [totalsRow] = await query<Record<string, string | number>>(store, totalsSql(completeness));
  const totals: CompletenessTotals = {
    calls: Number(totalsRow?.calls ?? 0),
    executed: Number(totalsRow?.executed ?? 0),
    gated_executed: Number(totalsRow?.gated_executed ?? 0),
    blocked: Number(totalsRow?.blocked ?? 0),
    shadow: Number(totalsRow?.shadow ?? 0),
    missing_sponsor: Number(totalsRow?.missing_sponsor ?? 0),
  };
  const sinceCond = options.sinceMs === undefined ? '' : ` AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(options.sinceMs)}))`;
  const [chainTotals] = await query<{ chained: string; unchained: string }>(
    store,
    `SELECT countIf(audit_seq > 0) AS chained, countIf(audit_seq = 0) AS unchained FROM ${store.database}.${TABLE.AUDIT_EVENTS} WHERE 1${sinceCond}`,
  );
  const shadowDenies: ListedCall[] = [];
  let shadowDenyCount = 0;
  const blockedNoSponsor: ListedCall[] = [];
  let blockedNoSponsorCount = 0;
  let instancesDone = 0;

  let callsChecked = 0;
  const runPage = async (lo: string, hi: string, calls: number) => {
    const params = { lo, hi };
    const breaks = await query<ChainBreak & { seq: string | number; prev_seq: string | number }>(
      store,
      chainBreaksSql(store.database, { lo, hi, ...(options.sinceMs !== undefined ? { sinceMs: options.sinceMs } : {}) }),
      params,
    );
    for (const b of breaks) {
      const seq = Number(b.seq);
      const prevSeq = Number(b.prev_seq);
      const at = { agent_instance_id: b.agent_instance_id, seq, span_id: b.span_id, trace_id: b.trace_id };
      const who = `agent instance ${b.agent_instance_id || '(none)'}`;
      switch (b.kind) {
        case 'start':
          findings.add('chain_start', `${who}: its first stored call is seq ${seq}${seq === 1 ? ' but its prev_hash is not the genesis hash' : `, calls 1 to ${seq - 1} are missing`}`, at);
          break;
        case 'duplicate':
          findings.add('chain_duplicate', `${who}: seq ${seq} appears more than once (span ${b.span_id})`, at);
          break;
        case 'gap':
          findings.add('chain_gap', `${who}: calls ${prevSeq + 1} to ${seq - 1} are missing between seq ${prevSeq} and seq ${seq}`, at);
          break;
        default:
          findings.add('chain_break', `${who}: seq ${seq}'s prev_hash does not match the hash of seq ${prevSeq} (seq ${prevSeq} or seq ${seq} was altered)`, at);
      }
    }
    const problems = await query<ProblemRow>(store, problemsSql(completeness), params);
    for (const p of problems) {
      reportProblem(p, findings, {
        shadowDeny(c) {
          shadowDenyCount += 1;
          if (shadowDenies.length < maxListed) shadowDenies.push(c);
        },
        blockedWithoutSponsor(c) {
          blockedNoSponsorCount += 1;
          if (blockedNoSponsor.length < maxListed) blockedNoSponsor.push(c);
        },
      });
    }
    callsChecked += calls;
    progress({ phase: 'calls', done: callsChecked, total: totals.calls });
  };

  // instance ranges of about pageRows calls each, found by paging over the instances in order
  let after: string | undefined;
  let lo: string | undefined;
  let hi = '';
  let acc = 0;
  for (;;) {
    const page = await query<{ id: string; n: string }>(
      store,
      `SELECT agent_instance_id AS id, count() AS n FROM ${store.database}.${TABLE.AUDIT_EVENTS}
        WHERE ${after === undefined ? '1' : 'agent_instance_id > {after:String}'}${sinceCond}
        GROUP BY id ORDER BY id LIMIT 10000
        SETTINGS optimize_aggregation_in_order = 1`,
      after === undefined ? undefined : { after },
    );
    for (const r of page) {
      const n = Number(r.n);
      if (lo !== undefined && acc + n > pageRows) {
        await runPage(lo, hi, acc);
        lo = undefined;
        acc = 0;
      }
      lo ??= r.id;
      hi = r.id;
      acc += n;
      instancesDone += 1;
    }
    if (page.length < 10000) break;
    after = page[page.length - 1]!.id;
  }
  if (lo !== undefined) await runPage(lo, hi, acc);

  const head = prev
    ? { seq: prev.signed.checkpoint.seq, checkpoint_hash: prev.signed.checkpoint_hash, period_end: prev.signed.checkpoint.period_end }
    : undefined;
  return {
    ok: findings.total === 0,
    checked: {
      checkpoints: walkedCount,
      periods_verified: periodsVerified,
      rows_verified: rowsVerified,
      rows_unsealed_after_last: unsealedAfter,
      instances: instancesDone,
      chained_calls: Number(chainTotals?.chained ?? 0),
      unchained_calls: Number(chainTotals?.unchained ?? 0),
      calls: totals,
    },
    ...(head ? { head } : {}),
    keys: [...keySources.entries()].map(([kid, v]) => ({ kid, source: v.source })),
    findings: findings.listed,
    counts: findings.counts,
    not_listed: findings.notListed,
    shadow: { calls: totals.shadow, would_deny: shadowDenyCount, listed: shadowDenies },
    blocked_without_sponsor: { calls: blockedNoSponsorCount, listed: blockedNoSponsor },
    notes,
  };
}

