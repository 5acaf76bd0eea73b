import { randomBytes } from 'node:crypto';
import { HttpError } from '../../common/errors';

/**
 * Calls waiting for a human (rules with `effect: require_approval`), kept by the plane that owns
 * the shared state (shared-state.ts): replicas create requests there and relay approvals to it.
 * A request is pending until an approver approves or denies it, or until it expires; its outcome
 * is then final, signed and recorded by `onResolved` like any decision, and whoever waits on it
 * (the agent's enforcer, long-polling GET /v1/approvals/<id>) is told at once.
 */

export const APPROVAL_STATUS = { PENDING: 'pending', APPROVED: 'approved', DENIED: 'denied', EXPIRED: 'expired' } as const;
export type ApprovalStatus = (typeof APPROVAL_STATUS)[keyof typeof APPROVAL_STATUS];

/** What the plane knew when the call asked: identity from the verified token, never from the request. */
export interface ApprovalInput {
  sponsor_id: string;
  agent_instance_id: string;
  parent_agent_id: string;
  /** The delegation chain above the agent, nearest first (the token's `act` chain). */
  chain: string[];
  role: string;
  tool: string;
  action: string;
  purpose: string;
  /** The argument fields the tool discloses, as the call sent them. */
  args: Record<string, unknown>;
  rule_id: string;
  reason: string;
  approvers: { sponsor: boolean; people: string[]; roles: string[] };
  timeout_ms: number;
  /** The pending decision that opened the request. */
  request_decision_id: string;
  cohort: string;
  enforced: boolean;
  token_jti: string;
  token_exp: number;
  policy_version: string;
  rollout_percent: number;
  risk: string;
}

/** The final decision made when the request was resolved. */
export interface ApprovalFinal {
  policy_decision_id: string;
  decision: 'allow' | 'deny';
  reason: string;
  receipt?: string;
}

export interface ApprovalRecord extends ApprovalInput {
  id: string;
  status: ApprovalStatus;
  /** Epoch ms. */
  created_at: number;
  expires_at: number;
  /** Who approved or denied (a person's id); absent while pending and on expiry. */
  decided_by?: string;
  /** `credential`: the approver's own; `admin`: the admin credential acting for them. */
  decided_via?: 'credential' | 'admin';
  decided_at?: number;
  decision_reason?: string;
  final?: ApprovalFinal;
}

export interface ApprovalBook {
  create(input: ApprovalInput): ApprovalRecord;
  get(id: string): ApprovalRecord | undefined;
  /** Pending requests, oldest first. */
  pending(): ApprovalRecord[];
  /** Approves or denies a pending request; 404 unknown, 409 already resolved. The outcome is recorded before this resolves. */
  resolve(id: string, o: { status: 'approved' | 'denied'; by: string; via: 'credential' | 'admin'; reason: string }): Promise<ApprovalRecord>;
  /** The record once it is no longer pending, or as it is after `waitMs`. */
  wait(id: string, waitMs: number): Promise<ApprovalRecord | undefined>;
  readonly size: number;
  close(): void;
}

export interface ApprovalBookOptions {
  /** Signs and records the outcome; its answer becomes the record's `final`. Must not throw for a recorded outcome. */
  onResolved(record: ApprovalRecord): Promise<ApprovalFinal>;
  /** A new request (the webhook); must not throw or block. */
  onCreated?(record: ApprovalRecord): void;
  now?: () => number;
  /** How often expiries are looked for. */
  sweepMs?: number;
  /** Pending requests at most; beyond, new ones are refused (503). */
  maxPending?: number;
  /** How long a resolved request stays readable. */
  keepResolvedMs?: number;
}

export const APPROVAL_LIMITS = { MAX_PENDING: 10_000, KEEP_RESOLVED_MS: 60 * 60 * 1000, SWEEP_MS: 1000 } as const;

