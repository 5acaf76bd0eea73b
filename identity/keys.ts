import fs from 'node:fs';
import path from 'node:path';
import {
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  importPKCS8,
  type CryptoKey,
  type JSONWebKeySet,
  type JWK,
} from 'jose';
import { ConfigError, CustodyError } from '../common/errors';
import type { SigningAlgorithm, TokenServiceConfig } from './config';

/** A private signing key, its key id and the public half as a JWK. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  readonly privateKey: CryptoKey;
  readonly publicJwk: Readonly<JWK>;
}

/** Where the signing key comes from: how the start banner and the key listing describe it. */
export interface KeySource {
  readonly kind: 'generated' | 'file' | 'env';
  readonly description: string;
  /** Reads (or makes) the key this source holds now. */
  load(): Promise<SigningKey>;
}

export interface KeyStatus {
  kid: string;
  alg: SigningAlgorithm;
  status: 'current' | 'retired';
  /** Epoch ms of the latest expiry among tokens this key signed; 0 when it signed none. */
  last_expires_at: number;
  /** For a retired key: epoch ms after which it leaves the JWKS. */
  published_until?: number;
}

/**
 * The token service's keys: one current key that signs, and retired keys whose public halves stay in
 * the JWKS until the last token they signed has expired (plus the clock skew verifiers allow).
 */
export interface KeyRing {
  readonly source: KeySource;
  current(): SigningKey;
  /** Notes that a token signed with `kid` expires at `expSeconds`; keeps a retired key published that long. */
  signed(kid: string, expSeconds: number): void;
  /** The public keys, as served at /.well-known/jwks.json. The same object until the set changes. */
  jwks(): JSONWebKeySet;
  /** Makes a new current key (generated, or re-read from the file or variable) and retires the old one. */
  rotate(): Promise<{ kid: string; retired: string }>;
  status(): KeyStatus[];
}

const CURVE: Record<SigningAlgorithm, { kty: string; crv: string }> = {
  EdDSA: { kty: 'OKP', crv: 'Ed25519' },
  ES256: { kty: 'EC', crv: 'P-256' },
};

function publicPart(jwk: JWK): JWK {
  const { kty, crv, x, y } = jwk;
  return { kty, crv, x, ...(y !== undefined ? { y } : {}) } as JWK;
}

async function fromPrivateKey(privateKey: CryptoKey, alg: SigningAlgorithm, kid?: string): Promise<SigningKey> {
  const pub = publicPart(await exportJWK(privateKey));
  const id = kid ?? (await calculateJwkThumbprint(pub, 'sha256'));
  return Object.freeze({ kid: id, alg, privateKey, publicJwk: Object.freeze({ ...pub, kid: id, alg, use: 'sig' }) });
}

/** Parses a private key held as PKCS8 PEM, a JWK, or a JWK set (its first private key signs). */
export async function parsePrivateKey(text: string, alg: SigningAlgorithm, where: string): Promise<SigningKey> {
  const trimmed = text.trim();
  if (trimmed.startsWith('-----BEGIN')) {
    if (!trimmed.startsWith('-----BEGIN PRIVATE KEY-----')) {
      throw new ConfigError(`${where}: expected a PKCS8 PEM ("-----BEGIN PRIVATE KEY-----"), a JWK or a JWK set`);
    }
    try {
      return await fromPrivateKey(await importPKCS8(trimmed, alg, { extractable: true }), alg);
    } catch (err) {
      throw new ConfigError(`${where}: not a ${alg} (${CURVE[alg].crv}) private key: ${(err as Error).message}`, { cause: err });
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    throw new ConfigError(`${where}: expected a PKCS8 PEM, a JWK or a JWK set (JSON)`);
  }
  const candidates: unknown[] =
    parsed && typeof parsed === 'object' && Array.isArray((parsed as { keys?: unknown }).keys) ? (parsed as { keys: unknown[] }).keys : [parsed];
  const jwk = candidates.find((k): k is JWK => !!k && typeof k === 'object' && typeof (k as JWK).d === 'string');
  if (!jwk) throw new ConfigError(`${where}: holds no private JWK (a key with "d")`);
  const want = CURVE[alg];
  if (jwk.kty !== want.kty || jwk.crv !== want.crv) {
    throw new ConfigError(`${where}: the key is ${jwk.kty}/${jwk.crv ?? '?'}, signing.algorithm ${alg} needs ${want.kty}/${want.crv}`);
  }
  if (jwk.alg !== undefined && jwk.alg !== alg) throw new ConfigError(`${where}: the key's "alg" is ${jwk.alg}, signing.algorithm is ${alg}`);
  try {
    const key = (await importJWK({ ...jwk, ext: true }, alg, { extractable: true })) as CryptoKey;
    return await fromPrivateKey(key, alg, typeof jwk.kid === 'string' && jwk.kid ? jwk.kid : undefined);
  } catch (err) {
    throw new ConfigError(`${where}: cannot import the JWK: ${(err as Error).message}`, { cause: err });
  }
}

export async function generateSigningKey(alg: SigningAlgorithm): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return fromPrivateKey(privateKey, alg);
}

