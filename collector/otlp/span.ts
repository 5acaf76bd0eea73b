/**
 * The one internal span shape both decoders produce, and what a decoded request carries besides
 * its spans: the rejections.
 */

/** A protobuf 64-bit integer as protobufjs decodes it (a Long). */
export interface PbLong {
  low: number;
  high: number;
}

/**
 * Attributes stay in their OTLP KeyValue form, as protobufjs decoded them or as JSON.parse read
 * them (after validation): no per-attribute copy on the hot path. `attrString` and friends in
 * ingest/mapping.ts read either form.
 */
export interface AnyValue {
  stringValue?: string | null;
  boolValue?: boolean | null;
  /** protobuf: a Long (or number); JSON: a decimal string or a number */
  intValue?: PbLong | number | string | null;
  /** JSON may spell the non-finite doubles as "NaN", "Infinity", "-Infinity" */
  doubleValue?: number | string | null;
  arrayValue?: { values?: AnyValue[] | null } | null;
  kvlistValue?: { values?: KeyValue[] | null } | null;
  /** protobuf: bytes; JSON: base64 */
  bytesValue?: Uint8Array | string | null;
}
export interface KeyValue {
  key?: string | null;
  value?: AnyValue | null;
}
export type Attributes = readonly KeyValue[];

/** The value of `key` (the last one when repeated), or undefined. */
export function findAttribute(attributes: Attributes, key: string): AnyValue | null | undefined {
  for (let i = attributes.length - 1; i >= 0; i--) if (attributes[i]!.key === key) return attributes[i]!.value ?? null;
  return undefined;
}

export interface Resource {
  readonly attributes: Attributes;
  /** `service.name`, '' when absent. */
  readonly serviceName: string;
}

export interface Scope {
  readonly name: string;
  readonly version: string;
}

export interface SpanEvent {
  readonly timeNs: bigint;
  readonly name: string;
  readonly attributes: Attributes;
}

export interface SpanLink {
  readonly traceId: string;
  readonly spanId: string;
  readonly traceState: string;
  readonly attributes: Attributes;
}

/** OTLP span kinds and status codes (the proto enum values). */
export const SPAN_KIND = { UNSPECIFIED: 0, INTERNAL: 1, SERVER: 2, CLIENT: 3, PRODUCER: 4, CONSUMER: 5 } as const;
export const STATUS_CODE = { UNSET: 0, OK: 1, ERROR: 2 } as const;

export interface Span {
  readonly resource: Resource;
  readonly scope: Scope;
  /** lower-case hex, 32 digits */
  readonly traceId: string;
  /** lower-case hex, 16 digits */
  readonly spanId: string;
  /** lower-case hex, 16 digits, or '' for a root span */
  readonly parentSpanId: string;
  readonly traceState: string;
  readonly name: string;
  readonly kind: number;
  readonly startNs: bigint;
  readonly endNs: bigint;
  readonly attributes: Attributes;
  readonly events: SpanEvent[];
  readonly links: SpanLink[];
  readonly statusCode: number;
  readonly statusMessage: string;
}

export type RejectReason = 'invalid_trace_id' | 'invalid_span_id' | 'invalid_parent_span_id' | 'invalid_timestamp';

export interface DecodedRequest {
  readonly spans: Span[];
  /** Spans refused, by reason. */
  readonly rejected: Map<RejectReason, number>;
  readonly rejectedCount: number;
  /** The first few rejections, for partial_success.error_message. */
  readonly rejectionMessages: string[];
}

export function serviceNameOf(attributes: Attributes): string {
  const v = findAttribute(attributes, 'service.name')?.stringValue;
  return typeof v === 'string' ? v : '';
}

export const NO_ATTRIBUTES: Attributes = Object.freeze([]) as Attributes;
export const NO_EVENTS: SpanEvent[] = Object.freeze([]) as unknown as SpanEvent[];
export const NO_LINKS: SpanLink[] = Object.freeze([]) as unknown as SpanLink[];
