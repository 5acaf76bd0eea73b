import { hash } from 'node:crypto';

/**
 * RFC 6962 §2.1 Merkle tree hashing (RFC 9162 §2.1 for audit paths):
 *   leaf = SHA-256(0x00 || data),  node = SHA-256(0x01 || left || right),
 *   MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n.
 * Shared by the audit checkpoints (collector/evidence/merkle.ts) and the plane's batch receipts
 * (common/receipt.ts).
 */

export const LEAF_PREFIX = 0x00;
export const NODE_PREFIX = 0x01;
/** MTH of the empty list. */
export const EMPTY_ROOT = hash('sha256', '', 'hex');

export function leafHash(data: Uint8Array | string): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  const input = Buffer.allocUnsafe(1 + bytes.length);
  input[0] = LEAF_PREFIX;
  input.set(bytes, 1);
  return hash('sha256', input, 'buffer');
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  const input = Buffer.allocUnsafe(1 + left.length + right.length);
  input[0] = NODE_PREFIX;
  input.set(left, 1);
  input.set(right, 1 + left.length);
  return hash('sha256', input, 'buffer');
}

/**
 * The root over `leaves` (leaf hashes, at least one) and each leaf's audit path (RFC 9162
 * §2.1.3.1: the hashes needed to recompute the root from that leaf, its sibling first).
 */
export function merkleTree(leaves: readonly Buffer[]): { root: Buffer; paths: Buffer[][] } {
  if (leaves.length === 0) throw new Error('a Merkle tree with audit paths needs at least one leaf');
  const paths = leaves.map((): Buffer[] => []);
  const build = (lo: number, hi: number): Buffer => {
    if (hi - lo === 1) return leaves[lo]!;
    let k = 1;
    while (k * 2 < hi - lo) k *= 2;
    const left = build(lo, lo + k);
    const right = build(lo + k, hi);
    // after the subtrees: their own levels are already on the paths, so each path runs leaf to root
    for (let i = lo; i < lo + k; i++) paths[i]!.push(right);
    for (let i = lo + k; i < hi; i++) paths[i]!.push(left);
    return nodeHash(left, right);
  };
  return { root: build(0, leaves.length), paths };
}

/**
 * The root that leaf `index` of a tree of `size` leaves leads to through `path` (RFC 9162
 * §2.1.3.2), or undefined when the path cannot belong to such a leaf (index out of range, too
 * few or too many hashes). The caller compares the root with a signed one.
 */
export function rootFromPath(index: number, size: number, leaf: Buffer, path: readonly Buffer[]): Buffer | undefined {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return undefined;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return undefined;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : undefined;
}
