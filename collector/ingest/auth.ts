import { createHash } from 'node:crypto';
import { CustodyError } from '../../common/errors';
import { SCOPE, bearerToken, scopesOf, type ServiceCredentials } from '../../common/credentials';
import { TRUST, type Trust } from '../../common/names';
import type { TokenClaims } from '../../identity/claims';

/**
 * Who sent an OTLP request, from its `Authorization: Bearer <credential>`:
 *   service    the service credential (CUSTODY_SERVICE_TOKEN): custody's own roles in other processes
 *   gateway    the ingest credential (CUSTODY_INGEST_TOKEN): an upstream collector forwarding agents' spans
 *   agent      a registered agent's credential (`cag.…`): its sponsor and agent id
 *   token      a custody token (a JWT from the token service): its sponsor and agent instance
 *   anonymous  no credential, or one that proves nothing, in the open first-day mode on loopback
 */
export type IngestPrincipal =
  | { readonly kind: 'anonymous'; readonly reason: 'no_credential' | 'invalid_credential' }
  | { readonly kind: 'service' }
  | { readonly kind: 'gateway' }
  | { readonly kind: 'agent'; readonly sponsor: string; readonly agentId: string }
  | { readonly kind: 'token'; readonly sponsor: string; readonly instance: string; readonly agentId: string };

/** A request without a valid credential where one is required: 401. */
export class IngestAuthError extends CustodyError {
  constructor(message: string) {
    super('ERR_INGEST_UNAUTHORIZED', message);
  }
}

/** The token service's registry, as far as ingest needs it (in process when `custody up` hosts both). */
export interface AgentCredentialChecker {
  authenticate(credential: string): { agent_id: string; sponsor_id: string };
}

export interface IngestAuthOptions {
  credentials: ServiceCredentials;
  /** Whether a request needs a valid credential (mode: registered, off loopback, or an ingest token set). */
  required: boolean;
  /** The agent registry, when one is reachable (looked up at each use: the token service may start later). */
  agents?: () => AgentCredentialChecker | undefined;
  /** Verifies a custody token (signature, issuer, expiry within the grace below). */
  verifyToken?: () => ((token: string) => Promise<TokenClaims>) | undefined;
  /** Checks the claims of a client certificate custody's authority signed (clock, chain, revocations). */
  verifyCertificate?: () => ((claims: unknown) => Promise<TokenClaims>) | undefined;
  /** How long a credential's answer is reused, ms. Default 10 s (a revoked credential stops within it). */
  cacheMs?: number;
  now?: () => number;
}

export interface IngestAuth {
  readonly required: boolean;
  /** The request's principal; throws IngestAuthError (401) when a credential is required and none is valid. */
  authenticate(authorization: string | undefined, peer?: () => unknown): Promise<IngestPrincipal>;
}

/**
 * A custody token stays good for binding telemetry this long after it expires (the verifier's
 * largest clock skew): spans are exported a few seconds after the call that renewed the token.
 */
export const TOKEN_GRACE_SECONDS = 300;

const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MAX_CACHED = 10_000;

