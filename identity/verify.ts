import crypto, { KeyObject } from 'node:crypto';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  type CryptoKey,
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWSHeaderParameters,
} from 'jose';
import { checkClaims, DEFAULT_ROLE_ORDER, type TokenClaims } from './claims';
import { TOKEN_ERROR, TokenError } from './errors';
import { createReplayCache, type ReplayCache } from './replay';
import { createRevocationChecker, type RevocationChecker, type RevocationSource } from './revocation';

/** Asymmetric algorithms only: `none` and every HS* (an HMAC made with a public key) are refused. */
export const ALLOWED_ALGORITHMS = ['EdDSA', 'ES256'] as const;
export type TokenAlgorithm = (typeof ALLOWED_ALGORITHMS)[number];

export type JwksSource = URL | string | JSONWebKeySet | (() => JSONWebKeySet | Promise<JSONWebKeySet>);

export interface TokenVerifierOptions {
  issuer: string;
  /** The token service's public keys: its JWKS URL (fetched, cached), a key set, or a getter of the current set. */
  jwks: JwksSource;
  /** Allowed difference between the issuer's clock and ours, for exp/nbf/iat. Default 5. */
  clockSkewSeconds?: number;
  /** Remote JWKS: fetch timeout. Default 2000. */
  timeoutMs?: number;
  /** Remote JWKS: refetch after this age (an unknown kid refetches sooner, at most every `jwksCooldownMs`). Default 10 min. */
  cacheMaxAgeMs?: number;
  /** Remote JWKS: an unknown kid refetches the set at most this often, ms. Default 30000. */
  jwksCooldownMs?: number;
  /** The clock, epoch ms. */
  now?: () => number;
  algorithms?: readonly TokenAlgorithm[];
  /** Refuse tokens without sponsor_id. Default true. */
  requireSponsor?: boolean;
  maxDepth?: number;
  maxTtlSeconds?: number;
  /** Roles, lowest authority first. Default user, support, admin. */
  roleOrder?: readonly string[];
  /** Shared jti cache for single-use tokens; default one per verifier. */
  replayCache?: ReplayCache;
  /**
   * How many verified tokens to remember so that presenting the same token again skips the
   * signature check (claims, clock, audience and replay are checked every time). 0 disables. Default 10000.
   */
  verifiedCacheSize?: number;
  /**
   * Refuse revoked tokens (offboarded sponsor, revoked agent or credential) with ERR_TOKEN_REVOKED:
   * the token service's feed URL (GET /v1/tokens/revocations, see revocationsUrl), a getter of the
   * current list (same process), or a checker shared between verifiers. Default: none.
   */
  revocations?: RevocationSource | RevocationChecker;
  /** Feed URL: ask again once the copy is this old, ms. Default 2000. */
  revocationRefreshMs?: number;
  /** Feed URL: with no answer for this long, refuse every token (ERR_TOKEN_REVOCATIONS_UNAVAILABLE), ms. Default 60000. */
  revocationMaxStaleMs?: number;
}

export interface VerifyOptions {
  /** The tool the token must be for. */
  audience?: string | readonly string[];
  /** High-risk tools: accept each token (jti) once. */
  singleUse?: boolean;
}

export interface TokenVerifier {
  verify(token: string, options?: VerifyOptions): Promise<TokenClaims>;
  /**
   * Claims whose origin another check has already proven (a client certificate of custody's
   * authority, see certificates.ts): every check of verify() but the signature — issuer, clock,
   * tool, chain, revocations, single use.
   */
  verifyClaims(payload: unknown, options?: VerifyOptions): Promise<TokenClaims>;
}

