import { createHash } from 'node:crypto';

/**
 * Canonical JSON: object keys sorted, no whitespace, `undefined` members dropped, non-finite numbers
 * as null, bigint as a decimal string. The same value always gives the same bytes, so its SHA-256
 * is a stable request/response hash.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(normalize(value, new WeakSet()));
}

function normalize(value: unknown, seen: WeakSet<object>): unknown {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'bigint':
      return value.toString();
    case 'string':
    case 'boolean':
      return value;
    case 'function':
    case 'symbol':
      return null;
  }
  const obj = value as object;
  if (seen.has(obj)) return '[Circular]';
  seen.add(obj);
  try {
    if (obj instanceof Date) return obj.toISOString();
    if (Buffer.isBuffer(obj) || obj instanceof Uint8Array) return Buffer.from(obj as Uint8Array).toString('base64');
    if (Array.isArray(obj)) return obj.map((v) => normalize(v, seen));
    if (typeof (obj as { toJSON?: unknown }).toJSON === 'function') return normalize((obj as { toJSON(): unknown }).toJSON(), seen);
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(obj).sort()) {
      const v = (obj as Record<string, unknown>)[key];
      if (v === undefined || typeof v === 'function' || typeof v === 'symbol') continue;
      out[key] = normalize(v, seen);
    }
    return out;
  } finally {
    seen.delete(obj);
  }
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** SHA-256 hex of the canonical JSON of a value: `custody.request_hash` / `custody.response_hash`. */
export function hashValue(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}
