import { FlattenedSign, createLocalJWKSet, flattenedVerify, type JSONWebKeySet } from 'jose';
import { canonicalJson, sha256Hex } from '../../common/canonical';
import type { SigningKey } from '../../identity/keys';
import { AUDIT_ALG } from './keys';
import { LEAF_FORMAT } from './rows';

/**
 * One checkpoint: what was sealed for a period, chained to the checkpoint before it and signed.
 * The signed bytes are the canonical JSON of the body; the signature is a JWS (EdDSA, `kid` in the
 * protected header) with a detached payload, `<protected>..<signature>` (RFC 7515 appendix F);
 * the checkpoint hash, which the next checkpoint carries, is SHA-256 of the same bytes.
 */
export const CHECKPOINT_VERSION = 1;
/** prev_checkpoint_hash of the first checkpoint. */
export const GENESIS_HASH = '0'.repeat(64);

/**
 * `periodic`: a period closed on schedule. `startup`: the time between the last checkpoint and
 * this start, when no checkpointer was running. `shutdown`: the open period, sealed at stop.
 */
export type CheckpointKind = 'periodic' | 'startup' | 'shutdown';

export interface CheckpointBody {
  v: number;
  leaf_format: number;
  seq: number;
  kind: CheckpointKind;
  /** Write-time range [period_start, period_end), ISO-8601 with milliseconds. */
  period_start: string;
  period_end: string;
  row_count: number;
  /** Rows per sealed table. */
  counts: Record<string, number>;
  merkle_root: string;
  prev_checkpoint_hash: string;
  kid: string;
  alg: string;
  created_at: string;
}

export interface SignedCheckpoint {
  checkpoint: CheckpointBody;
  checkpoint_hash: string;
  signature: string;
}

export function checkpointBytes(body: CheckpointBody): Buffer {
  return Buffer.from(canonicalJson(body), 'utf8');
}

export function checkpointHash(body: CheckpointBody): string {
  return sha256Hex(checkpointBytes(body));
}

export function newBody(fields: Omit<CheckpointBody, 'v' | 'leaf_format' | 'alg' | 'kid'>, key: SigningKey): CheckpointBody {
  return { v: CHECKPOINT_VERSION, leaf_format: LEAF_FORMAT, ...fields, kid: key.kid, alg: AUDIT_ALG };
}

export async function signCheckpoint(body: CheckpointBody, key: SigningKey): Promise<SignedCheckpoint> {
  const jws = await new FlattenedSign(checkpointBytes(body)).setProtectedHeader({ alg: AUDIT_ALG, kid: key.kid }).sign(key.privateKey);
  return { checkpoint: body, checkpoint_hash: checkpointHash(body), signature: `${jws.protected}..${jws.signature}` };
}

export type SignatureCheck = { ok: true } | { ok: false; code: 'unknown_key' | 'bad_signature' | 'malformed'; message: string };

/** Checks a checkpoint's signature against a key set; never throws. */
export async function checkSignature(signed: SignedCheckpoint, jwks: JSONWebKeySet): Promise<SignatureCheck> {
  const parts = typeof signed.signature === 'string' ? signed.signature.split('.') : [];
  if (parts.length !== 3 || parts[1] !== '' || !parts[0] || !parts[2]) {
    return { ok: false, code: 'malformed', message: 'the signature is not a detached JWS (<protected>..<signature>)' };
  }
  let header: { alg?: unknown; kid?: unknown };
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
  } catch {
    return { ok: false, code: 'malformed', message: 'the JWS protected header is not JSON' };
  }
  if (header.alg !== AUDIT_ALG) return { ok: false, code: 'malformed', message: `the JWS alg is '${String(header.alg)}', not ${AUDIT_ALG}` };
  if (header.kid !== signed.checkpoint.kid) {
    return { ok: false, code: 'malformed', message: `the JWS kid '${String(header.kid)}' is not the checkpoint's kid '${signed.checkpoint.kid}'` };
  }
  if (!jwks.keys.some((k) => k.kid === header.kid)) {
    return { ok: false, code: 'unknown_key', message: `no published key has kid '${String(header.kid)}'` };
  }
  try {
    await flattenedVerify(
      { protected: parts[0], signature: parts[2], payload: checkpointBytes(signed.checkpoint).toString('base64url') },
      createLocalJWKSet(jwks),
      { algorithms: [AUDIT_ALG] },
    );
    return { ok: true };
  } catch (err) {
    return { ok: false, code: 'bad_signature', message: `the signature does not verify with key '${String(header.kid)}': ${(err as Error).message}` };
  }
}

/** Parses a stored checkpoint (a journal file or the table's body column); throws on a bad shape. */
export function parseSignedCheckpoint(value: unknown, where: string): SignedCheckpoint {
  const v = value as Partial<SignedCheckpoint> | undefined;
  const c = v?.checkpoint as Partial<CheckpointBody> | undefined;
  const bad = (what: string) => new Error(`${where}: ${what}`);
  if (!v || typeof v !== 'object' || !c || typeof c !== 'object') throw bad('not a checkpoint ({checkpoint, checkpoint_hash, signature})');
  for (const f of ['period_start', 'period_end', 'merkle_root', 'prev_checkpoint_hash', 'kid', 'kind'] as const) {
    if (typeof c[f] !== 'string') throw bad(`checkpoint.${f} is missing or not a string`);
  }
  for (const f of ['seq', 'row_count', 'v', 'leaf_format'] as const) {
    if (typeof c[f] !== 'number' || !Number.isSafeInteger(c[f])) throw bad(`checkpoint.${f} is missing or not an integer`);
  }
  if (Number.isNaN(Date.parse(c.period_start!)) || Number.isNaN(Date.parse(c.period_end!))) throw bad('the period bounds are not ISO-8601 times');
  if (typeof v.signature !== 'string') throw bad('signature is missing');
  return { checkpoint: c as CheckpointBody, checkpoint_hash: typeof v.checkpoint_hash === 'string' ? v.checkpoint_hash : '', signature: v.signature };
}
