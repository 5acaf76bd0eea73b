import { CustodyError } from '../common/errors';
import { POLICY_ERROR_TYPE } from '../common/names';

/** What a refused tool call was refused by: enough to find the decision in the decision log. */
export interface RefusalDetails {
  tool: string;
  action: string;
  /** '' when no policy plane decided (a refusal made before or without asking it). */
  policyDecisionId: string;
  ruleId: string;
  reason: string;
}

/** The policy plane (or a check made before asking it, such as a missing sponsor) said no. */
export class PolicyDeniedError extends CustodyError implements RefusalDetails {
  static readonly code: string = 'ERR_POLICY_DENIED';
  /** The span's `error.type`. */
  readonly type = POLICY_ERROR_TYPE.DENIED;
  readonly tool: string;
  readonly action: string;
  readonly policyDecisionId: string;
  readonly ruleId: string;
  readonly reason: string;

  constructor(details: RefusalDetails) {
    const ref = details.policyDecisionId ? `, decision ${details.policyDecisionId}` : '';
    super(PolicyDeniedError.code, `policy denied ${details.tool}.${details.action}: ${details.reason} (rule ${details.ruleId}${ref})`);
    this.tool = details.tool;
    this.action = details.action;
    this.policyDecisionId = details.policyDecisionId;
    this.ruleId = details.ruleId;
    this.reason = details.reason;
  }
}

/**
 * Staging (`CUSTODY_ENV=staging` or the policy's `mode: staging`): a call without a sponsor is a
 * validation error, refused in every cohort, shadow included. A PolicyDeniedError (the tool never
 * ran; `error.type` stays policy_denied) with its own code.
 */
export class SponsorMissingError extends PolicyDeniedError {
  static override readonly code = 'ERR_SPONSOR_MISSING';
  override readonly code: string = SponsorMissingError.code;
  /** A validation error: what was sent is incomplete, not a decision about what it asked. */
  readonly validation = true;
}

/**
 * No usable decision: the plane (or the token service) timed out, refused the connection, answered
 * 5xx or garbage. Enforcement fails closed, so the call is refused all the same.
 */
export class PolicyUnavailableError extends CustodyError {
  static readonly code = 'ERR_POLICY_UNAVAILABLE';
  readonly type = POLICY_ERROR_TYPE.UNAVAILABLE;
  readonly tool: string;
  readonly action: string;

  constructor(tool: string, action: string, message: string, options?: { cause?: unknown }) {
    super(PolicyUnavailableError.code, `policy unavailable for ${tool}.${action}: ${message}`, options);
    this.tool = tool;
    this.action = action;
  }
}

/**
 * The rollout moved between a reader's read and its write, so nothing was changed: the plane's
 * `If-Match` revision (412) or `expected_percent` (409) no longer held.
 */
export class RolloutConflictError extends CustodyError {
  static readonly code = 'ERR_ROLLOUT_CONFLICT';
  /** Which precondition failed. */
  readonly expected: 'revision' | 'percent';
  constructor(expected: 'revision' | 'percent', message: string) {
    super(RolloutConflictError.code, message);
    this.expected = expected;
  }
}
