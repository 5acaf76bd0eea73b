import generatedRoot from 'otlp-proto-root/build/src/generated/root';

/**
 * OTLP trace requests, protobuf and JSON, decoded into one internal span shape. Protobuf goes
 * through the protobufjs code generated from the official OTLP protos (field access on the decoded
 * messages, no toObject pass); JSON follows the OTLP/JSON rules: hex trace and span ids, enums as
 * integers (names accepted too), 64-bit integers as strings or numbers, lowerCamelCase field names
 * (the original snake_case names accepted too).
 *
 * A span with bad ids or timestamps is rejected alone and counted; the rest of the request is kept.
 */

// Shapes of the generated messages as read here (the generated root ships without typings).
// Unset fields read as null (the generated prototypes' defaults).
interface PbLong {
  low: number;
  high: number;
}
interface PbSpan {
  traceId: Uint8Array | null;
  spanId: Uint8Array | null;
  traceState: string | null;
  parentSpanId: Uint8Array | null;
  name: string | null;
  kind: number | null;
  startTimeUnixNano: PbLong | number | null;
  endTimeUnixNano: PbLong | number | null;
  attributes: KeyValue[] | null;
  events: { timeUnixNano: PbLong | number | null; name: string | null; attributes: KeyValue[] | null }[] | null;
  links: { traceId: Uint8Array | null; spanId: Uint8Array | null; traceState: string | null; attributes: KeyValue[] | null }[] | null;
  status: { code: number | null; message: string | null } | null;
}
interface PbRequest {
  resourceSpans:
    | {
        resource: { attributes: KeyValue[] | null } | null;
        scopeSpans: { scope: { name: string | null; version: string | null } | null; spans: PbSpan[] | null }[] | null;
      }[]
    | null;
}
interface PbMessageType<T> {
  decode(body: Uint8Array): T;
  create(properties: object): T;
  encode(message: T): { finish(): Uint8Array };
}
interface GeneratedRoot {
  opentelemetry: {
    proto: {
      collector: {
        trace: {
          v1: {
            ExportTraceServiceRequest: PbMessageType<PbRequest>;
            ExportTraceServiceResponse: PbMessageType<object>;
            ExportTracePartialSuccess: PbMessageType<object>;
          };
        };
      };
    };
  };
}

const collectorTrace = (generatedRoot as unknown as GeneratedRoot).opentelemetry.proto.collector.trace.v1;
const ExportTraceServiceRequest = collectorTrace.ExportTraceServiceRequest;
const ExportTraceServiceResponse = collectorTrace.ExportTraceServiceResponse;
const ExportTracePartialSuccess = collectorTrace.ExportTracePartialSuccess;

/**
 * Attributes stay in their OTLP KeyValue form, as protobufjs decoded them or as JSON.parse read
 * them (after validation): no per-attribute copy on the hot path. `attrString` and friends in
 * mapping.ts read either form.
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
export type { PbLong };

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

/** The request body could not be read as an OTLP trace request at all. */
export class OtlpDecodeError extends Error {
  readonly code = 'ERR_OTLP_MALFORMED';
}

/** DateTime64(9) stores signed 64-bit nanoseconds: later timestamps cannot be stored. */
const MAX_NS = 9_223_372_036_854_775_807n;
const MAX_MESSAGES = 5;

