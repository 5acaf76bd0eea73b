import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainHash } from '../../../common/audit-chain';
import { openStore, type Store } from '../../../collector/store';
import { CHAIN_SETTINGS_SQL, chainHashSql } from '../../../collector/evidence/chain';
import { EMPTY_ROOT, MerkleTreeBuilder, leafHash, merkleLevels, merkleRoot, merkleRootSql, nodeHash } from '../../../collector/evidence/merkle';
import { SEALED_TABLES, leafSql, rowLeaf, sealedTable, type RowValue } from '../../../collector/evidence/rows';

// RFC 6962 §2.1 by its definition, for comparison with the streaming builder and the SQL form.
function mth(leaves: Buffer[]): string {
  const rec = (lo: number, hi: number): Buffer => {
    if (hi - lo === 1) return leaves[lo]!;
    let k = 1;
    while (k * 2 < hi - lo) k *= 2;
    return nodeHash(rec(lo, lo + k), rec(lo + k, hi));
  };
  return leaves.length ? rec(0, leaves.length).toString('hex') : EMPTY_ROOT;
}

describe('RFC 6962 Merkle tree hash', () => {
  it('matches the Certificate Transparency reference vectors', () => {
    const inputs = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map((h) => Buffer.from(h, 'hex'));
    const roots = [
      '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
      'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
      'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
      '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
      '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
      'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
      '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
    ];
    roots.forEach((root, i) => expect(merkleRoot(inputs.slice(0, i + 1).map(leafHash))).toBe(root));
    expect(merkleRoot([])).toBe(createHash('sha256').digest('hex'));
  });

  it('builds the same root streaming as by the recursive definition, for any number of leaves', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 70 }), (datas) => {
        const leaves = datas.map((d) => leafHash(d));
        const b = new MerkleTreeBuilder();
        for (const l of leaves) b.push(l);
        expect(b.size).toBe(leaves.length);
        expect(b.root()).toBe(mth(leaves));
      }),
      { numRuns: 300 },
    );
  });

  it('separates leaves from nodes (second-preimage resistance of the prefixes)', () => {
    const a = leafHash('a');
    const b = leafHash('b');
    // a one-leaf tree whose data is the concatenation of two child hashes is not their parent
    expect(merkleRoot([leafHash(Buffer.concat([a, b]))])).not.toBe(merkleRoot([a, b]));
  });

  it('needs ceil(log2 n) levels', () => {
    expect([0, 1, 2, 3, 4, 5, 1024, 1025].map(merkleLevels)).toEqual([0, 0, 1, 2, 2, 3, 10, 11]);
  });
});