export function createIngestAuth(options: IngestAuthOptions): IngestAuth {
  const { credentials, required } = options;
  const now = options.now ?? Date.now;
  const cacheMs = options.cacheMs ?? 10_000;
  // keyed by a hash of the header: the cache holds no credential
  const cache = new Map<string, { principal: IngestPrincipal; until: number }>();

  function refuse(message: string, reason: 'no_credential' | 'invalid_credential'): IngestPrincipal {
    if (required) throw new IngestAuthError(message);
    return { kind: 'anonymous', reason };
  }

  async function resolve(credential: string): Promise<IngestPrincipal | undefined> {
    const scopes = scopesOf(credential, credentials);
    if (scopes.has(SCOPE.SERVICE)) return { kind: 'service' };
    if (scopes.has(SCOPE.INGEST)) return { kind: 'gateway' };
    if (credential.startsWith('cag.')) {
      const agents = options.agents?.();
      if (!agents) return undefined;
      try {
        const a = agents.authenticate(credential);
        return { kind: 'agent', sponsor: a.sponsor_id, agentId: a.agent_id };
      } catch {
        return undefined;
      }
    }
    if (JWT.test(credential)) {
      const verify = options.verifyToken?.();
      if (!verify) return undefined;
      try {
        const c = await verify(credential);
        return { kind: 'token', sponsor: c.sponsor_id ?? '', instance: c.agent_instance_id, agentId: c.agent_id ?? '' };
      } catch {
        return undefined;
      }
    }
    return undefined;
  }

  return {
    required,
    async authenticate(authorization, peer) {
      if (!authorization && peer) {
        // mTLS: the certificate's claims, as a custody token's (its signature was checked against --client-ca)
        const verify = options.verifyCertificate?.();
        try {
          if (!verify) throw new Error('no token keys to check certificates with');
          const c = await verify(peer());
          return { kind: 'token', sponsor: c.sponsor_id ?? '', instance: c.agent_instance_id, agentId: c.agent_id ?? '' };
        } catch (err) {
          return refuse(`the client certificate is not valid here: ${(err as Error).message}`, 'invalid_credential');
        }
      }
      if (!authorization) return refuse('send "Authorization: Bearer <agent credential | custody token | service credential>"', 'no_credential');
      const credential = bearerToken(authorization);
      if (credential === undefined) return refuse('Authorization must be "Bearer <credential>"', 'invalid_credential');
      const key = createHash('sha256').update(credential).digest('base64');
      const t = now();
      const hit = cache.get(key);
      let principal = hit && hit.until > t ? hit.principal : undefined;
      if (!principal) {
        principal = (await resolve(credential)) ?? { kind: 'anonymous', reason: 'invalid_credential' };
        if (cache.size >= MAX_CACHED) cache.clear();
        cache.set(key, { principal, until: t + cacheMs });
      }
      if (principal.kind === 'anonymous') return refuse('the credential is not valid here (an agent credential, a custody token, or a service credential)', 'invalid_credential');
      return principal;
    },
  };
}

/** What a span claims about who made it (span attributes first, then its resource). */
export interface ClaimedIdentity {
  sponsor: string;
  instance: string;
  parent: string;
}

/** Where an agent instance came from, as the token service recorded it when it issued the instance a token. */
export interface Binding {
  sponsor: string;
  parent: string;
  agentId: string;
}

export interface BindingLookup {
  get(instance: string): Binding | undefined;
}

export type Verdict = { trust: Trust; reason?: 'no_credential' | 'identity_mismatch' };

const MAX_CHAIN = 16;

/**
 * How far a span can be believed, given who sent it: an agent credential proves its sponsor and
 * the instances that tokens issued under it (or exchanged from those) were bound to; a custody
 * token proves its sponsor, its instance and that instance's sub-agents. A span that claims
 * nothing about its identity is simply the sender's.
 */
export function verdictFor(principal: IngestPrincipal, id: ClaimedIdentity, bindings: BindingLookup): Verdict {
  switch (principal.kind) {
    case 'anonymous':
      return { trust: TRUST.UNVERIFIED, reason: 'no_credential' };
    case 'service':
      return { trust: TRUST.SERVICE };
    case 'gateway':
      return { trust: TRUST.GATEWAY };
  }
  if (!id.sponsor && !id.instance) return { trust: TRUST.VERIFIED };
  const mismatch: Verdict = { trust: TRUST.UNVERIFIED, reason: 'identity_mismatch' };
  if (id.sponsor !== principal.sponsor) return mismatch;
  if (principal.kind === 'token' && (id.instance === principal.instance || (id.parent === principal.instance && id.instance))) {
    return { trust: TRUST.VERIFIED };
  }
  let instance = id.instance;
  for (let i = 0; i < MAX_CHAIN && instance; i++) {
    const b = bindings.get(instance);
    if (!b || b.sponsor !== principal.sponsor) return mismatch;
    if (principal.kind === 'agent' && b.agentId === principal.agentId) return { trust: TRUST.VERIFIED };
    instance = b.parent;
    if (principal.kind === 'token' && instance === principal.instance) return { trust: TRUST.VERIFIED };
  }
  return mismatch;
}