class Collector {
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
function accept(
  out: Collector,
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

function acceptEvents(out: Collector, name: string, events: readonly SpanEvent[]): boolean {
  for (const e of events) {
    if (e.timeNs > MAX_NS) return out.reject('invalid_timestamp', `${label(name)}: an event's time_unix_nano is not a usable timestamp`);
  }
  return true;
}

const NO_EVENTS: SpanEvent[] = Object.freeze([]) as unknown as SpanEvent[];
const NO_LINKS: SpanLink[] = Object.freeze([]) as unknown as SpanLink[];

// ---------------------------------------------------------------------------------------------
// protobuf

const NO_ATTRIBUTES: Attributes = Object.freeze([]) as Attributes;

function isAllZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function hexOf(b: Uint8Array): string {
  return Buffer.isBuffer(b) ? b.toString('hex') : Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** trace/span id bytes → hex, or undefined when the length is wrong or the id is all zero. */
function pbId(b: Uint8Array | null | undefined, size: number): string | undefined {
  if (!b || b.length !== size || isAllZero(b)) return undefined;
  return hexOf(b);
}

/** A parent id may be absent (root span); all-zero counts as absent, as upstream does. */
function pbParentId(b: Uint8Array | null | undefined): string | undefined {
  if (!b || b.length === 0) return '';
  if (b.length !== 8) return undefined;
  return isAllZero(b) ? '' : hexOf(b);
}

function pbNanos(v: PbLong | number | null | undefined): bigint | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

function serviceNameOf(attributes: Attributes): string {
  const v = findAttribute(attributes, 'service.name')?.stringValue;
  return typeof v === 'string' ? v : '';
}

/** Decodes an OTLP/protobuf ExportTraceServiceRequest. */
export function decodeProtobuf(body: Buffer): DecodedRequest {
  let request: PbRequest;
  try {
    request = ExportTraceServiceRequest.decode(body);
  } catch (err) {
    throw new OtlpDecodeError(`malformed OTLP protobuf: ${(err as Error).message}`);
  }
  const out = new Collector();
  for (const rs of request.resourceSpans ?? []) {
    const resAttrs = rs.resource?.attributes ?? NO_ATTRIBUTES;
    const resource: Resource = { attributes: resAttrs, serviceName: serviceNameOf(resAttrs) };
    for (const ss of rs.scopeSpans ?? []) {
      const scope: Scope = { name: ss.scope?.name ?? '', version: ss.scope?.version ?? '' };
      const spans = ss.spans ?? [];
      for (let i = 0; i < spans.length; i++) {
        const s = spans[i]!;
        const name = s.name ?? '';
        const traceId = pbId(s.traceId, 16);
        const spanId = pbId(s.spanId, 8);
        const parentSpanId = pbParentId(s.parentSpanId);
        const startNs = pbNanos(s.startTimeUnixNano);
        const endNs = pbNanos(s.endTimeUnixNano);
        if (!accept(out, name, traceId, spanId, parentSpanId, startNs, endNs)) continue;
        let events: SpanEvent[] = NO_EVENTS;
        if (s.events?.length) {
          events = [];
          for (const e of s.events) {
            events.push({ timeNs: pbNanos(e.timeUnixNano) ?? 0n, name: e.name ?? '', attributes: e.attributes ?? NO_ATTRIBUTES });
          }
          if (!acceptEvents(out, name, events)) continue;
        }
        let links: SpanLink[] = NO_LINKS;
        if (s.links?.length) {
          links = [];
          for (const l of s.links) {
            links.push({
              traceId: l.traceId && l.traceId.length ? hexOf(l.traceId) : '',
              spanId: l.spanId && l.spanId.length ? hexOf(l.spanId) : '',
              traceState: l.traceState ?? '',
              attributes: l.attributes ?? NO_ATTRIBUTES,
            });
          }
        }
        out.spans.push({
          resource,
          scope,
          traceId: traceId!,
          spanId: spanId!,
          parentSpanId: parentSpanId!,
          traceState: s.traceState ?? '',
          name,
          kind: s.kind ?? 0,
          startNs: startNs!,
          endNs: endNs!,
          attributes: s.attributes ?? NO_ATTRIBUTES,
          events,
          links,
          statusCode: s.status?.code ?? 0,
          statusMessage: s.status?.message ?? '',
        });
      }
    }
  }
  return out.result();
}

// ---------------------------------------------------------------------------------------------
// JSON

type Json = Record<string, unknown>;

const KIND_NAMES: Record<string, number> = {
  SPAN_KIND_UNSPECIFIED: 0,
  SPAN_KIND_INTERNAL: 1,
  SPAN_KIND_SERVER: 2,
  SPAN_KIND_CLIENT: 3,
  SPAN_KIND_PRODUCER: 4,
  SPAN_KIND_CONSUMER: 5,
};
const STATUS_NAMES: Record<string, number> = { STATUS_CODE_UNSET: 0, STATUS_CODE_OK: 1, STATUS_CODE_ERROR: 2 };

function field(o: Json, camel: string, snake: string): unknown {
  const v = o[camel];
  return v === undefined ? o[snake] : v;
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function jsonObject(v: unknown, where: string): Json | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new OtlpDecodeError(`${where} must be an object`);
  return v;
}

function jsonArray(v: unknown, where: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new OtlpDecodeError(`${where} must be an array`);
  return v;
}

function jsonString(v: unknown, where: string): string {
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new OtlpDecodeError(`${where} must be a string`);
  return v;
}

function jsonEnum(v: unknown, names: Record<string, number>, where: string): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && v in names) return names[v]!;
  throw new OtlpDecodeError(`${where} must be an enum number`);
}

const HEX32 = /^[0-9a-fA-F]{32}$/;
const HEX16 = /^[0-9a-fA-F]{16}$/;
const ZERO32 = '0'.repeat(32);
const ZERO16 = '0'.repeat(16);
const DIGITS = /^\d{1,20}$/;
const INT = /^-?\d{1,20}$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

function jsonTraceId(v: unknown): string | undefined {
  if (typeof v !== 'string' || !HEX32.test(v)) return undefined;
  const id = v.toLowerCase();
  return id === ZERO32 ? undefined : id;
}

function jsonSpanId(v: unknown): string | undefined {
  if (typeof v !== 'string' || !HEX16.test(v)) return undefined;
  const id = v.toLowerCase();
  return id === ZERO16 ? undefined : id;
}

function jsonParentId(v: unknown): string | undefined {
  if (v === undefined || v === null || v === '') return '';
  if (typeof v !== 'string' || !HEX16.test(v)) return undefined;
  const id = v.toLowerCase();
  return id === ZERO16 ? '' : id;
}

/** fixed64 nanoseconds: a decimal string (proto3 JSON) or a number; undefined when unusable. */
function jsonNanos(v: unknown): bigint | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return DIGITS.test(v) ? BigInt(v) : undefined;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  return undefined;
}

