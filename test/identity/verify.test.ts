import { SignJWT, base64url, generateKeyPair } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkChain, checkClaims, type TokenClaims } from '../../identity/claims';
import { tokenConfig } from '../../identity/config';
import { TOKEN_ERROR, TokenError } from '../../identity/errors';
import { createKeyRing, keySourceFor, type KeyRing } from '../../identity/keys';
import { createReplayCache } from '../../identity/replay';
import { createTokenService, type TokenService } from '../../identity/service';
import { createTokenVerifier } from '../../identity/verify';
import { EXCHANGE, SEED } from '../helpers/tokens';

// A frozen clock: every check below is a pure function of the token and this instant.
const T0 = Date.UTC(2030, 0, 1, 12, 0, 0);
const S0 = T0 / 1000;

function claims(over: Partial<TokenClaims> = {}): TokenClaims {
  return {
    iss: 'agent-token-svc',
    sub: 'inst-1',
    aud: 'billing',
    iat: S0,
    nbf: S0,
    exp: S0 + 300,
    jti: 'jti-1',
    sponsor_id: 'alice',
    agent_instance_id: 'inst-1',
    parent_agent_id: null,
    tool: 'billing',
    tools: ['billing'],
    role: 'support',
    ttl_seconds: 300,
    depth: 0,
    ...over,
  };
}
const opts = { issuer: 'agent-token-svc', nowSeconds: S0, clockSkewSeconds: 5 };

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).toBeInstanceOf(TokenError);
    return (err as TokenError).code;
  }
  return 'accepted';
}

