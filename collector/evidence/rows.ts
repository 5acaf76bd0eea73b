import { createHash } from 'node:crypto';
import { TABLE } from '../../common/names';
import { LEAF_PREFIX } from './merkle';

/**
 * What a checkpoint seals: every row of the three evidence tables (tool calls, the decision log,
 * token events), each as one Merkle leaf. A row's canonical bytes (leaf format 1) are
 *
 *   lp(table name) || lp(column 1) || … || lp(column n)
 *
 * over the columns listed below, in that order, where lp(x) is the byte length of x as a 32-bit
 * little-endian integer followed by x, and each value's bytes are: a string as it is (UTF-8);
 * DateTime64 as signed 64-bit little-endian nanoseconds since the epoch; Float64 as its 8 IEEE-754
 * bytes, little-endian; Bool as one byte 0/1; an unsigned integer as 64-bit little-endian; a Map as
 * lp(key) || lp(value) for each pair, sorted by key then value. A column added after rows were
 * sealed (`audit_events.trust`, `convention`) adds lp(value) only when its value is not empty, so the rows sealed
 * before it existed keep their leaves; a Bool added so (`audit_sampled`) adds lp(0x01) only when true. The leaf is SHA-256(0x00 || bytes).
 * Every stored column is covered, the write time included, so any UPDATE shows. The SQL below
 * computes exactly these bytes beside the data; `rowBytes` is the same definition in JavaScript,
 * for auditors and tests.
 */
export const LEAF_FORMAT = 1;

type Kind = 'string' | 'datetime64' | 'float64' | 'bool' | 'uint' | 'map' | 'added' | 'flag';

interface Column {
  readonly name: string;
  readonly kind: Kind;
}

export interface SealedTable {
  readonly name: string;
  readonly columns: readonly Column[];
  /** Identifies the row for people and for pairing an altered row's two versions. */
  readonly rowKey: string;
  /** A short description of the row, kept in the leaf index so a removed row can be named. */
  readonly label: string;
  /** The event time (retention is counted from it). */
  readonly timeColumn: string;
}

const cols = (spec: string): Column[] =>
  spec
    .trim()
    .split(/\s+/)
    .map((item) => {
      const [name, kind = 'string'] = item.split(':') as [string, Kind?];
      return { name, kind };
    });

export const SEALED_TABLES: readonly SealedTable[] = Object.freeze([
  {
    name: TABLE.AUDIT_EVENTS,
    columns: cols(`timestamp:datetime64 end_timestamp:datetime64 trace_id span_id parent_span_id service_name
      sponsor_id agent_instance_id parent_agent_id agent_name role tool_id tool_name action purpose request_hash
      response_hash policy_decision_id decision rule_id policy_latency_ms:float64 policy_cached:bool enforced:bool
      cohort status error_type token_jti tool_call_id audit_seq:uint audit_prev_hash duration_ns:uint
      attributes:map ingested_at:datetime64 trust:added convention:added audit_sampled:flag`),
    rowKey: `concat(trace_id, '/', span_id)`,
    label: `concat(agent_instance_id, ' #', toString(audit_seq), ' ', tool_id, if(action = '', '', concat('.', action)))`,
    timeColumn: 'timestamp',
  },
  {
    name: TABLE.POLICY_DECISIONS,
    columns: cols(`timestamp:datetime64 policy_decision_id decision rule_id reason sponsor_id agent_instance_id
      parent_agent_id role tool_id action purpose cohort enforced:bool token_jti latency_ms:float64 trace_id span_id
      service_name attributes:map ingested_at:datetime64`),
    rowKey: `if(policy_decision_id = '', concat(trace_id, '/', span_id), policy_decision_id)`,
    label: `concat(decision, ' ', agent_instance_id, ' ', tool_id, if(action = '', '', concat('.', action)))`,
    timeColumn: 'timestamp',
  },
  {
    name: TABLE.TOKEN_EVENTS,
    columns: cols(`timestamp:datetime64 result kind code jti sponsor_id agent_instance_id parent_agent_id tool_id
      role ttl_seconds:uint expires_at:datetime64 trace_id span_id service_name attributes:map ingested_at:datetime64`),
    rowKey: `if(jti = '', concat(trace_id, '/', span_id), jti)`,
    label: `concat(result, ' ', kind, ' ', agent_instance_id, ' ', tool_id)`,
    timeColumn: 'timestamp',
  },
]);

export function sealedTable(name: string): SealedTable {
  const t = SEALED_TABLES.find((s) => s.name === name);
  if (!t) throw new Error(`'${name}' is not a sealed table`);
  return t;
}

// ---------------------------------------------------------------------------------------------
// SQL

const u32 = (expr: string) => `reinterpretAsFixedString(toUInt32(${expr}))`;

