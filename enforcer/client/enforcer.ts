import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { trace, type Attributes, type Span } from '@opentelemetry/api';
import { ConfigError } from '../../common/errors';
import { createLogger, type Logger } from '../../common/log';
import { ATTR, COHORT, DEFAULTS, ENV, type Cohort } from '../../common/names';
import { PolicyDeniedError, PolicyUnavailableError } from '../errors';
import { BUILTIN_RULE } from '../policy/schema';
import { MAX_INCIDENT_CACHE_TTL_S, cohortBucket } from '../policy/rollout';
import { resolveToolName, type ToolRef } from '../policy/tool-map';
import { exchangeToken, issueToken, type ObtainedToken } from '../../identity/client';
import { TokenRequestError } from '../../identity/errors';
import { AllowCache, TokenCache } from './cache';
import { TransportError, requestJson, traceHeaders } from './http';
import { createRolloutClient, type RolloutSnapshot } from './rollout';

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
}

export interface EnforcerCheckRequest {
  /** The policy's tool (resolve framework names with `resolveTool` first). */
  tool: string;
  action: string;
  purpose?: string | undefined;
  identity: EnforcerIdentity;
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
  /** Time this check took here (token + plane), ms. */
  latencyMs: number;
  tokenJti?: string;
  error?: PolicyDeniedError | PolicyUnavailableError;
  /** Baseline cohort: the call is allowed at once; the plane's decision arrives here. Never rejects. */
  shadow?: Promise<EnforcerDecision>;
  /** The policy version that decided (plane answers only). */
  policyVersion?: string;
  /** True while the incident switch lengthens the decision cache TTL. */
  incident?: boolean;
  /** The plane's signed receipt of the decision (reused with a cached allow). */
  receipt?: string;
}

export interface EnforcerOptions {
  /** Control API. Default $CUSTODY_URL or http://127.0.0.1:8080. */
  url?: string;
  /** Policy plane. Default $CUSTODY_POLICY_URL or `url`. */
  policyUrl?: string;
  /** Token service. Default $CUSTODY_TOKEN_URL or `url`. */
  tokenUrl?: string;
  /** Budget for token + check, ms. Default $CUSTODY_POLICY_TIMEOUT_MS or 200. */
  timeoutMs?: number;
  /** How long an allow is reused, s (0: never). Default $CUSTODY_DECISION_CACHE_TTL_S or 30. */
  cacheTtlS?: number;
  /** The incident switch: a longer TTL for allows, s. Default $CUSTODY_INCIDENT_CACHE_TTL_S (unset: off). */
  incidentCacheTtlS?: number;
  /** Ask GET /v1/rollout again after this long, ms. Default 5000. */
  rolloutRefreshMs?: number;
  /** A rollout answer older than this is unknown (calls are enforced), ms. Default 30000. */
  rolloutMaxAgeMs?: number;
  /** Decision cache entries kept at most. Default 10000. */
  cacheMaxEntries?: number;
  /** Token lifetime to ask for, s. Default: the token service's. */
  tokenTtlS?: number;
  /** Set the decision attributes on the active span (trace.getActiveSpan()). Default true. */
  recordOnActiveSpan?: boolean;
  /** The clock, epoch ms. */
  now?: () => number;
  log?: Logger;
  /** Environment to read defaults from. Default process.env. */
  env?: NodeJS.ProcessEnv;
}

export interface Enforcer {
  /** Asks for a decision; never throws. */
  check(request: EnforcerCheckRequest): Promise<EnforcerDecision>;
  /** A framework tool name → policy tool and action, with the plane's tool_map when it can be had in time. */
  resolveTool(name: string): Promise<ToolRef>;
  /** Asks the plane for the rollout now (startup warm-up, tests); undefined when it cannot be had: calls are then enforced. */
  refreshRollout(): Promise<RolloutSnapshot | undefined>;
  /** The settings in force (after env defaults). */
  readonly settings: Readonly<EnforcerSettings>;
  close(): Promise<void>;
}

export interface EnforcerSettings {
  policyUrl: string;
  tokenUrl: string;
  timeoutMs: number;
  cacheTtlS: number;
  incidentCacheTtlS: number | null;
  rolloutRefreshMs: number;
  rolloutMaxAgeMs: number;
}

