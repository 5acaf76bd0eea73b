import { OtlpDecodeError } from './errors';
import { ExportTraceServiceRequest, type PbRequest } from './proto';
import { NO_ATTRIBUTES, NO_EVENTS, NO_LINKS, serviceNameOf, type DecodedRequest, type PbLong, type Resource, type Scope, type SpanEvent, type SpanLink } from './span';
import { DecodedRequestBuilder, accept, acceptEvents } from './validate';

/**
 * OTLP/protobuf: the protobufjs code generated from the official OTLP protos decodes the request;
 * the spans are read by field access on the decoded messages (no toObject pass).
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

function pbNanos(v: PbLong | number | null | undefined): bigint | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

/** Decodes an OTLP/protobuf ExportTraceServiceRequest. */
export function decodeProtobuf(body: Buffer): DecodedRequest {
  let request: PbRequest;
  try {
    request = ExportTraceServiceRequest.decode(body);
  } catch (err) {
    throw new OtlpDecodeError(`malformed OTLP protobuf: ${(err as Error).message}`);
  }
  const out = new DecodedRequestBuilder();
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
