import crypto from 'node:crypto';
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from '@opentelemetry/api';
import { isSampledOut } from '../common/audit-sample';
import { canonicalJson, sha256Hex } from '../common/canonical';
import { performance } from 'node:perf_hooks';
import { ATTR, DEFAULTS, SPAN } from '../common/names';
import { PolicyDeniedError, PolicyUnavailableError } from '../enforcer/errors';
import { withToolCall } from './call-context';
import { mapTool, type ToolMap, type ToolTarget } from './mapping';
import { enforcerOf, getRuntime } from './runtime';
import { currentScope, type AgentScope } from './scope';
import { ensureSponsor } from './sponsor';
import { AUDIT_STATUS, POLICY_ERROR_TYPE, SEMCONV, TOOL_TYPE_FUNCTION } from './semconv';
import type { EnforcerCheck, EnforcerLike, EnforcerVerdict, ToolCallOptions, ToolCallRequest } from './types';

/**
 * The one lifecycle every tool call goes through, whatever framework made it:
 * span `execute_tool {gen_ai.tool.name}` → ask the enforcer → on refusal throw its typed error without running
 * the body → otherwise run the body inside the span (with the agent's baggage) → hash the result →
 * number the record in the instance's audit chain → end the span, exactly once.
 */
export async function runToolCall<T>(request: ToolCallRequest, body: () => T | PromiseLike<T>): Promise<Awaited<T>> {
  const runtime = getRuntime();
  const scope = currentScope();
  const enforcer = enforcerOf(runtime);
  // One budget from here to the decision: name resolution, sponsor lookup, token and check all
  // spend it, and the audit row's policy latency is the whole wait.
  const startedAt = performance.now();
  const budgetMs = enforcer?.settings?.timeoutMs ?? DEFAULTS.POLICY_TIMEOUT_MS;
  const remaining = () => budgetMs - (performance.now() - startedAt);
  const target = resolveTarget(request, runtime.toolMap, enforcer, runtime.resolved, remaining);
  const { tool, action } = 'then' in target ? await target : target;
  const learning = ensureSponsor(scope, tool);
  // past the budget an enforced call goes on without the sponsor: the enforcer refuses it, out of time
  if (learning) await (enforcer ? within(learning, remaining(), () => undefined) : learning);
  const identity = scope.identity;
  const purpose = request.purpose ?? scope.purpose;

  let parent = context.active();
  if (parent === ROOT_CONTEXT && runtime.rootContext) parent = runtime.rootContext;

  const attributes: Attributes = {
    [ATTR.GEN_AI_OPERATION_NAME]: SPAN.TOOL_CALL_OPERATION,
    [ATTR.GEN_AI_TOOL_NAME]: request.name,
    [SEMCONV.GEN_AI_TOOL_TYPE]: TOOL_TYPE_FUNCTION,
    [ATTR.GEN_AI_AGENT_ID]: identity.agentInstanceId,
    [ATTR.AGENT_INSTANCE_ID]: identity.agentInstanceId,
    [ATTR.TOOL_ID]: tool,
    [ATTR.ACTION]: action,
  };
  if (request.toolCallId) attributes[ATTR.GEN_AI_TOOL_CALL_ID] = request.toolCallId;
  if (request.description) attributes[SEMCONV.GEN_AI_TOOL_DESCRIPTION] = request.description;
  if (identity.agentName) attributes[ATTR.GEN_AI_AGENT_NAME] = identity.agentName;
  if (identity.sponsorId) attributes[ATTR.SPONSOR_ID] = identity.sponsorId;
  if (identity.parentAgentId) attributes[ATTR.PARENT_AGENT_ID] = identity.parentAgentId;
  if (identity.role) attributes[ATTR.ROLE] = identity.role;
  if (purpose) attributes[ATTR.PURPOSE] = purpose;
  // the call's own attributes never replace custody's
  for (const [k, v] of Object.entries(request.attributes ?? {})) if (!(k in attributes) && typeof v === 'string') attributes[k] = v;

  const requestJson = safeJson(request.args);
  const requestHash = sha256(requestJson);
  attributes[ATTR.REQUEST_HASH] = requestHash;
  if (runtime.captureContent) attributes[ATTR.REQUEST_CONTENT] = requestJson;

  // GenAI conventions: the span is named after gen_ai.tool.name (the name the agent called), not the policy tool
  const span = runtime.tracer.startSpan(`${SPAN.TOOL_CALL_PREFIX} ${request.name}`, { kind: SpanKind.INTERNAL, attributes }, parent);
  const call = new CallRecord(span, scope, tool, action);
  call.requestHash = requestHash;

  const ctx = trace.setSpan(scope.withBaggage(parent), span);
  let token: string | undefined;
  if (enforcer) {
    let verdict: EnforcerVerdict;
    try {
      // inside the span: the plane's decision span joins the call's trace
      const check: EnforcerCheck = purpose ? { tool, action, purpose, identity, startedAt } : { tool, action, identity, startedAt };
      if ((runtime.settings.toolOrigins?.length ?? 0) > 0 || request.sendsToken) check.withToken = true;
      if (request.args !== undefined) check.args = request.args;
      if (request.attributes) check.attributes = request.attributes;
      verdict = await context.with(ctx, () => enforcer.check(check));
    } catch (err) {
      // check() is not supposed to throw; if it does, the call is refused all the same
      verdict = { decision: 'error', allowed: false, error: unavailable(tool, action, err) };
    }
    call.applyVerdict(verdict);
    if (!verdict.allowed) {
      const error = refusalError(verdict, tool, action);
      call.fail(error);
      throw error;
    }
    token = verdict.token;
  }

  let result: Awaited<T>;
  try {
    // the body's outgoing HTTP carries the call's context (http-client/), and its token to the tool origins
    result = await context.with(withToolCall(ctx, { tool, action, ...(token ? { token } : {}) }), body);
  } catch (err) {
    call.fail(err);
    throw err;
  }
  call.succeed(result, runtime.captureContent);
  return result;
}

