import type { Cohort } from '../../common/names';
import type { ObtainedToken } from '../../identity/client';
import type { PolicyDeniedError, PolicyUnavailableError } from '../errors';
import { BUILTIN_RULE } from '../policy/schema';

/** Who is calling. In open mode the token service trusts these; with a credential it takes sponsor and role from the registration. */
export interface EnforcerIdentity {
  sponsorId?: string | undefined;
  agentInstanceId: string;
  parentAgentId?: string | undefined;
  role?: string | undefined;
  agentName?: string | undefined;
  /** CUSTODY_AGENT_CREDENTIAL: a registered agent's credential, sent as a bearer to /issue. */
  credential?: string | undefined;
  /** CUSTODY_DELEGATION_TOKEN: a sub-agent exchanges its parent's token (POST /token) instead of asking /issue. */
  delegationToken?: string | undefined;
  /** CUSTODY_DELEGATION_UNAVAILABLE: why the parent could not delegate; without a delegation token, asking fails (closed). */
  delegationUnavailable?: string | undefined;
}

export interface EnforcerCheckRequest {
  /** The policy's tool (resolve framework names with `resolveTool` first). */
  tool: string;
  action: string;
  purpose?: string | undefined;
  identity: EnforcerIdentity;
  /** Attributes of this call (over the agent's resource attributes): a tier-scoped canary's scope is matched on them. */
  attributes?: Readonly<Record<string, string>> | undefined;
  /**
   * When the call began waiting (performance.now()), if before check(): the budget counts from
   * here, so that name resolution and sponsor lookup spend it too, and so does the latency.
   */
  startedAt?: number | undefined;
  /**
   * The call's body may reach a guarded tool (CUSTODY_TOOL_ORIGINS is set): a baseline call, let
   * through before its decision, still gets a token first (within the budget), so the tool can check it.
   */
  withToken?: boolean | undefined;
  /** The call's arguments: only the fields the tool discloses (the plane's disclose_args) leave the agent. */
  args?: unknown;
}

/** How a human approval went (require_approval rules). */
export interface ApprovalOutcome {
  id: string;
  /** approved, denied or expired. */
  status: string;
  approver?: string;
  via?: string;
  reason?: string;
  /** ISO 8601. */
  decidedAt?: string;
  /** How long the call waited for the human, ms (not in latencyMs). */
  waitMs: number;
}

export interface EnforcerDecision {
  decision: 'allow' | 'deny' | 'error';
  /** Run the tool? When false, throw `error`. */
  allowed: boolean;
  /** The plane's decision id; '' when no plane decided (a refusal made before asking, an error, a baseline call whose decision is in `shadow`). */
  policyDecisionId: string;
  ruleId: string;
  reason: string;
  cohort: Cohort;
  enforced: boolean;
  /** An allow reused from the decision cache: no plane was asked. */
  cached: boolean;
  /** Time from the start of the call's wait (name resolution, sponsor, token, plane) to this decision, ms. */
  latencyMs: number;
  tokenJti?: string;
  /**
   * The token the plane decided on: the call's token, which custody/register sends to the tool
   * origins (x-custody-token). Absent when no token was had (refusals made before asking, a
   * baseline call let through before its decision). Secret: never recorded.
   */
  token?: string;
  /** The plane's signed receipt of the decision (reused with a cached allow). */
  receipt?: string;
  error?: PolicyDeniedError | PolicyUnavailableError;
  /** Baseline cohort: the call is allowed at once; the plane's decision arrives here. Never rejects. */
  shadow?: Promise<EnforcerDecision>;
  /** The policy version that decided (plane answers only). */
  policyVersion?: string;
  /** The audit sampling rate the plane granted this allow (common/audit-sample.ts). */
  auditSample?: number;
  /** True while the incident switch lengthens the decision cache TTL. */
  incident?: boolean;
  /** The call waited for a human: who answered, how, how long. */
  approval?: ApprovalOutcome;
  /** The argument fields sent to the plane. */
  argsDisclosed?: string[];
}

/** The built-in rule ids of refusals the enforcer makes itself. */
export const ENFORCER_RULE = {
  SPONSOR_REQUIRED: BUILTIN_RULE.SPONSOR_REQUIRED,
  INSTANCE_REQUIRED: BUILTIN_RULE.INSTANCE_REQUIRED,
  TOKEN_REFUSED: 'token-refused',
  UNAVAILABLE: 'policy-unavailable',
} as const;

/** The plane's answer with the token it was asked with. */
export interface AnsweredCall {
  answer: PlaneAnswer;
  token: ObtainedToken;
}

/** What POST /v1/check answers, validated (see parseAnswer). */
export interface PlaneAnswer {
  /** pending: a human must approve; wait on approval_id (a baseline call gets no id: nothing is asked). */
  decision: 'allow' | 'deny' | 'pending';
  policy_decision_id: string;
  rule_id: string;
  reason: string;
  cohort: Cohort;
  enforced: boolean;
  policy_version?: string;
  single_use_token?: boolean;
  token_jti?: string;
  receipt?: string;
  approval_id?: string;
  approval_expires_at?: string;
  args_disclosed?: string[];
  audit_sample?: number;
}