const SNAKE_VALUE_FIELDS: Record<string, keyof AnyValue> = {
  string_value: 'stringValue',
  bool_value: 'boolValue',
  int_value: 'intValue',
  double_value: 'doubleValue',
  array_value: 'arrayValue',
  kvlist_value: 'kvlistValue',
  bytes_value: 'bytesValue',
};

/**
 * Checks an AnyValue read from JSON and returns it for use as it is; a value written with the
 * snake_case field names comes back renamed.
 */
function jsonValue(raw: unknown, where: string): AnyValue | null {
  if (raw === undefined || raw === null) return null;
  if (!isObject(raw)) throw new OtlpDecodeError(`${where} must be an AnyValue object`);
  let v = raw as AnyValue & Json;
  for (const k in v) {
    if (k in SNAKE_VALUE_FIELDS) {
      const renamed: Json = {};
      for (const key in v) renamed[SNAKE_VALUE_FIELDS[key] ?? key] = v[key];
      v = renamed as AnyValue & Json;
      break;
    }
  }
  if (v.stringValue != null) {
    if (typeof v.stringValue !== 'string') throw new OtlpDecodeError(`${where}.stringValue must be a string`);
  } else if (v.intValue != null) {
    const n = v.intValue;
    if (!(typeof n === 'number' ? Number.isInteger(n) : typeof n === 'string' && INT.test(n))) {
      throw new OtlpDecodeError(`${where}.intValue must be an integer or a decimal string`);
    }
  } else if (v.boolValue != null) {
    if (typeof v.boolValue !== 'boolean') throw new OtlpDecodeError(`${where}.boolValue must be a boolean`);
  } else if (v.doubleValue != null) {
    const d = v.doubleValue;
    if (typeof d !== 'number' && d !== 'NaN' && d !== 'Infinity' && d !== '-Infinity') {
      throw new OtlpDecodeError(`${where}.doubleValue must be a number`);
    }
  } else if (v.arrayValue != null) {
    const arr = jsonObject(v.arrayValue, `${where}.arrayValue`)!;
    const values = jsonArray(arr.values, `${where}.arrayValue.values`);
    for (let i = 0; i < values.length; i++) {
      const checked = jsonValue(values[i], `${where}.arrayValue.values[${i}]`);
      if (checked !== values[i]) values[i] = checked;
    }
  } else if (v.kvlistValue != null) {
    const kv = jsonObject(v.kvlistValue, `${where}.kvlistValue`)!;
    jsonAttributes(kv.values, `${where}.kvlistValue.values`);
  } else if (v.bytesValue != null) {
    if (typeof v.bytesValue !== 'string' || !BASE64.test(v.bytesValue)) {
      throw new OtlpDecodeError(`${where}.bytesValue must be base64`);
    }
  }
  return v;
}

