import path from 'node:path';
import type { CustodyEnv } from '../../common/env';
import { ConfigError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { counter, gauge, histogram } from '../../common/metrics';
import { ENV, METRIC, TABLE } from '../../common/names';
import type { RoleContext } from '../../common/role';
import type { Store } from '../store';
import { CheckpointJournal } from './journal';
import { openAuditKeyRing, type AuditKeyRing } from './keys';
import { countRows, countRowsIn, dropLeafIndex, leafIndexCount, rootOfLeafIndex, rootOfRange, writeLeafIndex, type PeriodTotals } from './periods';
import { GENESIS_HASH, newBody, parseSignedCheckpoint, signCheckpoint, type CheckpointKind, type SignedCheckpoint } from './record';
import { mountEvidenceRoutes } from './routes';
import { SEALED_TABLES, msSql } from './rows';

/**
 * The periodic checkpointer. Every row of the evidence tables belongs to the period of its write
 * time (`ingested_at`, set by ClickHouse as the collector inserts it), never of its event time: a
 * span an agent exports minutes late is simply written, and sealed, in a later period. A period
 * [t, t + period) is sealed once the database clock passes t + period + lag, so inserts that
 * began before t + period have committed. Rows that still turn up in a sealed period (an insert
 * slower than the lag, or a backdated insert) are counted right after each seal and logged, and
 * `custody audit verify` reports them as inserted after sealing.
 *
 * Sealing a period: the rows' leaves, with the row each stands for, go into the leaf index
 * (INSERT … SELECT, all inside ClickHouse); the root is computed over that index, so the index is
 * exactly what the signed root authenticates; the checkpoint is signed, written to the journal
 * directory (exclusive create, fsync) and then to custody.audit_checkpoints. A crash between the
 * steps is repaired on the next start. At start the time since the last checkpoint, when nothing
 * was sealing, gets a `startup` checkpoint; at stop the open period gets a `shutdown` one.
 */

export interface CheckpointerOptions {
  store: Store;
  keys: AuditKeyRing;
  journal: CheckpointJournal;
  periodMs: number;
  lagMs: number;
  /** Keep each checkpoint's leaf index so that verify can name altered rows (default true). */
  leafIndex?: boolean;
  /** A catch-up seal covers at most this many rows (whole periods; default 1,000,000). */
  maxRowsPerCheckpoint?: number;
  log?: Logger;
}

const sealed = counter<'kind'>({ name: METRIC.AUDIT_CHECKPOINTS_TOTAL, help: 'Audit checkpoints sealed, by kind', labelNames: ['kind'] });
const sealErrors = counter({ name: METRIC.AUDIT_CHECKPOINT_ERRORS_TOTAL, help: 'Checkpoint attempts that failed (retried on the next tick)' });
const sealSeconds = histogram({
  name: METRIC.AUDIT_CHECKPOINT_DURATION_SECONDS,
  help: 'Time to seal one checkpoint',
  buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
});
const sealedRows = counter({ name: METRIC.AUDIT_CHECKPOINT_ROWS_TOTAL, help: 'Rows sealed into checkpoints' });
const lateRows = counter({ name: METRIC.AUDIT_LATE_ROWS_TOTAL, help: 'Rows found in periods after they were sealed' });
const lastSealed = gauge({ name: METRIC.AUDIT_LAST_CHECKPOINT, help: 'End of the last sealed period, epoch seconds' });

const iso = (ms: number) => new Date(ms).toISOString();
const ms = (text: string) => Date.parse(text);

interface Recent {
  seq: number;
  start: number;
  end: number;
  rows: number;
  reported: number;
}

export class Checkpointer {
  private readonly o: Required<Omit<CheckpointerOptions, 'log'>> & { log?: Logger };
  private lastCp: SignedCheckpoint | undefined;
  /** Journaled but not yet in the table (its insert failed): inserted on the next tick. */
  private pendingRow: SignedCheckpoint | undefined;
  private genesisStart: number | undefined;
  private readonly recent: Recent[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(options: CheckpointerOptions) {
    this.o = { leafIndex: true, maxRowsPerCheckpoint: 1_000_000, ...options };
    if (!(this.o.periodMs >= 1000)) throw new ConfigError(`checkpoint period must be at least 1s (got ${this.o.periodMs} ms)`);
    if (!(this.o.lagMs >= 0)) throw new ConfigError(`checkpoint lag must not be negative (got ${this.o.lagMs} ms)`);
  }

  get last(): SignedCheckpoint | undefined {
    return this.lastCp;
  }

  private get table(): string {
    return `${this.o.store.database}.${TABLE.AUDIT_CHECKPOINTS}`;
  }

  async now(): Promise<number> {
    const [r] = await this.o.store.rows<{ now: string | number }>('SELECT toUnixTimestamp64Milli(now64(3)) AS now');
    return Number(r!.now);
  }

  /**
   * Loads the last checkpoint (repairing a seal cut short) and seals the time nothing was sealing,
   * up to `startupEnd` (default: now), the moment before this process could write any row.
   */
  async open(options: { startupSeal?: boolean; startupEnd?: number } = {}): Promise<void> {
    const { journal, log } = this.o;
    journal.init();
    const [row] = await this.o.store.rows<{ seq: string; body: string; signature: string; checkpoint_hash: string }>(
      `SELECT seq, body, signature, checkpoint_hash FROM ${this.table} ORDER BY seq DESC LIMIT 1`,
    );
    const inTable = row ? this.fromTableRow(row) : undefined;
    const { seqs } = journal.list();
    const lastFileSeq = seqs.length ? seqs[seqs.length - 1]! : 0;
    const tableSeq = inTable?.checkpoint.seq ?? 0;
    if (lastFileSeq > tableSeq) {
      // written to the journal, not yet to the table: finish the seal
      for (const seq of seqs.filter((s) => s > tableSeq)) await this.insertRow(journal.read(seq));
    } else if (tableSeq > lastFileSeq) {
      log?.error({ dir: journal.dir, table_seq: tableSeq, file_seq: lastFileSeq }, 'checkpoint files are missing from the journal directory; custody audit verify will report them');
    }
    this.lastCp = lastFileSeq > tableSeq ? journal.read(lastFileSeq) : inTable;
    if (this.lastCp) lastSealed.set(ms(this.lastCp.checkpoint.period_end) / 1000);
    if (options.startupSeal !== false && this.lastCp) {
      const end = options.startupEnd ?? (await this.now());
      if (end > ms(this.lastCp.checkpoint.period_end)) await this.seal(ms(this.lastCp.checkpoint.period_end), end, 'startup');
    }
  }

  private fromTableRow(row: { body: string; signature: string; checkpoint_hash: string }): SignedCheckpoint {
    return parseSignedCheckpoint({ checkpoint: JSON.parse(row.body), checkpoint_hash: row.checkpoint_hash, signature: row.signature }, this.table);
  }

  private async insertRow(s: SignedCheckpoint): Promise<void> {
    const c = s.checkpoint;
    await this.o.store.client.insert({
      table: this.table,
      format: 'JSONEachRow',
      values: [
        {
          seq: c.seq,
          kind: c.kind,
          period_start: c.period_start,
          period_end: c.period_end,
          row_count: c.row_count,
          merkle_root: c.merkle_root,
          prev_checkpoint_hash: c.prev_checkpoint_hash,
          checkpoint_hash: s.checkpoint_hash,
          kid: c.kid,
          signature: s.signature,
          body: JSON.stringify(c),
        },
      ],
    });
  }

  private async firstStart(sealTo: number): Promise<number> {
    if (this.genesisStart !== undefined) return this.genesisStart;
    const parts = SEALED_TABLES.map((t) => `(SELECT min(ingested_at) AS m FROM ${this.o.store.database}.${t.name} HAVING count() > 0)`);
    const [r] = await this.o.store.rows<{ m: string | number; n: string | number }>(
      `SELECT toUnixTimestamp64Milli(min(m)) AS m, count() AS n FROM (${parts.join(' UNION ALL ')})`,
    );
    const p = this.o.periodMs;
    this.genesisStart = Number(r?.n ?? 0) > 0 ? Math.min(Math.floor(Number(r!.m) / p) * p, sealTo) : sealTo;
    return this.genesisStart;
  }

  /** Where a seal starting at `start` should end: `sealTo`, or earlier to keep it under the row budget. */
  private async chooseEnd(start: number, sealTo: number): Promise<number> {
    const p = this.o.periodMs;
    if (sealTo - start <= p) return sealTo;
    if ((await countRows(this.o.store, start, sealTo)) <= this.o.maxRowsPerCheckpoint) return sealTo;
    const buckets = SEALED_TABLES.map(
      (t) => `SELECT intDiv(toUnixTimestamp64Milli(ingested_at) - ${start}, ${p}) AS b FROM ${this.o.store.database}.${t.name}
        WHERE ingested_at >= ${msSql(start)} AND ingested_at < ${msSql(sealTo)}`,
    );
    const counts = await this.o.store.rows<{ b: string | number; n: string | number }>(
      `SELECT b, count() AS n FROM (${buckets.join(' UNION ALL ')}) GROUP BY b ORDER BY b`,
    );
    let total = 0;
    for (const r of counts) {
      const b = Number(r.b);
      total += Number(r.n);
      if (total > this.o.maxRowsPerCheckpoint) return Math.min(sealTo, start + Math.max(1, b) * p);
    }
    return sealTo;
  }

  /** Seals every period that is due. */
  async tick(): Promise<SignedCheckpoint[]> {
    const out: SignedCheckpoint[] = [];
    const now = await this.now();
    const p = this.o.periodMs;
    const sealTo = Math.floor((now - this.o.lagMs) / p) * p;
    let start = this.lastCp ? ms(this.lastCp.checkpoint.period_end) : await this.firstStart(sealTo);
    for (let i = 0; i < 100 && start < sealTo && !this.closed; i++) {
      const end = await this.chooseEnd(start, sealTo);
      out.push(await this.seal(start, end, 'periodic'));
      start = end;
    }
    if (out.length) await this.checkSealed();
    return out;
  }

  /** Seals [start, end) as the next checkpoint. */
  async seal(start: number, end: number, kind: CheckpointKind): Promise<SignedCheckpoint> {
    const { store, keys, journal } = this.o;
    if (this.pendingRow) {
      await this.insertRow(this.pendingRow);
      this.pendingRow = undefined;
    }
    const stop = sealSeconds.startTimer();
    const seq = (this.lastCp?.checkpoint.seq ?? 0) + 1;
    let totals: PeriodTotals;
    if (this.o.leafIndex) {
      if ((await leafIndexCount(store, seq)) > 0) await dropLeafIndex(store, seq);
      await writeLeafIndex(store, seq, start, end);
      totals = await rootOfLeafIndex(store, seq);
    } else {
      totals = await rootOfRange(store, start, end);
    }
    const key = keys.current();
    const body = newBody(
      {
        seq,
        kind,
        period_start: iso(start),
        period_end: iso(end),
        row_count: totals.row_count,
        counts: totals.counts,
        merkle_root: totals.merkle_root,
        prev_checkpoint_hash: this.lastCp?.checkpoint_hash ?? GENESIS_HASH,
        created_at: iso(Date.now()),
      },
      key,
    );
    const signed = await signCheckpoint(body, key);
    journal.publishKey(key.publicJwk as import('jose').JWK);
    journal.append(signed);
    // the file is the commitment: from here this checkpoint is the last, even if the row fails
    this.lastCp = signed;
    this.pendingRow = signed;
    await this.insertRow(signed);
    this.pendingRow = undefined;
    this.recent.push({ seq, start, end, rows: totals.row_count, reported: 0 });
    if (this.recent.length > 10) this.recent.shift();
    stop();
    sealed.inc({ kind });
    sealedRows.inc(totals.row_count);
    lastSealed.set(end / 1000);
    this.o.log?.debug({ seq, kind, period_start: body.period_start, period_end: body.period_end, rows: totals.row_count }, 'sealed audit checkpoint');
    return signed;
  }

  /** Counts the recently sealed periods again: rows that arrived after their period was sealed show here. */
  private async checkSealed(): Promise<void> {
    const now = await countRowsIn(this.o.store, this.recent);
    for (const [i, r] of this.recent.entries()) {
      const delta = now[i]! - r.rows;
      if (delta === r.reported) continue;
      if (delta > r.reported) lateRows.inc(delta - r.reported);
      this.o.log?.warn(
        { seq: r.seq, period_start: iso(r.start), period_end: iso(r.end), sealed_rows: r.rows, rows_now: r.rows + delta },
        delta > 0
          ? `rows were written into a period after it was sealed (inserts slower than the ${this.o.lagMs / 1000}s lag, or backdated rows); raise ${ENV.CHECKPOINT_LAG} if this repeats`
          : 'rows disappeared from a sealed period',
      );
      r.reported = delta;
    }
  }

  /** Ticks at every period boundary plus the lag. */
  start(): void {
    const schedule = () => {
      if (this.closed) return;
      const p = this.o.periodMs;
      const now = Date.now();
      const next = (Math.floor((now - this.o.lagMs) / p) + 1) * p + this.o.lagMs;
      this.timer = setTimeout(() => {
        this.running = this.tick()
          .catch((err) => {
            sealErrors.inc();
            this.o.log?.error({ err }, 'audit checkpoint failed; retrying at the next period');
          })
          .finally(schedule);
      }, Math.max(50, next - now + 25));
      this.timer.unref();
    };
    schedule();
  }

  /** Stops ticking and seals the open period as a `shutdown` checkpoint. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running.catch(() => undefined);
    try {
      const now = await this.now();
      // a run shorter than one period has not ticked yet: its rows are sealed from the first one on
      const start = this.lastCp ? ms(this.lastCp.checkpoint.period_end) : await this.firstStart(now);
      if (now > start) await this.seal(start, now, 'shutdown');
    } catch (err) {
      sealErrors.inc();
      this.o.log?.error({ err }, 'could not seal the open period at shutdown; it is sealed at the next start');
    }
  }
}

export interface RunningCheckpointer {
  readonly banner: string[];
  readonly checkpointer?: Checkpointer;
  close(): Promise<void>;
}

/**
 * The collector role's hook, called after the store opens and before ingest starts: opens the key
 * ring and the journal, repairs and resumes the checkpoint chain, mounts the key and checkpoint
 * routes and starts sealing. `CUSTODY_CHECKPOINTER=off` turns
 * it off (run exactly one checkpointer per store).
 */
export async function startCheckpointer(ctx: RoleContext, store: Store, env: CustodyEnv = ctx.env): Promise<RunningCheckpointer> {
  const { log, options } = ctx;
  if (env[ENV.CHECKPOINTER] === false) {
    log.info(`audit checkpointer off (${ENV.CHECKPOINTER})`);
    return { banner: ['checkpoints   off'], close: async () => undefined };
  }
  const periodMs = Math.round((env[ENV.CHECKPOINT_PERIOD] ?? 60) * 1000);
  const lagMs = Math.round((env[ENV.CHECKPOINT_LAG] ?? 15) * 1000);
  const dataDir = path.resolve(options.dataDir);
  const keys = await openAuditKeyRing({ dir: path.join(dataDir, 'evidence', 'keys'), key: env[ENV.AUDIT_SIGNING_KEY] });
  const journal = new CheckpointJournal(env[ENV.CHECKPOINTS_DIR] ? path.resolve(env[ENV.CHECKPOINTS_DIR]!) : path.join(dataDir, 'checkpoints'));
  journal.init();
  for (const jwk of keys.jwks().keys) journal.publishKey(jwk);
  const checkpointer = new Checkpointer({ store, keys, journal, periodMs, lagMs, log });
  mountEvidenceRoutes(ctx, { store, keys, journal });
  // Called before ingest starts: rows written from here on are this run's; the time since the last
  // checkpoint, up to now, is sealed as `startup`.
  const begin = async (startupEnd: number) => {
    await checkpointer.open({ startupEnd });
    checkpointer.start();
  };
  let starting: Promise<void>;
  if (store.migrated) {
    await begin(await checkpointer.now());
    starting = Promise.resolve();
  } else {
    // a server still migrating in the background: seal from when it is ready, up to this moment
    const startupEnd = Date.now();
    starting = store.whenMigrated().then(() => begin(startupEnd)).catch((err) => {
      sealErrors.inc();
      log.error({ err }, 'the audit checkpointer could not start');
    });
  }
  return {
    banner: [`checkpoints   every ${periodMs / 1000}s (lag ${lagMs / 1000}s) → ${journal.dir}, key ${keys.current().kid}`],
    checkpointer,
    close: async () => {
      // a server that never became ready: nothing was opened, nothing to seal
      if (store.migrated) await starting;
      await checkpointer.close();
    },
  };
}