/**
 * The key source the configuration names: the environment variable when it is set, else the key
 * file, else a key generated in memory (tokens then do not survive a restart of the service).
 */
export function keySourceFor(config: TokenServiceConfig, env: Readonly<Record<string, string | undefined>>): KeySource {
  const { algorithm: alg, key_env: envName, key_file: keyFile } = config.signing;
  const fromEnv = env[envName];
  if (fromEnv !== undefined && fromEnv.trim() !== '') {
    return {
      kind: 'env',
      description: `$${envName}`,
      load: () => parsePrivateKey(env[envName] ?? '', alg, `$${envName}`),
    };
  }
  if (keyFile) {
    const file = path.resolve(path.dirname(config.file), keyFile);
    return {
      kind: 'file',
      description: file,
      async load() {
        let text: string;
        try {
          text = await fs.promises.readFile(file, 'utf8');
        } catch (err) {
          throw new ConfigError(`${config.file}: field 'signing.key_file': cannot read ${file}: ${(err as Error).message}`, { cause: err });
        }
        return parsePrivateKey(text, alg, file);
      },
    };
  }
  return { kind: 'generated', description: 'generated in memory', load: () => generateSigningKey(alg) };
}

interface Entry {
  key: SigningKey;
  /** Latest exp (s) of a token it signed. */
  lastExp: number;
  retiredAt?: number;
}

export interface KeyRingOptions {
  /** Verifiers' clock skew: a retired key stays this much longer. */
  clockSkewSeconds?: number;
  now?: () => number;
}

export async function createKeyRing(source: KeySource, options: KeyRingOptions = {}): Promise<KeyRing> {
  const now = options.now ?? Date.now;
  const skewMs = (options.clockSkewSeconds ?? 5) * 1000;
  let current: Entry = { key: await source.load(), lastExp: 0 };
  const retired = new Map<string, Entry>();
  let published: JSONWebKeySet | undefined;
  let nextPruneAt = Infinity;

  const until = (e: Entry) => e.lastExp * 1000 + skewMs;
  const prune = () => {
    const t = now();
    nextPruneAt = Infinity;
    for (const [kid, e] of retired) {
      if (until(e) < t) {
        retired.delete(kid);
        published = undefined;
      } else nextPruneAt = Math.min(nextPruneAt, until(e));
    }
  };

  return {
    source,
    current: () => current.key,
    signed(kid, expSeconds) {
      const e = current.key.kid === kid ? current : retired.get(kid);
      if (e && expSeconds > e.lastExp) {
        e.lastExp = expSeconds;
        if (e !== current) nextPruneAt = Math.min(nextPruneAt, until(e));
      }
    },
    jwks() {
      if (now() >= nextPruneAt) prune();
      published ??= Object.freeze({
        keys: [current, ...retired.values()].map((e) => e.key.publicJwk as JWK),
      }) as JSONWebKeySet;
      return published;
    },
    async rotate() {
      const next = await source.load();
      if (next.kid === current.key.kid) {
        throw new CustodyError(
          'ERR_KEY_UNCHANGED',
          `the signing key (${source.description}) still holds the current key ${next.kid}: put the new key there, then rotate`,
        );
      }
      const old = current;
      old.retiredAt = now();
      retired.delete(next.kid);
      if (until(old) >= now()) retired.set(old.key.kid, old);
      current = { key: next, lastExp: 0 };
      published = undefined;
      prune();
      return { kid: next.kid, retired: old.key.kid };
    },
    status() {
      if (now() >= nextPruneAt) prune();
      return [
        { kid: current.key.kid, alg: current.key.alg, status: 'current' as const, last_expires_at: current.lastExp * 1000 },
        ...[...retired.values()].map((e) => ({
          kid: e.key.kid,
          alg: e.key.alg,
          status: 'retired' as const,
          last_expires_at: e.lastExp * 1000,
          published_until: until(e),
        })),
      ];
    },
  };
}
