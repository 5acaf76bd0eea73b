import { createPublicKey, KeyObject, sign, verify } from 'node:crypto';
import type { CryptoKey, JSONWebKeySet } from 'jose';

/**
 * Signed receipts: compact JWS (RFC 7515, EdDSA over Ed25519) that the policy plane gives for
 * each decision it makes and each rollout state it puts in force, so that `custody audit verify`
 * can prove a call was allowed (or ran in shadow) without trusting whoever wrote the rows. Any
 * JOSE library verifies them with the plane's JWKS. Signing and verifying use node:crypto
 * directly: a receipt is made on every /v1/check and checked for every call.
 */

export const RECEIPT_TYPE = {
  DECISION: 'custody-decision+jws',
  ROLLOUT: 'custody-rollout+jws',
} as const;
export type ReceiptType = (typeof RECEIPT_TYPE)[keyof typeof RECEIPT_TYPE];

/** What a decision receipt says: exactly one decision for one identity, tool and action. */
export interface DecisionReceipt {
  /** The policy_decision_id. */
  id: string;
  decision: 'allow' | 'deny' | 'error';
  sponsor_id: string;
  agent_instance_id: string;
  parent_agent_id: string;
  tool_id: string;
  action: string;
  cohort: string;
  enforced: boolean;
  token_jti: string;
  /** The token's expiry, epoch s (0 without a verified token): no call may use the decision after it. */
  token_exp: number;
  /** When the plane decided, epoch ms. */
  time: number;
  policy_version: string;
  rule_id: string;
  rollout_percent: number;
}

/** What a rollout receipt says: from `time` on, this percent (at this revision) is in force. */
export interface RolloutReceipt {
  percent: number;
  revision: number;
  /** Epoch ms. */
  time: number;
  reason: string;
  actor: string;
}

export interface ReceiptSigner {
  readonly kid: string;
  sign(type: ReceiptType, payload: object): string;
}

const b64 = (buf: Buffer) => buf.toString('base64url');

/** A signer over an Ed25519 private key (a jose/WebCrypto CryptoKey or a KeyObject). */
export function receiptSigner(kid: string, privateKey: KeyObject | CryptoKey): ReceiptSigner {
  const key = privateKey instanceof KeyObject ? privateKey : KeyObject.from(privateKey as Parameters<typeof KeyObject.from>[0]);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`receipts are signed with Ed25519 keys, not ${key.asymmetricKeyType}`);
  const headers = new Map<ReceiptType, string>();
  const header = (type: ReceiptType) => {
    let h = headers.get(type);
    if (h === undefined) headers.set(type, (h = b64(Buffer.from(JSON.stringify({ alg: 'EdDSA', kid, typ: type })))));
    return h;
  };
  return {
    kid,
    sign(type, payload) {
      const input = `${header(type)}.${b64(Buffer.from(JSON.stringify(payload)))}`;
      return `${input}.${b64(sign(null, Buffer.from(input), key))}`;
    },
  };
}

export type ReceiptCheck<T> =
  | { ok: true; kid: string; payload: T }
  | { ok: false; code: 'malformed' | 'unknown_key' | 'bad_signature' | 'wrong_type'; message: string };

/** Public keys by kid, for verifying many receipts. Keys that are not Ed25519 are left out. */
export class ReceiptKeys {
  private readonly keys = new Map<string, KeyObject>();

  constructor(jwks: JSONWebKeySet) {
    for (const jwk of jwks.keys) {
      if (!jwk.kid || jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519') continue;
      try {
        this.keys.set(jwk.kid, createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x! }, format: 'jwk' }));
      } catch {
        /* an unusable key verifies nothing */
      }
    }
  }

  get size(): number {
    return this.keys.size;
  }

  kids(): string[] {
    return [...this.keys.keys()];
  }

  /** Checks the signature, the type and that the payload is a JSON object; the caller checks what it says. */
  verify<T>(jws: string, type: ReceiptType): ReceiptCheck<T> {
    const signed = this.parse(jws, type);
    if (!signed.ok) return signed;
    return checked<T>(signed, verify(null, signed.input, signed.key, signed.signature));
  }

  /**
   * The same for many receipts, the signatures checked on libuv's thread pool (so on every core,
   * not only the caller's thread), at most `concurrency` at a time; results in the order given.
   */
  async verifyAll<T>(receipts: readonly string[], type: ReceiptType, concurrency = 256): Promise<ReceiptCheck<T>[]> {
    const out = new Array<ReceiptCheck<T>>(receipts.length);
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < receipts.length) {
        const i = next++;
        const signed = this.parse(receipts[i]!, type);
        if (!signed.ok) {
          out[i] = signed;
          continue;
        }
        const valid = await new Promise<boolean>((resolve) => verify(null, signed.input, signed.key, signed.signature, (err, ok) => resolve(!err && ok)));
        out[i] = checked<T>(signed, valid);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, receipts.length)) }, lane));
    return out;
  }

  /** Everything before the signature check: the form, the header, the type and the key. */
  private parse(jws: string, type: ReceiptType): Signed | (ReceiptCheck<never> & { ok: false }) {
    const parts = jws.split('.');
    if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) return { ok: false, code: 'malformed', message: 'not a compact JWS' };
    let header: { alg?: unknown; kid?: unknown; typ?: unknown };
    let payload: unknown;
    try {
      header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    } catch {
      return { ok: false, code: 'malformed', message: 'its header or payload is not JSON' };
    }
    if (typeof header !== 'object' || header === null || header.alg !== 'EdDSA' || typeof header.kid !== 'string') {
      return { ok: false, code: 'malformed', message: 'its header is not {alg: EdDSA, kid}' };
    }
    if (header.typ !== type) return { ok: false, code: 'wrong_type', message: `it is a ${String(header.typ)}, not a ${type}` };
    const key = this.keys.get(header.kid);
    if (!key) return { ok: false, code: 'unknown_key', message: `it is signed by key ${header.kid}, not one of the plane's keys` };
    return { ok: true, kid: header.kid, payload, key, input: Buffer.from(`${parts[0]}.${parts[1]}`), signature: Buffer.from(parts[2]!, 'base64url') };
  }
}

interface Signed {
  ok: true;
  kid: string;
  payload: unknown;
  key: KeyObject;
  input: Buffer;
  signature: Buffer;
}

function checked<T>(s: Signed, valid: boolean): ReceiptCheck<T> {
  if (!valid) return { ok: false, code: 'bad_signature', message: `its signature does not verify with key ${s.kid}` };
  if (typeof s.payload !== 'object' || s.payload === null || Array.isArray(s.payload)) return { ok: false, code: 'malformed', message: 'its payload is not an object' };
  return { ok: true, kid: s.kid, payload: s.payload as T };
}
