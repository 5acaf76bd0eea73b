import type { Store } from '../../store';
import type { Findings } from '../findings';
import { EMPTY_ROOT } from '../merkle';
import { countRows, diffPeriod, leafIndexCount, rootOfLeafIndex, rootsOfPeriods, rowsInRange, type PeriodBounds, type PeriodTotals } from '../periods';
import { SEALED_TABLES } from '../rows';
import { iso, where, type VerifyProgress, type Walked } from './types';

export interface PeriodCheckOptions {
  store: Store;
  findings: Findings;
  notes: string[];
  maxListed: number;
  /** Rows per batch of periods. */
  pageRows: number;
  /** Sealed rows removed before this (epoch ms) were removed by retention. */
  expiredBefore: number;
  retentionDays: number;
  sinceMs?: number;
  progress: (p: VerifyProgress) => void;
}

/**
 * Recomputes the sealed periods from the stored rows, a batch of periods at a time, and names
 * what differs: through the leaf index, the rows changed, removed or inserted after sealing; rows
 * between periods or before the first are unsealed. Also notes a clean shutdown followed by rows
 * written before the next start.
 */
export class PeriodVerifier {
  periodsVerified = 0;
  rowsVerified = 0;
  private readonly batch: Walked[] = [];
  private batchRows = 0;
  private stoppedCleanly = false;
  private readonly startupChecks: Walked[] = [];

  constructor(private readonly o: PeriodCheckOptions) {}

  /** Takes the next checkpoint of the walk. */
  async accept(w: Walked): Promise<void> {
    const c = w.signed.checkpoint;
    if (c.kind === 'startup' && this.stoppedCleanly && c.row_count > 0) this.startupChecks.push(w);
    this.stoppedCleanly = c.kind === 'shutdown';
    const inRange = this.o.sinceMs === undefined || w.end > this.o.sinceMs;
    if (!inRange) return;
    this.batch.push(w);
    this.batchRows += c.row_count;
    if (this.batchRows >= this.o.pageRows || this.batch.length >= 2000) await this.flush();
  }

  /** Verifies the periods taken so far. */
  async flush(): Promise<void> {
    const batch = this.batch;
    if (!batch.length) return;
    const bounds: PeriodBounds[] = batch.map((w) => ({ start: w.start, end: w.end }));
    const got = await rootsOfPeriods(this.o.store, bounds);
    for (let i = 0; i < batch.length; i++) {
      const w = batch[i]!;
      const want = w.signed.checkpoint;
      const have: PeriodTotals = got.get(i) ?? { row_count: 0, counts: {}, merkle_root: EMPTY_ROOT };
      this.periodsVerified += 1;
      this.rowsVerified += have.row_count;
      if (have.row_count === want.row_count && have.merkle_root === want.merkle_root) continue;
      await this.locate(w, have);
    }
    const strays = got.get(-1);
    if (strays && strays.row_count > 0) {
      for (let i = 1; i < batch.length; i++) {
        const gap = { start: batch[i - 1]!.end, end: batch[i]!.start };
        if (gap.end > gap.start) await this.reportUnsealed(gap, `between checkpoints ${batch[i - 1]!.signed.checkpoint.seq} and ${batch[i]!.signed.checkpoint.seq}`);
      }
    }
    this.o.progress({ phase: 'periods', done: this.periodsVerified });
    batch.length = 0;
    this.batchRows = 0;
  }

  /** Findings for rows written after a clean shutdown and before the next start. */
  reportWrittenWhileStopped(): void {
    for (const w of this.startupChecks) {
      const c = w.signed.checkpoint;
      this.o.findings.add(
        'rows_written_while_stopped',
        `${c.row_count} rows were written between a clean shutdown (${c.period_start}) and the next start (${c.period_end}), while nothing was sealing: checkpoint ${c.seq}`,
        where(w),
      );
    }
  }

  /** A finding for each row written in `range`, where no checkpoint covers it. */
  async reportUnsealed(range: PeriodBounds, what: string): Promise<void> {
    const { store, findings, maxListed } = this.o;
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
  }

  /** A period that no longer matches its checkpoint: which rows changed, through its leaf index. */
  private async locate(w: Walked, have: PeriodTotals): Promise<void> {
    const { store, findings, maxListed, notes } = this.o;
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
          if (p.sealed.row_time_ms < this.o.expiredBefore) {
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
    if (expired) notes.push(`checkpoint ${c.seq}: ${expired} sealed rows are past the ${this.o.retentionDays}-day retention and were removed by it`);
    if (altered || diff.length > maxListed * 4) {
      findings.add('period_altered', `period ${c.period_start} – ${c.period_end} (checkpoint ${c.seq}) no longer matches its checkpoint: ${c.row_count} rows sealed, ${have.row_count} now (${countsText})`, where(w));
    }
  }
}
