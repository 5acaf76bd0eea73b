import { TABLE } from '../../common/names';
import type { Store } from '../store';

/** A policy load or refused reload, as GET /v1/audit/policy lists it (newest first). */
export interface PolicyEvent {
  time: string;
  /** `loaded` or `refused`. */
  result: string;
  /** The version loaded; for a refused file, the version that stayed in force. */
  version: string;
  /** SHA-256 hex of the file's text ('' when it could not be read). */
  hash: string;
  source: string;
  /** Why a file was refused. */
  error: string;
  /** The plane's signed receipt of the change (compact JWS, `custody-policy+jws`). */
  receipt: string;
}

export const MAX_POLICY_EVENTS = 1000;

/** The latest policy changes, newest first. */
export async function policyEvents(store: Store, limit = 100): Promise<PolicyEvent[]> {
  const rows = await store.rows<Omit<PolicyEvent, 'time'> & { ms: string | number }>(
    `SELECT toUnixTimestamp64Milli(timestamp) AS ms, toString(result) AS result, version, hash, source, error, receipt
      FROM ${store.database}.${TABLE.POLICY_EVENTS}
      ORDER BY timestamp DESC, span_id LIMIT {limit:UInt32}`,
    { limit: Math.max(1, Math.min(MAX_POLICY_EVENTS, Math.trunc(limit))) },
  );
  return rows.map(({ ms, ...r }) => ({ time: new Date(Number(ms)).toISOString(), ...r }));
}
