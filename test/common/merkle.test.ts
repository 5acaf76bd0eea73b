import { describe, expect, it } from 'vitest';
import { leafHash, merkleTree, nodeHash, rootFromPath } from '../../common/merkle';

// RFC 6962 §2.1 by its definitions: MTH and PATH(m, D[n]), for comparison.
function mth(leaves: Buffer[]): Buffer {
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}
function auditPath(m: number, leaves: Buffer[]): Buffer[] {
  if (leaves.length === 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k ? [...auditPath(m, leaves.slice(0, k)), mth(leaves.slice(k))] : [...auditPath(m - k, leaves.slice(k)), mth(leaves.slice(0, k))];
}

describe('Merkle audit paths (RFC 9162 §2.1.3)', () => {
  it('gives each leaf the path of the RFC definition, and the path leads back to the root', () => {
    for (let n = 1; n <= 40; n++) {
      const leaves = Array.from({ length: n }, (_, i) => leafHash(`leaf ${i}`));
      const { root, paths } = merkleTree(leaves);
      expect(root.equals(mth(leaves)), `n=${n}`).toBe(true);
      for (let m = 0; m < n; m++) {
        expect(paths[m]!.map((h) => h.toString('hex')), `n=${n} m=${m}`).toEqual(auditPath(m, leaves).map((h) => h.toString('hex')));
        expect(rootFromPath(m, n, leaves[m]!, paths[m]!)?.equals(root), `n=${n} m=${m}`).toBe(true);
      }
    }
  });

  it('matches the Certificate Transparency reference vector for leaf 0 of 8', () => {
    const leaves = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map((h) => leafHash(Buffer.from(h, 'hex')));
    const { root, paths } = merkleTree(leaves);
    expect(root.toString('hex')).toBe('5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328');
    expect(paths[0]![0]!.toString('hex')).toBe('96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7');
  });

  it('refuses a path that cannot belong to the leaf: index out of range, a hash too few or too many, another size', () => {
    const leaves = Array.from({ length: 11 }, (_, i) => leafHash(`leaf ${i}`));
    const { root, paths } = merkleTree(leaves);
    const p = paths[5]!;
    expect(rootFromPath(5, 11, leaves[5]!, p)?.equals(root)).toBe(true);
    expect(rootFromPath(11, 11, leaves[5]!, p)).toBeUndefined();
    expect(rootFromPath(-1, 11, leaves[5]!, p)).toBeUndefined();
    expect(rootFromPath(5, 11, leaves[5]!, p.slice(1))).toBeUndefined();
    expect(rootFromPath(5, 11, leaves[5]!, [...p, p[0]!])).toBeUndefined();
    expect(rootFromPath(5, 11, leaves[5]!, p.slice(0, -1))).toBeUndefined();
    // another index gives another root (or none); a size whose tree has another shape, none (a size
    // with the same shape leads to the same root: batch receipts sign the size with the root)
    for (const [m, n] of [[4, 11], [6, 11], [1, 11], [5, 8], [5, 17]] as const) expect(rootFromPath(m, n, leaves[5]!, p)?.equals(root) ?? false, `${m} of ${n}`).toBe(false);
    expect(rootFromPath(5, 8, leaves[5]!, p)).toBeUndefined();
    expect(rootFromPath(5, 17, leaves[5]!, p)).toBeUndefined();
    expect(() => merkleTree([])).toThrow(/at least one leaf/);
  });
});