describe('the same hashes computed by ClickHouse', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-evidence-merkle-'));
  let store: Store;
  beforeAll(async () => {
    store = await openStore({ dataDir: dir });
  });
  afterAll(async () => {
    await store?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function one<T>(query: string): Promise<T> {
    const rs = await store.client.query({ query, format: 'JSONEachRow' });
    const [row] = await rs.json<T>();
    return row!;
  }

  it('merkleRootSql gives the JavaScript root for 0 to 40 leaves and for 1000', async () => {
    for (const n of [...Array.from({ length: 41 }, (_, i) => i), 1000]) {
      const leaves = Array.from({ length: n }, (_, i) => leafHash(String(i)));
      const inner = `SELECT arrayMap(x -> SHA256(concat(char(0), toString(x))), range(${n})) AS l0`;
      const { root } = await one<{ root: string }>(merkleRootSql(inner, [], merkleLevels(n)));
      expect(root, `${n} leaves`).toBe(merkleRoot(leaves));
    }
  });

  it('seals every stored column of the evidence tables', async () => {
    for (const t of SEALED_TABLES) {
      const rs = await store.client.query({
        query: `SELECT name FROM system.columns WHERE database = 'custody' AND table = {t:String} AND default_kind IN ('', 'DEFAULT', 'MATERIALIZED')`,
        query_params: { t: t.name },
        format: 'JSONEachRow',
      });
      const stored = (await rs.json<{ name: string }>()).map((r) => r.name).sort();
      expect(t.columns.map((c) => c.name).sort(), t.name).toEqual(stored);
    }
  });

  const text = fc.string({ unit: fc.constantFrom('a', 'Z', '0', ' ', '"', '\\', '\n', '\t', '\u0001', '\u001f', 'é', '😀', '\u2028', '/', "'") , maxLength: 12 });

  it('leaf format 1: the SQL leaf of a stored row equals rowLeaf in JavaScript', async () => {
    const now = BigInt(Date.now()) * 1_000_000n;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          trace_id: text,
          span_id: text,
          sponsor_id: text,
          tool_id: text,
          // JSON has no -0 (JSON.stringify(-0) is "0"), so the stored value could not be -0
          policy_latency_ms: fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e6, max: 1e6 }).map((x) => (Object.is(x, -0) ? 0 : x)),
          enforced: fc.boolean(),
          audit_seq: fc.nat(),
          attributes: fc.dictionary(text.filter((k) => k.length > 0), text, { maxKeys: 4 }),
          // added after rows were sealed: counts only when set
          trust: fc.constantFrom('', 'verified', 'unverified', 'gateway'),
          offsetNs: fc.nat({ max: 1_000_000_000 }),
        }),
        async (r) => {
          const ts = now - BigInt(r.offsetNs);
          const row: Record<string, RowValue> = { ...r, timestamp: ts, end_timestamp: ts + 5n, ingested_at: (now / 1_000_000n) * 1_000_000n };
          delete row.offsetNs;
          const span = `${r.span_id}-${Math.random()}`;
          row.span_id = span;
          await store.client.insert({
            table: 'custody.audit_events',
            format: 'JSONEachRow',
            values: [{ ...row, timestamp: nsText(ts), end_timestamp: nsText(ts + 5n), ingested_at: nsText((now / 1_000_000n) * 1_000_000n) }],
          });
          const rs = await store.client.query({
            query: `SELECT lower(hex(${leafSql(sealedTable('audit_events'))})) AS leaf FROM custody.audit_events WHERE span_id = {s:String}`,
            query_params: { s: span },
            format: 'JSONEachRow',
          });
          const [got] = await rs.json<{ leaf: string }>();
          expect(got!.leaf).toBe(rowLeaf(sealedTable('audit_events'), row).toString('hex'));
        },
      ),
      { numRuns: 40 },
    );
  });

  it('the SQL chain hash equals common/audit-chain chainHash for any strings', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(text, { minLength: 10, maxLength: 10 }), fc.nat(), async (v, seq) => {
        const rec = {
          agent_instance_id: v[0]!, seq, prev_hash: v[1]!, trace_id: v[2]!, span_id: `${v[3]}-${Math.random()}`, sponsor_id: v[4]!,
          parent_agent_id: v[5]!, tool_id: v[6]!, action: v[7]!, policy_decision_id: v[8]!, request_hash: v[9]!, response_hash: v[0]!, status: v[1]!,
        };
        const { prev_hash, seq: s, ...rest } = rec;
        await store.client.insert({
          table: 'custody.audit_events',
          format: 'JSONEachRow',
          values: [{ ...rest, audit_seq: s, audit_prev_hash: prev_hash, timestamp: new Date().toISOString() }],
        });
        const rs = await store.client.query({
          query: `SELECT ${chainHashSql()} AS h FROM custody.audit_events WHERE span_id = {s:String} SETTINGS ${CHAIN_SETTINGS_SQL}`,
          query_params: { s: rec.span_id },
          format: 'JSONEachRow',
        });
        const [got] = await rs.json<{ h: string }>();
        expect(got!.h).toBe(chainHash(rec));
      }),
      { numRuns: 60 },
    );
  });
});

function nsText(ns: bigint): string {
  const s = ns / 1_000_000_000n;
  return `${s}.${String(ns - s * 1_000_000_000n).padStart(9, '0')}`;
}
