import { generateKeyPairSync } from 'node:crypto';
import { compactVerify, createLocalJWKSet } from 'jose';
import { describe, expect, it } from 'vitest';
import { leafHash, rootFromPath } from '../../common/merkle';
import { RECEIPT_BATCH_TYPE, RECEIPT_TYPE, ReceiptKeys, receiptSigner, type ReceiptCheck } from '../../common/receipt';

const pair = () => generateKeyPairSync('ed25519');
const jwk = (kid: string, key: ReturnType<typeof pair>['publicKey']) => ({ ...key.export({ format: 'jwk' }), kid });

describe('receipts', () => {
  const plane = pair();
  const other = pair();
  const signer = receiptSigner('plane-1', plane.privateKey);
  const keys = new ReceiptKeys({ keys: [jwk('plane-1', plane.publicKey)] });

  it('verify and verifyAll agree on every kind of receipt, in order', async () => {
    const good = Array.from({ length: 300 }, (_, i) => signer.sign(RECEIPT_TYPE.DECISION, { id: `d-${i}`, decision: 'allow' }));
    const [h, p, s] = good[0]!.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ id: 'd-0', decision: 'deny' })).toString('base64url')}.${s}`;
    const otherKey = receiptSigner('plane-1', other.privateKey).sign(RECEIPT_TYPE.DECISION, { id: 'x' });
    const unknownKid = receiptSigner('elsewhere', plane.privateKey).sign(RECEIPT_TYPE.DECISION, { id: 'x' });
    const wrongType = signer.sign(RECEIPT_TYPE.ROLLOUT, { percent: 10 });
    const notObject = `${h}.${Buffer.from('[1]').toString('base64url')}.`;
    const signedArray = (() => {
      const input = `${h}.${Buffer.from('[1]').toString('base64url')}`;
      const sig = require('node:crypto').sign(null, Buffer.from(input), plane.privateKey).toString('base64url');
      return `${input}.${sig}`;
    })();
    const all = [...good.slice(0, 5), forged, otherKey, unknownKid, wrongType, 'not.a.jws!', notObject, signedArray, `${h}.${p}`, ...good.slice(5)];

    const one = all.map((r) => keys.verify(r, RECEIPT_TYPE.DECISION));
    const many = await keys.verifyAll(all, RECEIPT_TYPE.DECISION, 16);
    expect(many).toEqual(one);
    expect(many.filter((c) => c.ok)).toHaveLength(300);
    expect(many.slice(5, 13).map((c) => (c.ok ? 'ok' : c.code))).toEqual([
      'bad_signature',
      'bad_signature',
      'unknown_key',
      'wrong_type',
      'malformed',
      'bad_signature',
      'malformed',
      'malformed',
    ]);
    expect(many[0]).toMatchObject({ ok: true, kid: 'plane-1', payload: { id: 'd-0', decision: 'allow' } });
    expect(await keys.verifyAll([], RECEIPT_TYPE.DECISION)).toEqual([]);
  });
});

describe('batch receipts', () => {
  const plane = pair();
  const second = pair();
  const stranger = pair();
  const jwks = { keys: [jwk('plane-1', plane.publicKey), jwk('plane-2', second.publicKey)] };
  const keys = new ReceiptKeys(jwks);
  const signer = receiptSigner('plane-1', plane.privateKey, { now: () => 1_700_000_000_000 });
  const decision = (i: number, batch = 'a') => ({ id: `${batch}-${i}`, decision: 'allow', agent_instance_id: `agent-${i}`, tool_id: 'billing', action: 'refund', time: 1_700_000_000_000 + i });
  const code = (c: ReceiptCheck<unknown>) => (c.ok ? 'ok' : c.code);
  const split = (r: string) => r.split('.') as [string, string, string];
  const header = (r: string) => JSON.parse(Buffer.from(split(r)[0], 'base64url').toString('utf8'));
  const withHeader = (r: string, change: (h: Record<string, unknown>) => Record<string, unknown>) => {
    const [, p, x] = split(r);
    return `${Buffer.from(JSON.stringify(change(header(r)))).toString('base64url')}.${p}.${x}`;
  };
  const withProof = (r: string, change: (proof: Buffer) => Buffer) => {
    const [h, p, x] = split(r);
    return `${h}.${p}.${change(Buffer.from(x, 'base64url')).toString('base64url')}`;
  };
  const flip = (at: number) => (proof: Buffer) => {
    const b = Buffer.from(proof);
    b[at < 0 ? b.length + at : at]! ^= 1;
    return b;
  };

  it('signs batches of 1, 2, 3 and 1000 that verify; a batch of one is a plain JWS', async () => {
    for (const n of [1, 2, 3, 1000]) {
      const receipts = signer.signBatch(
        RECEIPT_TYPE.DECISION,
        Array.from({ length: n }, (_, i) => decision(i)),
      );
      expect(receipts).toHaveLength(n);
      const one = receipts.map((r) => keys.verify(r, RECEIPT_TYPE.DECISION));
      expect(one.map(code).filter((c) => c !== 'ok'), `n=${n}`).toEqual([]);
      expect(one.map((c) => (c.ok ? c.payload : undefined))).toEqual(Array.from({ length: n }, (_, i) => decision(i)));
      expect(await keys.verifyAll(receipts, RECEIPT_TYPE.DECISION, 16)).toEqual(one);
      // the decision payload stays the middle segment (the store reads it there in SQL)
      receipts.forEach((r, i) => expect(JSON.parse(Buffer.from(split(r)[1], 'base64url').toString('utf8'))).toEqual(decision(i)));
      if (n === 1) {
        expect(header(receipts[0]!)).toEqual({ alg: 'EdDSA', kid: 'plane-1', typ: RECEIPT_TYPE.DECISION });
        expect((await compactVerify(receipts[0]!, createLocalJWKSet(jwks))).protectedHeader.typ).toBe(RECEIPT_TYPE.DECISION);
        continue;
      }
      expect(new Set(receipts.map((r) => split(r)[0])).size).toBe(1);
      expect(header(receipts[0]!)).toEqual({ alg: 'EdDSA', kid: 'plane-1', typ: RECEIPT_BATCH_TYPE[RECEIPT_TYPE.DECISION], n, time: 1_700_000_000_000 });
      // no JOSE library takes a batch receipt for a plain JWS
      await expect(compactVerify(receipts[0]!, createLocalJWKSet(jwks))).rejects.toThrow();
      // the batch statement `header.base64url(root)` is itself a compact JWS any JOSE library verifies
      const [h, p, x] = split(receipts[n - 1]!);
      const proof = Buffer.from(x, 'base64url');
      const levels = (proof.length - 68) / 32;
      const path = Array.from({ length: levels }, (_, j) => proof.subarray(4 + 32 * j, 36 + 32 * j));
      const root = rootFromPath(proof.readUInt32BE(0), n, leafHash(Buffer.from(p, 'base64url')), path)!;
      expect(proof.readUInt32BE(0)).toBe(n - 1);
      const statement = `${h}.${root.toString('base64url')}.${proof.subarray(-64).toString('base64url')}`;
      expect(Buffer.from((await compactVerify(statement, createLocalJWKSet(jwks))).payload).equals(root)).toBe(true);
      // compact: a receipt grows by its path (32 bytes a level) and a few bytes of index, size and time
      const single = signer.sign(RECEIPT_TYPE.DECISION, decision(n - 1));
      expect(receipts[n - 1]!.length - single.length).toBeLessThanOrEqual(Math.ceil((32 * Math.ceil(Math.log2(n)) * 4) / 3) + 64);
    }
  });

  it('refuses every change to a batch receipt with the codes of a plain one, in verify and verifyAll alike', async () => {
    const a = signer.signBatch(
      RECEIPT_TYPE.DECISION,
      Array.from({ length: 7 }, (_, i) => decision(i, 'a')),
    );
    const b = receiptSigner('plane-1', plane.privateKey, { now: () => 1_700_000_000_500 }).signBatch(
      RECEIPT_TYPE.DECISION,
      Array.from({ length: 7 }, (_, i) => decision(i, 'b')),
    );
    const r = a[3]!;
    const [h, p, x] = split(r);
    // base64url whose last character has unused low bits: another spelling of the same bytes
    const nonCanonical = signer
      .signBatch(RECEIPT_TYPE.DECISION, [{ id: 'x' }, { id: 'xx' }, { id: 'xxx' }])
      .map(split)
      .filter(([, payload]) => payload.length % 4 !== 0)
      .map(([hd, payload, proof]) => {
        const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
        const other = `${payload.slice(0, -1)}${abc[abc.indexOf(payload.at(-1)!) ^ 1]}`;
        expect(Buffer.from(other, 'base64url').equals(Buffer.from(payload, 'base64url'))).toBe(true);
        return `${hd}.${other}.${proof}`;
      })[0]!;
    const cases: [string, string, string][] = [
      ['payload of another receipt of the batch', `${h}.${split(a[4]!)[1]}.${x}`, 'bad_signature'],
      ['payload edited', `${h}.${Buffer.from(JSON.stringify({ ...decision(3, 'a'), decision: 'deny' })).toString('base64url')}.${x}`, 'bad_signature'],
      ['index of a neighbour', withProof(r, (proof) => (proof.writeUInt32BE(2, 0), proof)), 'bad_signature'],
      ['index past the batch', withProof(r, (proof) => (proof.writeUInt32BE(7, 0), proof)), 'bad_signature'],
      ['a path hash changed', withProof(r, flip(4 + 32 + 5)), 'bad_signature'],
      ['a path hash left out', withProof(r, (proof) => Buffer.concat([proof.subarray(0, 4), proof.subarray(36)])), 'bad_signature'],
      ['a path hash added', withProof(r, (proof) => Buffer.concat([proof.subarray(0, 36), proof.subarray(4)])), 'bad_signature'],
      ['the path of batch B', `${h}.${p}.${split(b[3]!)[2]}`, 'bad_signature'],
      ['the header and path of batch B', `${split(b[3]!)[0]}.${p}.${split(b[3]!)[2]}`, 'bad_signature'],
      ['another size (another root)', withHeader(r, (hd) => ({ ...hd, n: 8 })), 'bad_signature'],
      ['another time', withHeader(r, (hd) => ({ ...hd, time: 1 })), 'bad_signature'],
      ['signature changed', withProof(r, flip(-1)), 'bad_signature'],
      ['another known kid', withHeader(r, (hd) => ({ ...hd, kid: 'plane-2' })), 'bad_signature'],
      ['an unknown kid', withHeader(r, (hd) => ({ ...hd, kid: 'elsewhere' })), 'unknown_key'],
      ['typed as a plain receipt', withHeader(r, (hd) => ({ ...hd, typ: RECEIPT_TYPE.DECISION })), 'bad_signature'],
      ['typed as a rollout batch', withHeader(r, (hd) => ({ ...hd, typ: RECEIPT_BATCH_TYPE[RECEIPT_TYPE.ROLLOUT] })), 'wrong_type'],
      ['signed by another key under the plane kid', split(receiptSigner('plane-1', stranger.privateKey).signBatch(RECEIPT_TYPE.DECISION, [decision(0), decision(1)])[1]!).join('.'), 'bad_signature'],
      ['no size', withHeader(r, ({ n: _n, ...hd }) => hd), 'malformed'],
      ['proof cut short', withProof(r, (proof) => proof.subarray(0, 60)), 'malformed'],
      ['proof not whole hashes', withProof(r, (proof) => proof.subarray(1)), 'malformed'],
      ['payload spelled another way (same bytes)', nonCanonical, 'malformed'],
    ];
    const all = [...a, ...b, ...cases.map((c) => c[1])];
    const one = all.map((x) => keys.verify(x, RECEIPT_TYPE.DECISION));
    expect(await keys.verifyAll(all, RECEIPT_TYPE.DECISION, 4)).toEqual(one);
    expect(one.slice(0, 14).map(code)).toEqual(Array(14).fill('ok'));
    expect(Object.fromEntries(cases.map(([what], i) => [what, code(one[14 + i]!)]))).toEqual(Object.fromEntries(cases.map(([what, , c]) => [what, c])));
    // a genuine batch receipt asked for as another type
    expect(code(keys.verify(r, RECEIPT_TYPE.ROLLOUT))).toBe('wrong_type');
  });
});
