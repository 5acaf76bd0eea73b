import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { trace, type Attributes, type Span } from '@opentelemetry/api';
import { createLogger, type Logger } from '../../common/log';
import { ATTR, COHORT, ENV, type Cohort } from '../../common/names';
import { MAX_INCIDENT_CACHE_TTL_S, cohortBucket, inScope } from '../policy/rollout';
import type { ToolRef } from '../policy/tool-map';
import type { ObtainedToken } from '../../identity/client';
import { createPlaneAsker, describeFailure, isTokenRefusal } from './ask';
import { waitForApproval } from './approval-wait';
import { discloseArgs } from '../policy/args';
import { canonicalJson } from '../../common/canonical';
import { AllowCache, TokenCache } from './cache';
import { deniedHere, fromAnswer, fromCache, letThrough, unavailable } from './decisions';
import { createIncidentSwitch } from './incident';
import { createRolloutClient, type RolloutSnapshot } from './rollout';
import { resolveSettings, type EnforcerOptions, type EnforcerSettings } from './settings';
import { createToolMapClient } from './tool-map';
import { createCallableClient } from './callable';
import { CALLABLE_PATH, mayEverCall as mayEverCallRef } from '../policy/callable';
import { ENFORCER_RULE, type AnsweredCall, type EnforcerCheckRequest, type EnforcerDecision, type EnforcerIdentity } from './types';

export { ENFORCER_RULE } from './types';
export type { EnforcerCheckRequest, EnforcerDecision, EnforcerIdentity } from './types';
export type { EnforcerOptions, EnforcerSettings } from './settings';

export interface Enforcer {
  /** Asks for a decision; never throws. */
  check(request: EnforcerCheckRequest): Promise<EnforcerDecision>;
  /**
   * A framework tool name → policy tool and action, with the plane's tool_map when it can be had
   * within `timeoutMs` (default the whole budget), else by the tool.action convention.
   */
  resolveTool(name: string, options?: { timeoutMs?: number }): Promise<ToolRef>;
  /**
   * Which of these framework tool names the agent's role may ever call (GET /v1/policy/callable,
   * cached): for leaving tools out of the lists an agent is offered. `undefined` when that cannot
   * be known in time (offer the list whole). Never a decision: every call is still checked.
   */
  mayEverCall(names: readonly string[], identity: EnforcerIdentity, options?: { timeoutMs?: number }): Promise<boolean[] | undefined>;
  /** Asks the plane for the rollout now (startup warm-up, tests); undefined when it cannot be had: calls are then enforced. */
  refreshRollout(): Promise<RolloutSnapshot | undefined>;
  /** The settings in force (after env defaults). */
  readonly settings: Readonly<EnforcerSettings>;
  close(): Promise<void>;
}

const TOKEN_REUSE_MARGIN_MS = 5_000;

/**
 * The agent-side enforcer: before every tool call it gets a token for the tool (reusing one that
 * is still valid), asks the policy plane, and says whether the call may run. It fails closed: no
 * answer within the budget, a refused connection, a 5xx, a malformed answer, an unknown rollout,
 * a missing sponsor — the call is refused with PolicyUnavailableError or PolicyDeniedError.
 * Allows are cached per (sponsor, instance, role, tool, action, purpose); denies and errors never.
 * Baseline-cohort instances are not blocked: their decision is made in the background (`shadow`).
 *
 * This is the wiring: settings.ts (options and environment, once), incident.ts (the incident
 * switch), rollout.ts (the cohort), tool-map.ts (names), ask.ts (token and plane), decisions.ts
 * (the decisions, pure).
 */
