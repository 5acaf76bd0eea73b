import { createPublicKey, hash, KeyObject, sign, verify } from 'node:crypto';
import type { CryptoKey, JSONWebKeySet } from 'jose';
import { LEAF_PREFIX, leafHash, merkleTree, rootFromPath } from './merkle';

/**
 * Signed receipts that the policy plane gives for each decision it makes and each rollout state
 * it puts in force, so that `custody audit verify` can prove a call was allowed (or ran in
 * shadow) without trusting whoever wrote the rows. Signing and verifying use node:crypto
 * directly: a receipt is made on every /v1/check and checked for every call.
 *
 * Two forms, both three base64url segments `header.payload.proof` with the receipt's own JSON
 * payload in the middle (the store reads it there in SQL):
 *
 * - **Single**: a compact JWS (RFC 7515, EdDSA over Ed25519), header
 *   `{"alg":"EdDSA","kid":K,"typ":T}`. Any JOSE library verifies it with the plane's JWKS.
 *
 * - **Batch** (one signature for n > 1 receipts signed together): header
 *   `{"alg":"EdDSA","kid":K,"typ":T',"n":n,"time":ms}` where T' is the batch type of T
 *   (`custody-decision-batch+jws`: a JOSE library never takes one for a single receipt), n the
 *   batch size and time when it was signed (epoch ms); the same header on every receipt of the
 *   batch. The third segment is base64url(index ‖ path ‖ signature): the receipt's leaf index as
 *   4 bytes big-endian, its RFC 9162 audit path (32-byte hashes, the leaf's sibling first), and
 *   the 64-byte Ed25519 signature. The Merkle tree (RFC 6962) is over the receipts' payload
 *   bytes in order, leaf = SHA-256(0x00 ‖ payload), node = SHA-256(0x01 ‖ left ‖ right). What
 *   is signed is the batch statement, itself a compact JWS: `header.base64url(root)`. So a
 *   verifier recomputes the root from the payload, index and path, and checks the signature of
 *   `header.base64url(root)`; a JOSE library verifies that statement as it is. A receipt grows
 *   by the path, 32 bytes per tree level (log2 n), plus 4 bytes of index and n and time.
 */

export const RECEIPT_TYPE = {
  DECISION: 'custody-decision+jws',
  ROLLOUT: 'custody-rollout+jws',
  POLICY: 'custody-policy+jws',
} as const;
export type ReceiptType = (typeof RECEIPT_TYPE)[keyof typeof RECEIPT_TYPE];

/** The `typ` of a batch receipt (and of its batch statement) of each type. */
export const RECEIPT_BATCH_TYPE: Readonly<Record<ReceiptType, string>> = {
  [RECEIPT_TYPE.DECISION]: 'custody-decision-batch+jws',
  [RECEIPT_TYPE.ROLLOUT]: 'custody-rollout-batch+jws',
  [RECEIPT_TYPE.POLICY]: 'custody-policy-batch+jws',
};

/** Receipts signed together at most: the index is 4 bytes. */
export const MAX_RECEIPT_BATCH = 0xffff_ffff;
const SIGNATURE_BYTES = 64;
const HASH_BYTES = 32;
const INDEX_BYTES = 4;

/** What a decision receipt says: exactly one decision for one identity, tool and action. */
export interface DecisionReceipt {
  /** The policy_decision_id. */
  id: string;
  decision: 'allow' | 'deny' | 'error' | 'pending';
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
  /**
   * Human approval: on a pending decision its request (`id`, status `pending`); on the decision
   * that resolved it, who answered (`by`, `via` credential or admin), why, when (`at`, epoch ms),
   * and the pending decision that asked (`requested_by`).
   */
  approval?: { id: string; status: string; by?: string; via?: string; reason?: string; at?: number; requested_by?: string };
  /** The argument fields the plane saw (the tool's disclose_args). */
  args_disclosed?: string[];
}

/** What a policy receipt says: at `time` the plane loaded (or refused) the policy of this hash from `source`. */
export interface PolicyReceipt {
  result: 'loaded' | 'refused';
  /** The policy's version (refused: the one that stays in force). */
  version: string;
  /** SHA-256 hex of the file's text ('' when it could not be read). */
  hash: string;
  source: string;
  /** Epoch ms. */
  time: number;
  /** Why a file was refused. */
  error?: string;
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
  /** A single receipt: one signature. */
  sign(type: ReceiptType, payload: object): string;
  /** The receipts of `payloads`, in order, under one signature: a batch of one is a single receipt. */
  signBatch(type: ReceiptType, payloads: readonly object[]): string[];
  /** The same, the signature made on libuv's thread pool: the caller's thread goes on meanwhile. */
  signBatchAsync(type: ReceiptType, payloads: readonly object[]): Promise<string[]>;
}

