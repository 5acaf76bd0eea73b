import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../common/errors';
import { loadTokenConfig, resolveTokenConfigFile, tokenConfig } from '../../identity/config';
import { createKeyRing, keySourceFor } from '../../identity/keys';
import { isLoopback, resolveMode } from '../../identity/role';
import { createTokenService } from '../../identity/service';
import { createTokenVerifier } from '../../identity/verify';
import { ROOT, tempDir } from '../helpers/custody';
import { SEED } from '../helpers/tokens';

const T0 = Date.UTC(2030, 0, 1, 12, 0, 0);

function writeConfig(dir: string, text: string, name = 'token-service-config.yml'): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

describe('token-service-config.yml', () => {
  it('ships the seed values', () => {
    const c = loadTokenConfig(path.join(ROOT, 'token-service-config.yml'));
    expect(c).toMatchObject({ ...SEED, mode: 'auto', signing: { algorithm: 'EdDSA' } });
    expect(c.roleOrder).toEqual(['user', 'support', 'admin']);
  });

  it('is found in the working directory first, else the package copy', () => {
    const dir = tempDir();
    expect(resolveTokenConfigFile(undefined, dir)).toBe(path.join(ROOT, 'token-service-config.yml'));
    const local = writeConfig(dir, 'issuer: here\nsupported_tools: [x]\n');
    expect(resolveTokenConfigFile(undefined, dir)).toBe(local);
    expect(loadTokenConfig(undefined, dir).issuer).toBe('here');
    expect(resolveTokenConfigFile('other.yml', dir)).toBe(path.join(dir, 'other.yml'));
  });

  it.each([
    ['max_ttl_seconds: -5', 4, 'max_ttl_seconds'],
    ['max_ttl_seconds: 100', 2, 'default_ttl_seconds'],
    ['require_sponsor: "yes"', 4, 'require_sponsor'],
    ['supported_tools: []', 4, 'supported_tools'],
    ['supported_tools: [billing, billing]', 4, 'supported_tools.1'],
    ['supported_tools: ["two words"]', 4, 'supported_tools.0'],
    ['mode: anything', 4, 'mode'],
    ['roles:\n  support: { max_ttl_seconds: 5000 }', 5, 'roles.support.max_ttl_seconds'],
    ['default_role: boss', 4, 'default_role'],
    ['issue_ttl: 3', 1, '(top level)'],
    ['signing: { algorithm: HS256 }', 4, 'signing.algorithm'],
  ])('refuses %j naming the line and the field', (line, lineNo, field) => {
    const tools = line.startsWith('supported_tools') ? '' : 'supported_tools: [billing]\n';
    const file = writeConfig(tempDir(), `issuer: agent-token-svc\ndefault_ttl_seconds: 300\n# the line under test:\n${line}\n${tools}`);
    let err: unknown;
    try {
      loadTokenConfig(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const message = (err as Error).message;
    expect(message).toContain(`${file}:${lineNo}`);
    if (field === '(top level)') expect(message).toMatch(/issue_ttl/);
    else expect(message).toContain(`field '${field}'`);
  });

  it('refuses unparsable YAML with its position', () => {
    const file = writeConfig(tempDir(), 'issuer: x\nsupported_tools: [billing\n');
    expect(() => loadTokenConfig(file)).toThrow(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: not valid YAML`));
  });

  it('open mode is for loopback only', () => {
    expect(resolveMode('auto', '127.0.0.1', 'f')).toBe('open');
    expect(resolveMode('auto', '::1', 'f')).toBe('open');
    expect(resolveMode('auto', '0.0.0.0', 'f')).toBe('registered');
    expect(resolveMode('registered', '127.0.0.1', 'f')).toBe('registered');
    expect(() => resolveMode('open', '0.0.0.0', 'cfg.yml')).toThrow(/cfg.yml: field 'mode': open mode .*loopback only.*0\.0\.0\.0/);
    expect(() => resolveMode('open', '10.1.2.3', 'f')).toThrow(ConfigError);
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '192.168.1.1', 'example.com', '::ffff:10.0.0.1']) expect(isLoopback(h), h).toBe(false);
  });
});

describe('signing keys', () => {
  const config = (signing: Record<string, unknown>, dir = tempDir()) =>
    tokenConfig({ ...SEED, signing: { algorithm: 'EdDSA', ...signing } } as Parameters<typeof tokenConfig>[0], path.join(dir, 'cfg.yml'));

  it('generates a key in memory when none is configured', async () => {
    const ring = await createKeyRing(keySourceFor(config({}), {}));
    expect(ring.source.kind).toBe('generated');
    expect(ring.jwks().keys).toEqual([expect.objectContaining({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: ring.current().kid })]);
    expect(ring.jwks().keys[0]).not.toHaveProperty('d');
  });

  it('reads a PKCS8 PEM file (relative to the config), a JWK file and a JWK in an environment variable', async () => {
    const dir = tempDir();
    const { privateKey } = crypto.generateKeyPairSync('ed25519');
    fs.writeFileSync(path.join(dir, 'key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const pem = await createKeyRing(keySourceFor(config({ key_file: 'key.pem' }, dir), {}));
    expect(pem.source.kind).toBe('file');
    const jwk = { ...(privateKey.export({ format: 'jwk' }) as object), kid: 'k-2030' };
    fs.writeFileSync(path.join(dir, 'key.json'), JSON.stringify({ keys: [jwk] }));
    const fromJwk = await createKeyRing(keySourceFor(config({ key_file: 'key.json' }, dir), {}));
    expect(fromJwk.current().kid).toBe('k-2030');
    expect(fromJwk.jwks().keys[0]!.x).toBe(pem.jwks().keys[0]!.x);
    // the variable wins over the file
    const env = await createKeyRing(keySourceFor(config({ key_file: 'missing.pem', key_env: 'MY_KEY' }, dir), { MY_KEY: JSON.stringify(jwk) }));
    expect(env.source.kind).toBe('env');
    expect(env.current().kid).toBe('k-2030');
    // the key signs tokens that verify against its JWKS
    const service = createTokenService({ config: config({ key_file: 'key.pem' }, dir), keys: pem, mode: 'open' });
    const { token } = await service.issue({ tool: 'search', sponsor_id: 'alice' });
    await createTokenVerifier({ issuer: SEED.issuer, jwks: pem.jwks() }).verify(token, { audience: 'search' });
  });

  it('refuses a key of the wrong kind, naming where it came from', async () => {
    const dir = tempDir();
    const ec = await generateKeyPair('ES256', { extractable: true });
    fs.writeFileSync(path.join(dir, 'ec.json'), JSON.stringify(await exportJWK(ec.privateKey)));
    await expect(createKeyRing(keySourceFor(config({ key_file: 'ec.json' }, dir), {}))).rejects.toThrow(/ec\.json: the key is EC\/P-256, signing.algorithm EdDSA needs OKP\/Ed25519/);
    fs.writeFileSync(path.join(dir, 'pub.json'), JSON.stringify({ kty: 'OKP', crv: 'Ed25519', x: 'abc' }));
    await expect(createKeyRing(keySourceFor(config({ key_file: 'pub.json' }, dir), {}))).rejects.toThrow(/holds no private JWK/);
    await expect(createKeyRing(keySourceFor(config({ key_file: 'nope.pem' }, dir), {}))).rejects.toThrow(/field 'signing.key_file': cannot read/);
    await expect(createKeyRing(keySourceFor(config({}, dir), { CUSTODY_TOKEN_SIGNING_KEY: 'garbage' }))).rejects.toThrow(/\$CUSTODY_TOKEN_SIGNING_KEY: expected a PKCS8 PEM/);
    // ES256 when configured
    const es = await createKeyRing(keySourceFor(config({ algorithm: 'ES256', key_file: 'ec.json' }, dir), {}));
    expect(es.current().alg).toBe('ES256');
  });

  it('rotation keeps a retired key published until the last token it signed has expired', async () => {
    let now = T0;
    const cfg = config({});
    const ring = await createKeyRing(keySourceFor(cfg, {}), { now: () => now, clockSkewSeconds: 5 });
    const service = createTokenService({ config: cfg, keys: ring, mode: 'open', now: () => now });
    const verifier = createTokenVerifier({ issuer: SEED.issuer, jwks: () => ring.jwks(), now: () => now });
    const first = ring.current().kid;
    const old = await service.issue({ tool: 'billing', sponsor_id: 'alice', ttl: 120 });

    now = T0 + 10_000;
    const rotated = await ring.rotate();
    expect(rotated).toEqual({ kid: ring.current().kid, retired: first });
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([rotated.kid, first]);
    const fresh = await service.issue({ tool: 'billing', sponsor_id: 'alice', ttl: 60 });
    expect(JSON.parse(Buffer.from(fresh.token.split('.')[0]!, 'base64url').toString()).kid).toBe(rotated.kid);
    await verifier.verify(old.token);
    await verifier.verify(fresh.token);
    expect(ring.status()).toEqual([
      expect.objectContaining({ kid: rotated.kid, status: 'current' }),
      expect.objectContaining({ kid: first, status: 'retired', published_until: old.expiresAt + 5000 }),
    ]);

    now = old.expiresAt + 5000; // still inside the skew the verifiers allow
    expect(ring.jwks().keys).toHaveLength(2);
    now = old.expiresAt + 5001;
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([rotated.kid]);

    // a key that signed nothing live leaves at once
    const again = await ring.rotate();
    now += 61_000 + 5_000;
    const third = await ring.rotate();
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([third.kid]);
    expect(again.kid).not.toBe(third.kid);
  });

  it('rotating a file key re-reads the file, and refuses when it still holds the current key', async () => {
    const dir = tempDir();
    const write = () => fs.writeFileSync(path.join(dir, 'key.pem'), crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    write();
    const ring = await createKeyRing(keySourceFor(config({ key_file: 'key.pem' }, dir), {}));
    await expect(ring.rotate()).rejects.toMatchObject({ code: 'ERR_KEY_UNCHANGED' });
    const before = ring.current().kid;
    write();
    const r = await ring.rotate();
    expect(r.retired).toBe(before);
    expect(r.kid).not.toBe(before);
  });
});
