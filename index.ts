// The public API of the `custody` package.
export * from './common/names';
export { CustodyError, HttpError, ConfigError } from './common/errors';
// Tokens: offline verification for tool servers and the enforcer, and the token service's client.
export { createTokenVerifier, ALLOWED_ALGORITHMS } from './enforcer/tokens/verify';
export type { TokenVerifier, TokenVerifierOptions, VerifyOptions, JwksSource, TokenAlgorithm } from './enforcer/tokens/verify';
export { createReplayCache } from './enforcer/tokens/replay';
export type { ReplayCache, ReplayCacheOptions } from './enforcer/tokens/replay';
export type { TokenClaims, ActorClaim } from './enforcer/tokens/claims';
export { TokenError, TOKEN_ERROR, TokenRequestError } from './enforcer/tokens/errors';
export type { TokenErrorCode } from './enforcer/tokens/errors';
export { issueToken, exchangeToken, jwksUrl } from './enforcer/tokens/client';
export type { IssueTokenBody, ExchangeTokenParams, ObtainedToken, TokenRequestOptions } from './enforcer/tokens/client';