describe('claim checks (pure, frozen clock)', () => {
  it('accepts a well-formed token and returns its claims', () => {
    const c = checkClaims(claims(), { ...opts, audience: 'billing' });
    expect(c.sponsor_id).toBe('alice');
  });

  it('expiry honours the clock skew on both sides', async () => {
    const exp = S0 + 300;
    expect(await codeOf(() => checkClaims(claims(), { ...opts, nowSeconds: exp + 4 }))).toBe('accepted');
    expect(await codeOf(() => checkClaims(claims(), { ...opts, nowSeconds: exp + 5 }))).toBe(TOKEN_ERROR.EXPIRED);
    expect(await codeOf(() => checkClaims(claims(), { ...opts, nowSeconds: S0 - 5 }))).toBe('accepted');
    expect(await codeOf(() => checkClaims(claims(), { ...opts, nowSeconds: S0 - 6 }))).toBe(TOKEN_ERROR.NOT_YET_VALID);
    expect(await codeOf(() => checkClaims(claims({ nbf: S0 + 60 }), opts))).toBe(TOKEN_ERROR.NOT_YET_VALID);
  });

  it('issuer, audience and required claims each have their own code', async () => {
    expect(await codeOf(() => checkClaims(claims({ iss: 'someone-else' }), opts))).toBe(TOKEN_ERROR.ISSUER);
    expect(await codeOf(() => checkClaims(claims(), { ...opts, audience: 'search' }))).toBe(TOKEN_ERROR.AUDIENCE);
    expect(await codeOf(() => checkClaims(claims(), { ...opts, audience: ['search', 'billing'] }))).toBe('accepted');
    for (const missing of ['sub', 'jti', 'exp', 'iat', 'nbf', 'tool', 'tools', 'agent_instance_id', 'parent_agent_id', 'ttl_seconds', 'depth', 'sponsor_id', 'aud']) {
      const c = claims() as unknown as Record<string, unknown>;
      delete c[missing];
      expect(await codeOf(() => checkClaims(c, opts)), missing).toBe(TOKEN_ERROR.CLAIMS);
    }
    const noSponsor = claims();
    delete noSponsor.sponsor_id;
    expect(await codeOf(() => checkClaims(noSponsor, { ...opts, requireSponsor: false }))).toBe('accepted');
  });

  it('refuses claims that contradict each other', async () => {
    expect(await codeOf(() => checkClaims(claims({ sub: 'x' }), opts))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await codeOf(() => checkClaims(claims({ aud: 'search', tools: ['billing', 'search'] }), opts))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await codeOf(() => checkClaims(claims({ tools: ['search'] }), opts))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await codeOf(() => checkClaims(claims({ ttl_seconds: 60 }), opts))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await codeOf(() => checkClaims(claims(), { ...opts, maxTtlSeconds: 60 }))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await codeOf(() => checkClaims(claims({ aud: ['billing'] as unknown as string }), opts))).toBe(TOKEN_ERROR.CLAIMS);
  });

  const parent = { sub: 'parent', tools: ['billing', 'search'], role: 'support', exp: S0 + 300 };
  const child = (over: Partial<TokenClaims> = {}) =>
    claims({ sub: 'child', agent_instance_id: 'child', parent_agent_id: 'parent', depth: 1, act: { ...parent }, ttl_seconds: 200, exp: S0 + 200, ...over });

  it('accepts a delegated token within its parent', () => {
    expect(() => checkChain(child())).not.toThrow();
    const grandchild = claims({
      sub: 'g', agent_instance_id: 'g', parent_agent_id: 'child', depth: 2, exp: S0 + 100, ttl_seconds: 100, role: 'user',
      act: { sub: 'child', tools: ['billing'], role: 'support', exp: S0 + 200, act: { ...parent } },
    });
    expect(() => checkClaims(grandchild, opts)).not.toThrow();
  });

  it('refuses a child wider, longer-lived or higher than its parent, or an inconsistent chain', async () => {
    const chain = async (c: TokenClaims) => codeOf(() => checkClaims(c, opts));
    expect(await chain(child({ tools: ['billing', 'file-store'] }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ exp: S0 + 400, ttl_seconds: 400 }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ role: 'admin' }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ role: 'unknown-role' }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ depth: 2 }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ depth: 0 }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ parent_agent_id: 'someone' }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(claims({ depth: 1 }))).toBe(TOKEN_ERROR.CHAIN);
    // a root token naming a parent: parents come only from exchange
    expect(await chain(claims({ parent_agent_id: 'alice-root-0' }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(claims({ parent_agent_id: '' }))).toBe(TOKEN_ERROR.CLAIMS);
    expect(await chain(child({ act: { sub: 'child' }, parent_agent_id: 'child' }))).toBe(TOKEN_ERROR.CHAIN);
    expect(await chain(child({ act: 'parent' as unknown as TokenClaims['act'] }))).toBe(TOKEN_ERROR.CHAIN);
    // a parent without a role cannot have delegated one
    expect(await chain(child({ act: { sub: 'parent', tools: ['billing'], exp: S0 + 300 } }))).toBe(TOKEN_ERROR.CHAIN);
    // a grandparent link is checked too
    const deep = claims({
      sub: 'g', agent_instance_id: 'g', parent_agent_id: 'child', depth: 2, exp: S0 + 100, ttl_seconds: 100,
      act: { sub: 'child', tools: ['billing', 'file-store'], role: 'support', exp: S0 + 200, act: { ...parent } },
    });
    expect(await chain(deep)).toBe(TOKEN_ERROR.CHAIN);
    expect(await codeOf(() => checkClaims(child(), { ...opts, maxDepth: 0 }))).toBe(TOKEN_ERROR.CHAIN);
  });
});

describe('replay cache', () => {
  it('accepts a jti once until its token has expired', async () => {
    let now = T0;
    const cache = createReplayCache({ now: () => now, clockSkewSeconds: 5 });
    cache.use('a', S0 + 10);
    expect(await codeOf(() => cache.use('a', S0 + 10))).toBe(TOKEN_ERROR.REPLAY);
    cache.use('b', S0 + 10);
    now = T0 + 16_000; // past exp + skew: the entry is gone
    cache.use('a', S0 + 100);
    expect(cache.size).toBe(1);
  });

  it('fails closed when full', async () => {
    const cache = createReplayCache({ now: () => T0, maxEntries: 2 });
    cache.use('a', S0 + 10);
    cache.use('b', S0 + 10);
    expect(await codeOf(() => cache.use('c', S0 + 10))).toBe(TOKEN_ERROR.REPLAY);
  });
});