export function createEnforcer(options: EnforcerOptions = {}): Enforcer {
  const settings = resolveSettings(options);
  const now = options.now ?? Date.now;
  let log: Logger | undefined = options.log;
  const logger = () => (log ??= createLogger('custody-enforcer', settings.logLevel));
  const recordOnSpan = options.recordOnActiveSpan !== false;

  const allows = new AllowCache<AnsweredCall>(options.cacheMaxEntries ?? 10_000, MAX_INCIDENT_CACHE_TTL_S * 1000);
  const tokens = new TokenCache<ObtainedToken>(options.cacheMaxEntries ?? 10_000, Math.max(TOKEN_REUSE_MARGIN_MS, 2 * settings.timeoutMs));
  const incident = createIncidentSwitch(settings, logger);
  const rollout = createRolloutClient({
    url: `${settings.policyUrl}/v1/rollout`,
    timeoutMs: Math.max(settings.timeoutMs, 1000),
    refreshMs: settings.rolloutRefreshMs,
    maxAgeMs: settings.rolloutMaxAgeMs,
    now,
    onIncident: (ttl) => incident.setPlane(ttl),
    // the plane's revocations changed: no allow or token kept from before is reused
    onRevocations: () => {
      allows.clear();
      tokens.clear();
    },
  });
  void rollout.refresh();
  const toolMap = createToolMapClient({ url: `${settings.policyUrl}/v1/policy`, fetchTimeoutMs: settings.timeoutMs, freshMs: settings.rolloutRefreshMs * 12, now });
  const planeAsker = createPlaneAsker({ settings, tokens, tokenTtlS: options.tokenTtlS, now });
  const callable = createCallableClient({ url: `${settings.policyUrl}${CALLABLE_PATH}`, timeoutMs: Math.max(settings.timeoutMs, 1000), freshMs: settings.cacheTtlS * 1000, now });
  // the role each principal's tokens carry (registered agents learn theirs from the token service)
  const rolesSeen = boundedMemoMap<string>(1000);
  const cohorts = boundedMemo(10_000, cohortBucket);
  const principals = boundedMemo(1000, (secret: string) => createHash('sha256').update(secret).digest('hex').slice(0, 32));
  let closed = false;

  /** Who the cache is keyed on: the sponsor, or (registered or delegated agents) what stands for it. */
  function principalOf(id: EnforcerIdentity): string {
    if (id.sponsorId) return id.sponsorId;
    const secret = id.delegationToken ?? id.credential;
    if (!secret) return '';
    return `${id.delegationToken ? 'delegation' : 'credential'}:${principals(secret)}`;
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
      if (d.approval) Object.assign(a, approvalAttributes(d.approval));
      if (d.argsDisclosed) a[ATTR.ARGS_DISCLOSED] = d.argsDisclosed.join(',');
      if (d.incident) {
        a[ATTR.POLICY_INCIDENT_MODE] = true;
        a[ATTR.POLICY_CACHE_TTL_S] = incident.ttlMs() / 1000;
      }
      span.setAttributes(a);
    } catch {
      /* telemetry fails open */
    }
  }

  /** The plane's answer as a decision, within what is left of the budget; every failure a closed one. */
  /** Staging (this process's CUSTODY_ENV, or the plane's say-so): a call without a sponsor is refused in every cohort. */
  const staging = (): boolean => settings.staging || rollout.staging();

  /** `gate`: a baseline call that waits for its decision all the same (staging, no sponsor known here). */
  async function decideRemote(req: EnforcerCheckRequest, principal: string, key: string, cohort: Cohort, started: number, disclosed?: Record<string, unknown>, gate = false): Promise<EnforcerDecision> {
    const { tool, action } = req;
    const waited = cohort === COHORT.CANARY || gate;
    const left = Math.floor(settings.timeoutMs - (performance.now() - started));
    if (left < 1) {
      const reason = `no decision within ${settings.timeoutMs} ms: resolving the tool name and the sponsor took the whole budget`;
      return unavailable({ tool, action, reason, cohort, waited, latencyMs: elapsed(started), incident: incident.active() });
    }
    let answered: AnsweredCall;
    try {
      answered = await planeAsker.ask(req, principal, left, disclosed);
    } catch (err) {
      const latencyMs = elapsed(started);
      if (isTokenRefusal(err)) {
        const reason = `the token service refused a token: ${err.message}`;
        return deniedHere({ tool, action, ruleId: ENFORCER_RULE.TOKEN_REFUSED, reason, cohort, waited, latencyMs, incident: incident.active(), staging: staging() });
      }
      return unavailable({ tool, action, reason: describeFailure(err, settings.timeoutMs), cohort, waited, latencyMs, incident: incident.active(), cause: err });
    }
    const latencyMs = elapsed(started);
    const { answer } = answered;
    if (answered.token.claims.role) rolesSeen.set(principal, answered.token.claims.role);
    const argsDisclosed = disclosed ? { argsDisclosed: Object.keys(disclosed) } : {};
    if (answer.decision === 'pending' && answer.approval_id) {
      // A human decides: the wait is theirs, not the plane's (latencyMs stays the time to reach the
      // plane). Never cached: an approval is for this one call.
      allows.delete(key);
      try {
        const { answer: final, approval } = await waitForApproval({ policyUrl: settings.policyUrl, pending: answer, isClosed: () => closed });
        return { ...fromAnswer({ tool, action, answer: final, token: answered.token.token, waited, latencyMs, incident: incident.active() }), approval, ...argsDisclosed };
      } catch (err) {
        const reason = `waiting for approval ${answer.approval_id}: ${(err as Error).message}`;
        return unavailable({ tool, action, reason, cohort, waited, latencyMs, incident: incident.active(), cause: err });
      }
    }
    if (answer.decision === 'allow') {
      // Single-use tools need a fresh token, so a fresh decision, every call.
      if (!answer.single_use_token) allows.set(key, answered, now());
    } else {
      allows.delete(key);
    }
    return { ...fromAnswer({ tool, action, answer, token: answered.token.token, waited, latencyMs, incident: incident.active(), staging: staging() }), ...argsDisclosed };
  }

  async function checkInner(req: EnforcerCheckRequest, started: number): Promise<EnforcerDecision> {
    const { identity, tool, action } = req;
    if (closed) return unavailable({ tool, action, reason: 'the enforcer is closed', latencyMs: 0, incident: incident.active() });
    if (!tool || !action || typeof tool !== 'string' || typeof action !== 'string') {
      return unavailable({ tool: String(tool), action: String(action), reason: 'a tool call needs a tool and an action', latencyMs: 0, incident: incident.active() });
    }
    const state = rollout.current();
    // the call's attributes over the agent's own: a tier-scoped canary matches its scope on them
    const attributes = req.attributes ? { ...settings.attributes, ...req.attributes } : settings.attributes;
    const sent = reportedAttributes(attributes, state ? (state.scope ?? null) : undefined);
    if (sent) req = { ...req, attributes: sent };
    // Unknown rollout: enforce. A scoped canary: only calls in its scope can be canary.
    const cohort: Cohort =
      !identity?.agentInstanceId || !state || ((!state.scope || inScope(state.scope, attributes)) && cohorts(identity.agentInstanceId) < state.percent)
        ? COHORT.CANARY
        : COHORT.BASELINE;
    const waited = cohort === COHORT.CANARY;

    if (!identity?.agentInstanceId) {
      return deniedHere({ tool, action, ruleId: ENFORCER_RULE.INSTANCE_REQUIRED, reason: 'no agent instance id', cohort, waited: true, latencyMs: elapsed(started), incident: incident.active() });
    }
    const principal = principalOf(identity);
    if (!principal) {
      const reason = `no sponsor: set ${ENV.SPONSOR_ID}, or give the agent a credential (${ENV.AGENT_CREDENTIAL}) or a delegation token`;
      // refused either way; whether as a staging validation error may depend on the plane's mode
      if (!staging()) await rollout.settle(Math.max(0, settings.timeoutMs - elapsed(started)));
      return deniedHere({ tool, action, ruleId: ENFORCER_RULE.SPONSOR_REQUIRED, reason, cohort, waited: true, latencyMs: elapsed(started), incident: incident.active(), staging: staging() });
    }

    // the disclosed argument fields decide too: an allow for one amount is not one for another
    let disclosed: Record<string, unknown> | undefined;
    if (req.args !== undefined) {
      const known = toolMap.disclosed(tool, Math.max(0, Math.floor(settings.timeoutMs - elapsed(started))));
      disclosed = discloseArgs(req.args, known instanceof Promise ? await known : known);
    }
    // under a scoped canary, calls of one instance may fall in different cohorts: their allows are kept apart
    const scoped = state?.scope ? Object.keys(state.scope).map((k) => attributes[k] ?? '').join('\0') : '';
    const key = `${principal}\0${identity.agentInstanceId}\0${identity.role ?? ''}\0${tool}\0${action}\0${req.purpose ?? ''}\0${scoped}${disclosed ? `\0${canonicalJson(disclosed)}` : ''}`;
    // a cached allow is reused only once the plane's latest revocations are known (or it cannot
    // answer within what is left of the call's budget)
    if (allows.get(key, now(), incident.ttlMs())) await rollout.settle(Math.max(0, settings.timeoutMs - elapsed(started)));
    const hit = allows.get(key, now(), incident.ttlMs());
    // an allow is reused with its token, and only while that token still has time to reach the tool
    if (hit && hit.value.token.expiresAt - now() > TOKEN_REUSE_MARGIN_MS) {
      return fromCache({ answer: hit.value.answer, token: hit.value.token.token, cohort, waited, latencyMs: elapsed(started), incident: incident.active() });
    }

    if (waited) return decideRemote(req, principal, key, cohort, started, disclosed);
    // staging: a baseline call whose sponsor is not known here (a credential or delegation token
    // stands for it) is not let through before the plane has seen a sponsor on its token
    if (staging() && !identity.sponsorId) return decideRemote(req, principal, key, cohort, started, disclosed, true);

    // Baseline: run now (with a token, when a guarded tool will ask for one), decide in the
    // background, never block beyond the budget and never reject.
    let token: string | undefined;
    if (req.withToken) {
      const left = Math.floor(settings.timeoutMs - (performance.now() - started));
      try {
        if (left >= 1) token = (await planeAsker.tokenFor(req, principal, left)).token;
      } catch {
        /* the call runs without one; a guarded tool refuses it */
      }
    }
    const shadow = decideRemote(req, principal, key, cohort, started, disclosed).then(
      (d) => ({ ...d, allowed: true, enforced: false, cohort: COHORT.BASELINE }),
      (err: unknown) =>
        unavailable({ tool, action, reason: `enforcer failure: ${(err as Error)?.message ?? String(err)}`, cohort, waited: false, latencyMs: elapsed(started), incident: incident.active() }),
    );
    return letThrough({ cohort, latencyMs: elapsed(started), shadow, incident: incident.active(), token });
  }

  async function check(req: EnforcerCheckRequest): Promise<EnforcerDecision> {
    const span = recordOnSpan ? trace.getActiveSpan() : undefined;
    // the budget counts from when the call began waiting, not from here
    const at = performance.now();
    const started = typeof req?.startedAt === 'number' && Number.isFinite(req.startedAt) && req.startedAt <= at ? req.startedAt : at;
    let result: EnforcerDecision;
    try {
      result = await checkInner(req, started);
    } catch (err) {
      // check() never throws; anything unexpected is an error decision, enforced.
      result = unavailable({
        tool: String(req?.tool),
        action: String(req?.action),
        reason: `enforcer failure: ${(err as Error)?.message ?? String(err)}`,
        latencyMs: elapsed(started),
        incident: incident.active(),
        cause: err,
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

  async function mayEverCall(names: readonly string[], identity: EnforcerIdentity, opts?: { timeoutMs?: number }): Promise<boolean[] | undefined> {
    const budget = opts?.timeoutMs ?? Math.max(settings.timeoutMs, 1000);
    if (closed || !identity?.agentInstanceId || names.length === 0) return undefined;
    const principal = principalOf(identity);
    let role = identity.role ?? rolesSeen.get(principal);
    if (role === undefined && principal && !identity.sponsorId) {
      // a registered or delegated agent learns its role from a token (kept for its first call)
      try {
        const ref = await toolMap.resolve(names[0]!, budget);
        const token = await planeAsker.tokenFor({ tool: ref.tool, action: ref.action, identity }, principal, budget);
        role = token.claims.role;
        if (role) rolesSeen.set(principal, role);
      } catch {
        return undefined;
      }
    }
    const answer = await callable.get(role ?? null);
    if (!answer) return undefined;
    const refs = await Promise.all(names.map((n) => toolMap.resolve(n, budget)));
    return refs.map((r) => mayEverCallRef(answer, r.tool, r.action));
  }

  return {
    check,
    mayEverCall,
    resolveTool: (name, opts) => toolMap.resolve(name, opts?.timeoutMs ?? settings.timeoutMs),
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
      callable.clear();
    },
  };
}

/** A map of at most `max` keys (then forgotten all at once). */
function boundedMemoMap<V>(max: number) {
  const map = new Map<string, V>();
  return {
    get: (key: string) => map.get(key),
    set(key: string, value: V) {
      if (!map.has(key) && map.size >= max) map.clear();
      map.set(key, value);
    },
  };
}

/** `fn(key)`, remembered for up to `max` keys (then forgotten all at once). */
function boundedMemo<V>(max: number, fn: (key: string) => V): (key: string) => V {
  const memo = new Map<string, V>();
  return (key) => {
    let v = memo.get(key);
    if (v === undefined) {
      if (memo.size >= max) memo.clear();
      memo.set(key, (v = fn(key)));
    }
    return v;
  };
}

function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 1000) / 1000;
}