/** Checks a JSON KeyValue list and returns it for use as it is. */
function jsonAttributes(raw: unknown, where: string): Attributes {
  if (raw === undefined || raw === null) return NO_ATTRIBUTES;
  const list = jsonArray(raw, where) as KeyValue[];
  for (let i = 0; i < list.length; i++) {
    const kv = list[i];
    if (!isObject(kv)) throw new OtlpDecodeError(`${where}[${i}] must be a KeyValue object`);
    if (typeof kv.key !== 'string') throw new OtlpDecodeError(`${where}[${i}].key must be a string`);
    const checked = jsonValue(kv.value, `${where}[${i}].value`);
    if (checked !== kv.value) kv.value = checked;
  }
  return list;
}

function jsonLinkId(v: unknown, re: RegExp): string {
  return typeof v === 'string' && re.test(v) ? v.toLowerCase() : '';
}

/** Decodes an OTLP/JSON ExportTraceServiceRequest. */
export function decodeJson(text: string): DecodedRequest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new OtlpDecodeError(`malformed OTLP JSON: ${(err as Error).message}`);
  }
  if (!isObject(parsed)) throw new OtlpDecodeError('request body must be a JSON object');
  const out = new Collector();
  const rsList = jsonArray(field(parsed, 'resourceSpans', 'resource_spans'), 'resourceSpans');
  for (let r = 0; r < rsList.length; r++) {
    const rsWhere = `resourceSpans[${r}]`;
    const rs = jsonObject(rsList[r], rsWhere) ?? {};
    const res = jsonObject(rs.resource, `${rsWhere}.resource`);
    const resAttrs = jsonAttributes(res?.attributes, `${rsWhere}.resource.attributes`);
    const resource: Resource = { attributes: resAttrs, serviceName: serviceNameOf(resAttrs) };
    const ssList = jsonArray(field(rs, 'scopeSpans', 'scope_spans'), `${rsWhere}.scopeSpans`);
    for (let j = 0; j < ssList.length; j++) {
      const ssWhere = `${rsWhere}.scopeSpans[${j}]`;
      const ss = jsonObject(ssList[j], ssWhere) ?? {};
      const sc = jsonObject(ss.scope, `${ssWhere}.scope`);
      const scope: Scope = { name: jsonString(sc?.name, `${ssWhere}.scope.name`), version: jsonString(sc?.version, `${ssWhere}.scope.version`) };
      const spans = jsonArray(ss.spans, `${ssWhere}.spans`);
      for (let k = 0; k < spans.length; k++) {
        const where = `${ssWhere}.spans[${k}]`;
        const s = jsonObject(spans[k], where) ?? {};
        const name = jsonString(s.name, `${where}.name`);
        const traceId = jsonTraceId(field(s, 'traceId', 'trace_id'));
        const spanId = jsonSpanId(field(s, 'spanId', 'span_id'));
        const parentSpanId = jsonParentId(field(s, 'parentSpanId', 'parent_span_id'));
        const startNs = jsonNanos(field(s, 'startTimeUnixNano', 'start_time_unix_nano'));
        const endNs = jsonNanos(field(s, 'endTimeUnixNano', 'end_time_unix_nano'));
        // the structure is checked before the span's ids and times: a malformed body is a 400
        const attributes = jsonAttributes(s.attributes, `${where}.attributes`);
        const status = jsonObject(s.status, `${where}.status`);
        const kind = jsonEnum(s.kind, KIND_NAMES, `${where}.kind`);
        const statusCode = jsonEnum(status?.code, STATUS_NAMES, `${where}.status.code`);
        const statusMessage = jsonString(status?.message, `${where}.status.message`);
        const traceState = jsonString(field(s, 'traceState', 'trace_state'), `${where}.traceState`);
        let events: SpanEvent[] = NO_EVENTS;
        const evList = jsonArray(s.events, `${where}.events`);
        if (evList.length) {
          events = [];
          for (let e = 0; e < evList.length; e++) {
            const ev = jsonObject(evList[e], `${where}.events[${e}]`) ?? {};
            const raw = field(ev, 'timeUnixNano', 'time_unix_nano');
            events.push({
              // an unusable event time fails the span below
              timeNs: raw === undefined || raw === null ? 0n : (jsonNanos(raw) ?? MAX_NS + 1n),
              name: jsonString(ev.name, `${where}.events[${e}].name`),
              attributes: jsonAttributes(ev.attributes, `${where}.events[${e}].attributes`),
            });
          }
        }
        let links: SpanLink[] = NO_LINKS;
        const lkList = jsonArray(s.links, `${where}.links`);
        if (lkList.length) {
          links = [];
          for (let l = 0; l < lkList.length; l++) {
            const lk = jsonObject(lkList[l], `${where}.links[${l}]`) ?? {};
            links.push({
              traceId: jsonLinkId(field(lk, 'traceId', 'trace_id'), HEX32),
              spanId: jsonLinkId(field(lk, 'spanId', 'span_id'), HEX16),
              traceState: jsonString(field(lk, 'traceState', 'trace_state'), `${where}.links[${l}].traceState`),
              attributes: jsonAttributes(lk.attributes, `${where}.links[${l}].attributes`),
            });
          }
        }
        if (!accept(out, name, traceId, spanId, parentSpanId, startNs, endNs)) continue;
        if (events.length && !acceptEvents(out, name, events)) continue;
        out.spans.push({
          resource,
          scope,
          traceId: traceId!,
          spanId: spanId!,
          parentSpanId: parentSpanId!,
          traceState,
          name,
          kind,
          startNs: startNs!,
          endNs: endNs!,
          attributes,
          events,
          links,
          statusCode,
          statusMessage,
        });
      }
    }
  }
  return out.result();
}

