import crypto from 'node:crypto';
import type { Attributes } from '@opentelemetry/api';
import { SignJWT, type JWTPayload } from 'jose';
import type { HttpError } from '../common/errors';
import type { Logger } from '../common/log';
import { counter } from '../common/metrics';
import { ATTR, METRIC, SPAN } from '../common/names';
import type { TokenClaims } from './claims';
import type { TokenServiceConfig } from './config';
import { REFUSAL, TokenError, TokenRefusal, refuse } from './errors';
import { publicKeyOf, type CertificateAuthority } from './certificates';
import { decideExchange, parseExchangeRequest } from './exchange';
import { decideIssue, parseIssueRequest, type Requester } from './issue';
import type { KeyRing } from './keys';
import type { AgentRegistry } from './registry';
import { bodyField } from './request';
import { indexRevocations, revocationsVersion, type RevocationFeedBody } from './revocation';
import { createTokenVerifier, type TokenVerifier } from './verify';

export type TokenKind = 'issue' | 'exchange' | 'certificate';
/** open: /issue trusts the body (loopback only); registered: /issue needs an agent credential. */
export type ServiceMode = 'open' | 'registered';

export interface IssuedToken {
  token: string;
  claims: TokenClaims;
  /** Epoch ms. */
  expiresAt: number;
}

/** POST /v1/certs: a short-lived mTLS client certificate and the claims it carries. */
export interface IssuedCertificate {
  certificate: string;
  /** The authority's certificate: what servers take as --client-ca. */
  ca: string;
  claims: TokenClaims;
  /** Epoch ms. */
  expiresAt: number;
}

export interface TokenServiceOptions {
  config: TokenServiceConfig;
  /** Issues mTLS client certificates (POST /v1/certs); without it, none are issued. */
  authority?: CertificateAuthority;
  keys: KeyRing;
  mode: ServiceMode;
  /** Registered agents; without one, only open mode can issue. */
  registry?: AgentRegistry;
  /** Where issuances and refusals are reported (the role passes ctx.reporter). */
  reporter?: { event(name: string, attributes: Attributes, options?: { error?: string }): void };
  log?: Logger;
  now?: () => number;
  newId?: () => string;
}

export interface TokenService {
  readonly config: TokenServiceConfig;
  readonly keys: KeyRing;
  readonly mode: ServiceMode;
  /** POST /issue: `authorization` is the request's Authorization header. */
  issue(body: unknown, authorization?: string): Promise<IssuedToken>;
  /** POST /token (RFC 8693). */
  exchange(body: unknown): Promise<IssuedToken>;
  /**
   * POST /v1/certs: the body of /issue plus the key to certify (`public_key` SPKI PEM or `csr`
   * PKCS#10 PEM); the same rules decide the claims (sponsor, role, tools, TTL per role, max 900 s).
   */
  certify(body: unknown, authorization?: string): Promise<IssuedCertificate>;
  readonly authority?: CertificateAuthority;
  /** Signs claims as they are, with the current key. */
  sign(claims: TokenClaims): Promise<string>;
  /** Reports a refusal that happened before issue()/exchange() saw the request (an unreadable body). */
  reportRefusal(kind: TokenKind, error: HttpError, body?: unknown): void;
  /** GET /v1/tokens/revocations: every offboarding and revocation, for the plane and offline verifiers. */
  revocationFeed(): RevocationFeedBody;
}

/** How often readers of the revocation feed are told to ask again, s. */
export const REVOCATION_REFRESH_S = 2;
const NO_REVOCATIONS = indexRevocations([]);

const issuedTotal = () =>
  counter<'result'>({ name: METRIC.TOKENS_ISSUED_TOTAL, help: 'Tokens issued and refused by the token service', labelNames: ['result'] });

function setIf(attrs: Attributes, key: string, value: string | number | undefined): void {
  if (value !== undefined && value !== '') attrs[key] = value;
}

function claimAttributes(kind: TokenKind, c: TokenClaims): Attributes {
  const attrs: Attributes = {
    [ATTR.TOKEN_RESULT]: 'issued',
    [ATTR.TOKEN_KIND]: kind,
    [ATTR.TOKEN_JTI]: c.jti,
    [ATTR.AGENT_INSTANCE_ID]: c.agent_instance_id,
    [ATTR.TOOL_ID]: c.tool,
    [ATTR.TOKEN_TTL_SECONDS]: c.ttl_seconds,
    [ATTR.TOKEN_EXPIRES_AT]: c.exp * 1000,
  };
  setIf(attrs, ATTR.SPONSOR_ID, c.sponsor_id);
  setIf(attrs, ATTR.PARENT_AGENT_ID, c.parent_agent_id ?? undefined);
  setIf(attrs, ATTR.ROLE, c.role);
  setIf(attrs, ATTR.PURPOSE, c.purpose);
  // the registration it was issued under: the collector binds the agent's telemetry with it
  setIf(attrs, ATTR.AGENT_ID, c.agent_id);
  return attrs;
}

