import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { HttpError } from '../../../common/errors';
import { RECEIPT_BATCH_TYPE, RECEIPT_TYPE, ReceiptKeys, receiptSigner, type DecisionReceipt, type ReceiptSigner } from '../../../common/receipt';
import { createChecker } from '../../../enforcer/plane/check';
import { receiptBatcher } from '../../../enforcer/plane/receipt-batcher';
import { readPolicyFile } from '../../../enforcer/policy/compile';
import type { TokenClaims } from '../../../identity/claims';
import { EXAMPLE_POLICY } from '../../helpers/policy';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const keys = new ReceiptKeys({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'plane-1' }] });
const typ = (r: string) => JSON.parse(Buffer.from(r.split('.')[0]!, 'base64url').toString('utf8')).typ;
const sizeOf = (r: string) => JSON.parse(Buffer.from(r.split('.')[0]!, 'base64url').toString('utf8')).n ?? 1;

function counting(signer: ReceiptSigner) {
  const batches: number[] = [];
  return {
    batches,
    signer: (): ReceiptSigner => ({
      kid: signer.kid,
      sign: signer.sign,
      signBatch: (type, payloads) => (batches.push(payloads.length), signer.signBatch(type, payloads)),
      signBatchAsync: (type, payloads) => (batches.push(payloads.length), signer.signBatchAsync(type, payloads)),
    }),
  };
}

describe('receipt batcher', () => {
  it('signs the receipts asked for in one event-loop turn together, and a lone one alone', async () => {
    const c = counting(receiptSigner('plane-1', privateKey));
    const batcher = receiptBatcher(c.signer);
    const together = await Promise.all(Array.from({ length: 50 }, (_, i) => batcher.sign(RECEIPT_TYPE.DECISION, { id: `d-${i}` })));
    const alone = await batcher.sign(RECEIPT_TYPE.DECISION, { id: 'lone' });
    expect(c.batches).toEqual([50, 1]);
    expect(together.map(typ)).toEqual(Array(50).fill(RECEIPT_BATCH_TYPE[RECEIPT_TYPE.DECISION]));
    expect(typ(alone)).toBe(RECEIPT_TYPE.DECISION);
    const checks = await keys.verifyAll([...together, alone], RECEIPT_TYPE.DECISION);
    expect(checks.map((x) => (x.ok ? (x.payload as { id: string }).id : x.code))).toEqual([...Array.from({ length: 50 }, (_, i) => `d-${i}`), 'lone']);
  });

  it('signs a full batch at once, and keeps types apart', async () => {
    const c = counting(receiptSigner('plane-1', privateKey));
    const batcher = receiptBatcher(c.signer, { maxBatch: 16 });
    const decisions = Array.from({ length: 40 }, (_, i) => batcher.sign(RECEIPT_TYPE.DECISION, { id: `d-${i}` }));
    const rollout = batcher.sign(RECEIPT_TYPE.ROLLOUT, { percent: 10 });
    const receipts = await Promise.all(decisions);
    // two full batches at once, the rest of the decisions once they are signed, the rollout apart
    expect([...c.batches].sort((a, b) => b - a)).toEqual([16, 16, 8, 1]);
    expect(receipts.map(sizeOf)).toEqual([...Array(32).fill(16), ...Array(8).fill(8)]);
    expect(keys.verify(await rollout, RECEIPT_TYPE.ROLLOUT)).toMatchObject({ ok: true, payload: { percent: 10 } });
  });

  it('refuses every receipt of a batch it cannot sign, and signs the next one', async () => {
    let broken = true;
    const good = receiptSigner('plane-1', privateKey);
    const onBatch = vi.fn();
    const batcher = receiptBatcher(
      () => {
        if (broken) throw new Error('key unreadable');
        return good;
      },
      { onBatch },
    );
    const failed = await Promise.allSettled(Array.from({ length: 3 }, (_, i) => batcher.sign(RECEIPT_TYPE.DECISION, { id: `d-${i}` })));
    expect(failed.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'signed'))).toEqual(Array(3).fill('key unreadable'));
    expect(onBatch).not.toHaveBeenCalled();
    broken = false;
    expect(keys.verify(await batcher.sign(RECEIPT_TYPE.DECISION, { id: 'later' }), RECEIPT_TYPE.DECISION).ok).toBe(true);
    expect(onBatch).toHaveBeenCalledWith(1);
  });
});

describe('the plane check with batched receipts', () => {
  const policy = readPolicyFile(EXAMPLE_POLICY);
  const claimsOf = (token: string): TokenClaims => ({
    iss: 'test',
    sub: token,
    aud: 'search',
    iat: 1,
    nbf: 1,
    exp: 4_000_000_000,
    jti: `jti-${token}`,
    sponsor_id: 'alice',
    agent_instance_id: token,
    parent_agent_id: null,
    tool: 'search',
    tools: ['search'],
    role: 'support',
    ttl_seconds: 300,
    depth: 0,
  });
  const verifier = { verify: async (token: string) => claimsOf(token) };

  it('concurrent checks share one signature, each receipt saying its own decision', async () => {
    const c = counting(receiptSigner('plane-1', privateKey));
    const check = createChecker({ policy: () => policy, verifier, rolloutPercent: () => 100, signer: receiptBatcher(c.signer) });
    const answers = await Promise.all(Array.from({ length: 24 }, (_, i) => check({ token: `agent-${i}`, tool: 'search', action: 'call' })));
    expect(c.batches).toEqual([24]);
    const checks = await keys.verifyAll(
      answers.map((a) => a.receipt!),
      RECEIPT_TYPE.DECISION,
    );
    checks.forEach((x, i) => {
      expect(x.ok).toBe(true);
      const r = (x as { payload: DecisionReceipt }).payload;
      expect(r).toMatchObject({ id: answers[i]!.policy_decision_id, decision: 'allow', agent_instance_id: `agent-${i}`, token_jti: `jti-agent-${i}`, tool_id: 'search' });
    });
  });

  it('answers 503 and records an error when the receipt cannot be signed: never an unsigned decision', async () => {
    const report = vi.fn();
    const signer = { sign: async () => Promise.reject(new Error('signing key unavailable')) };
    const check = createChecker({ policy: () => policy, verifier, rolloutPercent: () => 100, signer, report });
    const err = await check({ token: 'agent-1', tool: 'search', action: 'call' }).then(
      (answer) => answer,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HttpError);
    expect(err).toMatchObject({ status: 503, code: 'receipt_unavailable' });
    expect((err as HttpError).message).toMatch(/cannot sign the decision's receipt: signing key unavailable/);
    expect(report).toHaveBeenCalledTimes(1);
    const [attributes, , , error] = report.mock.calls[0]!;
    expect(attributes).toMatchObject({ 'custody.policy.decision': 'error', 'custody.agent_instance_id': 'agent-1' });
    expect(attributes['custody.policy.receipt']).toBeUndefined();
    expect(error).toMatch(/signing key unavailable/);
  });
});
