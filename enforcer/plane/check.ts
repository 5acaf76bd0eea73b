import { performance } from 'node:perf_hooks';
import type { Attributes, Context } from '@opentelemetry/api';
import { HttpError, badRequest } from '../../common/errors';
import { ATTR, COHORT, DECISION, type Cohort, type DecisionResult } from '../../common/names';
import { RECEIPT_TYPE, type DecisionReceipt } from '../../common/receipt';
import { toolPolicy, type Policy } from '../policy/compile';
import { BUILTIN_RULE, decide, type Decision } from '../policy/decide';
import { decisionId } from '../policy/ids';
import { cohortOf } from '../policy/rollout';
import type { Risk } from '../policy/schema';
import type { TokenClaims } from '../../identity/claims';
import { TOKEN_ERROR, TokenError } from '../../identity/errors';
import type { TokenVerifier } from '../../identity/verify';
import type { PlaneMetrics } from './metrics';
import type { ReceiptBatcher } from './receipt-batcher';
import { APPROVAL_STATUS, type ApprovalFinal, type ApprovalInput, type ApprovalRecord } from './approvals';
import { discloseArgs } from '../policy/args';

/** POST /v1/check body. */
export interface CheckRequest {
  token: string;
  tool: string;
  action: string;
  purpose?: string;
  /** The call's disclosed argument fields (the tool's disclose_args); anything else is dropped. */
  args?: Record<string, string | number | boolean | null>;
  /** Attributes the agent reports for the call (resource or call attributes): a tier-scoped canary's scope is matched on them. */
  attributes?: Record<string, string>;
}

/** POST /v1/check answer: the contract's fields, then what the enforcer and operators use besides. */
export interface CheckResponse {
  /** `pending`: a human must approve first; the enforcer waits on GET /v1/approvals/<approval_id>. */
  decision: 'allow' | 'deny' | 'pending';
  policy_decision_id: string;
  rule_id: string;
  reason: string;
  cohort: Cohort;
  enforced: boolean;
  /** Plane-side time from the request's arrival to the decision, ms. */
  latency_ms: number;
  policy_version: string;
  risk: Risk;
  /** The tool takes each token once: the enforcer must get a new one per call and must not cache the allow. */
  single_use_token: boolean;
  rollout_percent: number;
  token_jti?: string;
  /** The plane's signed receipt of this decision (compact JWS, see common/receipt.ts). */
  receipt?: string;
  /** pending: the request an approver answers, and when it expires (ISO 8601). */
  approval_id?: string;
  approval_expires_at?: string;
  /** The argument fields the plane saw. */
  args_disclosed?: string[];
  /** Present in staging: a call without a sponsor is a validation error in every cohort. */
  environment?: 'staging';
  /** An allow of a tool with `audit: { sample }`: the share of its calls whose full record is kept (common/audit-sample.ts). */
  audit_sample?: number;
}

export interface CheckerOptions {
  policy: () => Policy;
  verifier: TokenVerifier;
  rolloutPercent: () => number;
  /**
   * Signs each decision's receipt (decisions made together share a signature, see
   * receipt-batcher.ts); without it, decisions carry none. When it fails the check answers 503:
   * no decision goes out unsigned.
   */
  signer?: ReceiptBatcher;
  /** Records the decision (the decision log); must not throw. */
  report?: (attributes: Attributes, context: Context | undefined, time: number, error?: string) => void;
  /** Whether the decision log can take one more record; when not, nothing is decided (503). */
  canRecord?: () => boolean;
  metrics?: PlaneMetrics;
  now?: () => number;
  /**
   * Opens an approval request for a pending decision (at the plane that keeps them). Without it a
   * require_approval rule cannot be honoured: nothing is decided (503).
   */
  requestApproval?: (input: ApprovalInput) => Promise<ApprovalRecord> | ApprovalRecord;
  /** Staging (CUSTODY_ENV=staging or the policy's `mode: staging`): a deny for want of a sponsor is enforced in every cohort. */
  staging?: () => boolean;
}