/**
 * The policy tool and action of a call: explicit ones, then the local tool map, then the plane's
 * (through the enforcer), then the `tool.action` / `call` convention.
 */
function resolveTarget(
  request: ToolCallRequest,
  local: ToolMap | undefined,
  enforcer: EnforcerLike | null,
  resolved: Map<string, { ref: ToolTarget; until: number }>,
  remaining: () => number,
): ToolTarget | Promise<ToolTarget> {
  if ((request.tool && request.action) || !enforcer?.resolveTool || (local && Object.hasOwn(local, request.name))) {
    return mapTool(request.name, local, request);
  }
  const apply = (ref: ToolTarget): ToolTarget => ({ tool: request.tool ?? ref.tool, action: request.action ?? ref.action });
  const now = Date.now();
  const hit = resolved.get(request.name);
  if (hit && hit.until > now) return apply(hit.ref);
  const convention = () => mapTool(request.name, undefined, request);
  const asked = enforcer.resolveTool(request.name, { timeoutMs: Math.max(0, Math.floor(remaining())) }).then(
    (ref) => {
      if (resolved.size >= MAX_RESOLVED) resolved.clear();
      resolved.set(request.name, { ref: { tool: ref.tool, action: ref.action }, until: now + RESOLVED_TTL_MS });
      return apply(ref);
    },
    convention,
  );
  // out of budget: the convention's name (the enforcer then refuses the call, out of time)
  return within(asked, remaining(), convention);
}

/** `promise`, or `fallback()` once `ms` have passed without it. */
async function within<T>(promise: Promise<T>, ms: number, fallback: () => T): Promise<T> {
  if (ms <= 0) return fallback();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback()), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A name's resolution through the plane's tool_map is reused this long (the enforcer refreshes the map itself). */
const RESOLVED_TTL_MS = 5_000;
const MAX_RESOLVED = 10_000;

/** The manual API: runs `fn(args)` as an enforced, audited tool call and returns its result. */
export function toolCall<A, R>(name: string, args: A, fn: (args: A) => R | PromiseLike<R>, options: ToolCallOptions = {}): Promise<Awaited<R>> {
  return runToolCall({ ...options, name, args }, () => fn(args));
}

