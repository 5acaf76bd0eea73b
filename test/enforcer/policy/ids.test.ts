import { describe, expect, it } from 'vitest';
import { decisionId, decisionIdTime, isDecisionId } from '../../../enforcer/policy/ids';

describe('policy decision ids', () => {
  it('are ULIDs that carry their time', () => {
    const t = Date.parse('2026-03-04T05:06:07.089Z');
    const id = decisionId(t);
    expect(id).toHaveLength(26);
    expect(isDecisionId(id)).toBe(true);
    expect(decisionIdTime(id)).toBe(t);
  });

  it('are unique and sort in creation order, also within one millisecond', () => {
    const ids: string[] = [];
    const t0 = Date.now();
    for (let i = 0; i < 50_000; i++) ids.push(decisionId(t0 + Math.floor(i / 1000)));
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });

  it('stay ordered when the clock steps back', () => {
    const a = decisionId(Date.now() + 10_000);
    const b = decisionId(Date.now());
    expect(b > a).toBe(true);
  });

  it('refuse times a ULID cannot hold and reject non-ids', () => {
    expect(() => decisionId(-1)).toThrow(RangeError);
    expect(() => decisionId(2 ** 48)).toThrow(RangeError);
    expect(isDecisionId('01ARZ3NDEKTSV4RRFFQ69G5FAV')).toBe(true);
    expect(isDecisionId('01ARZ3NDEKTSV4RRFFQ69G5FAU')).toBe(false); // U is not Crockford base32
    expect(isDecisionId('81ARZ3NDEKTSV4RRFFQ69G5FAV')).toBe(false); // beyond 48 bits
    expect(() => decisionIdTime('nope')).toThrow(TypeError);
  });
});
