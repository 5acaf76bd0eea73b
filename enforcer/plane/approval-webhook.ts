import type { Logger } from '../../common/log';
import { approvalView, type ApprovalRecord } from './approvals';

/** How long one webhook delivery may take. */
export const APPROVAL_WEBHOOK_TIMEOUT_MS = 5000;

/**
 * Announces a new approval request: POST of a JSON body any chat or paging tool can take (`text`
 * for Slack-style incoming webhooks, the request itself under `approval`, the inbox link). Fire and
 * forget, bounded by a timeout; a failure is counted and logged, never blocks or changes the decision.
 */
export function approvalWebhook(o: { url: () => string | undefined; inboxUrl: string; log: Logger; onFailure: () => void; timeoutMs?: number }): (r: ApprovalRecord) => void {
  return function announceApproval(r) {
    const url = o.url();
    if (!url) return;
    const link = `${o.inboxUrl}#${r.id}`;
    const body = {
      type: 'custody.approval.requested',
      text: `custody: ${r.agent_instance_id} (sponsor ${r.sponsor_id}) asks to ${r.action} on ${r.tool}${r.purpose ? ` for "${r.purpose}"` : ''}; approve or deny by ${new Date(r.expires_at).toISOString()}: ${link}`,
      url: link,
      approval: approvalView(r),
    };
    fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(o.timeoutMs ?? APPROVAL_WEBHOOK_TIMEOUT_MS) })
      .then(async (res) => {
        await res.body?.cancel().catch(() => undefined);
        if (!res.ok) throw new Error(`answered ${res.status}`);
      })
      .catch((err: unknown) => {
        o.onFailure();
        o.log.warn({ approval: r.id, err: (err as Error)?.message ?? String(err) }, 'approval webhook failed');
      });
  };
}
