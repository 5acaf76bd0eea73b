import { createHash } from 'node:crypto';

/**
 * Audit sampling that keeps the proof. A tool whose policy gives it `audit: { sample: r }` has
 * its allowed, successful calls sampled out of the stored audit at rate r: such a call still
 * advances its instance's hash chain and is stored as a compact stub (the chain fields and what
 * the rules count, no attributes, no otel_traces row), so completeness stays provable. Whether a
 * call is sampled out is not a choice: it is a function of its trace and span ids, which the
 * agent, the collector and `custody audit verify` each recompute.
 */

/** Where a call falls on [0, 1): the first 32 bits of SHA-256(trace_id ‖ span_id), scaled. */
export function sampleBucket(traceId: string, spanId: string): number {
  return createHash('sha256').update(traceId + spanId).digest().readUInt32BE(0) / 2 ** 32;
}

/** Sampled out (stored as a stub) at this rate? A rate of 1 or more, or none, keeps every call. */
export function isSampledOut(traceId: string, spanId: string, rate: number | undefined): boolean {
  return rate !== undefined && rate > 0 && rate < 1 && sampleBucket(traceId, spanId) >= rate;
}

/** sampleBucket in ClickHouse SQL, over the row's columns. */
export function sampleBucketSql(traceId = 'trace_id', spanId = 'span_id'): string {
  return `(reinterpretAsUInt32(reverse(substring(SHA256(concat(${traceId}, ${spanId})), 1, 4))) / 4294967296)`;
}
