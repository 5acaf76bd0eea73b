import { TABLE } from '../../common/names';
import type { Store } from '../store';
import { merkleLevels, merkleRootSql } from './merkle';
import { SEALED_TABLES, leavesSql, msSql } from './rows';

/**
 * The queries that seal a period and recompute it: leaf hashes and Merkle roots are computed by
 * ClickHouse beside the rows (rows.ts, merkle.ts), so only counts, roots and differences come back.
 */

export interface PeriodTotals {
  row_count: number;
  counts: Record<string, number>;
  merkle_root: string;
}

const countCols = () => SEALED_TABLES.map((t, i) => `countIf(source = '${t.name}') AS c${i}`);
const keepCounts = () => ['n', ...SEALED_TABLES.map((_, i) => `c${i}`)];

function totals(row: Record<string, unknown>): PeriodTotals {
  const counts: Record<string, number> = {};
  SEALED_TABLES.forEach((t, i) => (counts[t.name] = Number(row[`c${i}`] ?? 0)));
  return { row_count: Number(row.n ?? 0), counts, merkle_root: String(row.root) };
}

export async function countRows(store: Store, from: number, to: number): Promise<number> {
  const parts = SEALED_TABLES.map(
    (t) => `(SELECT count() FROM ${store.database}.${t.name} WHERE ingested_at >= ${msSql(from)} AND ingested_at < ${msSql(to)})`,
  );
  const [r] = await store.rows<{ n: string | number }>(`SELECT ${parts.join(' + ')} AS n`);
  return Number(r?.n ?? 0);
}

/** Totals and root of the rows written in [from, to), straight from the tables. */
export async function rootOfRange(store: Store, from: number, to: number): Promise<PeriodTotals> {
  const levels = merkleLevels(await countRows(store, from, to));
  const inner = `SELECT count() AS n, ${countCols().join(', ')}, arrayMap(x -> x.2, arraySort(groupArray((ms, leaf)))) AS l0
    FROM (${leavesSql({ database: store.database, from, to })})`;
  const [r] = await store.rows<Record<string, unknown>>(merkleRootSql(inner, keepCounts(), levels));
  return totals(r!);
}

/** Rows written in each of several ranges, in one pass. */
export async function countRowsIn(store: Store, ranges: readonly PeriodBounds[]): Promise<number[]> {
  if (!ranges.length) return [];
  const from = Math.min(...ranges.map((r) => r.start));
  const to = Math.max(...ranges.map((r) => r.end));
  const cols = ranges.map((r, i) => `countIf(ms >= ${Math.trunc(r.start)} AND ms < ${Math.trunc(r.end)}) AS n${i}`);
  const [r] = await store.rows<Record<string, string | number>>(`SELECT ${cols.join(', ')} FROM (${SEALED_TABLES.map(
      (t) => `SELECT toUnixTimestamp64Milli(ingested_at) AS ms FROM ${store.database}.${t.name} WHERE ingested_at >= ${msSql(from)} AND ingested_at < ${msSql(to)}`,
    ).join(' UNION ALL ')})`,
  );
  return ranges.map((_, i) => Number(r?.[`n${i}`] ?? 0));
}

const leavesTable = (store: Store) => `${store.database}.${TABLE.AUDIT_CHECKPOINT_LEAVES}`;

export async function leafIndexCount(store: Store, seq: number): Promise<number> {
  const [r] = await store.rows<{ n: string }>(`SELECT count() AS n FROM ${leavesTable(store)} WHERE checkpoint_seq = ${seq}`);
  return Number(r?.n ?? 0);
}

/** Removes a checkpoint's leaf index (left by a seal that did not finish). */
export async function dropLeafIndex(store: Store, seq: number): Promise<void> {
  await store.client.command({ query: `ALTER TABLE ${leavesTable(store)} DELETE WHERE checkpoint_seq = ${seq} SETTINGS mutations_sync = 2` });
}

/** Copies the leaves of [from, to) with the rows they stand for into the leaf index of `seq`. */
export async function writeLeafIndex(store: Store, seq: number, from: number, to: number): Promise<void> {
  await store.client.command({
    query: `INSERT INTO ${leavesTable(store)} (checkpoint_seq, ingested_at, leaf, source, row_key, row_time, label)
      SELECT ${seq}, ingested_at, leaf, source, row_key, row_time, label
      FROM (${leavesSql({ database: store.database, from, to, details: true })})`,
  });
}

/** Totals and root of a checkpoint's leaf index. */
export async function rootOfLeafIndex(store: Store, seq: number): Promise<PeriodTotals> {
  const levels = merkleLevels(await leafIndexCount(store, seq));
  const inner = `SELECT count() AS n, ${countCols().join(', ')}, arrayMap(x -> x.2, arraySort(groupArray((ingested_at, leaf)))) AS l0
    FROM ${leavesTable(store)} WHERE checkpoint_seq = ${seq}`;
  const [r] = await store.rows<Record<string, unknown>>(merkleRootSql(inner, keepCounts(), levels));
  return totals(r!);
}

export interface PeriodBounds {
  start: number;
  end: number;
}

