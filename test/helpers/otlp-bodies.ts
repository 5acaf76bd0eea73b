import generatedRoot from 'otlp-proto-root/build/src/generated/root';

/** OTLP trace request bodies built by hand, for tests that send what no SDK would. */

// the generated OTLP messages (the root ships without typings)
export const collectorTrace = (generatedRoot as any).opentelemetry.proto.collector.trace.v1;

export const hex = (bytes: number): string => [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
export const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n;

/** A JSON span with fresh ids, now; `over` replaces fields. */
export function jsonSpan(name: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  const t = nowNs();
  return { traceId: hex(16), spanId: hex(8), name, startTimeUnixNano: String(t), endTimeUnixNano: String(t + 1_000_000n), ...over };
}

export function jsonBody(spans: object[], service = 'otlp-test'): string {
  return JSON.stringify({
    resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] }, scopeSpans: [{ scope: { name: 'test' }, spans }] }],
  });
}

/**
 * The JSON text of an attribute value nesting arrays (or kvlists) so that its innermost value is
 * at `depth` (the attribute's own value is 1). Text, not an object: JSON.stringify recurses.
 */
export function nestedJsonText(depth: number, kind: 'array' | 'kvlist' = 'array'): string {
  const open = kind === 'array' ? '{"arrayValue":{"values":[' : '{"kvlistValue":{"values":[{"key":"k","value":';
  const close = kind === 'array' ? ']}}' : '}]}}';
  return open.repeat(depth - 1) + '{"stringValue":"innermost"}' + close.repeat(depth - 1);
}

/** The JSON body `jsonBody` makes of these spans, with each "DEEP" string value replaced by `value`. */
export function withValue(body: string, value: string): string {
  return body.split('{"stringValue":"DEEP"}').join(value);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/** A length-delimited protobuf field. */
export function pbField(field: number, body: Buffer): Buffer {
  return Buffer.concat([varint((field << 3) | 2), varint(body.length), body]);
}

/**
 * The protobuf AnyValue of nestedJsonValue(depth, 'array'), written without recursion (the
 * generated encoder would overflow the stack long before the depths tests send).
 */
export function nestedPbValue(depth: number): Buffer {
  const leaf = pbField(1, Buffer.from('innermost')); // AnyValue.string_value
  const headers: Buffer[] = [];
  let length = leaf.length;
  for (let level = depth - 1; level >= 1; level--) {
    const values = Buffer.concat([varint((1 << 3) | 2), varint(length)]); // ArrayValue.values
    length += values.length;
    const arrayValue = Buffer.concat([varint((5 << 3) | 2), varint(length)]); // AnyValue.array_value
    length += arrayValue.length;
    headers.push(values, arrayValue);
  }
  return Buffer.concat([...headers.reverse(), leaf]);
}

/** An ExportTraceServiceRequest of one span (protobufjs properties) with extra attribute bytes appended to the span. */
export function pbBody(span: Record<string, unknown>, extraAttributes: Buffer[] = []): Buffer {
  const encodedSpan = Buffer.concat([
    Buffer.from(spanBytes(span)),
    ...extraAttributes.map((a) => pbField(9, a)), // Span.attributes: repeated, may follow the other fields
  ]);
  return pbField(1, pbField(2, pbField(2, encodedSpan))); // request.resource_spans.scope_spans.spans
}

function spanBytes(span: Record<string, unknown>): Uint8Array {
  const Span = (generatedRoot as any).opentelemetry.proto.trace.v1.Span;
  return Span.encode(Span.fromObject(span)).finish();
}

/** A protobuf KeyValue. */
export function pbKeyValue(key: string, value: Buffer): Buffer {
  return Buffer.concat([pbField(1, Buffer.from(key)), pbField(2, value)]);
}

/** A protobuf span's properties with fresh ids, now. */
export function pbSpan(name: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  const t = nowNs();
  return {
    traceId: Buffer.from(hex(16), 'hex'),
    spanId: Buffer.from(hex(8), 'hex'),
    name,
    startTimeUnixNano: String(t),
    endTimeUnixNano: String(t + 1_000_000n),
    ...over,
  };
}
