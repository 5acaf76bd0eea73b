import type { DecodedRequest, RejectReason, Span } from './span';

/**
 * The per-span checks both decoders share, and the limits of what is stored. A span with bad ids
 * or timestamps is rejected alone and counted, with a message naming the span and the field; the
 * rest of the request is kept.
 */

/**
 * The latest timestamp stored: 2106-02-07T06:28:15Z, the last second of ClickHouse's DateTime.
 * The columns are DateTime64(9) (good to 2262), but the tables' retention (TTL) and the per-minute
 * rollups are computed in DateTime: a later row would be acknowledged and then silently dropped.
 */
export const MAX_TIMESTAMP_NS = 4_294_967_295_999_999_999n;
const MAX_TIMESTAMP_TEXT = '2106-02-07T06:28:15Z';

/**
 * How deep an attribute value may nest arrays and kvlists: a span attribute's value is level 1.
 * Deeper requests are refused whole (400), before anything recurses into them.
 */
export const MAX_ANY_VALUE_DEPTH = 64;

/**
 * A timestamp as a decoder read it: nanoseconds since the epoch, or what is wrong with it, worded
 * to follow the field's name ("is missing", "(-5) is negative").
 */
export type Nanos = bigint | string;

const MAX_MESSAGES = 5;

/** What a decoder keeps: the accepted spans, and the refused ones counted by reason. */
export class DecodedRequestBuilder {
  readonly spans: Span[] = [];
  readonly rejected = new Map<RejectReason, number>();
  readonly rejectionMessages: string[] = [];
  rejectedCount = 0;

  /** Counts a refused span; false, so that a check can `return out.reject(…)`. */
  reject(reason: RejectReason, detail: string): false {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
    this.rejectedCount++;
    if (this.rejectionMessages.length < MAX_MESSAGES) this.rejectionMessages.push(detail);
    return false;
  }

  result(): DecodedRequest {
    return { spans: this.spans, rejected: this.rejected, rejectedCount: this.rejectedCount, rejectionMessages: this.rejectionMessages };
  }
}

/** A value from the request, shown in a message: quoted as JSON, cut short. */
export function shown(v: unknown): string {
  const text = typeof v === 'bigint' ? String(v) : (JSON.stringify(v) ?? String(v));
  return text.length > 40 ? text.slice(0, 40) + '…' : text;
}

/** `span 'name' (span_id …)`: the span a message is about. */
function spanLabel(name: string, spanId: string | undefined): string {
  return `span '${name.length > 64 ? name.slice(0, 64) + '…' : name}'${spanId ? ` (span_id ${spanId})` : ''}`;
}

/** What is wrong with a timestamp past MAX_TIMESTAMP_NS. */
export function tooLate(t: unknown): string {
  return `(${shown(t)}) is after ${MAX_TIMESTAMP_TEXT}, the latest time custody stores`;
}

/** What is wrong with a timestamp, or undefined when it can be stored. */
function timeProblem(t: Nanos, zeroAllowed: boolean): string | undefined {
  if (typeof t === 'string') return t;
  if (t === 0n && !zeroAllowed) return 'is zero';
  if (t > MAX_TIMESTAMP_NS) return tooLate(t);
  return undefined;
}

/** Checks a decoded span's ids and times; a span that fails is counted and left out. */
export function accept(
  out: DecodedRequestBuilder,
  name: string,
  traceId: string | undefined,
  spanId: string | undefined,
  parentSpanId: string | undefined,
  start: Nanos,
  end: Nanos,
): boolean {
  if (traceId === undefined) return out.reject('invalid_trace_id', `${spanLabel(name, spanId)}: trace_id must be 16 bytes, not all zero`);
  if (spanId === undefined) return out.reject('invalid_span_id', `${spanLabel(name, spanId)}: span_id must be 8 bytes, not all zero`);
  if (parentSpanId === undefined) return out.reject('invalid_parent_span_id', `${spanLabel(name, spanId)}: parent_span_id must be empty or 8 bytes`);
  const startProblem = timeProblem(start, false);
  if (startProblem) return out.reject('invalid_timestamp', `${spanLabel(name, spanId)}: start_time_unix_nano ${startProblem}`);
  const endProblem = timeProblem(end, false);
  if (endProblem) return out.reject('invalid_timestamp', `${spanLabel(name, spanId)}: end_time_unix_nano ${endProblem}`);
  if ((end as bigint) < (start as bigint)) {
    return out.reject('invalid_timestamp', `${spanLabel(name, spanId)}: end_time_unix_nano is before start_time_unix_nano`);
  }
  return true;
}

/** Checks the times of a span's events (absent reads as 0); false when the span was refused for one. */
export function acceptEventTimes(out: DecodedRequestBuilder, name: string, spanId: string, times: readonly Nanos[]): boolean {
  for (let i = 0; i < times.length; i++) {
    const problem = timeProblem(times[i]!, true);
    if (problem !== undefined) return out.reject('invalid_timestamp', `${spanLabel(name, spanId)}: events[${i}].time_unix_nano ${problem}`);
  }
  return true;
}
