/**
 * The statistics behind the rollback rules: each rule is a one-sided test at 95 % confidence, so a
 * small canary can be judged as soon as its calls say something, and a large one is never judged
 * on noise.
 *
 * - A rate (errors / plane calls, missing sponsors / calls) breaches when the Wilson score lower
 *   bound is above its threshold and is healthy when the upper bound is at or below it.
 * - A p95 latency breaches when the order statistic that bounds the 95th percentile from below is
 *   above the threshold, and is healthy when the one that bounds it from above is at or below it.
 *   With n latencies, the number of them above the true p95 is Binomial(n, 0.05); x_(n-j) (the
 *   (n-j)-th smallest, j the smallest count whose CDF reaches 0.95) is then at most the p95 with
 *   95 % confidence, and x_(n-i) (i the largest count whose CDF is at most 0.05) at least it.
 *   x_(n-j) > T holds exactly when more than j latencies are above T, which is what `slow` counts.
 * - Otherwise the rule is undecided, and `more_calls` says how many more calls at the rate seen so
 *   far would settle it (null when no number would: the rate sits on the threshold).
 */

/** One-sided 95 %: the normal quantile 0.95. */
export const Z95 = 1.6448536269514722;
export const CONFIDENCE = 0.95;
/** Above this many calls the binomial quantiles use the normal approximation (error < 1 call). */
const EXACT_LIMIT = 100_000;
/** more_calls searches up to this many calls; beyond, it reports null. */
const SEARCH_LIMIT = 1e12;

export type Verdict = 'breached' | 'healthy' | 'undecided';

export interface Interval {
  lower: number;
  upper: number;
}

/** Wilson score interval of x successes in n trials, one-sided z on each side. x may be fractional. */
export function wilson(x: number, n: number, z = Z95): Interval {
  if (n <= 0) return { lower: 0, upper: 1 };
  const p = Math.min(1, Math.max(0, x / n));
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  return { lower: Math.max(0, centre - half), upper: Math.min(1, centre + half) };
}

function rateVerdict(x: number, n: number, threshold: number): Verdict {
  if (n <= 0) return 'undecided';
  const { lower, upper } = wilson(x, n);
  if (lower > threshold) return 'breached';
  if (upper <= threshold) return 'healthy';
  return 'undecided';
}

/**
 * The smallest total N > n at which `settled(N)` holds, assuming the observed proportion holds;
 * settled must turn true and stay true as N grows (true of both tests). null beyond SEARCH_LIMIT.
 */
function callsToSettle(n: number, settled: (total: number) => boolean): number | null {
  let lo = n;
  let hi = Math.max(1, n * 2, n + 1);
  while (!settled(hi)) {
    lo = hi;
    hi *= 2;
    if (hi > SEARCH_LIMIT) return null;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (settled(mid)) hi = mid;
    else lo = mid;
  }
  return hi - n;
}

export interface RateTest {
  verdict: Verdict;
  /** x / n, or null without calls. */
  value: number | null;
  lower: number;
  upper: number;
  /** More calls that would settle an undecided rule at the rate seen; 0 when decided; null when none would. */
  more_calls: number | null;
}

/** The rate test: x events in n calls against `threshold` (breach when the rate is above it). */
export function rateTest(x: number, n: number, threshold: number): RateTest {
  const verdict = rateVerdict(x, n, threshold);
  const { lower, upper } = wilson(x, n);
  const value = n > 0 ? x / n : null;
  if (verdict !== 'undecided') return { verdict, value, lower, upper, more_calls: 0 };
  const p = n > 0 ? x / n : 0;
  if (p === threshold) return { verdict, value, lower, upper, more_calls: null };
  const more = callsToSettle(n, (total) => rateVerdict(p * total, total, threshold) !== 'undecided');
  return { verdict, value, lower, upper, more_calls: more };
}

// ---------------------------------------------------------------------------------------------
// order statistics for the 95th percentile

/**
 * Counts of latencies above the p95 that bound it, for n latencies: `lowerJ` is the smallest j with
 * P(Binomial(n, 0.05) <= j) >= 0.95; `upperI` the largest i with P(Binomial(n, 0.05) <= i) <= 0.05,
 * or -1 when even 0 has more (fewer than 59 latencies: no upper bound yet).
 */