const b64 = (buf: Buffer) => buf.toString('base64url');

/** A signer over an Ed25519 private key (a jose/WebCrypto CryptoKey or a KeyObject). */
export function receiptSigner(kid: string, privateKey: KeyObject | CryptoKey, o: { now?: () => number } = {}): ReceiptSigner {
  const now = o.now ?? Date.now;
  const key = privateKey instanceof KeyObject ? privateKey : KeyObject.from(privateKey as Parameters<typeof KeyObject.from>[0]);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`receipts are signed with Ed25519 keys, not ${key.asymmetricKeyType}`);
  const headers = new Map<ReceiptType, string>();
  const header = (type: ReceiptType) => {
    let h = headers.get(type);
    if (h === undefined) headers.set(type, (h = b64(Buffer.from(JSON.stringify({ alg: 'EdDSA', kid, typ: type })))));
    return h;
  };
  /** What one signature covers for `payloads`, and how each receipt is made from it. */
  const prepare = (type: ReceiptType, payloads: readonly object[]): { input: Buffer; finish: (signature: Buffer) => string[] } => {
    if (payloads.length > MAX_RECEIPT_BATCH) throw new Error(`at most ${MAX_RECEIPT_BATCH} receipts are signed together`);
    if (payloads.length <= 1) {
      const input = payloads.length ? `${header(type)}.${b64(Buffer.from(JSON.stringify(payloads[0])))}` : '';
      return { input: Buffer.from(input), finish: (signature) => (payloads.length ? [`${input}.${b64(signature)}`] : []) };
    }
    // each payload written once after the leaf prefix: the leaf is hashed from it as it is
    const leafInputs = payloads.map((p) => Buffer.from(`${String.fromCharCode(LEAF_PREFIX)}${JSON.stringify(p)}`));
    const { root, paths } = merkleTree(leafInputs.map((b) => hash('sha256', b, 'buffer')));
    const h = b64(Buffer.from(JSON.stringify({ alg: 'EdDSA', kid, typ: RECEIPT_BATCH_TYPE[type], n: payloads.length, time: now() })));
    return {
      input: Buffer.from(`${h}.${b64(root)}`),
      finish: (signature) =>
        leafInputs.map((leaf, i) => {
          const path = paths[i]!;
          const proof = Buffer.allocUnsafe(INDEX_BYTES + HASH_BYTES * path.length + SIGNATURE_BYTES);
          proof.writeUInt32BE(i, 0);
          path.forEach((p, j) => p.copy(proof, INDEX_BYTES + HASH_BYTES * j));
          signature.copy(proof, INDEX_BYTES + HASH_BYTES * path.length);
          return `${h}.${b64(leaf.subarray(1))}.${b64(proof)}`;
        }),
    };
  };
  return {
    kid,
    sign: (type, payload) => {
      const { input, finish } = prepare(type, [payload]);
      return finish(sign(null, input, key))[0]!;
    },
    signBatch(type, payloads) {
      const { input, finish } = prepare(type, payloads);
      return payloads.length ? finish(sign(null, input, key)) : [];
    },
    signBatchAsync(type, payloads) {
      return new Promise((resolve, reject) => {
        const { input, finish } = prepare(type, payloads);
        if (!payloads.length) return resolve([]);
        sign(null, input, key, (err, signature) => (err ? reject(err) : resolve(finish(signature))));
      });
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

  /**
   * Checks the signature (for a batch receipt: that its payload, index and path lead to a root
   * the batch signature covers), the type and that the payload is a JSON object; the caller
   * checks what it says.
   */
  verify<T>(jws: string, type: ReceiptType): ReceiptCheck<T> {
    const signed = this.parse(jws, type);
    if (!signed.ok) return signed;
    return checked<T>(signed, verify(null, signed.input, signed.key, signed.signature));
  }

  /**
   * The same for many receipts, the signatures checked on libuv's thread pool (so on every core,
   * not only the caller's thread), at most `concurrency` at a time; results in the order given.
   * A batch signature is checked once per distinct statement (root, header and signature).
   */
  async verifyAll<T>(receipts: readonly string[], type: ReceiptType, concurrency = 256): Promise<ReceiptCheck<T>[]> {
    const out = new Array<ReceiptCheck<T>>(receipts.length);
    const statements = new Map<string, Promise<boolean>>();
    const check = (s: Signed) => new Promise<boolean>((resolve) => verify(null, s.input, s.key, s.signature, (err, ok) => resolve(!err && ok)));
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < receipts.length) {
        const i = next++;
        const signed = this.parse(receipts[i]!, type);
        if (!signed.ok) {
          out[i] = signed;
          continue;
        }
        let valid: Promise<boolean>;
        if (signed.batch) {
          const id = `${signed.input.toString('latin1')}.${signed.signature.toString('latin1')}`;
          valid = statements.get(id) ?? check(signed);
          statements.set(id, valid);
        } else valid = check(signed);
        out[i] = checked<T>(signed, await valid);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, receipts.length)) }, lane));
    return out;
  }

  /** Everything before the signature check: the form, the header, the type, the key and (in a batch) the root. */
  private parse(jws: string, type: ReceiptType): Signed | (ReceiptCheck<never> & { ok: false }) {
    const parts = jws.split('.');
    if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) return { ok: false, code: 'malformed', message: 'not a compact JWS' };
    let header: { alg?: unknown; kid?: unknown; typ?: unknown; n?: unknown; time?: unknown };
    let payload: unknown;
    const body = Buffer.from(parts[1]!, 'base64url');
    try {
      header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      payload = JSON.parse(body.toString('utf8'));
    } catch {
      return { ok: false, code: 'malformed', message: 'its header or payload is not JSON' };
    }
    if (typeof header !== 'object' || header === null || header.alg !== 'EdDSA' || typeof header.kid !== 'string') {
      return { ok: false, code: 'malformed', message: 'its header is not {alg: EdDSA, kid}' };
    }
    const batch = header.typ === RECEIPT_BATCH_TYPE[type];
    if (header.typ !== type && !batch) return { ok: false, code: 'wrong_type', message: `it is a ${String(header.typ)}, not a ${type}` };
    const key = this.keys.get(header.kid);
    if (!key) return { ok: false, code: 'unknown_key', message: `it is signed by key ${header.kid}, not one of the plane's keys` };
    if (!batch) return { ok: true, kid: header.kid, payload, key, input: Buffer.from(`${parts[0]}.${parts[1]}`), signature: Buffer.from(parts[2]!, 'base64url'), batch };

    const n = header.n;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_RECEIPT_BATCH || typeof header.time !== 'number' || !Number.isFinite(header.time)) {
      return { ok: false, code: 'malformed', message: 'its batch header does not say {n, time}' };
    }
    const proof = Buffer.from(parts[2]!, 'base64url');
    // the payload hashed is the decoded bytes: only one spelling of them is accepted
    if (body.toString('base64url') !== parts[1] || proof.toString('base64url') !== parts[2]) return { ok: false, code: 'malformed', message: 'it is not canonical base64url' };
    const levels = (proof.length - INDEX_BYTES - SIGNATURE_BYTES) / HASH_BYTES;
    if (!Number.isInteger(levels) || levels < 0) return { ok: false, code: 'malformed', message: 'its batch proof is not index, path and signature' };
    const path: Buffer[] = [];
    for (let j = 0; j < levels; j++) path.push(proof.subarray(INDEX_BYTES + HASH_BYTES * j, INDEX_BYTES + HASH_BYTES * (j + 1)));
    const root = rootFromPath(proof.readUInt32BE(0), n, leafHash(body), path);
    // a proof that fits no leaf of a batch of n: as if its signature failed (some part was changed)
    if (!root) return { ok: false, code: 'bad_signature', message: `its batch proof does not fit a batch of ${n} signed by key ${header.kid}` };
    return { ok: true, kid: header.kid, payload, key, input: Buffer.from(`${parts[0]}.${root.toString('base64url')}`), signature: proof.subarray(proof.length - SIGNATURE_BYTES), batch };
  }
}

interface Signed {
  ok: true;
  kid: string;
  payload: unknown;
  key: KeyObject;
  /** What the signature is over: the receipt's `header.payload`, or in a batch its statement `header.base64url(root)`. */
  input: Buffer;
  signature: Buffer;
  batch: boolean;
}

function checked<T>(s: Signed, valid: boolean): ReceiptCheck<T> {
  if (!valid) return { ok: false, code: 'bad_signature', message: `its signature does not verify with key ${s.kid}` };
  if (typeof s.payload !== 'object' || s.payload === null || Array.isArray(s.payload)) return { ok: false, code: 'malformed', message: 'its payload is not an object' };
  return { ok: true, kid: s.kid, payload: s.payload as T };
}