/** The pieces of lp(value) of a column, for one flat concat(). */
function piecesSql(c: Column): string[] {
  const fixed = (expr: string, bytes: number) => [`'${'\\x' + bytes.toString(16).padStart(2, '0')}\\x00\\x00\\x00'`, `reinterpretAsFixedString(${expr})`];
  switch (c.kind) {
    case 'string':
      return [u32(`length(${c.name})`), c.name];
    case 'added':
      return [`if(${c.name} = '', '', concat(${u32(`length(${c.name})`)}, ${c.name}))`];
    case 'flag':
      return [`if(${c.name}, concat(${u32('1')}, char(1)), '')`];
    case 'datetime64':
      return fixed(`toUnixTimestamp64Nano(${c.name})`, 8);
    case 'float64':
      return fixed(`toFloat64(${c.name})`, 8);
    case 'bool':
      return fixed(`toUInt8(${c.name})`, 1);
    case 'uint':
      return fixed(`toUInt64(${c.name})`, 8);
    case 'map': {
      const pairs = `arrayStringConcat(arrayMap(kv -> concat(${u32('length(kv.1)')}, kv.1, ${u32('length(kv.2)')}, kv.2), arraySort(arrayZip(mapKeys(${c.name}), mapValues(${c.name})))))`;
      return [u32(`length(${pairs})`), pairs];
    }
  }
}

const literal = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

/** SQL for the leaf hash (FixedString(32)) of a row of `table`, over its own columns: one flat concat. */
export function leafSql(table: SealedTable): string {
  const pieces = [`char(${LEAF_PREFIX})`, u32(String(Buffer.byteLength(table.name))), literal(table.name), ...table.columns.flatMap(piecesSql)];
  return `SHA256(concat(${pieces.join(', ')}))`;
}

/** Epoch-ms bounds as SQL, for `ingested_at >= a AND ingested_at < b`. */
export const msSql = (ms: number): string => `fromUnixTimestamp64Milli(toInt64(${Math.trunc(ms)}))`;

export interface LeafSelectOptions {
  database: string;
  /** Write-time range [from, to) in epoch ms. */
  from: number;
  to: number;
  /** Also select row_key, row_time and label. */
  details?: boolean;
}

/**
 * The leaves of every sealed row written in [from, to): columns `ms` (write time, epoch ms),
 * `ingested_at`, `leaf`, `source` (the table), and with `details` also `row_key`, `row_time`, `label`.
 * Leaf order within a period is (ingested_at, leaf): total, and the same wherever it is computed.
 */
export function leavesSql(o: LeafSelectOptions): string {
  return SEALED_TABLES.map((t) => {
    const extra = o.details ? `, ${t.rowKey} AS row_key, toDateTime64(${t.timeColumn}, 3) AS row_time, ${t.label} AS label` : '';
    return `SELECT toUnixTimestamp64Milli(ingested_at) AS ms, ingested_at, ${leafSql(t)} AS leaf, ${literal(t.name)} AS source${extra}
      FROM ${o.database}.${t.name}
      WHERE ingested_at >= ${msSql(o.from)} AND ingested_at < ${msSql(o.to)}`;
  }).join('\nUNION ALL\n');
}

// ---------------------------------------------------------------------------------------------
// JavaScript: the same bytes

/** A row's values as a client would hold them; datetimes as epoch nanoseconds. */
export type RowValue = string | number | bigint | boolean | Record<string, string> | undefined;

function lp(b: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return Buffer.concat([len, b]);
}

function valueBytes(c: Column, v: RowValue): Buffer {
  const b = Buffer.alloc(8);
  switch (c.kind) {
    case 'string':
    case 'added':
      return Buffer.from(String(v ?? ''), 'utf8');
    case 'datetime64':
      b.writeBigInt64LE(BigInt(v === undefined ? 0 : (v as number | bigint | string)));
      return b;
    case 'uint':
      b.writeBigUInt64LE(BigInt(v === undefined ? 0 : (v as number | bigint | string)));
      return b;
    case 'float64':
      b.writeDoubleLE(Number(v ?? 0));
      return b;
    case 'bool':
    case 'flag':
      return Buffer.from([v ? 1 : 0]);
    case 'map': {
      const entries = Object.entries((v ?? {}) as Record<string, string>).map(([k, val]) => [Buffer.from(k), Buffer.from(val)] as const);
      entries.sort((x, y) => Buffer.compare(x[0], y[0]) || Buffer.compare(x[1], y[1]));
      return Buffer.concat(entries.flatMap(([k, val]) => [lp(k), lp(val)]));
    }
  }
}

const isTrue = (v: RowValue): boolean => v === true || v === 1 || v === '1' || v === 'true';

/** Leaf format 1 bytes of a row (absent columns take their empty/zero value). */
export function rowBytes(table: SealedTable, row: Record<string, RowValue>): Buffer {
  const present = table.columns.filter(
    (c) => (c.kind !== 'added' || String(row[c.name] ?? '') !== '') && (c.kind !== 'flag' || isTrue(row[c.name])),
  );
  return Buffer.concat([lp(Buffer.from(table.name)), ...present.map((c) => lp(valueBytes(c, row[c.name])))]);
}

export function rowLeaf(table: SealedTable, row: Record<string, RowValue>): Buffer {
  return createHash('sha256').update(Buffer.from([LEAF_PREFIX])).update(rowBytes(table, row)).digest();
}