function approvalAttributes(x: NonNullable<EnforcerDecision['approval']>): Attributes {
  const a: Attributes = { [ATTR.APPROVAL_ID]: x.id, [ATTR.APPROVAL_STATUS]: x.status, [ATTR.APPROVAL_WAIT_MS]: x.waitMs };
  if (x.approver) a[ATTR.APPROVAL_APPROVER] = x.approver;
  if (x.via) a[ATTR.APPROVAL_VIA] = x.via;
  if (x.reason) a[ATTR.APPROVAL_REASON] = x.reason;
  if (x.decidedAt) a[ATTR.APPROVAL_DECIDED_AT] = x.decidedAt;
  return a;
}

/** What the plane's /v1/check takes of the attributes: at most 32, names and values of at most 256 characters. */
const MAX_REPORTED = 32;
const MAX_REPORTED_LENGTH = 256;

/**
 * The attributes sent with a check: those the scope names (`null`: an unscoped rollout, none); with
 * the rollout unknown (`undefined`), as many as the plane takes, since the plane decides the
 * cohort. Undefined when there are none.
 */
export function reportedAttributes(
  attributes: Readonly<Record<string, string>>,
  scope: Readonly<Record<string, readonly string[]>> | null | undefined,
): Record<string, string> | undefined {
  if (scope === null) return undefined;
  const out: Record<string, string> = {};
  let n = 0;
  for (const [k, v] of Object.entries(attributes)) {
    if (scope && !Object.hasOwn(scope, k)) continue;
    if (k.length > MAX_REPORTED_LENGTH || v.length > MAX_REPORTED_LENGTH) continue;
    out[k] = v;
    if (++n >= MAX_REPORTED) break;
  }
  return n ? out : undefined;
}