/** `fn` as an enforced, audited tool: its first argument is the call's arguments. */
export function wrapTool<A, R, Rest extends unknown[]>(
  name: string,
  fn: (args: A, ...rest: Rest) => R | PromiseLike<R>,
  options: ToolCallOptions = {},
): (args: A, ...rest: Rest) => Promise<Awaited<R>> {
  const wrapped = function (this: unknown, args: A, ...rest: Rest): Promise<Awaited<R>> {
    return runToolCall({ ...options, name, args }, () => fn.call(this, args, ...rest));
  };
  Object.defineProperty(wrapped, 'name', { value: fn.name || name });
  return wrapped;
}

/** The span and audit state of one call until its span ends. */
class CallRecord {
  requestHash = '';
  private decisionId = '';
  private decision = '';
  private auditSample: number | undefined;
  private shadow: Promise<EnforcerVerdict> | undefined;
  private ended = false;

  constructor(
    readonly span: Span,
    readonly scope: AgentScope,
    readonly tool: string,
    readonly action: string,
  ) {}

  applyVerdict(v: EnforcerVerdict): void {
    setVerdictAttributes(this.span, v);
    this.decisionId = v.policyDecisionId ?? '';
    this.decision = v.decision;
    this.auditSample = v.auditSample;
    this.shadow = v.shadow;
  }

  fail(err: unknown): void {
    const type = errorType(err);
    this.span.setAttribute(ATTR.ERROR_TYPE, type);
    if (err instanceof Error) this.span.recordException(err);
    else this.span.recordException({ name: type, message: String(err) });
    this.span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    this.end(AUDIT_STATUS.ERROR, '');
  }

  succeed(result: unknown, capture: boolean): void {
    const json = safeJson(result);
    const responseHash = sha256(json);
    this.span.setAttribute(ATTR.RESPONSE_HASH, responseHash);
    if (capture) this.span.setAttribute(ATTR.RESPONSE_CONTENT, json);
    this.span.setStatus({ code: SpanStatusCode.OK });
    this.end(AUDIT_STATUS.OK, responseHash);
  }

  private end(status: string, responseHash: string): void {
    if (this.ended) return;
    this.ended = true;
    const shadow = this.shadow;
    if (!shadow) return this.close(status, responseHash);
    // Baseline cohort: the call was let through at once; its span waits (never the caller) for the
    // real decision, so the audit row says what enforcement would have done.
    shadow.then(
      (v) => {
        setVerdictAttributes(this.span, { ...v, enforced: false });
        this.decisionId = v.policyDecisionId ?? this.decisionId;
        this.decision = v.decision;
        this.auditSample = v.auditSample;
      },
      () => undefined,
    ).finally(() => this.close(status, responseHash));
  }

  private close(status: string, responseHash: string): void {
    const sc = this.span.spanContext();
    const id = this.scope.identity;
    const link = this.scope.chain.next({
      agent_instance_id: id.agentInstanceId,
      trace_id: sc.traceId,
      span_id: sc.spanId,
      sponsor_id: id.sponsorId ?? '',
      parent_agent_id: id.parentAgentId ?? '',
      tool_id: this.tool,
      action: this.action,
      policy_decision_id: this.decisionId,
      request_hash: this.requestHash,
      response_hash: responseHash,
      status,
    });
    this.span.setAttributes({ [ATTR.AUDIT_SEQ]: link.seq, [ATTR.AUDIT_PREV_HASH]: link.prevHash });
    // Sampling is decided here, where the chain advanced: only an allowed, successful, sponsored
    // call the plane granted a rate may become a stub; the collector and verify check it again.
    const rate = this.auditSample;
    if (rate !== undefined && this.decision === 'allow' && status === AUDIT_STATUS.OK && id.sponsorId && this.decisionId) {
      this.span.setAttribute(ATTR.AUDIT_SAMPLE_RATE, rate);
      if (isSampledOut(sc.traceId, sc.spanId, rate)) this.span.setAttribute(ATTR.AUDIT_SAMPLED, true);
    }
    this.span.end();
  }
}

