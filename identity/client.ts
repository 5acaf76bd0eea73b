import { JsonRequestError, fetchJson } from '../common/json-client';
import type { TokenClaims } from './claims';
import { TokenRequestError } from './errors';
import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from './exchange';

/** POST /issue body. */
export interface IssueTokenBody {
  tool: string;
  /** What the token may be exchanged for (a delegation token for sub-agents); default [tool]. */
  tools?: string[];
  sponsor_id?: string;
  agent_instance_id?: string;
  role?: string;
  purpose?: string;
  /** Seconds. */
  ttl?: number;
}

/** POST /token parameters (RFC 8693), grant and token types filled in. */
export interface ExchangeTokenParams {
  subject_token: string;
  /** The tool the new token is for. */
  audience?: string;
  /** Tools the new token may in turn be exchanged for (a subset of the subject's). */
  scope?: string | string[];
  agent_instance_id?: string;
  purpose?: string;
  ttl?: number;
  /** A lower role than the subject's. */
  role?: string;
}

export interface ObtainedToken {
  token: string;
  claims: TokenClaims;
  /** Epoch ms. */
  expiresAt: number;
}

export interface TokenRequestOptions {
  /** Default 2000. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Base URL + path, tolerating a trailing slash. */
export function endpoint(baseUrl: string | URL, path: string): URL {
  const base = String(baseUrl).replace(/\/+$/, '');
  return new URL(`${base}${path}`);
}

/** Where the token service publishes its keys, for createTokenVerifier({ jwks }). */
export const jwksUrl = (baseUrl: string | URL): URL => endpoint(baseUrl, '/.well-known/jwks.json');

/** Where the token service publishes its revocations, for createTokenVerifier({ revocations }). */
export const revocationsUrl = (baseUrl: string | URL): URL => endpoint(baseUrl, '/v1/tokens/revocations');

/**
 * One JSON request to the control API, bounded by a timeout. Refusals become TokenRequestError with
 * the service's code (ERR_TOKEN_REFUSED), and an unreachable service ERR_TOKEN_SERVICE_UNAVAILABLE.
 */
export async function requestJson<T>(
  url: URL,
  init: { method?: string; body?: unknown; headers?: Record<string, string> },
  options: TokenRequestOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 2000;
  try {
    return (
      await fetchJson<T>(url, {
        method: init.method ?? 'POST',
        ...(init.body !== undefined ? { body: init.body } : {}),
        ...(init.headers ? { headers: init.headers } : {}),
        timeoutMs,
        ...(options.signal ? { signal: options.signal } : {}),
      })
    ).body;
  } catch (err) {
    if (!(err instanceof JsonRequestError)) throw err;
    switch (err.kind) {
      case 'timeout':
      case 'aborted':
      case 'unreachable': {
        // the timeout says how long; otherwise fetch's own message ("fetch failed", the abort reason)
        const why = err.kind === 'timeout' ? err.reason : ((err.cause as Error | undefined)?.message ?? err.reason);
        throw new TokenRequestError('ERR_TOKEN_SERVICE_UNAVAILABLE', 0, 'unavailable', `${url.origin}: ${why}`, { cause: err.cause });
      }
      case 'http': {
        const code = err.apiError?.code ?? `http_${err.status}`;
        const kind = err.status >= 500 ? 'ERR_TOKEN_SERVICE_UNAVAILABLE' : 'ERR_TOKEN_REFUSED';
        throw new TokenRequestError(kind, err.status, code, `${code}: ${err.apiError?.message ?? (err.text.slice(0, 200) || err.statusText)}`);
      }
      case 'malformed':
        throw new TokenRequestError('ERR_TOKEN_SERVICE_UNAVAILABLE', err.status, 'bad_response', `${url}: the answer is not JSON`);
    }
  }
}

interface TokenResponse {
  token: string;
  claims: TokenClaims;
}

type TokenListener = (token: ObtainedToken) => void;
const listeners = new Set<TokenListener>();

/** Calls `listener` with every token this process obtains (custody/register binds its telemetry with them). */
export function onTokenObtained(listener: TokenListener): () => void {
  listeners.add(listener);
  return () => void listeners.delete(listener);
}

function obtained(r: TokenResponse): ObtainedToken {
  if (typeof r?.token !== 'string' || typeof r.claims?.exp !== 'number') {
    throw new TokenRequestError('ERR_TOKEN_SERVICE_UNAVAILABLE', 200, 'bad_response', 'the token service answered without a token');
  }
  const t = { token: r.token, claims: r.claims, expiresAt: r.claims.exp * 1000 };
  for (const listener of listeners) {
    try {
      listener(t);
    } catch {
      // a listener never costs the caller its token
    }
  }
  return t;
}

/** POST /issue. With a credential (registered agent), sponsor and role come from its registration. */
export async function issueToken(
  baseUrl: string | URL,
  body: IssueTokenBody,
  options: TokenRequestOptions & { credential?: string } = {},
): Promise<ObtainedToken> {
  const headers: Record<string, string> = options.credential ? { authorization: `Bearer ${options.credential}` } : {};
  return obtained(await requestJson<TokenResponse>(endpoint(baseUrl, '/issue'), { body, headers }, options));
}

/** POST /token: a delegate's token from its parent's (RFC 8693 token exchange). */
export async function exchangeToken(baseUrl: string | URL, params: ExchangeTokenParams, options: TokenRequestOptions = {}): Promise<ObtainedToken> {
  const { scope, ...rest } = params;
  const body = {
    grant_type: TOKEN_EXCHANGE_GRANT,
    subject_token_type: JWT_TOKEN_TYPE,
    ...rest,
    ...(scope !== undefined ? { scope: Array.isArray(scope) ? scope.join(' ') : scope } : {}),
  };
  return obtained(await requestJson<TokenResponse>(endpoint(baseUrl, '/token'), { body }, options));
}