/** What a refusal can say about the request: fields as asked (unverified), or as known (registration, subject token). */
interface Known {
  sponsor_id?: string | undefined;
  agent_instance_id?: string | undefined;
  parent_agent_id?: string | undefined;
  tool?: string | undefined;
  role?: string | undefined;
}

function refusalAttributes(kind: TokenKind, code: string, body: unknown, known: Known): Attributes {
  const attrs: Attributes = { [ATTR.TOKEN_RESULT]: 'refused', [ATTR.TOKEN_KIND]: kind, [ATTR.TOKEN_REFUSAL_CODE]: code };
  setIf(attrs, ATTR.SPONSOR_ID, known.sponsor_id ?? bodyField(body, 'sponsor_id'));
  setIf(attrs, ATTR.AGENT_INSTANCE_ID, known.agent_instance_id ?? bodyField(body, 'agent_instance_id'));
  setIf(attrs, ATTR.PARENT_AGENT_ID, known.parent_agent_id ?? bodyField(body, 'parent_agent_id'));
  setIf(attrs, ATTR.TOOL_ID, known.tool ?? bodyField(body, kind === 'exchange' ? 'audience' : 'tool'));
  setIf(attrs, ATTR.ROLE, known.role ?? bodyField(body, 'role'));
  setIf(attrs, ATTR.PURPOSE, bodyField(body, 'purpose'));
  const ttl = typeof body === 'object' && body !== null ? Number((body as Record<string, unknown>).ttl) : NaN;
  if (Number.isSafeInteger(ttl) && ttl >= 0) attrs[ATTR.TOKEN_TTL_SECONDS] = ttl;
  return attrs;
}

function bearer(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization === '') return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (!m) throw refuse(REFUSAL.INVALID_CREDENTIAL, 'Authorization must be "Bearer <agent credential>"', 401);
  return m[1];
}

/**
 * The token service's logic behind its HTTP routes: decides, signs, and reports every issuance and
 * every refusal (span custody.token.issue and custody_tokens_issued_total{result}).
 */
