import fs from 'node:fs';
import path from 'node:path';
import { exportJWK, type JSONWebKeySet, type JWK } from 'jose';
import { ConfigError, CustodyError } from '../common/errors';
import { generateSigningKey, parsePrivateKey, type SigningKey } from './keys';

/**
 * Signing keys whose signatures are checked for as long as the audit is kept (the collector's
 * checkpoints, the policy plane's receipts): Ed25519, one current key signs, and every key that
 * ever signed stays in the published set. The private key comes from an environment variable
 * (PKCS8 PEM or JWK) or is generated once into `<dir>/signing-key.json` (mode 0600); the public
 * set lives in `<dir>/jwks.json`. Rotation makes a new current key and keeps the old public half.
 */
export const ARCHIVE_ALG = 'EdDSA' as const;
const PRIVATE_FILE = 'signing-key.json';
const JWKS_FILE = 'jwks.json';

export interface KeyArchive {
  /** Where the private key comes from, for the banner. */
  readonly source: string;
  readonly dir: string;
  current(): SigningKey;
  /** Every public key, current first. */
  jwks(): JSONWebKeySet;
  /** A new current key (generated, or re-read from the variable); the old one's public half stays published. */
  rotate(): Promise<{ kid: string; retired: string }>;
}

export function readJwksFile(file: string): JSONWebKeySet {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`${file}: cannot read a JWK set: ${(err as Error).message}`, { cause: err });
  }
  const keys = (parsed as { keys?: unknown })?.keys;
  if (!Array.isArray(keys)) throw new ConfigError(`${file}: not a JWK set (no "keys" array)`);
  return { keys: keys.filter((k): k is JWK => !!k && typeof k === 'object' && typeof (k as JWK).kid === 'string') };
}

function writeAtomic(file: string, text: string, mode = 0o644): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode });
  fs.renameSync(tmp, file);
}

/**
 * `key` is the value of the variable `envVar` as the process started with it (common/env.ts), which
 * then wins over the archive's own key file; `envVar` names it in messages.
 */
export async function openKeyArchive(options: { dir: string; envVar: string; key?: string | undefined }): Promise<KeyArchive> {
  const envVar = options.envVar;
  const dir = path.resolve(options.dir);
  fs.mkdirSync(dir, { recursive: true });
  const privateFile = path.join(dir, PRIVATE_FILE);
  const jwksFile = path.join(dir, JWKS_FILE);
  const fromEnv = () => {
    const text = options.key;
    return text !== undefined && text.trim() !== '' ? text : undefined;
  };

  async function load(): Promise<SigningKey> {
    const text = fromEnv();
    if (text) return parsePrivateKey(text, ARCHIVE_ALG, `$${envVar}`);
    if (fs.existsSync(privateFile)) return parsePrivateKey(fs.readFileSync(privateFile, 'utf8'), ARCHIVE_ALG, privateFile);
    return generate();
  }

  async function generate(): Promise<SigningKey> {
    const key = await generateSigningKey(ARCHIVE_ALG);
    const jwk = { ...(await exportJWK(key.privateKey)), kid: key.kid, alg: ARCHIVE_ALG };
    writeAtomic(privateFile, JSON.stringify(jwk, null, 2) + '\n', 0o600);
    return key;
  }

  let published: JWK[] = fs.existsSync(jwksFile) ? readJwksFile(jwksFile).keys : [];
  let current = await load();
  const publish = (key: SigningKey) => {
    if (!published.some((k) => k.kid === key.kid)) {
      published = [...published, { ...key.publicJwk } as JWK];
      writeAtomic(jwksFile, JSON.stringify({ keys: published }, null, 2) + '\n');
    }
  };
  publish(current);

  return {
    source: fromEnv() ? `$${envVar}` : privateFile,
    dir,
    current: () => current,
    jwks: () => ({ keys: [current.publicJwk as JWK, ...published.filter((k) => k.kid !== current.kid)] }),
    async rotate() {
      const next = fromEnv() ? await load() : await generate();
      if (next.kid === current.kid) {
        throw new CustodyError('ERR_KEY_UNCHANGED', `$${envVar} still holds the current key ${next.kid}: put the new key there, then rotate`);
      }
      const retired = current.kid;
      publish(next);
      current = next;
      return { kid: next.kid, retired };
    },
  };
}
