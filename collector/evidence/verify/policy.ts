import { ATTR, TABLE } from '../../../common/names';
import { RECEIPT_TYPE, type PolicyReceipt, type ReceiptKeys } from '../../../common/receipt';
import type { Store } from '../../store';
import type { Findings } from '../findings';

/**
 * Policy changes (table policy_events, written by the policy plane only): every load or refused
 * reload must carry the plane's receipt saying the same result, version and hash, and every
 * decision made since the first recorded change must name a policy version a recorded load put in
 * force. Decisions older than the first change (stored before custody recorded changes) are left out.
 */
export interface PolicyReport {
  events: number;
  loaded: number;
  refused: number;
  /** The versions loaded, in load order. */
  versions: string[];
  /** Decisions whose policy version was checked. */
  decisions_checked: number;
}

interface Row {
  ms: string | number;
  result: string;
  version: string;
  hash: string;
  receipt: string;
}

export async function verifyPolicyEvents(store: Store, findings: Findings, keys: ReceiptKeys | undefined, sinceMs?: number): Promise<PolicyReport> {
  const rows = await store.rows<Row>(
    `SELECT toUnixTimestamp64Milli(timestamp) AS ms, toString(result) AS result, version, hash, receipt
      FROM ${store.database}.${TABLE.POLICY_EVENTS} ORDER BY timestamp, span_id`,
  );
  const versions: string[] = [];
  let loaded = 0;
  for (const r of rows) {
    if (r.result === 'loaded') loaded++;
    if (keys) {
      const check = keys.verify<PolicyReceipt>(r.receipt, RECEIPT_TYPE.POLICY);
      const p = check.ok ? check.payload : undefined;
      const same = p && p.result === r.result && p.version === r.version && p.hash === r.hash;
      if (!same) {
        const why = !check.ok ? check.message : 'the receipt says another result, version or hash';
        findings.add('policy_receipt_invalid', `a policy ${r.result || 'change'} (version ${r.version || '(none)'}, hash ${r.hash.slice(0, 12) || '(none)'}) at ${new Date(Number(r.ms)).toISOString()} is not the plane's (${why})`, { table: TABLE.POLICY_EVENTS });
        continue;
      }
    }
    if (r.result === 'loaded' && !versions.includes(r.version)) versions.push(r.version);
  }
  let decisionsChecked = 0;
  if (rows.length) {
    const from = Math.max(Number(rows[0]!.ms), sinceMs ?? -Infinity);
    const named = await store.rows<{ v: string; n: string | number; first_ms: string | number }>(
      `SELECT attributes['${ATTR.POLICY_VERSION}'] AS v, count() AS n, toUnixTimestamp64Milli(min(timestamp)) AS first_ms
        FROM ${store.database}.${TABLE.POLICY_DECISIONS}
        WHERE timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(from)})) GROUP BY v ORDER BY v`,
    );
    for (const d of named) {
      decisionsChecked += Number(d.n);
      if (!versions.includes(d.v)) {
        findings.add(
          'policy_version_unknown',
          `${d.n} decision(s) from ${new Date(Number(d.first_ms)).toISOString()} name policy version '${d.v || '(none)'}', which no recorded policy load put in force`,
          { table: TABLE.POLICY_DECISIONS },
        );
      }
    }
  }
  return { events: rows.length, loaded, refused: rows.length - loaded, versions, decisions_checked: decisionsChecked };
}
