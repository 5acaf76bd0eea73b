import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AuditChain, CHAIN_GENESIS, chainHash, chainHashReference } from '../../common/audit-chain';
import { canonicalJson, hashValue } from '../../common/canonical';

describe('canonical JSON', () => {
  it('sorts keys at every depth and drops undefined', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: undefined }], c: 'x' } })).toBe('{"a":{"c":"x","d":[3,{"z":1}]},"b":1}');
  });
  it('gives the same hash for the same value written in another key order', () => {
    expect(hashValue({ amount: 10, currency: 'EUR' })).toBe(hashValue({ currency: 'EUR', amount: 10 }));
    expect(hashValue({ amount: 10 })).not.toBe(hashValue({ amount: 11 }));
    expect(hashValue({ a: 1 })).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('audit chain', () => {
  const rec = (span: string) => ({
    agent_instance_id: 'i1', trace_id: 't', span_id: span, sponsor_id: 'alice', parent_agent_id: '',
    tool_id: 'billing', action: 'refund', policy_decision_id: 'd', request_hash: 'r', response_hash: 's', status: 'ok',
  });
  it('links each record to the previous one and starts at genesis', () => {
    const chain = new AuditChain();
    const a = chain.next(rec('s1'));
    const b = chain.next(rec('s2'));
    expect(a).toMatchObject({ seq: 1, prevHash: CHAIN_GENESIS });
    expect(b.seq).toBe(2);
    expect(b.prevHash).toBe(a.hash);
    expect(chainHash({ ...rec('s2'), seq: 2, prev_hash: a.hash })).toBe(b.hash);
    expect(chainHash({ ...rec('s2'), seq: 2, prev_hash: CHAIN_GENESIS })).not.toBe(b.hash);
  });
});

describe('chainHash', () => {
  it('is the SHA-256 of the canonical JSON of the chain fields, for any strings', () => {
    const s = fc.string({ unit: 'binary', maxLength: 40 });
    fc.assert(
      fc.property(
        fc.record({
          agent_instance_id: s, seq: fc.nat(), prev_hash: s, trace_id: s, span_id: s, sponsor_id: s, parent_agent_id: s,
          tool_id: s, action: s, policy_decision_id: s, request_hash: s, response_hash: s, status: s,
        }),
        (r) => chainHash(r) === chainHashReference(r),
      ),
      { numRuns: 500 },
    );
  });
});
