import { ATTR, TABLE } from '../../../common/names';
import type { Store } from '../../store';
import { EXECUTED } from '../completeness';
import type { Findings } from '../findings';

/**
 * Calls that waited for a human approval. An approved call that ran is proven by its decision
 * receipt (checked with the others in calls.ts): that signed decision must name the same approval
 * request and approver as the call's row, or the row claims an approval the plane never recorded.
 * The approvers counted are the ones the signed decisions name.
 */
export async function verifyApprovals(
  store: Store,
  findings: Findings,
  o: { receiptsChecked: boolean; sinceMs?: number },
): Promise<{ approved: number; by: Record<string, number>; denied: number; expired: number }> {
  const since = o.sinceMs === undefined ? '' : ` AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(o.sinceMs)}))`;
  const rows = await store.rows<{ status: string; by: string; signed_id: string; signed_status: string; signed_by: string; id: string; executed: number | boolean; agent: string; n: string | number }>(
    `SELECT attributes['${ATTR.APPROVAL_STATUS}'] AS status, attributes['${ATTR.APPROVAL_APPROVER}'] AS by, attributes['${ATTR.APPROVAL_ID}'] AS id,
       tryBase64URLDecode(arrayElement(splitByChar('.', attributes['${ATTR.POLICY_RECEIPT}']), 2)) AS r_json,
       JSONExtractString(r_json, 'approval', 'id') AS signed_id, JSONExtractString(r_json, 'approval', 'status') AS signed_status,
       JSONExtractString(r_json, 'approval', 'by') AS signed_by, ${EXECUTED} AS executed, any(agent_instance_id) AS agent, count() AS n
     FROM ${store.database}.${TABLE.AUDIT_EVENTS}
     WHERE attributes['${ATTR.APPROVAL_ID}'] != ''${since}
     GROUP BY status, by, id, r_json, executed`,
  );
  const out = { approved: 0, by: {} as Record<string, number>, denied: 0, expired: 0 };
  for (const r of rows) {
    const n = Number(r.n);
    if (r.status === 'approved' && (r.executed === true || Number(r.executed) === 1)) {
      if (o.receiptsChecked && (r.signed_id !== r.id || r.signed_status !== 'approved' || r.signed_by !== r.by)) {
        findings.add(
          'approval_unproven',
          `${n} call(s) of agent ${r.agent} claim approval ${r.id} by '${r.by}', but their signed decision says ${r.signed_id ? `${r.signed_status} by '${r.signed_by}' (${r.signed_id})` : 'nothing of an approval'}`,
          { agent_instance_id: r.agent },
        );
        continue;
      }
      out.approved += n;
      out.by[r.signed_by || r.by] = (out.by[r.signed_by || r.by] ?? 0) + n;
    } else if (r.status === 'denied') out.denied += n;
    else if (r.status === 'expired') out.expired += n;
  }
  return out;
}