/** Token errors that mean nothing could be decided (503), not a bad token (deny). */
const UNAVAILABLE_CODE: Partial<Record<string, string>> = {
  [TOKEN_ERROR.JWKS_UNAVAILABLE]: 'token_keys_unavailable',
  [TOKEN_ERROR.REVOCATIONS_UNAVAILABLE]: 'token_revocations_unavailable',
  [TOKEN_ERROR.REPLAY_UNAVAILABLE]: 'token_replay_unavailable',
};

const LIMITS = { token: 16_384, name: 256, purpose: 1024 } as const;

/**
 * The policy plane's check: verify the token, take the identity from its claims (never from the
 * body), decide, give the decision its id and cohort, and record it. A bad token is a deny with
 * its reason; only keys that cannot be fetched make it an error (503), since then nothing was
 * decided.
 */
export function createChecker(
  options: CheckerOptions,
): (body: unknown, traceContext?: Context, arrivedAt?: number, peer?: () => unknown) => Promise<CheckResponse> {
  const now = options.now ?? Date.now;

  /** `peer`: the claims of the caller's client certificate (mTLS), used when the body has no token. */
  return async function check(body, traceContext, arrivedAt, peer) {
    // From the request's arrival when the server knows it (queueing and body parsing included).
    const started = arrivedAt ?? performance.now();
    if (options.canRecord && !options.canRecord()) {
      options.metrics?.decided(DECISION.ERROR, 'other', (performance.now() - started) / 1000);
      throw new HttpError(503, 'decision_log_full', 'the decision log is full (the collector has not acknowledged earlier decisions): nothing is decided unrecorded', { 'retry-after': '1' });
    }
    const req = parseCheckRequest(body);
    const policy = options.policy();
    const settings = toolPolicy(policy, req.tool);
    const percent = options.rolloutPercent();
    const disclosed = req.args ? discloseArgs(req.args, settings.discloseArgs) : undefined;
    let claims: TokenClaims | undefined;
    let outcome: Decision;
    try {
      if (req.token) claims = await options.verifier.verify(req.token, { audience: req.tool, singleUse: settings.singleUseTokens });
      else if (peer) claims = await options.verifier.verifyClaims(peer(), { audience: req.tool, singleUse: settings.singleUseTokens });
      else throw new TokenError(TOKEN_ERROR.MALFORMED, 'no token: every call needs a token (or a client certificate) for its tool');
      outcome = decideFor(req, claims, policy, now(), disclosed);
    } catch (err) {
      if (!(err instanceof TokenError)) throw err;
      // Keys, revocations or a single-use claim that cannot be had: nothing was decided.
      const code = UNAVAILABLE_CODE[err.code];
      if (code) {
        throw unavailable(options, { req, policy, risk: settings.risk, started, traceContext }, { code, message: `cannot verify tokens: ${err.message}`, ruleId: BUILTIN_RULE.TOKEN_INVALID, reason: err.message, id: decisionId(now()) });
      }
      outcome = { decision: 'deny', rule_id: BUILTIN_RULE.TOKEN_INVALID, reason: `token refused (${err.code}): ${err.message}` };
    }
    // Without a verified identity there is no cohort to trust: such calls count as enforced.
    const cohort = claims ? cohortOf(claims.agent_instance_id, percent, policy.rollout.scope, req.attributes) : COHORT.CANARY;
    const decidedAt = now();
    const response: CheckResponse = {
      decision: outcome.decision,
      policy_decision_id: decisionId(decidedAt),
      rule_id: outcome.rule_id,
      reason: outcome.reason,
      cohort,
      enforced: cohort === COHORT.CANARY,
      latency_ms: 0,
      policy_version: policy.version,
      risk: settings.risk,
      single_use_token: settings.singleUseTokens,
      rollout_percent: percent,
      ...(claims ? { token_jti: claims.jti } : {}),
      ...(disclosed ? { args_disclosed: Object.keys(disclosed) } : {}),
    };
    if (outcome.decision === 'pending' && response.enforced) {
      // an enforced call waits for a human; a baseline one only learns it would have
      if (!options.requestApproval || !claims || !outcome.approval) {
        throw unavailable(options, { req, policy, risk: settings.risk, started, traceContext, claims }, { code: 'approvals_unavailable', message: 'this plane cannot open approval requests', ruleId: outcome.rule_id, reason: 'approvals unavailable', id: response.policy_decision_id });
      }
      const a = outcome.approval;
      let record: ApprovalRecord;
      try {
        record = await options.requestApproval({
          sponsor_id: claims.sponsor_id ?? '',
          agent_instance_id: claims.agent_instance_id,
          parent_agent_id: claims.parent_agent_id ?? '',
          chain: chainOf(claims),
          role: claims.role ?? '',
          tool: req.tool,
          action: req.action,
          purpose: claims.purpose ?? req.purpose ?? '',
          args: disclosed ?? {},
          rule_id: outcome.rule_id,
          reason: outcome.reason,
          approvers: { sponsor: a.sponsor, people: [...a.people], roles: [...a.roles] },
          timeout_ms: a.timeoutMs,
          request_decision_id: response.policy_decision_id,
          cohort,
          enforced: response.enforced,
          token_jti: claims.jti,
          token_exp: claims.exp,
          policy_version: policy.version,
          rollout_percent: percent,
          risk: settings.risk,
        });
      } catch (err) {
        const why = `cannot open an approval request: ${(err as Error)?.message ?? String(err)}`;
        throw unavailable(options, { req, policy, risk: settings.risk, started, traceContext, claims }, { code: 'approvals_unavailable', message: why, ruleId: outcome.rule_id, reason: why, id: response.policy_decision_id });
      }
      response.approval_id = record.id;
      response.approval_expires_at = new Date(record.expires_at).toISOString();
    }
    // staging: no sponsor is a validation error, enforced in the baseline cohort too
    if (options.staging?.()) {
      response.environment = 'staging';
      if (response.rule_id === BUILTIN_RULE.SPONSOR_REQUIRED) response.enforced = true;
    }
    // audit sampling: granted to allows only; denies and errors are always kept whole
    if (outcome.decision === 'allow' && settings.auditSample < 1) response.audit_sample = settings.auditSample;
    if (options.signer) {
      try {
        response.receipt = await options.signer.sign(RECEIPT_TYPE.DECISION, receiptOf(req, claims, response, decidedAt));
      } catch (err) {
        // decided, but the enforcer cannot prove it: an error it fails closed on, never an unsigned answer
        const why = `cannot sign the decision's receipt: ${(err as Error)?.message ?? String(err)}`;
        throw unavailable(options, { req, policy, risk: settings.risk, started, traceContext, claims }, { code: 'receipt_unavailable', message: why, ruleId: response.rule_id, reason: why, id: response.policy_decision_id });
      }
    }
    const seconds = (performance.now() - started) / 1000;
    response.latency_ms = round(seconds * 1000);
    options.metrics?.decided(response.decision, metricTool(policy, req.tool), seconds);
    options.report?.(
      decisionAttributes(req, claims, policy, settings.risk, {
        id: response.policy_decision_id,
        decision: response.decision,
        rule_id: response.rule_id,
        reason: response.reason,
        cohort,
        enforced: response.enforced,
        latencyMs: seconds * 1000,
        ...(response.receipt ? { receipt: response.receipt } : {}),
        ...(response.approval_id ? { approval: { id: response.approval_id, status: APPROVAL_STATUS.PENDING } } : {}),
        ...(response.args_disclosed ? { argsDisclosed: response.args_disclosed } : {}),
        ...(response.audit_sample !== undefined ? { auditSample: response.audit_sample } : {}),
      }),
      traceContext,
      decidedAt,
    );
    return response;
  };
}

