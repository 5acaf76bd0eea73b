import { COHORT } from '../../common/names';
import { exchangeToken, issueToken, type ObtainedToken } from '../../identity/client';
import { TokenRequestError } from '../../identity/errors';
import { BUILTIN_RULE } from '../policy/schema';
import type { TokenCache } from './cache';
import { TransportError, requestJson, traceHeaders } from './http';
import type { EnforcerSettings } from './settings';
import type { AnsweredCall, EnforcerCheckRequest, PlaneAnswer } from './types';

/**
 * Asking the plane: a token for (instance, tool) — reused while valid unless the plane said the
 * tool takes a token once — then POST /v1/check, both within what is left of the call's budget.
 */
export function createPlaneAsker(o: {
  settings: Readonly<EnforcerSettings>;
  tokens: TokenCache<ObtainedToken>;
  tokenTtlS?: number | undefined;
  now: () => number;
}) {
  const { settings, tokens } = o;
  const singleUseTools = new Set<string>();

  function obtainToken(req: EnforcerCheckRequest, signal: AbortSignal, timeoutMs: number): Promise<ObtainedToken> {
    const { identity, tool, purpose } = req;
    const opts = { signal, timeoutMs };
    if (!identity.delegationToken && identity.delegationUnavailable) {
      // a sub-agent whose parent could not delegate: a token of its own would be wider than the delegation
      return Promise.reject(new Error(`no delegation token from parent ${identity.parentAgentId ?? '(unknown)'}: ${identity.delegationUnavailable}`));
    }
    if (identity.delegationToken) {
      return exchangeToken(
        settings.tokenUrl,
        {
          subject_token: identity.delegationToken,
          audience: tool,
          agent_instance_id: identity.agentInstanceId,
          ...(purpose ? { purpose } : {}),
          ...(o.tokenTtlS ? { ttl: o.tokenTtlS } : {}),
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
        ...(identity.role ? { role: identity.role } : {}),
        ...(purpose ? { purpose } : {}),
        ...(o.tokenTtlS ? { ttl: o.tokenTtlS } : {}),
      },
      { ...opts, ...(identity.credential ? { credential: identity.credential } : {}) },
    );
  }

  const keyOf = (req: EnforcerCheckRequest, principal: string) =>
    `${principal}\0${req.identity.agentInstanceId}\0${req.identity.parentAgentId ?? ''}\0${req.identity.role ?? ''}\0${req.tool}\0${req.purpose ?? ''}`;

  /**
   * A token for the call without a decision (a baseline call that a guarded tool will check): the
   * kept one when the tool takes tokens more than once, else a new one, within `budgetMs`.
   */
  async function tokenFor(req: EnforcerCheckRequest, principal: string, budgetMs: number): Promise<ObtainedToken> {
    const tokenKey = keyOf(req, principal);
    const reusable = !singleUseTools.has(req.tool);
    const kept = reusable ? tokens.get(tokenKey, o.now()) : undefined;
    if (kept) return kept;
    const token = await obtainToken(req, AbortSignal.timeout(budgetMs), budgetMs);
    if (reusable) tokens.set(tokenKey, token);
    return token;
  }

  /** Token, then plane, within `budgetMs`. Throws on anything but a valid answer. */
  async function ask(req: EnforcerCheckRequest, principal: string, budgetMs: number, disclosed?: Record<string, unknown>): Promise<AnsweredCall> {
    const signal = AbortSignal.timeout(budgetMs);
    const { tool, purpose } = req;
    const tokenKey = keyOf(req, principal);
    const reusable = !singleUseTools.has(tool);
    let token = reusable ? tokens.get(tokenKey, o.now()) : undefined;
    const fromCache = token !== undefined;
    token ??= await obtainToken(req, signal, budgetMs);
    const askPlane = (t: ObtainedToken) =>
      requestJson(`${settings.policyUrl}/v1/check`, {
        method: 'POST',
        body: { token: t.token, tool, action: req.action, ...(purpose ? { purpose } : {}), ...(disclosed ? { args: disclosed } : {}), ...(req.attributes && Object.keys(req.attributes).length ? { attributes: req.attributes } : {}) },
        headers: traceHeaders(),
        signal,
        timeoutMs: budgetMs,
      }).then(parseAnswer);
    let answer = await askPlane(token);
    if (fromCache && answer.decision === 'deny' && answer.rule_id === BUILTIN_RULE.TOKEN_INVALID) {
      // A kept token the plane no longer accepts (the token service restarted with new keys,
      // rotated them): drop it and ask once more with a fresh one, within the same deadline.
      tokens.delete(tokenKey);
      token = await obtainToken(req, signal, budgetMs);
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
    return { answer, token };
  }

  return { ask, tokenFor };
}

export function parseAnswer(body: unknown): PlaneAnswer {
  const b = body as Partial<PlaneAnswer> | undefined;
  const bad = (what: string) => new TransportError('malformed', `the policy plane answered without a valid ${what}`);
  if (typeof b !== 'object' || b === null) throw bad('body');
  if (b.decision !== 'allow' && b.decision !== 'deny' && b.decision !== 'pending') throw bad('decision');
  if (b.decision === 'pending' && b.enforced === true && (typeof b.approval_id !== 'string' || b.approval_id === '')) throw bad('approval_id');
  if (typeof b.policy_decision_id !== 'string' || b.policy_decision_id === '') throw bad('policy_decision_id');
  if (typeof b.rule_id !== 'string' || typeof b.reason !== 'string') throw bad('rule_id/reason');
  if (b.cohort !== COHORT.CANARY && b.cohort !== COHORT.BASELINE) throw bad('cohort');
  if (typeof b.enforced !== 'boolean') throw bad('enforced');
  return b as PlaneAnswer;
}

/** Why asking failed, for the refusal's reason. */
export function describeFailure(err: unknown, timeoutMs: number): string {
  if (err instanceof TransportError) return err.message;
  if (err instanceof TokenRequestError) {
    if ((err.cause as Error | undefined)?.name === 'TimeoutError' || /abort/i.test(err.message)) return `no token within ${timeoutMs} ms (${err.message})`;
    return `token service: ${err.message}`;
  }
  return (err as Error)?.message ?? String(err);
}

/** A token service refusal that is a deny (bad credential, unknown agent), not an outage. */
export function isTokenRefusal(err: unknown): err is TokenRequestError {
  return err instanceof TokenRequestError && err.code === 'ERR_TOKEN_REFUSED' && err.status !== 408 && err.status !== 429;
}
