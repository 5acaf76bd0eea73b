import { OtlpDecodeError } from './errors';
import {
  NO_ATTRIBUTES,
  NO_EVENTS,
  NO_LINKS,
  serviceNameOf,
  type AnyValue,
  type Attributes,
  type DecodedRequest,
  type KeyValue,
  type Resource,
  type Scope,
  type SpanEvent,
  type SpanLink,
} from './span';
import { makeStringsWellFormed, mayHoldLoneSurrogates } from './text';
import { DecodedRequestBuilder, MAX_ANY_VALUE_DEPTH, accept, acceptEventTimes, shown, tooLate, type Nanos } from './validate';

/**
 * OTLP/JSON, by the OTLP/JSON rules: hex trace and span ids, enums as integers (names accepted
 * too), 64-bit integers as strings or numbers, lowerCamelCase field names (the original snake_case
 * names accepted too). The parsed values are checked and used as they are; lone UTF-16 surrogates
 * (escapes such as `\ud800`) become U+FFFD.
 */

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
const UNSIGNED = /^\d+$/;
const NEGATIVE = /^-\d+$/;
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

/** fixed64 nanoseconds: a decimal string (proto3 JSON) or a number. */
function jsonNanos(v: unknown, absent: Nanos): Nanos {
  if (v === undefined || v === null) return absent;
  if (typeof v === 'string') {
    if (DIGITS.test(v)) return BigInt(v);
    // past 20 digits it is out of range whatever it says; BigInt of a long string costs
    if (UNSIGNED.test(v)) return tooLate(v);
    if (NEGATIVE.test(v)) return `(${shown(v)}) is negative`;
    return `(${shown(v)}) is not a whole number of nanoseconds`;
  }
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return v >= 0 ? BigInt(v) : `(${v}) is negative`;
    if (v < 0) return `(${v}) is negative`;
    if (Number.isInteger(v)) return `(${v}) is a JSON number too large to be exact; send it as a decimal string`;
    return `(${shown(v)}) is not a whole number of nanoseconds`;
  }
  return `(${shown(v)}) must be a decimal string`;
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
function jsonValue(raw: unknown, where: string, depth: number): AnyValue | null {
  if (raw === undefined || raw === null) return null;
  if (depth > MAX_ANY_VALUE_DEPTH) {
    throw new OtlpDecodeError(`${where}: an attribute value nests arrays/kvlists more than ${MAX_ANY_VALUE_DEPTH} levels deep`);
  }
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
      const checked = jsonValue(values[i], `${where}.arrayValue.values[${i}]`, depth + 1);
      if (checked !== values[i]) values[i] = checked;
    }
  } else if (v.kvlistValue != null) {
    const kv = jsonObject(v.kvlistValue, `${where}.kvlistValue`)!;
    jsonAttributes(kv.values, `${where}.kvlistValue.values`, depth + 1);
  } else if (v.bytesValue != null) {
    if (typeof v.bytesValue !== 'string' || !BASE64.test(v.bytesValue)) {
      throw new OtlpDecodeError(`${where}.bytesValue must be base64`);
    }
  }
  return v;
}

/** Checks a JSON KeyValue list and returns it for use as it is. */
function jsonAttributes(raw: unknown, where: string, depth = 1): Attributes {
  if (raw === undefined || raw === null) return NO_ATTRIBUTES;
  const list = jsonArray(raw, where) as KeyValue[];
  for (let i = 0; i < list.length; i++) {
    const kv = list[i];
    if (!isObject(kv)) throw new OtlpDecodeError(`${where}[${i}] must be a KeyValue object`);
    if (typeof kv.key !== 'string') throw new OtlpDecodeError(`${where}[${i}].key must be a string`);
    const checked = jsonValue(kv.value, `${where}[${i}].value`, depth);
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
  if (mayHoldLoneSurrogates(text)) makeStringsWellFormed(parsed);
  const out = new DecodedRequestBuilder();
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
        const startNs = jsonNanos(field(s, 'startTimeUnixNano', 'start_time_unix_nano'), 'is missing');
        const endNs = jsonNanos(field(s, 'endTimeUnixNano', 'end_time_unix_nano'), 'is missing');
        // the structure is checked before the span's ids and times: a malformed body is a 400
        const attributes = jsonAttributes(s.attributes, `${where}.attributes`);
        const status = jsonObject(s.status, `${where}.status`);
        const kind = jsonEnum(s.kind, KIND_NAMES, `${where}.kind`);
        const statusCode = jsonEnum(status?.code, STATUS_NAMES, `${where}.status.code`);
        const statusMessage = jsonString(status?.message, `${where}.status.message`);
        const traceState = jsonString(field(s, 'traceState', 'trace_state'), `${where}.traceState`);
        let events: SpanEvent[] = NO_EVENTS;
        let eventTimes: Nanos[] | undefined;
        const evList = jsonArray(s.events, `${where}.events`);
        if (evList.length) {
          events = [];
          eventTimes = [];
          for (let e = 0; e < evList.length; e++) {
            const ev = jsonObject(evList[e], `${where}.events[${e}]`) ?? {};
            // an unusable event time fails the span below
            const time = jsonNanos(field(ev, 'timeUnixNano', 'time_unix_nano'), 0n);
            eventTimes.push(time);
            events.push({
              timeNs: typeof time === 'bigint' ? time : 0n,
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
        if (eventTimes && !acceptEventTimes(out, name, spanId!, eventTimes)) continue;
        out.spans.push({
          resource,
          scope,
          traceId: traceId!,
          spanId: spanId!,
          parentSpanId: parentSpanId!,
          traceState,
          name,
          kind,
          startNs: startNs as bigint,
          endNs: endNs as bigint,
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