/** Nothing usable was decided: recorded as an error, answered 503 (the enforcer fails closed on it). */
function unavailable(
  options: CheckerOptions,
  c: { req: CheckRequest; policy: Policy; risk: Risk; started: number; traceContext: Context | undefined; claims?: TokenClaims },
  e: { code: string; message: string; ruleId: string; reason: string; id: string },
): HttpError {
  const seconds = (performance.now() - c.started) / 1000;
  options.metrics?.decided(DECISION.ERROR, metricTool(c.policy, c.req.tool), seconds);
  options.report?.(
    decisionAttributes(c.req, c.claims, c.policy, c.risk, {
      id: e.id,
      decision: DECISION.ERROR,
      rule_id: e.ruleId,
      reason: e.reason,
      cohort: COHORT.CANARY,
      enforced: true,
      latencyMs: seconds * 1000,
    }),
    c.traceContext,
    Date.now(),
    e.reason,
  );
  return new HttpError(503, e.code, e.message, { 'retry-after': '1' });
}

/** The identity is the token's; the purpose is the token's when it names one (a different stated purpose is refused). */
function decideFor(req: CheckRequest, claims: TokenClaims, policy: Policy, now: number, args: Record<string, unknown> | undefined): Decision {
  if (claims.purpose && req.purpose && req.purpose !== claims.purpose) {
    return {
      decision: 'deny',
      rule_id: BUILTIN_RULE.PURPOSE_MISMATCH,
      reason: `the stated purpose '${req.purpose}' is not the token's purpose '${claims.purpose}'`,
    };
  }
  return decide(
    {
      identity: {
        sponsorId: claims.sponsor_id,
        agentInstanceId: claims.agent_instance_id,
        parentAgentId: claims.parent_agent_id ?? undefined,
        role: claims.role,
        delegationDepth: claims.depth,
      },
      tool: req.tool,
      action: req.action,
      purpose: claims.purpose ?? req.purpose,
      args,
    },
    policy,
    { now },
  );
}