/** The built-in rule ids of refusals the enforcer makes itself. */
export const ENFORCER_RULE = {
  SPONSOR_REQUIRED: BUILTIN_RULE.SPONSOR_REQUIRED,
  INSTANCE_REQUIRED: BUILTIN_RULE.INSTANCE_REQUIRED,
  TOKEN_REFUSED: 'token-refused',
  UNAVAILABLE: 'policy-unavailable',
} as const;

interface PlaneAnswer {
  decision: 'allow' | 'deny';
  policy_decision_id: string;
  rule_id: string;
  reason: string;
  cohort: Cohort;
  enforced: boolean;
  policy_version?: string;
  single_use_token?: boolean;
  token_jti?: string;
  receipt?: string;
}

const TOKEN_REUSE_MARGIN_MS = 5_000;

/**
 * The agent-side enforcer: before every tool call it gets a token for the tool (reusing one that
 * is still valid), asks the policy plane, and says whether the call may run. It fails closed: no
 * answer within the timeout, a refused connection, a 5xx, a malformed answer, an unknown rollout,
 * a missing sponsor — the call is refused with PolicyUnavailableError or PolicyDeniedError.
 * Allows are cached per (sponsor, instance, role, tool, action, purpose); denies and errors never.
 * Baseline-cohort instances are not blocked: their decision is made in the background (`shadow`).
 */
