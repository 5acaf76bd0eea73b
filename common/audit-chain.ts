import { canonicalJson, sha256Hex } from './canonical';

/**
 * The per-instance hash chain over tool-call records (tamper evidence, agent side). Each agent
 * instance numbers its finished tool calls 1, 2, 3, … and puts into each span the hash of the
 * previous record (`custody.audit.seq`, `custody.audit.prev_hash`). The verifier recomputes the
 * same hashes from the stored audit rows, so this one definition serves both sides.
 */
export interface ChainRecord {
  agent_instance_id: string;
  seq: number;
  prev_hash: string;
  trace_id: string;
  span_id: string;
  sponsor_id: string;
  parent_agent_id: string;
  tool_id: string;
  action: string;
  policy_decision_id: string;
  request_hash: string;
  response_hash: string;
  status: string;
}

/** The prev_hash of an instance's first record. */
export const CHAIN_GENESIS = '0'.repeat(64);

export const CHAIN_FIELDS = [
  'agent_instance_id', 'seq', 'prev_hash', 'trace_id', 'span_id', 'sponsor_id', 'parent_agent_id',
  'tool_id', 'action', 'policy_decision_id', 'request_hash', 'response_hash', 'status',
] as const satisfies readonly (keyof ChainRecord)[];

const SORTED_FIELDS = [...CHAIN_FIELDS].sort();

/**
 * SHA-256 hex of the canonical JSON of the record's chain fields. Written out field by field in
 * sorted order: the same bytes as canonicalJson (it is on every tool call's path, and the
 * verifier recomputes it in SQL from the same definition).
 */
export function chainHash(record: ChainRecord): string {
  let json = '{';
  for (let i = 0; i < SORTED_FIELDS.length; i++) {
    const field = SORTED_FIELDS[i]!;
    const v: string | number = record[field] ?? '';
    json += `${i ? ',' : ''}"${field}":${typeof v === 'number' && !Number.isFinite(v) ? 'null' : JSON.stringify(v)}`;
  }
  return sha256Hex(json + '}');
}

/** The definition chainHash implements, kept for tests and readers. */
export function chainHashReference(record: ChainRecord): string {
  const picked: Record<string, unknown> = {};
  for (const f of CHAIN_FIELDS) picked[f] = record[f] ?? '';
  return sha256Hex(canonicalJson(picked));
}

/** Assigns seq and prev_hash to an instance's records in the order they finish. */
export class AuditChain {
  private seq = 0;
  private last = CHAIN_GENESIS;
  next(record: Omit<ChainRecord, 'seq' | 'prev_hash'>): { seq: number; prevHash: string; hash: string } {
    const seq = ++this.seq;
    const prevHash = this.last;
    const hash = chainHash({ ...record, seq, prev_hash: prevHash });
    this.last = hash;
    return { seq, prevHash, hash };
  }
}
