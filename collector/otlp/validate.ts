import type { DecodedRequest, RejectReason, Span, SpanEvent } from './span';

/**
 * The per-span checks both decoders share. A span with bad ids or timestamps is rejected alone and
 * counted; the rest of the request is kept.
 */

/** DateTime64(9) stores signed 64-bit nanoseconds: later timestamps cannot be stored. */
export const MAX_NS = 9_223_372_036_854_775_807n;
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

function label(name: string): string {
  return `span '${name.length > 64 ? name.slice(0, 64) + '…' : name}'`;
}

/** Checks a decoded span's ids and times; a span that fails is counted and left out. */
export function accept(
  out: DecodedRequestBuilder,
  name: string,
  traceId: string | undefined,
  spanId: string | undefined,
  parentSpanId: string | undefined,
  startNs: bigint | undefined,
  endNs: bigint | undefined,
): boolean {
  if (traceId === undefined) return out.reject('invalid_trace_id', `${label(name)}: trace_id must be 16 bytes, not all zero`);
  if (spanId === undefined) return out.reject('invalid_span_id', `${label(name)}: span_id must be 8 bytes, not all zero`);
  if (parentSpanId === undefined) return out.reject('invalid_parent_span_id', `${label(name)}: parent_span_id must be empty or 8 bytes`);
  if (startNs === undefined || startNs <= 0n) return out.reject('invalid_timestamp', `${label(name)}: start_time_unix_nano is missing or zero`);
  if (endNs === undefined || endNs < startNs) {
    return out.reject('invalid_timestamp', `${label(name)}: end_time_unix_nano is missing or before start_time_unix_nano`);
  }
  if (endNs > MAX_NS) return out.reject('invalid_timestamp', `${label(name)}: timestamp beyond 2262-04-11`);
  return true;
}

export function acceptEvents(out: DecodedRequestBuilder, name: string, events: readonly SpanEvent[]): boolean {
  for (const e of events) {
    if (e.timeNs > MAX_NS) return out.reject('invalid_timestamp', `${label(name)}: an event's time_unix_nano is not a usable timestamp`);
  }
  return true;
}