/** Validates a /v1/check body; a malformed one is a 400 naming the field. A missing token is not malformed: it is denied. */
export function parseCheckRequest(body: unknown): CheckRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw badRequest('invalid_request', 'the body must be a JSON object {token, tool, action, purpose?}');
  }
  const b = body as Record<string, unknown>;
  const text = (name: string, max: number, required: boolean): string | undefined => {
    const v = b[name];
    if (v === undefined || v === null || (v === '' && !required)) {
      if (required) throw badRequest('invalid_request', `'${name}' is required`);
      return undefined;
    }
    if (typeof v !== 'string' || v === '') throw badRequest('invalid_request', `'${name}' must be a non-empty string`);
    if (v.length > max) throw badRequest('invalid_request', `'${name}' is longer than ${max} characters`);
    return v;
  };
  const tool = text('tool', LIMITS.name, true)!;
  const action = text('action', LIMITS.name, true)!;
  const purpose = text('purpose', LIMITS.purpose, false);
  const token = text('token', LIMITS.token, false) ?? '';
  const args = parseArgs(b.args);
  const attributes = parseAttributes(b.attributes);
  return { token, tool, action, ...(purpose !== undefined ? { purpose } : {}), ...(args ? { args } : {}), ...(attributes ? { attributes } : {}) };
}

/** `args`: an object of at most 64 JSON scalars (strings up to 256 characters). */
function parseArgs(v: unknown): Record<string, string | number | boolean | null> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw badRequest('invalid_request', `'args' must be an object of the disclosed argument fields`);
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > 64) throw badRequest('invalid_request', `'args' holds more than 64 fields`);
  const out: Record<string, string | number | boolean | null> = {};
  for (const [k, x] of entries) {
    if (!(x === null || typeof x === 'boolean' || (typeof x === 'number' && Number.isFinite(x)) || (typeof x === 'string' && x.length <= 256))) {
      throw badRequest('invalid_request', `'args.${k}' must be a number, a boolean, null or a string of at most 256 characters`);
    }
    if (k !== '__proto__') out[k] = x;
  }
  return out;
}

/** The agents above this one, nearest first (the token's act chain). */
function chainOf(claims: TokenClaims): string[] {
  const out: string[] = [];
  for (let a = claims.act; a && out.length < 32; a = a.act) out.push(a.sub);
  return out;
}

/** The reported attributes: an object of at most 32 strings of at most 256 characters each. */
function parseAttributes(v: unknown): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw badRequest('invalid_request', `'attributes' must be an object of strings`);
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > 32) throw badRequest('invalid_request', `'attributes' has more than 32 entries`);
  const out: Record<string, string> = {};
  for (const [k, val] of entries) {
    if (typeof val !== 'string' || k.length > LIMITS.name || val.length > LIMITS.name) {
      throw badRequest('invalid_request', `'attributes.${k.slice(0, 64)}' must be a string of at most ${LIMITS.name} characters`);
    }
    out[k] = val;
  }
  return out;
}

