import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RECEIPT_TYPE, ReceiptKeys, receiptSigner } from '../../common/receipt';

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