export function p95Bounds(n: number): { lowerJ: number; upperI: number } {
  const p = 1 - CONFIDENCE;
  if (n <= 0) return { lowerJ: 0, upperI: -1 };
  if (n > EXACT_LIMIT) {
    const mean = n * p;
    const sd = Math.sqrt(n * p * (1 - p));
    return { lowerJ: Math.ceil(mean + Z95 * sd - 0.5), upperI: Math.floor(mean - Z95 * sd - 0.5) };
  }
  // pmf(0) = 0.95^n, pmf(k+1) = pmf(k) (n-k)/(k+1) p/(1-p); in logs, summed with log-sum-exp.
  const ratio = Math.log(p / (1 - p));
  let logPmf = n * Math.log(1 - p);
  let logCdf = logPmf;
  let upperI = -1;
  const lowCut = Math.log(1 - CONFIDENCE);
  const highCut = Math.log(CONFIDENCE);
  for (let k = 0; k <= n; k++) {
    if (logCdf <= lowCut + 1e-12) upperI = k;
    if (logCdf >= highCut - 1e-12) return { lowerJ: k, upperI };
    logPmf += Math.log((n - k) / (k + 1)) + ratio;
    logCdf = logCdf > logPmf ? logCdf + Math.log1p(Math.exp(logPmf - logCdf)) : logPmf + Math.log1p(Math.exp(logCdf - logPmf));
  }
  return { lowerJ: n, upperI };
}

function p95Verdict(n: number, slow: number): Verdict {
  if (n <= 0) return 'undecided';
  const { lowerJ, upperI } = p95Bounds(n);
  if (slow > lowerJ) return 'breached';
  if (upperI >= 0 && slow <= upperI) return 'healthy';
  return 'undecided';
}

/** A latency histogram: whole-ms bucket → count, bucket keys as latencyBucketSql makes them. */
export type Histogram = Map<number, number>;

export function mergeHistograms(...hs: Histogram[]): Histogram {
  const out: Histogram = new Map();
  for (const h of hs) for (const [k, v] of h) out.set(k, (out.get(k) ?? 0) + v);
  return out;
}

export function histogramTotal(h: Histogram): number {
  let n = 0;
  for (const v of h.values()) n += v;
  return n;
}

/** Latencies above `threshold` ms. */
export function countAbove(h: Histogram, threshold: number): number {
  let n = 0;
  for (const [k, v] of h) if (k > threshold) n += v;
  return n;
}

/** The k-th smallest latency (1-based), or null when k is outside 1..n. */
export function orderStatistic(h: Histogram, k: number): number | null {
  if (k < 1) return null;
  const keys = [...h.keys()].sort((a, b) => a - b);
  let seen = 0;
  for (const key of keys) {
    seen += h.get(key)!;
    if (seen >= k) return key;
  }
  return null;
}

export interface P95Test {
  verdict: Verdict;
  /** The p95 by nearest rank: the ceil(0.95 n)-th smallest latency, whole ms; null without latencies. */
  value: number | null;
  /** The order statistic at or below the p95 with 95 % confidence (null without latencies). */
  lower: number | null;
  /** The order statistic at or above it with 95 % confidence (null below 59 latencies). */
  upper: number | null;
  /** Latencies above the threshold, of n. */
  slow: number;
  n: number;
  more_calls: number | null;
}

/** The p95 test over a latency histogram against `threshold` ms (breach when the p95 is above it). */
export function p95Test(h: Histogram, threshold: number): P95Test {
  const n = histogramTotal(h);
  const slow = countAbove(h, threshold);
  const { lowerJ, upperI } = p95Bounds(n);
  const verdict = p95Verdict(n, slow);
  const base = {
    verdict,
    value: n > 0 ? orderStatistic(h, Math.ceil(CONFIDENCE * n)) : null,
    lower: n > 0 ? orderStatistic(h, n - lowerJ) : null,
    upper: n > 0 && upperI >= 0 ? orderStatistic(h, n - upperI) : null,
    slow,
    n,
  };
  if (verdict !== 'undecided') return { ...base, more_calls: 0 };
  const q = n > 0 ? slow / n : 0;
  if (q === 1 - CONFIDENCE) return { ...base, more_calls: null };
  return { ...base, more_calls: callsToSettle(n, (total) => p95Verdict(total, Math.round(q * total)) !== 'undecided') };
}