interface Outcome {
  id: string;
  decision: DecisionResult;
  rule_id: string;
  reason: string;
  cohort: Cohort;
  enforced: boolean;
  latencyMs: number;
  receipt?: string;
  approval?: { id: string; status: string; approver?: string; via?: string; reason?: string; decidedAt?: number };
  argsDisclosed?: string[];
  auditSample?: number;
}

/** What the receipt of a decision says: the identity is the verified token's, never the request's. */
function receiptOf(req: CheckRequest, claims: TokenClaims | undefined, r: CheckResponse, time: number): DecisionReceipt {
  return {
    id: r.policy_decision_id,
    decision: r.decision,
    sponsor_id: claims?.sponsor_id ?? '',
    agent_instance_id: claims?.agent_instance_id ?? '',
    parent_agent_id: claims?.parent_agent_id ?? '',
    tool_id: req.tool,
    action: req.action,
    cohort: r.cohort,
    enforced: r.enforced,
    token_jti: claims?.jti ?? '',
    token_exp: claims?.exp ?? 0,
    time,
    policy_version: r.policy_version,
    rule_id: r.rule_id,
    rollout_percent: r.rollout_percent,
    ...(r.approval_id ? { approval: { id: r.approval_id, status: APPROVAL_STATUS.PENDING } } : {}),
    ...(r.args_disclosed ? { args_disclosed: r.args_disclosed } : {}),
  };
}

function decisionAttributes(req: CheckRequest, claims: TokenClaims | undefined, policy: Policy, risk: Risk, o: Outcome): Attributes {
  const a: Attributes = {
    [ATTR.POLICY_DECISION_ID]: o.id,
    [ATTR.POLICY_DECISION]: o.decision,
    [ATTR.POLICY_RULE_ID]: o.rule_id,
    [ATTR.POLICY_REASON]: o.reason,
    [ATTR.TOOL_ID]: req.tool,
    [ATTR.ACTION]: req.action,
    [ATTR.ROLLOUT_COHORT]: o.cohort,
    [ATTR.ENFORCED]: o.enforced,
    [ATTR.POLICY_LATENCY_MS]: round(o.latencyMs),
    [ATTR.POLICY_VERSION]: policy.version,
    [ATTR.TOOL_RISK]: risk,
  };
  if (o.receipt) a[ATTR.POLICY_RECEIPT] = o.receipt;
  if (o.approval) Object.assign(a, approvalAttributes(o.approval));
  if (o.argsDisclosed) a[ATTR.ARGS_DISCLOSED] = o.argsDisclosed.join(',');
  if (o.auditSample !== undefined) a[ATTR.AUDIT_SAMPLE_RATE] = o.auditSample;
  const purpose = claims?.purpose ?? req.purpose;
  if (purpose) a[ATTR.PURPOSE] = purpose;
  if (claims) {
    if (claims.sponsor_id) a[ATTR.SPONSOR_ID] = claims.sponsor_id;
    a[ATTR.AGENT_INSTANCE_ID] = claims.agent_instance_id;
    if (claims.parent_agent_id) a[ATTR.PARENT_AGENT_ID] = claims.parent_agent_id;
    if (claims.role) a[ATTR.ROLE] = claims.role;
    a[ATTR.TOKEN_JTI] = claims.jti;
  }
  return a;
}

