import { CHAIN_FIELDS, CHAIN_GENESIS, type ChainRecord } from '../../common/audit-chain';
import { TABLE } from '../../common/names';

/**
 * The per-instance audit chain (common/audit-chain.ts) recomputed from stored rows, in SQL: each
 * tool call's chainHash is rebuilt from its columns beside the data, and a window over each
 * instance's calls in seq order compares it with the next call's prev_hash. Only the breaks come
 * back to JavaScript. chainHash is SHA-256 of canonical JSON (sorted keys, JSON.stringify
 * escaping), which the SQL below reproduces byte for byte; a property test holds it to
 * common/audit-chain.ts.
 */

/** Audit columns the chain fields are stored in, where the names differ. */
const COLUMN: Partial<Record<keyof ChainRecord, string>> = { seq: 'audit_seq', prev_hash: 'audit_prev_hash' };
const NUMERIC: ReadonlySet<keyof ChainRecord> = new Set(['seq']);

const lit = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

const NEEDS_ESCAPE = `'[\\\\x00-\\\\x1f"\\\\\\\\]'`;

/**
 * JSON.stringify of a String column, escaping byte by byte: `"`, `\`, the short escapes and
 * \u00xx for the other control characters; every other byte (UTF-8 included) as it is.
 */
export function jsonStringSql(expr: string): string {
  const named: [number, string][] = [
    [8, '\\b'],
    [9, '\\t'],
    [10, '\\n'],
    [12, '\\f'],
    [13, '\\r'],
  ];
  const branches = [
    `c = '"', ${lit('\\"')}`,
    `c = ${lit('\\')}, ${lit('\\\\')}`,
    ...named.map(([code, esc]) => `c = char(${code}), ${lit(esc)}`),
    `ascii(c) < 32, concat(${lit('\\u00')}, lower(hex(c)))`,
  ];
  return `concat('"', arrayStringConcat(arrayMap(c -> multiIf(${branches.join(', ')}, c), splitByString('', ${expr}))), '"')`;
}

/**
 * SQL: chainHash(record) of an audit_events row, lowercase hex. Rows whose strings need no
 * escaping (the usual ids and hashes) are quoted as they are; only the rest take the byte-by-byte
 * path. Run it with CHAIN_SETTINGS_SQL, so that each row pays for one branch.
 */
export function chainHashSql(): string {
  const fields = [...CHAIN_FIELDS].sort();
  const strings = fields.filter((f) => !NUMERIC.has(f)).map((f) => COLUMN[f] ?? f);
  const json = (escape: boolean) =>
    fields.map((f, i) => {
      const col = COLUMN[f] ?? f;
      const value = NUMERIC.has(f) ? `toString(${col})` : escape ? jsonStringSql(col) : `'"', ${col}, '"'`;
      return `${lit(`${i === 0 ? '{' : ','}${JSON.stringify(f)}:`)}, ${value}`;
    });
  const hash = (escape: boolean) => `lower(hex(SHA256(concat(${json(escape).join(', ')}, '}'))))`;
  return `if(match(concat(${strings.join(', ')}), ${NEEDS_ESCAPE}), ${hash(true)}, ${hash(false)})`;
}

/** Evaluate `if` lazily, so that each row pays for one branch of chainHashSql. */
export const CHAIN_SETTINGS_SQL = `short_circuit_function_evaluation = 'force_enable'`;

export interface ChainBreak {
  agent_instance_id: string;
  seq: number;
  span_id: string;
  trace_id: string;
  /** The seq of the call before it in the instance's order, 0 for the first. */
  prev_seq: number;
  /** 'start': the first call is not seq 1 from genesis; 'gap': seqs missing; 'duplicate': seq repeated; 'hash': prev_hash differs. */
  kind: 'start' | 'gap' | 'duplicate' | 'hash';
}

/**
 * Breaks among the chained calls (audit_seq > 0) of the instances in [lo, hi] (inclusive). With
 * `since`, only instances that made a call at or after it are checked, each over its whole chain.
 */
export function chainBreaksSql(database: string, range: { lo: string; hi: string; sinceMs?: number }): string {
  const t = `${database}.${TABLE.AUDIT_EVENTS}`;
  const within = `agent_instance_id >= {lo:String} AND agent_instance_id <= {hi:String}`;
  const active =
    range.sinceMs === undefined
      ? ''
      : ` AND agent_instance_id IN (SELECT DISTINCT agent_instance_id FROM ${t} WHERE ${within} AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(range.sinceMs)})))`;
  return `SELECT agent_instance_id, seq, span_id, trace_id, prev_seq,
      multiIf(rn = 1, 'start', seq = prev_seq, 'duplicate', seq != prev_seq + 1, 'gap', 'hash') AS kind
    FROM (
      SELECT agent_instance_id, audit_seq AS seq, span_id, trace_id, audit_prev_hash, ${chainHashSql()} AS h,
        row_number() OVER w AS rn,
        lagInFrame(h) OVER w AS prev_h,
        lagInFrame(audit_seq) OVER w AS prev_seq
      FROM ${t}
      WHERE ${within} AND audit_seq > 0${active}
      WINDOW w AS (PARTITION BY agent_instance_id ORDER BY audit_seq, span_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    )
    WHERE if(rn = 1, seq != 1 OR audit_prev_hash != '${CHAIN_GENESIS}', seq != prev_seq + 1 OR audit_prev_hash != prev_h)
    ORDER BY agent_instance_id, seq, span_id
    SETTINGS ${CHAIN_SETTINGS_SQL}`;
}
