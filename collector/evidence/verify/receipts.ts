import fs from 'node:fs';
import type { JSONWebKeySet } from 'jose';
import { ATTR, TABLE } from '../../../common/names';
import { RECEIPT_TYPE, ReceiptKeys, type RolloutReceipt } from '../../../common/receipt';
import { readJwksFile } from '../../../identity/key-archive';
import type { Store } from '../../store';
import { EXECUTED, type ReceiptParams } from '../completeness';
import type { Findings } from '../findings';

/**
 * The policy plane's receipts: which keys to trust (a pinned set, else the plane's own published
 * set under the data directory), the signed rollout history, and per page of calls the receipts
 * whose signature fails. What a valid receipt says is compared with its call in SQL
 * (completeness.ts).
 */
export function planeKeys(o: { policyJwks?: JSONWebKeySet; localPolicyJwksFile?: string }): { keys: ReceiptKeys; source: string } | undefined {
  if (o.policyJwks) return { keys: new ReceiptKeys(o.policyJwks), source: 'pinned' };
  if (o.localPolicyJwksFile && fs.existsSync(o.localPolicyJwksFile)) return { keys: new ReceiptKeys(readJwksFile(o.localPolicyJwksFile)), source: o.localPolicyJwksFile };
  return undefined;
}

export interface RolloutHistory {
  /** Epoch ms, ascending, with the percent in force from then on. */
  ms: number[];
  percent: number[];
  /** Rollout rows without a receipt (written before receipts, or by someone without the key): not used. */
  unsigned: number;
}

/** The signed rollout states, oldest first; a rollout row whose receipt does not verify is a finding. */
export async function rolloutHistory(store: Store, keys: ReceiptKeys, findings: Findings): Promise<RolloutHistory> {
  const rows = await store.rows<{ receipt: string; n: string | number }>(
    `SELECT receipt, count() AS n FROM ${store.database}.${TABLE.ROLLOUT_EVENTS} GROUP BY receipt`,
  );
  const states: { ms: number; percent: number; revision: number }[] = [];
  let unsigned = 0;
  for (const r of rows) {
    if (r.receipt === '') {
      unsigned += Number(r.n);
      continue;
    }
    const check = keys.verify<RolloutReceipt>(r.receipt, RECEIPT_TYPE.ROLLOUT);
    const p = check.ok ? check.payload : undefined;
    if (!check.ok || typeof p!.time !== 'number' || typeof p!.percent !== 'number' || !(p!.percent >= 0 && p!.percent <= 100)) {
      findings.add('rollout_receipt_invalid', `a rollout change in ${TABLE.ROLLOUT_EVENTS} carries a receipt that is not the plane's (${check.ok ? 'it does not say a time and a percent' : check.message})`, { table: TABLE.ROLLOUT_EVENTS });
      continue;
    }
    states.push({ ms: Math.trunc(p!.time), percent: p!.percent, revision: Number(p!.revision) || 0 });
  }
  states.sort((a, b) => a.ms - b.ms || a.revision - b.revision);
  return { ms: states.map((s) => s.ms), percent: states.map((s) => s.percent), unsigned };
}

/**
 * The distinct receipts on the executed calls of instances [lo, hi] whose signature, type or key
 * fails, with why. Each distinct receipt is verified once (a cached allow's receipt is on every
 * call it allowed), the signatures on every core.
 */
export async function badReceiptsIn(
  store: Store,
  keys: ReceiptKeys,
  page: { lo: string; hi: string; sinceMs?: number },
): Promise<{ bad: Map<string, string>; distinct: number }> {
  const since = page.sinceMs === undefined ? '' : ` AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(page.sinceMs)}))`;
  const rows = await store.rows<{ r: string }>(
    `SELECT DISTINCT attributes['${ATTR.POLICY_RECEIPT}'] AS r FROM ${store.database}.${TABLE.AUDIT_EVENTS}
      WHERE agent_instance_id >= {lo:String} AND agent_instance_id <= {hi:String} AND ${EXECUTED}${since} AND r != ''`,
    { lo: page.lo, hi: page.hi },
  );
  const bad = new Map<string, string>();
  const checks = await keys.verifyAll(
    rows.map((row) => row.r),
    RECEIPT_TYPE.DECISION,
  );
  checks.forEach((check, i) => {
    if (!check.ok) bad.set(rows[i]!.r, check.message);
  });
  return { bad, distinct: rows.length };
}

export function receiptParams(bad: Map<string, string>, history: RolloutHistory): ReceiptParams {
  return { bad_receipts: [...bad.keys()], rollout_ms: history.ms, rollout_percent: history.percent };
}
