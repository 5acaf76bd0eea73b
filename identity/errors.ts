import { CustodyError, HttpError } from '../common/errors';

/** Why a token was not accepted by a verifier. Each reason has its own stable code. */
export const TOKEN_ERROR = {
  EXPIRED: 'ERR_TOKEN_EXPIRED',
  NOT_YET_VALID: 'ERR_TOKEN_NOT_YET_VALID',
  UNKNOWN_KID: 'ERR_TOKEN_UNKNOWN_KID',
  ALG: 'ERR_TOKEN_ALG',
  AUDIENCE: 'ERR_TOKEN_AUDIENCE',
  SIGNATURE: 'ERR_TOKEN_SIGNATURE',
  CLAIMS: 'ERR_TOKEN_CLAIMS',
  CHAIN: 'ERR_TOKEN_CHAIN',
  REPLAY: 'ERR_TOKEN_REPLAY',
  ISSUER: 'ERR_TOKEN_ISSUER',
  /** Not a compact JWS at all (wrong number of parts, bad base64url or JSON). */
  MALFORMED: 'ERR_TOKEN_MALFORMED',
  /** The remote key set could not be fetched and no copy of it is cached. */
  JWKS_UNAVAILABLE: 'ERR_TOKEN_JWKS_UNAVAILABLE',
  /** Its sponsor was offboarded, its agent or credential revoked (the revocation feed). */
  REVOKED: 'ERR_TOKEN_REVOKED',
  /** The revocation feed could not be had for longer than the verifier tolerates: nothing is accepted. */
  REVOCATIONS_UNAVAILABLE: 'ERR_TOKEN_REVOCATIONS_UNAVAILABLE',
  /** A single-use token whose first use cannot be established (the replicas' shared state is unreachable): refused. */
  REPLAY_UNAVAILABLE: 'ERR_TOKEN_REPLAY_UNAVAILABLE',
} as const;
export type TokenErrorCode = (typeof TOKEN_ERROR)[keyof typeof TOKEN_ERROR];

export class TokenError extends CustodyError {
  declare readonly code: TokenErrorCode;
  constructor(code: TokenErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/**
 * The token service refusing to issue or exchange: an HTTP error whose `code` is the refusal
 * (`sponsor_required`, `ttl_too_long`, `invalid_grant`, …) and is reported as such.
 */
export class TokenRefusal extends HttpError {
  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(status, code, message, headers);
  }
}

export const REFUSAL = {
  // POST /issue
  INVALID_REQUEST: 'invalid_request',
  SPONSOR_REQUIRED: 'sponsor_required',
  TTL_TOO_LONG: 'ttl_too_long',
  TOOL_NOT_SUPPORTED: 'tool_not_supported',
  ROLE_NOT_SUPPORTED: 'role_not_supported',
  CREDENTIAL_REQUIRED: 'credential_required',
  INVALID_CREDENTIAL: 'invalid_credential',
  SPONSOR_MISMATCH: 'sponsor_mismatch',
  SPONSOR_OFFBOARDED: 'sponsor_offboarded',
  TOOL_NOT_ALLOWED: 'tool_not_allowed',
  ROLE_NOT_ALLOWED: 'role_not_allowed',
  /** /issue named a parent: parents come only from token exchange. */
  PARENT_REQUIRES_EXCHANGE: 'parent_requires_exchange',
  /** An instance id outside the requester's namespace, or inside a registered agent's. */
  INSTANCE_NOT_BOUND: 'instance_not_bound',
  // POST /token (RFC 6749 §5.2 / RFC 8693 §2.2.2 codes)
  INVALID_GRANT: 'invalid_grant',
  INVALID_TARGET: 'invalid_target',
  INVALID_SCOPE: 'invalid_scope',
  UNSUPPORTED_GRANT_TYPE: 'unsupported_grant_type',
  DEPTH_EXCEEDED: 'delegation_depth_exceeded',
} as const;
export type RefusalCode = (typeof REFUSAL)[keyof typeof REFUSAL];

export const refuse = (code: RefusalCode, message: string, status = 400): TokenRefusal =>
  new TokenRefusal(status, code, message, status === 401 ? { 'WWW-Authenticate': 'Bearer realm="custody"' } : {});

/** Client side: the token service refused a request or could not be reached. */
export class TokenRequestError extends CustodyError {
  /** HTTP status, 0 when the service was not reached. */
  readonly status: number;
  /** The service's refusal code (`sponsor_required`, `invalid_grant`, …) or `unavailable`. */
  readonly refusal: string;
  constructor(code: 'ERR_TOKEN_REFUSED' | 'ERR_TOKEN_SERVICE_UNAVAILABLE', status: number, refusal: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.status = status;
    this.refusal = refusal;
  }
}