function setVerdictAttributes(span: Span, v: EnforcerVerdict): void {
  const a: Attributes = { [ATTR.POLICY_DECISION]: v.decision };
  if (v.policyDecisionId) a[ATTR.POLICY_DECISION_ID] = v.policyDecisionId;
  if (v.ruleId) a[ATTR.POLICY_RULE_ID] = v.ruleId;
  if (v.reason) a[ATTR.POLICY_REASON] = v.reason;
  if (v.cohort) a[ATTR.ROLLOUT_COHORT] = v.cohort;
  if (v.enforced !== undefined) a[ATTR.ENFORCED] = v.enforced;
  if (v.cached !== undefined) a[ATTR.POLICY_CACHED] = v.cached;
  if (v.latencyMs !== undefined) a[ATTR.POLICY_LATENCY_MS] = v.latencyMs;
  if (v.tokenJti) a[ATTR.TOKEN_JTI] = v.tokenJti;
  if (v.receipt) a[ATTR.POLICY_RECEIPT] = v.receipt;
  if (v.incident) a[ATTR.POLICY_INCIDENT_MODE] = true;
  if (v.approval) {
    const x = v.approval;
    a[ATTR.APPROVAL_ID] = x.id;
    a[ATTR.APPROVAL_STATUS] = x.status;
    a[ATTR.APPROVAL_WAIT_MS] = x.waitMs;
    if (x.approver) a[ATTR.APPROVAL_APPROVER] = x.approver;
    if (x.via) a[ATTR.APPROVAL_VIA] = x.via;
    if (x.reason) a[ATTR.APPROVAL_REASON] = x.reason;
    if (x.decidedAt) a[ATTR.APPROVAL_DECIDED_AT] = x.decidedAt;
  }
  if (v.argsDisclosed) a[ATTR.ARGS_DISCLOSED] = v.argsDisclosed.join(',');
  span.setAttributes(a);
}

/** The error a refused call throws: the enforcer's own typed error, or fail-closed unavailability. */
function refusalError(v: EnforcerVerdict, tool: string, action: string): Error {
  if (v.error instanceof PolicyDeniedError || v.error instanceof PolicyUnavailableError) return v.error;
  if (v.decision === 'deny') {
    return new PolicyDeniedError({
      tool,
      action,
      policyDecisionId: v.policyDecisionId ?? '',
      ruleId: v.ruleId ?? '',
      reason: v.reason ?? v.error?.message ?? 'denied',
    });
  }
  return unavailable(tool, action, v.error ?? v.reason ?? 'no decision');
}

function unavailable(tool: string, action: string, cause: unknown): PolicyUnavailableError {
  const message = cause instanceof Error ? cause.message : String(cause);
  return new PolicyUnavailableError(tool, action, message, { cause });
}

/** error.type: the policy errors' own type, else a code or the error class. */
export function errorType(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { type?: unknown; code?: unknown; name?: unknown };
    if (e.type === POLICY_ERROR_TYPE.DENIED || e.type === POLICY_ERROR_TYPE.UNAVAILABLE) return e.type;
    if (typeof e.code === 'string' && e.code) return e.code;
    if (typeof e.name === 'string' && e.name && e.name !== 'Error') return e.name;
  }
  return '_OTHER';
}

// Telemetry fails open: a value that cannot be serialized is hashed as its string form.
function safeJson(value: unknown): string {
  try {
    return canonicalJson(value);
  } catch {
    return canonicalJson(String(value));
  }
}

/**
 * SHA-256 hex of canonical JSON text: the same digest as common/canonical.ts hashValue, with the
 * one-shot crypto.hash where this Node has it (it skips a Hash object per call).
 */
const oneShot = (crypto as { hash?: (algorithm: string, data: string) => string }).hash;
function sha256(json: string): string {
  return oneShot ? oneShot('sha256', json) : sha256Hex(json);
}