export function createEnforcer(options: EnforcerOptions = {}): Enforcer {
  const env = options.env ?? process.env;
  const now = options.now ?? Date.now;
  const base = options.url ?? env[ENV.URL] ?? DEFAULTS.URL;
  const settings: EnforcerSettings = Object.freeze({
    policyUrl: trimSlash(options.policyUrl ?? (env[ENV.POLICY_URL] || base)),
    tokenUrl: trimSlash(options.tokenUrl ?? (env[ENV.TOKEN_URL] || base)),
    timeoutMs: options.timeoutMs ?? envNumber(env, ENV.POLICY_TIMEOUT_MS, DEFAULTS.POLICY_TIMEOUT_MS, 1, 60_000),
    cacheTtlS: options.cacheTtlS ?? envNumber(env, ENV.DECISION_CACHE_TTL_S, DEFAULTS.DECISION_CACHE_TTL_S, 0, MAX_INCIDENT_CACHE_TTL_S),
    incidentCacheTtlS: options.incidentCacheTtlS ?? (env[ENV.INCIDENT_CACHE_TTL_S] ? envNumber(env, ENV.INCIDENT_CACHE_TTL_S, 0, 1, MAX_INCIDENT_CACHE_TTL_S) : null),
    rolloutRefreshMs: options.rolloutRefreshMs ?? 5_000,
    rolloutMaxAgeMs: options.rolloutMaxAgeMs ?? 30_000,
  });
  for (const [name, v] of Object.entries({ timeoutMs: settings.timeoutMs, cacheTtlS: settings.cacheTtlS })) {
    if (!Number.isFinite(v) || v < 0) throw new ConfigError(`enforcer option '${name}' must be a number ≥ 0, got ${v}`);
  }
  if (settings.incidentCacheTtlS !== null && !(settings.incidentCacheTtlS > 0 && settings.incidentCacheTtlS <= MAX_INCIDENT_CACHE_TTL_S)) {
    throw new ConfigError(`enforcer option 'incidentCacheTtlS' must be from 1 to ${MAX_INCIDENT_CACHE_TTL_S} s`);
  }
  let log = options.log;
  const logger = () => (log ??= createLogger('custody-enforcer'));
  const recordOnSpan = options.recordOnActiveSpan !== false;

  const allows = new AllowCache<PlaneAnswer>(options.cacheMaxEntries ?? 10_000, MAX_INCIDENT_CACHE_TTL_S * 1000);
  const tokens = new TokenCache<ObtainedToken>(options.cacheMaxEntries ?? 10_000, Math.max(TOKEN_REUSE_MARGIN_MS, 2 * settings.timeoutMs));
  const singleUseTools = new Set<string>();
  const buckets = new Map<string, number>();
  const principals = new Map<string, string>();
  let closed = false;

  // The incident switch: env at start, or the plane's (learned with the rollout). It only ever
  // lengthens how long an allow is reused, and says so loudly.
  let planeIncidentS: number | null = null;
  let incidentLogged = false;
  const effectiveTtlMs = () => Math.max(settings.cacheTtlS, settings.incidentCacheTtlS ?? 0, planeIncidentS ?? 0) * 1000;
  const incidentActive = () => effectiveTtlMs() > settings.cacheTtlS * 1000;
  const announceIncident = () => {
    if (incidentActive()) {
      logger().warn(
        { cacheTtlS: effectiveTtlMs() / 1000, normalTtlS: settings.cacheTtlS, source: planeIncidentS ? 'policy plane' : ENV.INCIDENT_CACHE_TTL_S },
        `INCIDENT MODE: cached allows are reused for ${effectiveTtlMs() / 1000} s instead of ${settings.cacheTtlS} s; enforcement stays on`,
      );
      incidentLogged = true;
    } else if (incidentLogged) {
      logger().warn({ cacheTtlS: settings.cacheTtlS }, 'incident mode over: normal decision cache TTL');
      incidentLogged = false;
    }
  };
  if (settings.incidentCacheTtlS !== null) announceIncident();

  const rollout = createRolloutClient({
    url: `${settings.policyUrl}/v1/rollout`,
    timeoutMs: Math.max(settings.timeoutMs, 1000),
    refreshMs: settings.rolloutRefreshMs,
    maxAgeMs: settings.rolloutMaxAgeMs,
    now,
    onIncident: (ttl) => {
      planeIncidentS = ttl;
      announceIncident();
    },
  });
  void rollout.refresh();

  let toolMap: { map: Record<string, { tool: string; action?: string }>; fetchedAt: number } | undefined;
  let toolMapInflight: Promise<void> | undefined;

  function bucketOf(instance: string): number {
    let b = buckets.get(instance);
    if (b === undefined) {
      if (buckets.size >= 10_000) buckets.clear();
      buckets.set(instance, (b = cohortBucket(instance)));
    }
    return b;
  }

  /** Who the cache is keyed on: the sponsor, or (registered or delegated agents) what stands for it. */
  function principalOf(id: EnforcerIdentity): string {
    if (id.sponsorId) return id.sponsorId;
    const secret = id.delegationToken ?? id.credential;
    if (!secret) return '';
    let p = principals.get(secret);
    if (p === undefined) {
      if (principals.size >= 1000) principals.clear();
      p = `${id.delegationToken ? 'delegation' : 'credential'}:${createHash('sha256').update(secret).digest('hex').slice(0, 32)}`;
      principals.set(secret, p);
    }
    return p;
  }

  function record(span: Span | undefined, d: EnforcerDecision): void {
    if (!span || !span.isRecording()) return;
    try {
      const a: Attributes = {
        [ATTR.POLICY_DECISION]: d.decision,
        [ATTR.POLICY_RULE_ID]: d.ruleId,
        [ATTR.POLICY_LATENCY_MS]: d.latencyMs,
        [ATTR.POLICY_CACHED]: d.cached,
        [ATTR.ENFORCED]: d.enforced,
        [ATTR.ROLLOUT_COHORT]: d.cohort,
      };
      if (d.policyDecisionId) a[ATTR.POLICY_DECISION_ID] = d.policyDecisionId;
      if (d.tokenJti) a[ATTR.TOKEN_JTI] = d.tokenJti;
      if (d.receipt) a[ATTR.POLICY_RECEIPT] = d.receipt;
      if (d.incident) {
        a[ATTR.POLICY_INCIDENT_MODE] = true;
        a[ATTR.POLICY_CACHE_TTL_S] = effectiveTtlMs() / 1000;
      }
      span.setAttributes(a);
    } catch {
      /* telemetry fails open */
    }
  }

  /** Token, then plane, within one deadline. */
  async function ask(req: EnforcerCheckRequest, principal: string, signal: AbortSignal): Promise<PlaneAnswer> {
    const { identity, tool, purpose } = req;
    const tokenKey = `${principal}\0${identity.agentInstanceId}\0${identity.parentAgentId ?? ''}\0${identity.role ?? ''}\0${tool}\0${purpose ?? ''}`;
    const reusable = !singleUseTools.has(tool);
    let token = reusable ? tokens.get(tokenKey, now()) : undefined;
    const fromCache = token !== undefined;
    token ??= await obtainToken(req, signal);
    const askPlane = (t: ObtainedToken) =>
      requestJson(`${settings.policyUrl}/v1/check`, {
        method: 'POST',
        body: { token: t.token, tool, action: req.action, ...(purpose ? { purpose } : {}) },
        headers: traceHeaders(),
        signal,
        timeoutMs: settings.timeoutMs,
      }).then(parseAnswer);
    let answer = await askPlane(token);
    if (fromCache && answer.decision === 'deny' && answer.rule_id === BUILTIN_RULE.TOKEN_INVALID) {
      // A kept token the plane no longer accepts (the token service restarted with new keys,
      // rotated them): drop it and ask once more with a fresh one, within the same deadline.
      tokens.delete(tokenKey);
      token = await obtainToken(req, signal);
      answer = await askPlane(token);
    }
    // A token is kept for reuse only once the plane has said the tool takes tokens more than once.
    if (answer.single_use_token) {
      singleUseTools.add(tool);
      tokens.delete(tokenKey);
    } else {
      singleUseTools.delete(tool);
      if (reusable) tokens.set(tokenKey, token);
    }
    return answer;
  }

  function obtainToken(req: EnforcerCheckRequest, signal: AbortSignal): Promise<ObtainedToken> {
    const { identity, tool, purpose } = req;
    const opts = { signal, timeoutMs: settings.timeoutMs };
    if (identity.delegationToken) {
      return exchangeToken(
        settings.tokenUrl,
        {
          subject_token: identity.delegationToken,
          audience: tool,
          agent_instance_id: identity.agentInstanceId,
          ...(purpose ? { purpose } : {}),
          ...(options.tokenTtlS ? { ttl: options.tokenTtlS } : {}),
        },
        opts,
      );
    }
    return issueToken(
      settings.tokenUrl,
      {
        tool,
        agent_instance_id: identity.agentInstanceId,
        ...(identity.sponsorId ? { sponsor_id: identity.sponsorId } : {}),
        ...(identity.parentAgentId ? { parent_agent_id: identity.parentAgentId } : {}),
        ...(identity.role ? { role: identity.role } : {}),
        ...(purpose ? { purpose } : {}),
        ...(options.tokenTtlS ? { ttl: options.tokenTtlS } : {}),
      },
      { ...opts, ...(identity.credential ? { credential: identity.credential } : {}) },
    );
  }

  /** The plane's answer as a decision; asks and turns every failure into a closed one. */
  async function decideRemote(
    req: EnforcerCheckRequest,
    principal: string,
    key: string,
    cohort: Cohort,
    started: number,
  ): Promise<EnforcerDecision> {
    const { tool, action } = req;
    const waited = cohort === COHORT.CANARY;
    let answer: PlaneAnswer;
    try {
      answer = await ask(req, principal, AbortSignal.timeout(settings.timeoutMs));
    } catch (err) {
      const latencyMs = elapsed(started);
      if (err instanceof TokenRequestError && err.code === 'ERR_TOKEN_REFUSED' && err.status !== 408 && err.status !== 429) {
        const reason = `the token service refused a token: ${err.message}`;
        const error = new PolicyDeniedError({ tool, action, policyDecisionId: '', ruleId: ENFORCER_RULE.TOKEN_REFUSED, reason });
        return refusal({ decision: 'deny', ruleId: ENFORCER_RULE.TOKEN_REFUSED, reason, cohort, waited, latencyMs, error });
      }
      const reason = describeFailure(err, settings.timeoutMs);
      const error = new PolicyUnavailableError(tool, action, reason, { cause: err });
      return refusal({ decision: 'error', ruleId: ENFORCER_RULE.UNAVAILABLE, reason, cohort, waited, latencyMs, error });
    }
    const latencyMs = elapsed(started);
    // The plane knows the rollout best: its cohort decides whether this decision is enforced.
    const enforced = answer.enforced;
    if (answer.decision === 'allow') {
      // Single-use tools need a fresh token, so a fresh decision, every call.
      if (!answer.single_use_token) allows.set(key, answer, now());
    } else {
      allows.delete(key);
    }
    const denied = answer.decision === 'deny';
    const error = denied
      ? new PolicyDeniedError({ tool, action, policyDecisionId: answer.policy_decision_id, ruleId: answer.rule_id, reason: answer.reason })
      : undefined;
    return {
      decision: answer.decision,
      allowed: !denied || !enforced || !waited,
      policyDecisionId: answer.policy_decision_id,
      ruleId: answer.rule_id,
      reason: answer.reason,
      cohort: answer.cohort,
      enforced: enforced && waited,
      cached: false,
      latencyMs,
      ...(answer.token_jti ? { tokenJti: answer.token_jti } : {}),
      ...(typeof answer.receipt === 'string' ? { receipt: answer.receipt } : {}),
      ...(error ? { error } : {}),
      ...(answer.policy_version ? { policyVersion: answer.policy_version } : {}),
      ...(incidentActive() ? { incident: true } : {}),
    };
  }

  /** A refusal made without a plane decision; a baseline call still runs. */
  function refusal(o: {
    decision: 'deny' | 'error';
    ruleId: string;
    reason: string;
    cohort: Cohort;
    waited: boolean;
    latencyMs: number;
    error: PolicyDeniedError | PolicyUnavailableError;
  }): EnforcerDecision {
    return {
      decision: o.decision,
      allowed: !o.waited,
      policyDecisionId: '',
      ruleId: o.ruleId,
      reason: o.reason,
      cohort: o.cohort,
      enforced: o.waited,
      cached: false,
      latencyMs: o.latencyMs,
      error: o.error,
      ...(incidentActive() ? { incident: true } : {}),
    };
  }

  async function check(req: EnforcerCheckRequest): Promise<EnforcerDecision> {
    const started = performance.now();
    const span = recordOnSpan ? trace.getActiveSpan() : undefined;
    let result: EnforcerDecision;
    try {
      result = await checkInner(req, started);
    } catch (err) {
      // check() never throws; anything unexpected is an error decision, enforced.
      const tool = String(req?.tool);
      const action = String(req?.action);
      const reason = `enforcer failure: ${(err as Error)?.message ?? String(err)}`;
      result = refusal({
        decision: 'error',
        ruleId: ENFORCER_RULE.UNAVAILABLE,
        reason,
        cohort: COHORT.CANARY,
        waited: true,
        latencyMs: elapsed(started),
        error: new PolicyUnavailableError(tool, action, reason, { cause: err }),
      });
    }
    record(span, result);
    if (result.shadow) {
      result.shadow = result.shadow.then((d) => {
        record(span, d);
        return d;
      });
    }
    return result;
  }

  async function checkInner(req: EnforcerCheckRequest, started: number): Promise<EnforcerDecision> {
    const { identity, tool, action } = req;
    if (closed) {
      const reason = 'the enforcer is closed';
      return refusal({ decision: 'error', ruleId: ENFORCER_RULE.UNAVAILABLE, reason, cohort: COHORT.CANARY, waited: true, latencyMs: 0, error: new PolicyUnavailableError(tool, action, reason) });
    }
    if (!tool || !action || typeof tool !== 'string' || typeof action !== 'string') {
      const reason = 'a tool call needs a tool and an action';
      return refusal({ decision: 'error', ruleId: ENFORCER_RULE.UNAVAILABLE, reason, cohort: COHORT.CANARY, waited: true, latencyMs: 0, error: new PolicyUnavailableError(String(tool), String(action), reason) });
    }
    const state = rollout.current();
    // Unknown rollout: enforce.
    const cohort: Cohort = !identity?.agentInstanceId || !state || bucketOf(identity.agentInstanceId) < state.percent ? COHORT.CANARY : COHORT.BASELINE;
    const waited = cohort === COHORT.CANARY;

    if (!identity?.agentInstanceId) {
      const reason = 'no agent instance id';
      const error = new PolicyDeniedError({ tool, action, policyDecisionId: '', ruleId: ENFORCER_RULE.INSTANCE_REQUIRED, reason });
      return refusal({ decision: 'deny', ruleId: ENFORCER_RULE.INSTANCE_REQUIRED, reason, cohort, waited: true, latencyMs: elapsed(started), error });
    }
    const principal = principalOf(identity);
    if (!principal) {
      const reason = `no sponsor: set ${ENV.SPONSOR_ID}, or give the agent a credential (${ENV.AGENT_CREDENTIAL}) or a delegation token`;
      const error = new PolicyDeniedError({ tool, action, policyDecisionId: '', ruleId: ENFORCER_RULE.SPONSOR_REQUIRED, reason });
      return refusal({ decision: 'deny', ruleId: ENFORCER_RULE.SPONSOR_REQUIRED, reason, cohort, waited: true, latencyMs: elapsed(started), error });
    }

    const key = `${principal}\0${identity.agentInstanceId}\0${identity.role ?? ''}\0${tool}\0${action}\0${req.purpose ?? ''}`;
    const hit = allows.get(key, now(), effectiveTtlMs());
    if (hit) {
      const a = hit.value;
      return {
        decision: 'allow',
        allowed: true,
        policyDecisionId: a.policy_decision_id,
        ruleId: a.rule_id,
        reason: a.reason,
        cohort,
        enforced: waited,
        cached: true,
        latencyMs: elapsed(started),
        ...(a.token_jti ? { tokenJti: a.token_jti } : {}),
        ...(typeof a.receipt === 'string' ? { receipt: a.receipt } : {}),
        ...(a.policy_version ? { policyVersion: a.policy_version } : {}),
        ...(incidentActive() ? { incident: true } : {}),
      };
    }

    if (waited) return decideRemote(req, principal, key, cohort, started);

    // Baseline: run now, decide in the background, never block and never reject.
    const shadow = decideRemote(req, principal, key, cohort, started).then(
      (d) => ({ ...d, allowed: true, enforced: false, cohort: COHORT.BASELINE }),
      (err: unknown) => {
        const reason = `enforcer failure: ${(err as Error)?.message ?? String(err)}`;
        return refusal({ decision: 'error', ruleId: ENFORCER_RULE.UNAVAILABLE, reason, cohort, waited: false, latencyMs: elapsed(started), error: new PolicyUnavailableError(tool, action, reason) });
      },
    );
    return {
      decision: 'allow',
      allowed: true,
      policyDecisionId: '',
      ruleId: '',
      reason: 'baseline cohort: not enforced; the decision is made in the background (shadow)',
      cohort,
      enforced: false,
      cached: false,
      latencyMs: elapsed(started),
      shadow,
      ...(incidentActive() ? { incident: true } : {}),
    };
  }

  async function resolveTool(name: string): Promise<ToolRef> {
    const fresh = toolMap && now() - toolMap.fetchedAt < settings.rolloutRefreshMs * 12;
    if (!fresh && !toolMapInflight) {
      toolMapInflight = (async () => {
        try {
          const body = (await requestJson(`${settings.policyUrl}/v1/policy`, {
            method: 'GET',
            signal: AbortSignal.timeout(settings.timeoutMs),
            timeoutMs: settings.timeoutMs,
          })) as { tool_map?: unknown };
          if (body && typeof body.tool_map === 'object' && body.tool_map !== null) {
            toolMap = { map: body.tool_map as Record<string, { tool: string; action?: string }>, fetchedAt: now() };
          }
        } catch {
          /* without the table, names resolve by the tool.action convention; the plane still decides */
        } finally {
          toolMapInflight = undefined;
        }
      })();
    }
    if (!toolMap && toolMapInflight) await toolMapInflight;
    return resolveToolName(name, toolMap?.map);
  }

  return {
    check,
    resolveTool,
    async refreshRollout() {
      await rollout.refresh();
      return rollout.current();
    },
    settings,
    async close() {
      closed = true;
      rollout.close();
      allows.clear();
      tokens.clear();
    },
  };
}