// ---------------------------------------------------------------------------------------------
// responses

export type WireFormat = 'protobuf' | 'json';

/** ExportTraceServiceResponse; partial_success only when something was refused. */
export function encodeExportResponse(format: WireFormat, rejectedSpans: number, errorMessage: string): Buffer {
  const partial = rejectedSpans > 0 || errorMessage ? { rejectedSpans, errorMessage } : undefined;
  if (format === 'json') {
    // proto3 JSON writes int64 as a string
    return Buffer.from(
      JSON.stringify(partial ? { partialSuccess: { rejectedSpans: String(rejectedSpans), errorMessage } } : {}),
    );
  }
  const msg = ExportTraceServiceResponse.create(partial ? { partialSuccess: ExportTracePartialSuccess.create(partial) } : {});
  return Buffer.from(ExportTraceServiceResponse.encode(msg).finish());
}

/** gRPC status codes used in OTLP/HTTP error bodies. */
export const GRPC_CODE = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/**
 * The google.rpc.Status body OTLP/HTTP wants on 4xx/5xx. The type is not in the generated OTLP
 * root; its fields 1 (code, varint) and 2 (message, string) have the same wire form as
 * ExportTracePartialSuccess's fields 1 and 2, so that message's generated encoder writes it.
 */
export function encodeStatus(format: WireFormat, grpcCode: number, message: string, error: { code: string; message: string }): Buffer {
  if (format === 'json') return Buffer.from(JSON.stringify({ code: grpcCode, message, error }));
  const msg = ExportTracePartialSuccess.create({ rejectedSpans: grpcCode, errorMessage: message });
  return Buffer.from(ExportTracePartialSuccess.encode(msg).finish());
}