/**
 * Recomputes the totals and root of several consecutive periods in one pass over [first start,
 * last end): each row is placed in its period by an ASOF join on the period starts. The result is
 * keyed by the period's index in `periods`; key -1 holds rows that fall in no period (a gap).
 */
export async function rootsOfPeriods(store: Store, periods: readonly PeriodBounds[]): Promise<Map<number, PeriodTotals>> {
  const out = new Map<number, PeriodTotals>();
  if (periods.length === 0) return out;
  const from = periods[0]!.start;
  const to = Math.max(...periods.map((p) => p.end));
  const levels = merkleLevels(await countRows(store, from, to));
  const starts = `[${periods.map((p) => Math.trunc(p.start)).join(',')}]`;
  const ends = `[${periods.map((p) => Math.trunc(p.end)).join(',')}]`;
  const inner = `SELECT g, count() AS n, ${countCols().join(', ')}, arrayMap(x -> x.2, arraySort(groupArray((ms, leaf)))) AS l0
    FROM (
      SELECT r.ms AS ms, r.leaf AS leaf, r.source AS source, if(p.i > 0 AND r.ms < p.end, toInt64(p.i) - 1, -1) AS g
      FROM (SELECT 0 AS k, ms, leaf, source FROM (${leavesSql({ database: store.database, from, to })})) AS r
      ASOF LEFT JOIN (
        SELECT 0 AS k, i, arrayElement(${starts}, i) AS start, arrayElement(${ends}, i) AS end
        FROM (SELECT arrayJoin(arrayEnumerate(${starts})) AS i)
      ) AS p ON r.k = p.k AND r.ms >= p.start
    )
    GROUP BY g`;
  for (const r of await store.rows<Record<string, unknown>>(merkleRootSql(inner, ['g', ...keepCounts()], levels))) {
    out.set(Number(r.g), totals(r));
  }
  return out;
}

export interface LeafDiffRow {
  /** 'current': in the table now but not sealed; 'sealed': sealed but not in the table now. */
  side: 'current' | 'sealed';
  source: string;
  row_key: string;
  label: string;
  row_time_ms: number;
  ingested_ms: number;
}

/**
 * The rows of a period that differ from its (authenticated) leaf index: sealed leaves no longer
 * present, and present leaves never sealed. Identical rows are told apart by their rank among
 * equal leaves, so a duplicated row shows too. At most `limit` rows.
 */
export async function diffPeriod(store: Store, seq: number, period: PeriodBounds, limit: number): Promise<LeafDiffRow[]> {
  const current = `SELECT leaf, row_number() OVER (PARTITION BY leaf ORDER BY row_key) AS dup, source, row_key, label,
      toUnixTimestamp64Milli(row_time) AS row_time_ms, ms AS ingested_ms
    FROM (${leavesSql({ database: store.database, from: period.start, to: period.end, details: true })})`;
  const sealed = `SELECT leaf, row_number() OVER (PARTITION BY leaf ORDER BY row_key) AS dup, source, row_key, label,
      toUnixTimestamp64Milli(row_time) AS row_time_ms, toUnixTimestamp64Milli(ingested_at) AS ingested_ms
    FROM ${leavesTable(store)} WHERE checkpoint_seq = ${seq}`;
  const query = `SELECT if(s.leaf IS NULL, 'current', 'sealed') AS side,
      coalesce(c.source, s.source) AS source, coalesce(c.row_key, s.row_key) AS row_key, coalesce(c.label, s.label) AS label,
      coalesce(c.row_time_ms, s.row_time_ms) AS row_time_ms, coalesce(c.ingested_ms, s.ingested_ms) AS ingested_ms
    FROM (${current}) AS c FULL OUTER JOIN (${sealed}) AS s ON c.leaf = s.leaf AND c.dup = s.dup
    WHERE c.leaf IS NULL OR s.leaf IS NULL
    ORDER BY source, row_key, side
    LIMIT ${Math.max(1, Math.trunc(limit))}
    SETTINGS join_use_nulls = 1`;
  const out = await store.rows<Record<string, unknown>>(query);
  return out.map((r) => ({
    side: r.side === 'current' ? 'current' : 'sealed',
    source: String(r.source),
    row_key: String(r.row_key),
    label: String(r.label),
    row_time_ms: Number(r.row_time_ms),
    ingested_ms: Number(r.ingested_ms),
  }));
}

/** Rows written in [from, to) (outside every checkpoint), with what names them; at most `limit`. */
export async function rowsInRange(store: Store, from: number, to: number, limit: number): Promise<LeafDiffRow[]> {
  const query = `SELECT source, row_key, label, toUnixTimestamp64Milli(row_time) AS row_time_ms, ms AS ingested_ms
    FROM (${leavesSql({ database: store.database, from, to, details: true })})
    ORDER BY ingested_ms, source, row_key LIMIT ${Math.max(1, Math.trunc(limit))}`;
  return (await store.rows<Record<string, unknown>>(query)).map((r) => ({
    side: 'current',
    source: String(r.source),
    row_key: String(r.row_key),
    label: String(r.label),
    row_time_ms: Number(r.row_time_ms),
    ingested_ms: Number(r.ingested_ms),
  }));
}
