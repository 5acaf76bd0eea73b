import { describe, expect, it } from 'vitest';
import { countAbove, orderStatistic, p95Bounds, p95Test, rateTest, wilson, type Histogram } from '../../../collector/rules/stats';

/** Exact binomial CDF of Binomial(n, p) at k, by direct summation (independent of stats.ts). */
function cdf(n: number, p: number, k: number): number {
  let term = Math.pow(1 - p, n);
  let sum = term;
  for (let i = 0; i < k; i++) {
    term *= ((n - i) / (i + 1)) * (p / (1 - p));
    sum += term;
  }
  return sum;
}

const hist = (values: number[]): Histogram => {
  const h: Histogram = new Map();
  for (const v of values) h.set(v, (h.get(v) ?? 0) + 1);
  return h;
};

describe('Wilson score bounds', () => {
  it('match the textbook values', () => {
    // 6 of 20 at one-sided 95 % (z = 1.645): [0.1642, 0.4838]
    const w = wilson(6, 20);
    expect(w.lower).toBeCloseTo(0.1642, 3);
    expect(w.upper).toBeCloseTo(0.4838, 3);
    // 0 of n: upper bound z²/(n+z²)
    expect(wilson(0, 20).upper).toBeCloseTo(1.645 ** 2 / (20 + 1.645 ** 2), 3);
    expect(wilson(0, 20).lower).toBe(0);
  });

  it('6 errors in 20 calls roll back; 0 in 20 is not yet healthy', () => {
    expect(rateTest(6, 20, 0.01).verdict).toBe('breached');
    const zero = rateTest(0, 20, 0.01);
    expect(zero.verdict).toBe('undecided');
    // healthy once z²(1-t)/t calls have passed without an error: 268 in all
    expect(zero.more_calls).toBe(268 - 20);
    expect(rateTest(0, 268, 0.01).verdict).toBe('healthy');
    expect(rateTest(0, 267, 0.01).verdict).toBe('undecided');
  });

  it('one error in 100 is undecided at 1 %: the rate sits on the threshold', () => {
    const r = rateTest(1, 100, 0.01);
    expect(r.verdict).toBe('undecided');
    expect(r.more_calls).toBeNull();
  });

  it('more_calls settles the rule at the rate seen', () => {
    const r = rateTest(1, 30, 0.01);
    expect(r.verdict).toBe('undecided');
    const total = 30 + r.more_calls!;
    expect(rateTest(total / 30, total, 0.01).verdict).toBe('breached');
    expect(rateTest((total - 1) / 30, total - 1, 0.01).verdict).toBe('undecided');
  });

  it('no calls: undecided, without a value', () => {
    const r = rateTest(0, 0, 0.001);
    expect(r).toMatchObject({ verdict: 'undecided', value: null });
  });
});

describe('p95 order statistics', () => {
  it('bounds come from the binomial quantiles', () => {
    for (const n of [1, 5, 20, 58, 59, 60, 100, 1000, 5000]) {
      const { lowerJ, upperI } = p95Bounds(n);
      // lowerJ: the smallest j whose CDF reaches 0.95
      expect(cdf(n, 0.05, lowerJ)).toBeGreaterThanOrEqual(0.95 - 1e-9);
      if (lowerJ > 0) expect(cdf(n, 0.05, lowerJ - 1)).toBeLessThan(0.95);
      // upperI: the largest i whose CDF is at most 0.05
      if (upperI >= 0) {
        expect(cdf(n, 0.05, upperI)).toBeLessThanOrEqual(0.05 + 1e-9);
      }
      expect(cdf(n, 0.05, upperI + 1)).toBeGreaterThan(0.05);
    }
    expect(p95Bounds(58).upperI).toBe(-1);
    expect(p95Bounds(59).upperI).toBe(0);
  });

  it('the normal approximation agrees with the exact quantiles where they meet', () => {
    const exact = p95Bounds(100_000);
    const approx = p95Bounds(100_001);
    expect(Math.abs(approx.lowerJ - exact.lowerJ)).toBeLessThanOrEqual(2);
    expect(Math.abs(approx.upperI - exact.upperI)).toBeLessThanOrEqual(2);
  });

  it('20 calls: 4 above 300 ms breach (x_(17) > 300), 3 do not', () => {
    const fast = Array.from({ length: 16 }, () => 40);
    const breach = p95Test(hist([...fast, 450, 450, 450, 450]), 300);
    expect(breach.verdict).toBe('breached');
    expect(breach.lower).toBe(450);
    const three = p95Test(hist([...fast, 40, 450, 450, 450]), 300);
    expect(three.verdict).toBe('undecided');
    expect(three.lower).toBe(40);
    // fewer than 59 latencies cannot show the p95 is low
    expect(p95Test(hist(Array.from({ length: 58 }, () => 10)), 300)).toMatchObject({ verdict: 'undecided', upper: null, more_calls: 1 });
    expect(p95Test(hist(Array.from({ length: 59 }, () => 10)), 300)).toMatchObject({ verdict: 'healthy', upper: 10 });
  });

  it('exactly at the threshold is not above it', () => {
    const h = hist(Array.from({ length: 100 }, () => 300));
    expect(countAbove(h, 300)).toBe(0);
    expect(p95Test(h, 300).verdict).toBe('healthy');
    expect(p95Test(h, 299).verdict).toBe('breached');
  });

  it('order statistics read the histogram', () => {
    const h = hist([5, 1, 3, 3, 9]);
    expect([1, 2, 3, 4, 5].map((k) => orderStatistic(h, k))).toEqual([1, 3, 3, 5, 9]);
    expect(orderStatistic(h, 0)).toBeNull();
    expect(orderStatistic(h, 6)).toBeNull();
  });
});