function parseAnswer(body: unknown): PlaneAnswer {
  const b = body as Partial<PlaneAnswer> | undefined;
  const bad = (what: string) => new TransportError('malformed', `the policy plane answered without a valid ${what}`);
  if (typeof b !== 'object' || b === null) throw bad('body');
  if (b.decision !== 'allow' && b.decision !== 'deny') throw bad('decision');
  if (typeof b.policy_decision_id !== 'string' || b.policy_decision_id === '') throw bad('policy_decision_id');
  if (typeof b.rule_id !== 'string' || typeof b.reason !== 'string') throw bad('rule_id/reason');
  if (b.cohort !== COHORT.CANARY && b.cohort !== COHORT.BASELINE) throw bad('cohort');
  if (typeof b.enforced !== 'boolean') throw bad('enforced');
  return b as PlaneAnswer;
}

function describeFailure(err: unknown, timeoutMs: number): string {
  if (err instanceof TransportError) return err.message;
  if (err instanceof TokenRequestError) {
    if ((err.cause as Error | undefined)?.name === 'TimeoutError' || /abort/i.test(err.message)) return `no token within ${timeoutMs} ms (${err.message})`;
    return `token service: ${err.message}`;
  }
  return (err as Error)?.message ?? String(err);
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 1000) / 1000;
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}

function envNumber(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new ConfigError(`${name}='${raw}': expected a number from ${min} to ${max}`);
  return n;
}