/** Tools the policy names keep their label; anything else a caller sends is "other", so labels stay bounded. */
function metricTool(policy: Policy, tool: string): string {
  return policy.knownTools.has(tool) ? tool : 'other';
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

/** The approval's attributes on a decision-log record. */
export function approvalAttributes(x: NonNullable<Outcome['approval']>): Attributes {
  const a: Attributes = { [ATTR.APPROVAL_ID]: x.id, [ATTR.APPROVAL_STATUS]: x.status };
  if (x.approver) a[ATTR.APPROVAL_APPROVER] = x.approver;
  if (x.via) a[ATTR.APPROVAL_VIA] = x.via;
  if (x.reason) a[ATTR.APPROVAL_REASON] = x.reason;
  if (x.decidedAt) a[ATTR.APPROVAL_DECIDED_AT] = new Date(x.decidedAt).toISOString();
  return a;
}

/**
 * The final decision of an approval request, made when it is approved, denied or expires: a new
 * decision (its own id), signed and recorded like any other, naming the approver, when and why.
 * The identity, tool, action and token are the request's, so the call the enforcer then runs
 * matches its receipt exactly.
 */
export async function finalizeApproval(options: Pick<CheckerOptions, 'signer' | 'report' | 'metrics' | 'now'>, r: ApprovalRecord): Promise<ApprovalFinal> {
  const now = options.now ?? Date.now;
  const decidedAt = now();
  const approved = r.status === APPROVAL_STATUS.APPROVED;
  const reason = approved
    ? `approved by ${r.decided_by}${r.decision_reason ? `: ${r.decision_reason}` : ''} (rule '${r.rule_id}')`
    : r.status === APPROVAL_STATUS.DENIED
      ? `denied by ${r.decided_by}${r.decision_reason ? `: ${r.decision_reason}` : ''} (rule '${r.rule_id}')`
      : `approval expired: nobody answered within ${Math.round(r.timeout_ms / 1000)} s (rule '${r.rule_id}')`;
  const id = decisionId(decidedAt);
  const decision = approved ? DECISION.ALLOW : DECISION.DENY;
  const approval = {
    id: r.id,
    status: r.status,
    ...(r.decided_by ? { approver: r.decided_by } : {}),
    ...(r.decided_via ? { via: r.decided_via } : {}),
    ...(r.decision_reason ? { reason: r.decision_reason } : {}),
    decidedAt: r.decided_at ?? decidedAt,
  };
  const argsDisclosed = Object.keys(r.args);
  let receipt: string | undefined;
  if (options.signer) {
    const payload: DecisionReceipt = {
      id,
      decision,
      sponsor_id: r.sponsor_id,
      agent_instance_id: r.agent_instance_id,
      parent_agent_id: r.parent_agent_id,
      tool_id: r.tool,
      action: r.action,
      cohort: r.cohort,
      enforced: r.enforced,
      token_jti: r.token_jti,
      token_exp: r.token_exp,
      time: decidedAt,
      policy_version: r.policy_version,
      rule_id: r.rule_id,
      rollout_percent: r.rollout_percent,
      approval: { id: r.id, status: r.status, by: r.decided_by ?? '', via: r.decided_via ?? '', reason: r.decision_reason ?? '', at: approval.decidedAt, requested_by: r.request_decision_id },
      ...(argsDisclosed.length ? { args_disclosed: argsDisclosed } : {}),
    };
    receipt = await options.signer.sign(RECEIPT_TYPE.DECISION, payload);
  }
  const a: Attributes = {
    [ATTR.POLICY_DECISION_ID]: id,
    [ATTR.POLICY_DECISION]: decision,
    [ATTR.POLICY_RULE_ID]: r.rule_id,
    [ATTR.POLICY_REASON]: reason,
    [ATTR.TOOL_ID]: r.tool,
    [ATTR.ACTION]: r.action,
    [ATTR.ROLLOUT_COHORT]: r.cohort,
    [ATTR.ENFORCED]: r.enforced,
    [ATTR.POLICY_LATENCY_MS]: 0,
    [ATTR.POLICY_VERSION]: r.policy_version,
    [ATTR.TOOL_RISK]: r.risk,
    [ATTR.AGENT_INSTANCE_ID]: r.agent_instance_id,
    [ATTR.TOKEN_JTI]: r.token_jti,
    ...approvalAttributes(approval),
  };
  if (receipt) a[ATTR.POLICY_RECEIPT] = receipt;
  if (r.sponsor_id) a[ATTR.SPONSOR_ID] = r.sponsor_id;
  if (r.parent_agent_id) a[ATTR.PARENT_AGENT_ID] = r.parent_agent_id;
  if (r.role) a[ATTR.ROLE] = r.role;
  if (r.purpose) a[ATTR.PURPOSE] = r.purpose;
  if (argsDisclosed.length) a[ATTR.ARGS_DISCLOSED] = argsDisclosed.join(',');
  options.report?.(a, undefined, decidedAt);
  return { policy_decision_id: id, decision, reason, ...(receipt ? { receipt } : {}) };
}
