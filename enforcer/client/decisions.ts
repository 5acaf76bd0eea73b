import { COHORT, type Cohort } from '../../common/names';
import { PolicyDeniedError, PolicyUnavailableError, SponsorMissingError } from '../errors';
import { ENFORCER_RULE, type EnforcerDecision, type PlaneAnswer } from './types';

/**
 * Decisions as pure functions of what is known: the enforcer's own refusals, the plane's answer,
 * a cached allow, a baseline call let through. `incident` marks the incident switch in force.
 */

/** A refusal made without a plane decision; a baseline call (`waited` false) still runs. */
export function refusal(o: {
  decision: 'deny' | 'error';
  ruleId: string;
  reason: string;
  cohort: Cohort;
  waited: boolean;
  latencyMs: number;
  error: PolicyDeniedError | PolicyUnavailableError;
  incident: boolean;
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
    ...(o.incident ? { incident: true } : {}),
  };
}

/** No decision could be had: an enforced call is refused with PolicyUnavailableError. */
export function unavailable(o: { tool: string; action: string; reason: string; cohort?: Cohort; waited?: boolean; latencyMs: number; incident: boolean; cause?: unknown }): EnforcerDecision {
  return refusal({
    decision: 'error',
    ruleId: ENFORCER_RULE.UNAVAILABLE,
    reason: o.reason,
    cohort: o.cohort ?? COHORT.CANARY,
    waited: o.waited ?? true,
    latencyMs: o.latencyMs,
    error: new PolicyUnavailableError(o.tool, o.action, o.reason, o.cause !== undefined ? { cause: o.cause } : undefined),
    incident: o.incident,
  });
}

/** The enforcer's own deny (no instance id, no sponsor, the token service refused). */
export function deniedHere(o: { tool: string; action: string; ruleId: string; reason: string; cohort: Cohort; waited: boolean; latencyMs: number; incident: boolean; staging?: boolean }): EnforcerDecision {
  const details = { tool: o.tool, action: o.action, policyDecisionId: '', ruleId: o.ruleId, reason: o.reason };
  const error = o.staging && o.ruleId === ENFORCER_RULE.SPONSOR_REQUIRED ? new SponsorMissingError(details) : new PolicyDeniedError(details);
  return refusal({ decision: 'deny', ruleId: o.ruleId, reason: o.reason, cohort: o.cohort, waited: o.waited, latencyMs: o.latencyMs, error, incident: o.incident });
}

/** The plane's answer. Its cohort says whether it is enforced; a baseline call (`waited` false) runs anyway. */
export function fromAnswer(o: { tool: string; action: string; answer: PlaneAnswer; token?: string; waited: boolean; latencyMs: number; incident: boolean; staging?: boolean }): EnforcerDecision {
  const { answer, waited } = o;
  // a pending answer reaching here is a baseline call's (no request was opened): it would have waited
  const denied = answer.decision === 'deny' || answer.decision === 'pending';
  const details = { tool: o.tool, action: o.action, policyDecisionId: answer.policy_decision_id, ruleId: answer.rule_id, reason: answer.reason };
  // staging: a call without a sponsor is refused whatever its cohort
  const sponsorMissing = denied && !!o.staging && answer.rule_id === ENFORCER_RULE.SPONSOR_REQUIRED;
  const error = sponsorMissing ? new SponsorMissingError(details) : denied ? new PolicyDeniedError(details) : undefined;
  return {
    decision: answer.decision === 'pending' ? 'deny' : answer.decision,
    allowed: !denied || (!sponsorMissing && (!answer.enforced || !waited)),
    policyDecisionId: answer.policy_decision_id,
    ruleId: answer.rule_id,
    reason: answer.reason,
    cohort: answer.cohort,
    enforced: answer.enforced && waited,
    cached: false,
    latencyMs: o.latencyMs,
    ...(answer.token_jti ? { tokenJti: answer.token_jti } : {}),
    ...(o.token && !denied ? { token: o.token } : {}),
    ...(typeof answer.receipt === 'string' ? { receipt: answer.receipt } : {}),
    ...(error ? { error } : {}),
    ...(answer.policy_version ? { policyVersion: answer.policy_version } : {}),
    ...(!denied ? sampleOf(answer) : {}),
    ...(o.incident ? { incident: true } : {}),
  };
}

/** An allow reused from the decision cache. */
export function fromCache(o: { answer: PlaneAnswer; token?: string; cohort: Cohort; waited: boolean; latencyMs: number; incident: boolean }): EnforcerDecision {
  const a = o.answer;
  return {
    decision: 'allow',
    allowed: true,
    policyDecisionId: a.policy_decision_id,
    ruleId: a.rule_id,
    reason: a.reason,
    cohort: o.cohort,
    enforced: o.waited,
    cached: true,
    latencyMs: o.latencyMs,
    ...(a.token_jti ? { tokenJti: a.token_jti } : {}),
    ...(o.token ? { token: o.token } : {}),
    ...(typeof a.receipt === 'string' ? { receipt: a.receipt } : {}),
    ...(a.policy_version ? { policyVersion: a.policy_version } : {}),
    ...sampleOf(a),
    ...(o.incident ? { incident: true } : {}),
  };
}

/** A baseline call: runs now; the plane's decision arrives in `shadow`. */
export function letThrough(o: { cohort: Cohort; latencyMs: number; shadow: Promise<EnforcerDecision>; incident: boolean; token?: string | undefined }): EnforcerDecision {
  return {
    decision: 'allow',
    allowed: true,
    policyDecisionId: '',
    ruleId: '',
    reason: 'baseline cohort: not enforced; the decision is made in the background (shadow)',
    cohort: o.cohort,
    enforced: false,
    cached: false,
    latencyMs: o.latencyMs,
    shadow: o.shadow,
    ...(o.token ? { token: o.token } : {}),
    ...(o.incident ? { incident: true } : {}),
  };
}

/** The audit sampling rate of an allow, when the plane granted one in (0, 1). */
function sampleOf(a: PlaneAnswer): { auditSample?: number } {
  const r = a.audit_sample;
  return typeof r === 'number' && r > 0 && r < 1 ? { auditSample: r } : {};
}