type KeyGetter = (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>;
type LocalSet = ReturnType<typeof createLocalJWKSet>;

/** jose error codes to ours. */
const JOSE_CODES: Record<string, (typeof TOKEN_ERROR)[keyof typeof TOKEN_ERROR]> = {
  ERR_JWKS_NO_MATCHING_KEY: TOKEN_ERROR.UNKNOWN_KID,
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: TOKEN_ERROR.UNKNOWN_KID,
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: TOKEN_ERROR.SIGNATURE,
  ERR_JOSE_ALG_NOT_ALLOWED: TOKEN_ERROR.ALG,
  ERR_JOSE_NOT_SUPPORTED: TOKEN_ERROR.ALG,
  ERR_JWS_INVALID: TOKEN_ERROR.MALFORMED,
  ERR_JWKS_TIMEOUT: TOKEN_ERROR.JWKS_UNAVAILABLE,
  ERR_JWKS_INVALID: TOKEN_ERROR.JWKS_UNAVAILABLE,
};

function toTokenError(err: unknown): TokenError {
  if (err instanceof TokenError) return err;
  const code = (err as { code?: string })?.code;
  const mapped = code ? JOSE_CODES[code] : undefined;
  const message = (err as Error)?.message ?? String(err);
  if (mapped === TOKEN_ERROR.UNKNOWN_KID) return new TokenError(mapped, 'no key in the JWKS matches the token\'s kid', { cause: err });
  if (mapped === TOKEN_ERROR.SIGNATURE) return new TokenError(mapped, 'the signature does not verify: the token was altered or signed by another key', { cause: err });
  if (mapped) return new TokenError(mapped, message, { cause: err });
  return new TokenError(TOKEN_ERROR.JWKS_UNAVAILABLE, `cannot get the key set: ${message}`, { cause: err });
}

function isKeySet(v: unknown): v is JSONWebKeySet {
  return typeof v === 'object' && v !== null && Array.isArray((v as JSONWebKeySet).keys);
}

/** Local sets are built once per key-set object: jose keeps the imported keys inside. */
function localKeys(): (set: JSONWebKeySet) => LocalSet {
  const built = new WeakMap<JSONWebKeySet, LocalSet>();
  return (set) => {
    let local = built.get(set);
    if (!local) built.set(set, (local = createLocalJWKSet(set)));
    return local;
  };
}

function keyGetter(source: JwksSource, o: TokenVerifierOptions): { getKey: KeyGetter; current?: () => JSONWebKeySet | Promise<JSONWebKeySet> } {
  const local = localKeys();
  if (source instanceof URL || typeof source === 'string') {
    const url = source instanceof URL ? source : new URL(source);
    const remote = createRemoteJWKSet(url, {
      timeoutDuration: o.timeoutMs ?? 2000,
      cacheMaxAge: o.cacheMaxAgeMs ?? 600_000,
      cooldownDuration: o.jwksCooldownMs ?? 30_000,
    });
    let stale: LocalSet | undefined;
    return {
      async getKey(header, token) {
        try {
          const key = await remote(header, token);
          stale = undefined;
          return key;
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code === 'ERR_JWKS_NO_MATCHING_KEY' || code === 'ERR_JOSE_NOT_SUPPORTED' || code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
          // The set could not be refetched: keep verifying with the copy we have, so a tool works offline.
          const copy = remote.jwks();
          if (!copy) throw err;
          stale ??= createLocalJWKSet(copy);
          return stale(header, token);
        }
      },
    };
  }
  if (typeof source === 'function') {
    return {
      async getKey(header, token) {
        const set = await source();
        if (!isKeySet(set)) throw new TokenError(TOKEN_ERROR.JWKS_UNAVAILABLE, 'the key set getter returned no key set');
        return local(set)(header, token);
      },
      current: source,
    };
  }
  if (!isKeySet(source)) throw new TypeError('jwks must be a URL, a JSON Web Key Set or a function returning one');
  const set = local(source);
  return { getKey: (header, token) => set(header, token), current: () => source };
}

const SEGMENT = /^[A-Za-z0-9_-]+$/;

/** Imported keys as node KeyObjects, once per key: the signature check then runs synchronously in OpenSSL. */
const keyObjects = new WeakMap<CryptoKey, KeyObject>();

/**
 * The signature check of a compact JWS whose key jose selected and imported from the JWKS. Done
 * with node:crypto on a cached KeyObject rather than WebCrypto: the same OpenSSL primitive
 * without an async round trip through the thread pool, about twice the verifications per core.
 */
function signatureVerifies(alg: TokenAlgorithm, key: CryptoKey, signingInput: string, signature: string): boolean {
  const algorithm = key.algorithm as { name: string; namedCurve?: string };
  const matches = alg === 'EdDSA' ? algorithm.name === 'Ed25519' : algorithm.name === 'ECDSA' && algorithm.namedCurve === 'P-256';
  if (!matches || key.type !== 'public') return false;
  let keyObject = keyObjects.get(key);
  if (!keyObject) keyObjects.set(key, (keyObject = KeyObject.from(key)));
  const sig = Buffer.from(signature, 'base64url');
  if (sig.length !== 64) return false;
  try {
    return alg === 'EdDSA'
      ? crypto.verify(null, Buffer.from(signingInput), keyObject, sig)
      : crypto.verify('sha256', Buffer.from(signingInput), { key: keyObject, dsaEncoding: 'ieee-p1363' }, sig);
  } catch {
    return false;
  }
}

interface Verified {
  claims: TokenClaims;
  /** The key set the token was verified against, for getters: a new set drops the entry. */
  set?: JSONWebKeySet;
}

/**
 * A verifier for custody tokens, for the enforcer and for tool servers that check tokens offline.
 * Options are validated once here; verify() then refuses with a TokenError whose code says why.
 */
export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  if (!options || typeof options.issuer !== 'string' || options.issuer === '') throw new TypeError('issuer is required');
  if (options.jwks === undefined || options.jwks === null) throw new TypeError('jwks is required');
  const algorithms = [...(options.algorithms ?? ALLOWED_ALGORITHMS)];
  for (const alg of algorithms) {
    if (!(ALLOWED_ALGORITHMS as readonly string[]).includes(alg)) throw new TypeError(`algorithm ${alg} is not allowed (only ${ALLOWED_ALGORITHMS.join(', ')})`);
  }
  const now = options.now ?? Date.now;
  const skew = options.clockSkewSeconds ?? 5;
  if (!(skew >= 0 && skew <= 300)) throw new TypeError('clockSkewSeconds must be from 0 to 300');
  const replay = options.replayCache ?? createReplayCache({ now, clockSkewSeconds: skew });
  const cacheSize = options.verifiedCacheSize ?? 10_000;
  const { getKey, current } = keyGetter(options.jwks, options);
  const verified = new Map<string, Verified>();
  const roleOrder = options.roleOrder ?? DEFAULT_ROLE_ORDER;
  const revocations = revocationChecker(options);

  const claimOptions = (audience: VerifyOptions['audience']) => ({
    issuer: options.issuer,
    nowSeconds: Math.floor(now() / 1000),
    clockSkewSeconds: skew,
    requireSponsor: options.requireSponsor !== false,
    roleOrder,
    ...(audience !== undefined ? { audience } : {}),
    ...(options.maxDepth !== undefined ? { maxDepth: options.maxDepth } : {}),
    ...(options.maxTtlSeconds !== undefined ? { maxTtlSeconds: options.maxTtlSeconds } : {}),
  });

  async function fromCache(token: string): Promise<TokenClaims | undefined> {
    const hit = verified.get(token);
    if (!hit) return undefined;
    if (current && hit.set !== (await current())) {
      verified.delete(token);
      return undefined;
    }
    return hit.claims;
  }

  async function verifySignature(token: string): Promise<{ payload: unknown; set?: JSONWebKeySet }> {
    let header: JWSHeaderParameters;
    try {
      header = decodeProtectedHeader(token) as JWSHeaderParameters;
    } catch (err) {
      throw new TokenError(TOKEN_ERROR.MALFORMED, 'not a compact JWS (header.payload.signature)', { cause: err });
    }
    if (typeof header.alg !== 'string' || !(algorithms as string[]).includes(header.alg)) {
      throw new TokenError(TOKEN_ERROR.ALG, `algorithm '${String(header.alg)}' is not accepted (only ${algorithms.join(', ')})`);
    }
    if (typeof header.kid !== 'string' || header.kid === '') throw new TokenError(TOKEN_ERROR.UNKNOWN_KID, 'the token has no kid');
    if (header.crit !== undefined || header.b64 !== undefined) {
      throw new TokenError(TOKEN_ERROR.MALFORMED, 'critical or b64 header parameters are not accepted');
    }
    const [h, p, sig] = token.split('.') as [string, string, string];
    if (!SEGMENT.test(p) || !SEGMENT.test(sig)) throw new TokenError(TOKEN_ERROR.MALFORMED, 'not base64url (header.payload.signature)');
    const set = current ? await current() : undefined;
    let key: CryptoKey;
    try {
      key = await getKey(header, { protected: h, payload: p, signature: sig });
    } catch (err) {
      throw toTokenError(err);
    }
    if (!signatureVerifies(header.alg as TokenAlgorithm, key, `${h}.${p}`, sig)) {
      throw new TokenError(TOKEN_ERROR.SIGNATURE, 'the signature does not verify: the token was altered or signed by another key');
    }
    let payload: unknown;
    try {
      payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
    } catch (err) {
      throw new TokenError(TOKEN_ERROR.MALFORMED, 'the payload is not JSON', { cause: err });
    }
    return { payload, ...(set ? { set } : {}) };
  }

  return {
    async verify(token, verifyOptions = {}) {
      if (typeof token !== 'string' || token.split('.').length !== 3) {
        throw new TokenError(TOKEN_ERROR.MALFORMED, 'not a compact JWS (header.payload.signature)');
      }
      let claims = cacheSize > 0 ? await fromCache(token) : undefined;
      if (claims) {
        try {
          checkClaims(claims, claimOptions(verifyOptions.audience));
        } catch (err) {
          if ((err as TokenError).code === TOKEN_ERROR.EXPIRED) verified.delete(token);
          throw err;
        }
      } else {
        const { payload, set } = await verifySignature(token);
        claims = checkClaims(payload, claimOptions(verifyOptions.audience));
        if (cacheSize > 0) {
          if (verified.size >= cacheSize) verified.delete(verified.keys().next().value!);
          verified.set(token, { claims: Object.freeze(claims) as TokenClaims, ...(set ? { set } : {}) });
        }
      }
      if (revocations) await revocations.check(claims);
      if (verifyOptions.singleUse) await replay.use(claims.jti, claims.exp);
      return claims;
    },
    async verifyClaims(payload, verifyOptions = {}) {
      const claims = checkClaims(payload, claimOptions(verifyOptions.audience));
      if (revocations) await revocations.check(claims);
      if (verifyOptions.singleUse) await replay.use(claims.jti, claims.exp);
      return claims;
    },
  };
}

function isChecker(v: unknown): v is RevocationChecker {
  return typeof v === 'object' && v !== null && typeof (v as RevocationChecker).check === 'function';
}

function revocationChecker(o: TokenVerifierOptions): RevocationChecker | undefined {
  const r = o.revocations;
  if (r === undefined || r === null) return undefined;
  if (isChecker(r)) return r;
  if (!(r instanceof URL) && typeof r !== 'string' && typeof r !== 'function') {
    throw new TypeError('revocations must be the feed URL, a function returning the current list, or a revocation checker');
  }
  return createRevocationChecker(r, {
    ...(o.revocationRefreshMs !== undefined ? { refreshMs: o.revocationRefreshMs } : {}),
    ...(o.revocationMaxStaleMs !== undefined ? { maxStaleMs: o.revocationMaxStaleMs } : {}),
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
    ...(o.now ? { now: o.now } : {}),
  });
}
