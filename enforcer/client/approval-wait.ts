import { performance } from 'node:perf_hooks';
import { TransportError, requestJson } from './http';
import type { ApprovalOutcome, PlaneAnswer } from './types';

/** Each long poll asks the plane to hold this long (it holds at most 30 s). */
export const APPROVAL_POLL_S = 20;
/**
 * The plane unreachable this long while a call waits for a human: the call is refused (fail
 * closed), whatever the approval's own deadline.
 */
export const APPROVAL_UNREACHABLE_GRACE_MS = 30_000;
/** Past the request's expiry, the plane's answer (expired) is awaited this long at most. */
const EXPIRY_GRACE_MS = 15_000;
const RETRY_MS = 1000;

/** The final decision, as the plane's answer to the call, with how the approval went. */
export interface ApprovalResult {
  answer: PlaneAnswer;
  approval: ApprovalOutcome;
}

interface ApprovalBody {
  id?: unknown;
  status?: unknown;
  decided_by?: unknown;
  decided_via?: unknown;
  decision_reason?: unknown;
  decided_at?: unknown;
  final?: { policy_decision_id?: unknown; decision?: unknown; reason?: unknown; receipt?: unknown };
}

/**
 * Waits for a pending decision's approval by long-polling GET /v1/approvals/<id>?wait=…, asked
 * again and again until it is answered or expires. Throws (the call is then refused, closed) when
 * the plane cannot be reached for APPROVAL_UNREACHABLE_GRACE_MS, when it forgot the request, or
 * when the request outlives its expiry without an answer.
 */
export async function waitForApproval(o: { policyUrl: string; pending: PlaneAnswer; isClosed: () => boolean; unreachableGraceMs?: number }): Promise<ApprovalResult> {
  const { pending } = o;
  const id = pending.approval_id!;
  const started = performance.now();
  const expires = Date.parse(pending.approval_expires_at ?? '');
  const deadline = (Number.isFinite(expires) ? expires : Date.now() + 15 * 60_000) + EXPIRY_GRACE_MS;
  const grace = o.unreachableGraceMs ?? APPROVAL_UNREACHABLE_GRACE_MS;
  const url = `${o.policyUrl}/v1/approvals/${encodeURIComponent(id)}?wait=${APPROVAL_POLL_S}`;
  let lastContact = Date.now();
  let lastError = '';
  for (;;) {
    if (o.isClosed()) throw new Error(`the enforcer closed while approval ${id} was pending`);
    if (Date.now() > deadline) throw new Error(`approval ${id} was not answered by its expiry${lastError ? ` (${lastError})` : ''}`);
    let body: ApprovalBody;
    try {
      const timeoutMs = (APPROVAL_POLL_S + 10) * 1000;
      body = (await requestJson(url, { method: 'GET', signal: AbortSignal.timeout(timeoutMs), timeoutMs })) as ApprovalBody;
      lastContact = Date.now();
    } catch (err) {
      if (err instanceof TransportError && err.status === 404) throw new Error(`the policy plane does not know approval ${id} (restarted?)`, { cause: err });
      lastError = (err as Error).message;
      if (Date.now() - lastContact > grace) throw new Error(`the policy plane was unreachable for more than ${Math.round(grace / 1000)} s while approval ${id} was pending: ${lastError}`, { cause: err });
      await new Promise((r) => setTimeout(r, RETRY_MS));
      continue;
    }
    if (body?.status === 'pending') continue;
    const f = body?.final;
    if (!f || (f.decision !== 'allow' && f.decision !== 'deny') || typeof f.policy_decision_id !== 'string') {
      throw new Error(`approval ${id} is ${String(body?.status)} but the plane recorded no decision for it`);
    }
    const approval: ApprovalOutcome = {
      id,
      status: String(body.status),
      waitMs: Math.round(performance.now() - started),
      ...(typeof body.decided_by === 'string' ? { approver: body.decided_by } : {}),
      ...(typeof body.decided_via === 'string' ? { via: body.decided_via } : {}),
      ...(typeof body.decision_reason === 'string' && body.decision_reason ? { reason: body.decision_reason } : {}),
      ...(typeof body.decided_at === 'string' ? { decidedAt: body.decided_at } : {}),
    };
    const answer: PlaneAnswer = {
      ...pending,
      decision: f.decision,
      policy_decision_id: f.policy_decision_id,
      reason: typeof f.reason === 'string' ? f.reason : String(body.status),
      ...(typeof f.receipt === 'string' ? { receipt: f.receipt } : {}),
    };
    delete answer.approval_id;
    delete answer.approval_expires_at;
    return { answer, approval };
  }
}