export function createApprovalBook(o: ApprovalBookOptions): ApprovalBook {
  const now = o.now ?? Date.now;
  const maxPending = o.maxPending ?? APPROVAL_LIMITS.MAX_PENDING;
  const keepMs = o.keepResolvedMs ?? APPROVAL_LIMITS.KEEP_RESOLVED_MS;
  const records = new Map<string, ApprovalRecord>();
  const waiters = new Map<string, Set<() => void>>();
  let pendingCount = 0;

  const wake = (id: string) => {
    const set = waiters.get(id);
    if (!set) return;
    waiters.delete(id);
    for (const w of set) w();
  };

  /** Takes the request out of pending, records its outcome, then wakes its waiters. */
  const settle = async (r: ApprovalRecord, outcome: Partial<ApprovalRecord> & { status: ApprovalStatus }): Promise<ApprovalRecord> => {
    Object.assign(r, outcome);
    pendingCount--;
    try {
      r.final = await o.onResolved(r);
    } finally {
      wake(r.id);
    }
    return r;
  };

  const sweep = () => {
    const t = now();
    for (const r of records.values()) {
      if (r.status === APPROVAL_STATUS.PENDING && r.expires_at <= t) {
        void settle(r, { status: APPROVAL_STATUS.EXPIRED, decided_at: t }).catch(() => undefined);
      } else if (r.status !== APPROVAL_STATUS.PENDING && r.final && (r.decided_at ?? 0) + keepMs < t) {
        records.delete(r.id);
      }
    }
  };
  const timer = setInterval(sweep, o.sweepMs ?? APPROVAL_LIMITS.SWEEP_MS);
  timer.unref();

  return {
    create(input) {
      if (pendingCount >= maxPending) {
        throw new HttpError(503, 'approvals_full', `${pendingCount} requests already wait for approval: nothing more is asked until some are answered`, { 'retry-after': '5' });
      }
      const created = now();
      const r: ApprovalRecord = { ...input, id: `apr_${randomBytes(16).toString('base64url')}`, status: APPROVAL_STATUS.PENDING, created_at: created, expires_at: created + input.timeout_ms };
      records.set(r.id, r);
      pendingCount++;
      try {
        o.onCreated?.(r);
      } catch {
        /* notification fails open */
      }
      return r;
    },
    get: (id) => records.get(id),
    pending: () => [...records.values()].filter((r) => r.status === APPROVAL_STATUS.PENDING),
    async resolve(id, outcome) {
      const r = records.get(id);
      if (!r) throw new HttpError(404, 'approval_not_found', `no approval request '${id}'`);
      if (r.status === APPROVAL_STATUS.PENDING && r.expires_at <= now()) await settle(r, { status: APPROVAL_STATUS.EXPIRED, decided_at: now() });
      if (r.status !== APPROVAL_STATUS.PENDING) {
        const by = r.decided_by ? ` by ${r.decided_by}` : '';
        throw new HttpError(409, 'approval_resolved', `approval request ${id} is already ${r.status}${by}`);
      }
      return settle(r, { status: outcome.status, decided_by: outcome.by, decided_via: outcome.via, decided_at: now(), decision_reason: outcome.reason });
    },
    async wait(id, waitMs) {
      const r = records.get(id);
      if (!r || r.final || waitMs <= 0) return r;
      await new Promise<void>((resolve) => {
        let set = waiters.get(id);
        if (!set) waiters.set(id, (set = new Set()));
        const done = () => {
          clearTimeout(t);
          set!.delete(done);
          resolve();
        };
        const t = setTimeout(done, waitMs);
        set.add(done);
      });
      return records.get(id);
    },
    get size() {
      return pendingCount;
    },
    close() {
      clearInterval(timer);
      for (const id of [...waiters.keys()]) wake(id);
    },
  };
}

/** The public view of a request: what an approver sees and what the enforcer waits for. */
export function approvalView(r: ApprovalRecord) {
  return {
    id: r.id,
    status: r.status,
    sponsor: r.sponsor_id,
    agent: r.agent_instance_id,
    parent_agent: r.parent_agent_id || null,
    chain: r.chain,
    role: r.role || null,
    tool: r.tool,
    action: r.action,
    purpose: r.purpose || null,
    args: r.args,
    rule_id: r.rule_id,
    risk: r.risk,
    approvers: r.approvers,
    created_at: new Date(r.created_at).toISOString(),
    expires_at: new Date(r.expires_at).toISOString(),
    ...(r.decided_by ? { decided_by: r.decided_by, decided_via: r.decided_via } : {}),
    ...(r.decided_at ? { decided_at: new Date(r.decided_at).toISOString() } : {}),
    ...(r.decision_reason ? { decision_reason: r.decision_reason } : {}),
    ...(r.final ? { final: r.final } : {}),
  };
}
export type ApprovalView = ReturnType<typeof approvalView>;
