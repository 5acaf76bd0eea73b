import { EMPTY_ROOT, NODE_PREFIX, nodeHash } from '../../common/merkle';

/**
 * RFC 6962 §2.1 Merkle Tree Hash over an ordered list of leaves (hashing in common/merkle.ts):
 *   leaf = SHA-256(0x00 || data),  node = SHA-256(0x01 || left || right),
 *   MTH({}) = SHA-256(""), MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n.
 * Two forms of the same tree: a streaming builder for JavaScript, and a SQL form that the
 * checkpointer and the verifier run next to the rows so that hashing a million leaves never
 * crosses into JavaScript one leaf at a time. Tests hold the two equal.
 */

export { EMPTY_ROOT, LEAF_PREFIX, NODE_PREFIX, leafHash, nodeHash } from '../../common/merkle';

/**
 * Builds MTH in O(log n) memory as leaf hashes arrive: a stack of perfect subtrees merged like a
 * binary counter; at the end the stack folds right to left, which is exactly RFC 6962's split at
 * the largest power of two.
 */
export class MerkleTreeBuilder {
  private readonly stack: { hash: Buffer; size: number }[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(leaf: Uint8Array): void {
    let hash: Buffer = Buffer.from(leaf);
    let size = 1;
    while (this.stack.length > 0 && this.stack[this.stack.length - 1]!.size === size) {
      hash = nodeHash(this.stack.pop()!.hash, hash);
      size *= 2;
    }
    this.stack.push({ hash, size });
    this.count += 1;
  }

  /** The root as lowercase hex. */
  root(): string {
    if (this.stack.length === 0) return EMPTY_ROOT;
    let acc = this.stack[this.stack.length - 1]!.hash;
    for (let i = this.stack.length - 2; i >= 0; i--) acc = nodeHash(this.stack[i]!.hash, acc);
    return acc.toString('hex');
  }
}

export function merkleRoot(leaves: Iterable<Uint8Array>): string {
  const b = new MerkleTreeBuilder();
  for (const leaf of leaves) b.push(leaf);
  return b.root();
}

/** Levels of pairing needed for n leaves: ceil(log2 n). */
export function merkleLevels(n: number): number {
  let levels = 0;
  for (let width = 1; width < n; width *= 2) levels += 1;
  return levels;
}

/**
 * Wraps `inner`, a query with an `Array(FixedString(32))` column `l0` of leaf hashes (in order)
 * and the columns `keep`, into one that returns `keep` and `root` (lowercase hex MTH).
 *
 * Each level pairs neighbours and carries an odd last node up unchanged, which gives the same
 * root as RFC 6962's recursive split; arrayFold runs the levels (ClickHouse 23.10+). The lambdas
 * take their arrays as arguments, never by capture (a captured array is copied per element).
 * `levels` must be at least merkleLevels(longest array); extra levels cost nothing.
 */
export function merkleRootSql(inner: string, keep: readonly string[], levels: number): string {
  const cols = keep.length ? `${keep.join(', ')}, ` : '';
  const odd = `arrayFilter((x, i) -> i % 2 = 1, acc, arrayEnumerate(acc))`;
  const even = `arrayFilter((x, i) -> i % 2 = 0, acc, arrayEnumerate(acc))`;
  const level = `arrayConcat(arrayMap((a, b) -> SHA256(concat(char(${NODE_PREFIX}), a, b)), arrayResize(${odd}, length(${even})), ${even}), arraySlice(${odd}, length(${even}) + 1))`;
  return `SELECT ${cols}if(length(l0) = 0, '${EMPTY_ROOT}', lower(hex(arrayFold((acc, k) -> ${level}, range(${Math.max(0, Math.trunc(levels))}), l0)[1]))) AS root
    FROM (${inner})`;
}
