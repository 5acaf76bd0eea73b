// The public API of the `custody` package.
export * from './common/names';
export { CustodyError, HttpError, ConfigError } from './common/errors';
// Tokens: offline verification for tool servers and the enforcer, and the token service's client.
export { createTokenVerifier, ALLOWED_ALGORITHMS } from './identity/verify';
export type { TokenVerifier, TokenVerifierOptions, VerifyOptions, JwksSource, TokenAlgorithm } from './identity/verify';
export { createReplayCache } from './identity/replay';
export type { ReplayCache, ReplayCacheOptions } from './identity/replay';
export type { TokenClaims, ActorClaim } from './identity/claims';
export { TokenError, TOKEN_ERROR, TokenRequestError } from './identity/errors';
export type { TokenErrorCode } from './identity/errors';
export { issueToken, exchangeToken, jwksUrl, revocationsUrl } from './identity/client';
export { createRevocationChecker } from './identity/revocation';
export type { Revocation, RevocationChecker, RevocationCheckerOptions, RevocationSource, RevocationFeedBody } from './identity/revocation';
export { instanceBelongsTo, instanceOwner } from './identity/instance';
export type { IssueTokenBody, ExchangeTokenParams, ObtainedToken, TokenRequestOptions } from './identity/client';
// Policy: the enforcer agents ask before every tool call, its refusals, and the pure decision function.
export { createEnforcer, ENFORCER_RULE } from './enforcer/client/enforcer';
export type { Enforcer, EnforcerOptions, EnforcerDecision, EnforcerCheckRequest, EnforcerIdentity, EnforcerSettings } from './enforcer/client/enforcer';
export { PolicyDeniedError, PolicyUnavailableError, SponsorMissingError } from './enforcer/errors';
export { decide, BUILTIN_RULE } from './enforcer/policy/decide';
export type { Decision, DecisionRequest, DecisionIdentity } from './enforcer/policy/decide';
export { compilePolicy, compilePolicyText, readPolicyFile } from './enforcer/policy/compile';
export type { Policy } from './enforcer/policy/compile';
export { resolveToolName, DEFAULT_ACTION } from './enforcer/policy/tool-map';
export type { ToolRef } from './enforcer/policy/tool-map';
export { decisionId, isDecisionId } from './enforcer/policy/ids';
export { cohortOf, cohortBucket } from './enforcer/policy/rollout';
// Agents: the manual tool-call API, sub-agents, and the refusals a tool call can throw.
export * from './instrumentation/index';
// Rollout control: the auto-rollback job's pure step and loop, to run it inside another process.
export { nextAction, createRollbackWatcher, httpPlane, PlaneUnreachableError } from './enforcer/rollback/index';
export type { RollbackWatcher, WatcherOptions, TickResult, WatchAction, RolloutPlane, DecideOptions as RollbackDecideOptions } from './enforcer/rollback/index';