describe('signature verification', () => {
  const config = tokenConfig(SEED);
  let now = T0;
  const clock = () => now;
  let keys: KeyRing;
  let service: TokenService;
  beforeAll(async () => {
    keys = await createKeyRing(keySourceFor(config, {}), { now: clock });
    service = createTokenService({ config, keys, mode: 'open', now: clock });
  });
  const verifier = (over = {}) => createTokenVerifier({ issuer: config.issuer, jwks: () => keys.jwks(), now: clock, ...over });

  it('round-trips an issued token, with kid and EdDSA in the header', async () => {
    now = T0;
    const { token, claims: c } = await service.issue({ tool: 'billing', sponsor_id: 'alice', role: 'support' });
    const header = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString());
    expect(header).toEqual({ alg: 'EdDSA', kid: keys.current().kid, typ: 'JWT' });
    expect(await verifier().verify(token, { audience: 'billing' })).toEqual(c);
    expect(await verifier({ jwks: keys.jwks() }).verify(token, { audience: 'billing' })).toEqual(c);
  });

  it('refuses alg none, HMAC with the public key, tampering and unknown keys, each with its code', async () => {
    now = T0;
    const { token } = await service.issue({ tool: 'billing', sponsor_id: 'alice' });
    const [h, p, s] = token.split('.') as [string, string, string];
    const v = verifier({ verifiedCacheSize: 0 });
    const enc = (o: unknown) => base64url.encode(JSON.stringify(o));

    const none = `${enc({ alg: 'none', kid: keys.current().kid })}.${p}.`;
    expect(await codeOf(v.verify(none))).toBe(TOKEN_ERROR.ALG);

    // The classic confusion attack: HS256 keyed with the (public) verification key.
    const publicJwk = keys.jwks().keys[0]!;
    for (const secret of [base64url.decode(publicJwk.x!), new TextEncoder().encode(JSON.stringify(publicJwk))]) {
      const hs = await new SignJWT(JSON.parse(Buffer.from(p, 'base64url').toString()))
        .setProtectedHeader({ alg: 'HS256', kid: keys.current().kid })
        .sign(secret);
      expect(await codeOf(v.verify(hs))).toBe(TOKEN_ERROR.ALG);
    }

    const widened = enc({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), tools: ['billing', 'search', 'file-store'] });
    expect(await codeOf(v.verify(`${h}.${widened}.${s}`))).toBe(TOKEN_ERROR.SIGNATURE);
    const flipped = s.slice(0, 10) + (s[10] === 'A' ? 'B' : 'A') + s.slice(11);
    expect(await codeOf(v.verify(`${h}.${p}.${flipped}`))).toBe(TOKEN_ERROR.SIGNATURE);

    const stranger = await generateKeyPair('EdDSA');
    const foreign = await new SignJWT(JSON.parse(Buffer.from(p, 'base64url').toString()))
      .setProtectedHeader({ alg: 'EdDSA', kid: 'not-ours' })
      .sign(stranger.privateKey);
    expect(await codeOf(v.verify(foreign))).toBe(TOKEN_ERROR.UNKNOWN_KID);
    // our kid, someone else's key: the signature does not verify
    const impostor = await new SignJWT(JSON.parse(Buffer.from(p, 'base64url').toString()))
      .setProtectedHeader({ alg: 'EdDSA', kid: keys.current().kid })
      .sign(stranger.privateKey);
    expect(await codeOf(v.verify(impostor))).toBe(TOKEN_ERROR.SIGNATURE);

    expect(await codeOf(v.verify('not.a-token'))).toBe(TOKEN_ERROR.MALFORMED);
    expect(await codeOf(v.verify(`${enc({ alg: 'EdDSA' })}.${p}.${s}`))).toBe(TOKEN_ERROR.UNKNOWN_KID);
    expect(await codeOf(v.verify('%%%.%%%.%%%'))).toBe(TOKEN_ERROR.MALFORMED);
  });

  it('refuses expired, not-yet-valid, wrong-issuer and wrong-audience tokens', async () => {
    now = T0;
    const { token } = await service.issue({ tool: 'billing', sponsor_id: 'alice', ttl: 60 });
    const v = verifier();
    expect(await codeOf(v.verify(token, { audience: 'search' }))).toBe(TOKEN_ERROR.AUDIENCE);
    now = T0 + 64_000;
    expect(await codeOf(v.verify(token))).toBe('accepted');
    now = T0 + 65_000; // the cached verification does not outlive the token
    expect(await codeOf(v.verify(token))).toBe(TOKEN_ERROR.EXPIRED);
    now = T0;
    const later = await service.sign(claims({ nbf: S0 + 120, iat: S0, exp: S0 + 300 }));
    expect(await codeOf(v.verify(later))).toBe(TOKEN_ERROR.NOT_YET_VALID);
    const other = createTokenVerifier({ issuer: 'another-issuer', jwks: () => keys.jwks(), now: clock });
    expect(await codeOf(other.verify(token))).toBe(TOKEN_ERROR.ISSUER);
  });

  it('refuses a correctly signed child token that is wider or longer-lived than its parent', async () => {
    now = T0;
    const parent = { sub: 'p', tools: ['billing'], role: 'support', exp: S0 + 100 };
    const base = { sub: 'c', agent_instance_id: 'c', parent_agent_id: 'p', depth: 1 };
    const wider = await service.sign(claims({ ...base, tools: ['billing', 'search'], exp: S0 + 100, ttl_seconds: 100, act: parent }));
    const longer = await service.sign(claims({ ...base, tools: ['billing'], exp: S0 + 300, ttl_seconds: 300, act: parent }));
    expect(await codeOf(verifier().verify(wider))).toBe(TOKEN_ERROR.CHAIN);
    expect(await codeOf(verifier().verify(longer))).toBe(TOKEN_ERROR.CHAIN);
  });

  it('single-use: a replayed jti is refused', async () => {
    now = T0;
    const { token } = await service.issue({ tool: 'billing', sponsor_id: 'alice' });
    const v = verifier();
    await v.verify(token, { audience: 'billing', singleUse: true });
    expect(await codeOf(v.verify(token, { audience: 'billing', singleUse: true }))).toBe(TOKEN_ERROR.REPLAY);
    // a token that is not single-use for this tool may still be presented again
    expect(await codeOf(v.verify(token, { audience: 'billing' }))).toBe('accepted');
  });

  it('a verified token is re-checked against a changed key set', async () => {
    now = T0;
    const { token } = await service.issue({ tool: 'search', sponsor_id: 'alice' });
    let set = keys.jwks();
    const v = createTokenVerifier({ issuer: config.issuer, jwks: () => set, now: clock });
    await v.verify(token);
    set = { keys: [] };
    expect(await codeOf(v.verify(token))).toBe(TOKEN_ERROR.UNKNOWN_KID);
  });

  it('exchange keeps the chain verifiable and consistent', async () => {
    now = T0;
    const parent = await service.issue({ tool: 'billing', tools: ['billing', 'search'], sponsor_id: 'alice', role: 'support' });
    const child = await service.exchange({ ...EXCHANGE, subject_token: parent.token, audience: 'search', agent_instance_id: 'kid-1' });
    const c = await verifier().verify(child.token, { audience: 'search' });
    expect(c).toMatchObject({ sponsor_id: 'alice', parent_agent_id: parent.claims.agent_instance_id, agent_instance_id: 'kid-1', depth: 1, tools: ['search'], role: 'support' });
    expect(c.act).toEqual({ sub: parent.claims.sub, tools: ['billing', 'search'], role: 'support', exp: parent.claims.exp });
    expect(c.exp).toBeLessThanOrEqual(parent.claims.exp);
  });

  it('rejects options that would weaken verification', () => {
    expect(() => createTokenVerifier({ issuer: 'x', jwks: { keys: [] }, algorithms: ['HS256' as 'EdDSA'] })).toThrow(/not allowed/);
    expect(() => createTokenVerifier({ issuer: '', jwks: { keys: [] } })).toThrow(/issuer/);
  });
});