export function createTokenService(options: TokenServiceOptions): TokenService {
  const { config, keys, mode, registry, reporter, log } = options;
  const now = options.now ?? Date.now;
  const newId = options.newId ?? (() => crypto.randomUUID());
  const counted = issuedTotal();
  const subjects: TokenVerifier = createTokenVerifier({
    issuer: config.issuer,
    jwks: () => keys.jwks(),
    clockSkewSeconds: config.clock_skew_seconds,
    now,
    algorithms: [config.signing.algorithm],
    requireSponsor: config.require_sponsor,
    maxDepth: config.delegation.max_depth,
    maxTtlSeconds: config.max_ttl_seconds,
    roleOrder: config.roleOrder,
    // a revoked party's tokens are not exchanged either
    revocations: () => registry?.revocations() ?? NO_REVOCATIONS,
  });

  const report = (name: 'issued' | 'refused', attrs: Attributes, error?: string) => {
    counted.inc({ result: name });
    try {
      reporter?.event(SPAN.TOKEN_ISSUE, attrs, error ? { error } : {});
    } catch (err) {
      // telemetry fails open
      log?.warn({ err }, 'cannot report a token event');
    }
  };
  const refused = (kind: TokenKind, err: unknown, body: unknown, known: Known): never => {
    if (err instanceof TokenRefusal || (err as HttpError)?.status !== undefined) {
      const e = err as HttpError;
      report('refused', refusalAttributes(kind, e.code, body, known), e.code);
      log?.debug({ kind, code: e.code, message: e.message }, 'token refused');
    } else {
      report('refused', refusalAttributes(kind, 'internal', body, known), 'internal');
    }
    throw err;
  };

  async function sign(claims: TokenClaims): Promise<string> {
    const key = keys.current();
    const token = await new SignJWT(claims as unknown as JWTPayload)
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
      .sign(key.privateKey);
    keys.signed(key.kid, claims.exp);
    return token;
  }

  async function finish(kind: TokenKind, claims: TokenClaims): Promise<IssuedToken> {
    const token = await sign(claims);
    report('issued', claimAttributes(kind, claims));
    return { token, claims, expiresAt: claims.exp * 1000 };
  }

  /** The claims /issue (and /v1/certs) would grant: throws the refusal otherwise. */
  function issuedClaims(body: unknown, authorization: string | undefined, known: Known): TokenClaims {
    const req = parseIssueRequest(body);
    const credential = bearer(authorization);
    let requester: Requester = { kind: 'open' };
    if (credential !== undefined) {
      if (!registry) throw refuse(REFUSAL.INVALID_CREDENTIAL, 'this token service has no agent registry', 401);
      const agent = registry.authenticate(credential);
      requester = { kind: 'agent', agent };
      known.sponsor_id = agent.sponsor_id;
      known.role = agent.role;
    } else if (mode === 'registered') {
      throw refuse(REFUSAL.CREDENTIAL_REQUIRED, 'send "Authorization: Bearer <agent credential>" (register the agent with: custody agent register)', 401);
    }
    return decideIssue(req, {
      config,
      requester,
      now: now(),
      newId,
      ...(registry ? { isSponsorOffboarded: (s: string) => registry.isSponsorOffboarded(s) } : {}),
    });
  }

  return {
    config,
    keys,
    mode,
    sign,
    ...(options.authority ? { authority: options.authority } : {}),
    revocationFeed() {
      const list = registry ? [...registry.revocationList()] : [];
      return { issuer: config.issuer, version: registry?.revocations().version ?? revocationsVersion([]), refresh_seconds: REVOCATION_REFRESH_S, revocations: list };
    },
    reportRefusal: (kind, error, body) => {
      report('refused', refusalAttributes(kind, error.code, body, {}), error.code);
    },
    async issue(body, authorization) {
      const known: Known = {};
      let claims: TokenClaims;
      try {
        claims = issuedClaims(body, authorization, known);
      } catch (err) {
        return refused('issue', err, body, known);
      }
      return finish('issue', claims);
    },
    async certify(body, authorization) {
      const known: Known = {};
      let claims: TokenClaims;
      let publicKey: Uint8Array;
      const fields = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
      const { public_key: pem, csr, ...rest } = fields;
      try {
        if (!options.authority) throw refuse(REFUSAL.INVALID_REQUEST, 'this token service issues no certificates', 404);
        if ((pem !== undefined && typeof pem !== 'string') || (csr !== undefined && typeof csr !== 'string')) {
          throw refuse(REFUSAL.INVALID_REQUEST, "'public_key' and 'csr' must be PEM text");
        }
        try {
          publicKey = await publicKeyOf({ public_key: pem as string | undefined, csr: csr as string | undefined });
        } catch (err) {
          throw refuse(REFUSAL.INVALID_REQUEST, (err as Error).message);
        }
        claims = issuedClaims(rest, authorization, known);
      } catch (err) {
        return refused('certificate', err, rest, known);
      }
      const certificate = await options.authority.issue(claims, publicKey);
      report('issued', claimAttributes('certificate', claims));
      return { certificate, ca: options.authority.certificatePem, claims, expiresAt: claims.exp * 1000 };
    },
    async exchange(body) {
      const known: Known = {};
      let claims: TokenClaims;
      try {
        const req = parseExchangeRequest(body);
        let subject: TokenClaims;
        try {
          subject = await subjects.verify(req.subject_token);
        } catch (err) {
          if (!(err instanceof TokenError)) throw err;
          throw refuse(REFUSAL.INVALID_GRANT, `the subject token is not valid: ${err.code}: ${err.message}`);
        }
        Object.assign(known, {
          sponsor_id: subject.sponsor_id,
          parent_agent_id: subject.agent_instance_id,
          role: subject.role,
          tool: req.audience,
          agent_instance_id: req.agent_instance_id,
        });
        if (subject.agent_id !== undefined && registry && !registry.isAgentActive(subject.agent_id)) {
          throw refuse(REFUSAL.INVALID_GRANT, `the subject token's agent ${subject.agent_id} has been revoked`);
        }
        if (subject.sponsor_id !== undefined && registry?.isSponsorOffboarded(subject.sponsor_id)) {
          throw refuse(REFUSAL.INVALID_GRANT, `the subject token's sponsor '${subject.sponsor_id}' has been offboarded`);
        }
        claims = decideExchange(subject, req, { config, now: now(), newId });
      } catch (err) {
        return refused('exchange', err, body, known);
      }
      return finish('exchange', claims);
    },
  };
}
