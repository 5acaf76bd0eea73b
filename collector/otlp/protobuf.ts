import { OtlpDecodeError } from './errors';
import { ExportTraceServiceRequest, type PbRequest } from './proto';
import {
  NO_ATTRIBUTES,
  NO_EVENTS,
  NO_LINKS,
  serviceNameOf,
  type AnyValue,
  type Attributes,
  type DecodedRequest,
  type PbLong,
  type Resource,
  type Scope,
  type SpanEvent,
  type SpanLink,
} from './span';
import { DecodedRequestBuilder, MAX_ANY_VALUE_DEPTH, accept, acceptEventTimes, type Nanos } from './validate';

/**
 * OTLP/protobuf: the protobufjs code generated from the official OTLP protos decodes the request;
 * the spans are read by field access on the decoded messages (no toObject pass).
 *
 * Strings come out well-formed: protobufjs reads a Buffer's strings with Node's UTF-8 decoder,
 * which replaces invalid UTF-8 (overlong forms, encoded surrogates, cut sequences) with U+FFFD.
 */

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

/** fixed64 nanoseconds; proto3 does not tell an unset field from a zero one. */
function pbNanos(v: PbLong | number | null | undefined, absent: Nanos): Nanos {
  if (v === null || v === undefined) return absent;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : `(${v}) is not a whole number of nanoseconds`;
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

/** The nesting depth of the deepest value in the list, counting up to just past `limit`. */
function depthOf(attributes: Attributes, level: number, limit: number): number {
  let deepest = 0;
  for (let i = 0; i < attributes.length; i++) {
    const d = valueDepth(attributes[i]!.value, level, limit);
    if (d > deepest && (deepest = d) > limit) break;
  }
  return deepest;
}

function valueDepth(v: AnyValue | null | undefined, level: number, limit: number): number {
  if (!v) return level;
  if (level > limit) return level;
  if (v.arrayValue) {
    let deepest = level;
    for (const item of v.arrayValue.values ?? []) {
      const d = valueDepth(item, level + 1, limit);
      if (d > deepest && (deepest = d) > limit) break;
    }
    return deepest;
  }
  if (v.kvlistValue) return Math.max(level, depthOf(v.kvlistValue.values ?? NO_ATTRIBUTES, level + 1, limit));
  return level;
}

/** Whether no value in the list nests deeper than MAX_ANY_VALUE_DEPTH; a read or two per attribute when none nests at all. */
function shallow(attributes: Attributes): boolean {
  for (let i = 0; i < attributes.length; i++) {
    const v = attributes[i]!.value;
    if (v && (v.arrayValue || v.kvlistValue) && valueDepth(v, 1, MAX_ANY_VALUE_DEPTH) > MAX_ANY_VALUE_DEPTH) return false;
  }
  return true;
}

function tooDeep(where: string): OtlpDecodeError {
  return new OtlpDecodeError(`${where}: an attribute value nests arrays/kvlists more than ${MAX_ANY_VALUE_DEPTH} levels deep`);
}

function decodeRequest(body: Uint8Array): PbRequest {
  try {
    // a Buffer, so that protobufjs reads strings with Node's UTF-8 decoder (see above)
    return ExportTraceServiceRequest.decode(Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength));
  } catch (err) {
    // protobufjs recurses once per nested message: a value nested thousands deep overflows the stack
    if (err instanceof RangeError && /call stack/i.test(err.message)) {
      throw new OtlpDecodeError(`OTLP protobuf nested too deeply to decode: attribute values may nest at most ${MAX_ANY_VALUE_DEPTH} levels`);
    }
    throw new OtlpDecodeError(`malformed OTLP protobuf: ${(err as Error).message}`);
  }
}

/** Decodes an OTLP/protobuf ExportTraceServiceRequest. */
export function decodeProtobuf(body: Uint8Array): DecodedRequest {
  const request = decodeRequest(body);
  const out = new DecodedRequestBuilder();
  const rsList = request.resourceSpans ?? [];
  for (let r = 0; r < rsList.length; r++) {
    const rs = rsList[r]!;
    const resAttrs = rs.resource?.attributes ?? NO_ATTRIBUTES;
    if (!shallow(resAttrs)) throw tooDeep(`resourceSpans[${r}].resource.attributes`);
    const resource: Resource = { attributes: resAttrs, serviceName: serviceNameOf(resAttrs) };
    const ssList = rs.scopeSpans ?? [];
    for (let j = 0; j < ssList.length; j++) {
      const ss = ssList[j]!;
      const scope: Scope = { name: ss.scope?.name ?? '', version: ss.scope?.version ?? '' };
      const spans = ss.spans ?? [];
      for (let i = 0; i < spans.length; i++) {
        const s = spans[i]!;
        // the structure is checked before the span's ids and times: a request too deep is a 400
        const attributes = s.attributes ?? NO_ATTRIBUTES;
        if (!shallow(attributes)) throw tooDeep(`resourceSpans[${r}].scopeSpans[${j}].spans[${i}].attributes`);
        const name = s.name ?? '';
        const traceId = pbId(s.traceId, 16);
        const spanId = pbId(s.spanId, 8);
        const parentSpanId = pbParentId(s.parentSpanId);
        const startNs = pbNanos(s.startTimeUnixNano, 'is missing or zero');
        const endNs = pbNanos(s.endTimeUnixNano, 'is missing or zero');
        let events: SpanEvent[] = NO_EVENTS;
        let eventTimes: Nanos[] | undefined;
        if (s.events?.length) {
          events = [];
          eventTimes = [];
          for (let e = 0; e < s.events.length; e++) {
            const ev = s.events[e]!;
            const evAttrs = ev.attributes ?? NO_ATTRIBUTES;
            if (!shallow(evAttrs)) throw tooDeep(`resourceSpans[${r}].scopeSpans[${j}].spans[${i}].events[${e}].attributes`);
            const time = pbNanos(ev.timeUnixNano, 0n);
            eventTimes.push(time);
            events.push({ timeNs: typeof time === 'bigint' ? time : 0n, name: ev.name ?? '', attributes: evAttrs });
          }
        }
        let links: SpanLink[] = NO_LINKS;
        if (s.links?.length) {
          links = [];
          for (let l = 0; l < s.links.length; l++) {
            const lk = s.links[l]!;
            const lkAttrs = lk.attributes ?? NO_ATTRIBUTES;
            if (!shallow(lkAttrs)) throw tooDeep(`resourceSpans[${r}].scopeSpans[${j}].spans[${i}].links[${l}].attributes`);
            links.push({
              traceId: lk.traceId && lk.traceId.length ? hexOf(lk.traceId) : '',
              spanId: lk.spanId && lk.spanId.length ? hexOf(lk.spanId) : '',
              traceState: lk.traceState ?? '',
              attributes: lkAttrs,
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
          traceState: s.traceState ?? '',
          name,
          kind: s.kind ?? 0,
          startNs: startNs as bigint,
          endNs: endNs as bigint,
          attributes,
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
