import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { describe, expect, it } from 'vitest';
import { TRACE_COLUMNS, mapSpans } from '../../../collector/ingest/mapping';
import { OtlpDecodeError, decodeJson, decodeProtobuf, type DecodedRequest } from '../../../collector/otlp';
import { collectorTrace, jsonBody, jsonSpan, nestedJsonText, nestedPbValue, withValue, pbBody, pbField, pbKeyValue, pbSpan } from '../../helpers/otlp-bodies';

/** The stored attribute map of each decoded span, as mapping writes it. */
function storedAttributes(decoded: DecodedRequest): Record<string, string>[] {
  const body = mapSpans(decoded.spans).rows.otel_traces;
  if (!body) return [];
  return body
    .toString()
    .trim()
    .split('\n')
    .flatMap((line) => JSON.parse(`[${line}]`) as unknown[][])
    .map((row) => row[TRACE_COLUMNS.indexOf('SpanAttributes')] as Record<string, string>);
}

function decodeError(fn: () => unknown): OtlpDecodeError {
  try {
    fn();
  } catch (err) {
    if (err instanceof OtlpDecodeError) return err;
    throw new Error(`expected an OtlpDecodeError, got ${String(err)}`);
  }
  throw new Error('expected an OtlpDecodeError, nothing was thrown');
}

describe('text ClickHouse would refuse is made safe', () => {
  it('OTLP/JSON: lone surrogates anywhere become U+FFFD; paired ones stay', () => {
    const span = jsonSpan('tool \ud800 name', {
      traceState: 'k=\udc00',
      status: { code: 2, message: 'cut \ud83d' },
      attributes: [
        { key: 'cut', value: { stringValue: 'a\ud800b' } },
        { key: 'key\udfff', value: { stringValue: 'ok 😀' } },
        { key: 'nested', value: { kvlistValue: { values: [{ key: 'in\ud800', value: { arrayValue: { values: [{ stringValue: '\udc00' }] } } }] } } },
      ],
      events: [{ timeUnixNano: '1', name: 'ev \ud800', attributes: [{ key: 'e', value: { stringValue: '\ud800' } }] }],
      links: [{ traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), traceState: '\ud800', attributes: [] }],
    });
    const decoded = decodeJson(jsonBody([span]));
    expect(decoded.rejectedCount).toBe(0);
    const [s] = decoded.spans;
    expect([s!.name, s!.traceState, s!.statusMessage, s!.events[0]!.name, s!.links[0]!.traceState]).toEqual([
      'tool \ufffd name',
      'k=\ufffd',
      'cut \ufffd',
      'ev \ufffd',
      '\ufffd',
    ]);
    expect(storedAttributes(decoded)[0]).toEqual({
      cut: 'a\ufffdb',
      'key\ufffd': 'ok 😀',
      nested: '{"in\ufffd":["\ufffd"]}',
    });
  });

  it('OTLP/JSON: what the stock serializer writes for a value cut inside an emoji', () => {
    const memory = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanLimits: { attributeValueLengthLimit: 3 }, spanProcessors: [new SimpleSpanProcessor(memory)] });
    provider.getTracer('t').startSpan('execute_tool emoji', { attributes: { note: '😀😀' } }).end();
    const text = Buffer.from(JsonTraceSerializer.serializeRequest(memory.getFinishedSpans())!).toString();
    expect(text).toContain('\\ud83d'); // the lone half the SDK's cut leaves
    const decoded = decodeJson(text);
    expect(storedAttributes(decoded)[0]!.note).toBe('😀\ufffd');
  });

  it('OTLP/JSON: an escaped backslash before "ud800" is text, left as it is', () => {
    const decoded = decodeJson(jsonBody([jsonSpan('n', { attributes: [{ key: 'k', value: { stringValue: '\\ud800 and \ud800' } }] })]));
    expect(storedAttributes(decoded)[0]!.k).toBe('\\ud800 and \ufffd');
  });

  it('OTLP/protobuf: invalid UTF-8 (cut, overlong, encoded surrogates) becomes U+FFFD', () => {
    const bad = Buffer.from([0x61, 0xed, 0xa0, 0x80, 0x62, 0xc0, 0xaf, 0xf0, 0x9f, 0x98]); // a, CESU \ud800, b, overlong '/', cut emoji
    const value = pbField(1, bad); // AnyValue.string_value
    const body = pbBody(pbSpan('XXXX'), [pbKeyValue('k', value), pbKeyValue(bad.toString('latin1'), pbField(1, Buffer.from('v')))]);
    // the span name too: swap XXXX for invalid bytes of the same length
    const at = body.indexOf('XXXX');
    Buffer.from([0xff, 0xfe, 0xed, 0xb0]).copy(body, at);
    for (const input of [body, new Uint8Array(body)]) {
      const decoded = decodeProtobuf(input as Buffer);
      expect(decoded.spans).toHaveLength(1);
      const [s] = decoded.spans;
      expect(s!.name.isWellFormed()).toBe(true);
      expect(s!.name).toMatch(/^\ufffd+$/);
      const attrs = storedAttributes(decoded)[0]!;
      expect(attrs.k!.isWellFormed()).toBe(true);
      expect(attrs.k).toMatch(/^a\ufffd+b\ufffd+$/);
      expect(Object.keys(attrs).every((k) => k.isWellFormed())).toBe(true);
    }
  });
});

describe('timestamps out of range are refused per span, naming span and field', () => {
  const YEAR_9999 = '253402300800000000000';
  const YEAR_2200 = '7258118400000000000';
  const LAST = 4_294_967_295_999_999_999n; // 2106-02-07T06:28:15.999999999Z

  it('OTLP/JSON', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ startTimeUnixNano: YEAR_9999, endTimeUnixNano: YEAR_9999 }, /start_time_unix_nano \("253402300800000000000"\) is after 2106-02-07T06:28:15Z/],
      [{ endTimeUnixNano: YEAR_2200 }, /end_time_unix_nano \(7258118400000000000\) is after 2106-02-07T06:28:15Z/],
      [{ endTimeUnixNano: String(LAST + 1n) }, /end_time_unix_nano \(\d+\) is after/],
      [{ startTimeUnixNano: '-5' }, /start_time_unix_nano \("-5"\) is negative/],
      [{ startTimeUnixNano: -5 }, /start_time_unix_nano \(-5\) is negative/],
      [{ startTimeUnixNano: 1.7e18 }, /start_time_unix_nano \(1700000000000000000\) is a JSON number too large to be exact/],
      [{ startTimeUnixNano: '1.5' }, /start_time_unix_nano \("1.5"\) is not a whole number of nanoseconds/],
      [{ startTimeUnixNano: '9'.repeat(5000) }, /start_time_unix_nano \("9{39}…\) is after/],
      [{ startTimeUnixNano: '0' }, /start_time_unix_nano is zero/],
      [{ startTimeUnixNano: undefined }, /start_time_unix_nano is missing/],
      [{ startTimeUnixNano: true }, /start_time_unix_nano \(true\) must be a decimal string/],
      [{ events: [{ timeUnixNano: YEAR_9999, name: 'late' }] }, /events\[0\]\.time_unix_nano \("253402300800000000000"\) is after/],
    ];
    for (const [over, message] of cases) {
      const bad = jsonSpan('execute_tool late', { spanId: 'ab'.repeat(8), ...over });
      const good = [jsonSpan('before'), jsonSpan('after', { endTimeUnixNano: String(LAST), events: [{ name: 'no time' }] })];
      const decoded = decodeJson(jsonBody([good[0]!, bad, good[1]!]));
      expect(decoded.spans.map((s) => s.name), JSON.stringify(over)).toEqual(['before', 'after']);
      expect(Object.fromEntries(decoded.rejected)).toEqual({ invalid_timestamp: 1 });
      expect(decoded.rejectionMessages[0]).toMatch(/^span 'execute_tool late' \(span_id abababababababab\): /);
      expect(decoded.rejectionMessages[0]).toMatch(message);
      expect(decoded.rejectionMessages[0]).not.toMatch(/missing or zero/);
    }
  });

  it('OTLP/protobuf', () => {
    const late = (start: string, end: string) => pbBody(pbSpan('execute_tool late', { spanId: Buffer.alloc(8, 0xab), startTimeUnixNano: start, endTimeUnixNano: end }));
    const year2200 = decodeProtobuf(late('1700000000000000000', YEAR_2200));
    expect(year2200.spans).toHaveLength(0);
    expect(year2200.rejectionMessages[0]).toBe(
      "span 'execute_tool late' (span_id abababababababab): end_time_unix_nano (7258118400000000000) is after 2106-02-07T06:28:15Z, the latest time custody stores",
    );
    // fixed64 beyond int64: what a signed -1 looks like on the wire
    const huge = decodeProtobuf(late('18446744073709551615', '18446744073709551615'));
    expect(huge.rejectionMessages[0]).toMatch(/start_time_unix_nano \(18446744073709551615\) is after/);
    const last = decodeProtobuf(late('1700000000000000000', String(LAST)));
    expect(last.spans).toHaveLength(1);
    const event = decodeProtobuf(pbBody(pbSpan('ev', { events: [{ timeUnixNano: YEAR_2200, name: 'late' }] })));
    expect(event.rejectionMessages[0]).toMatch(/events\[0\]\.time_unix_nano \(7258118400000000000\) is after/);
  });
});

describe('attribute values nest at most 64 levels', () => {
  it('OTLP/JSON: 64 levels are read; 65 or thousands are a decode error, never a stack overflow', () => {
    for (const kind of ['array', 'kvlist'] as const) {
      const body = (depth: number) => withValue(jsonBody([jsonSpan('deep', { attributes: [{ key: 'v', value: { stringValue: 'DEEP' } }] })]), nestedJsonText(depth, kind));
      const ok = decodeJson(body(64));
      expect(ok.spans).toHaveLength(1);
      expect(storedAttributes(ok)[0]!.v).toContain('innermost');
      for (const depth of [65, 5_000, 20_000]) {
        const err = decodeError(() => decodeJson(body(depth)));
        expect(err.code).toBe('ERR_OTLP_MALFORMED');
        expect(err.message).toMatch(/attributes\[0\]\.value.*: an attribute value nests arrays\/kvlists more than 64 levels deep$/);
      }
    }
    // resource, event and link attributes too
    const deep = [{ key: 'v', value: { stringValue: 'DEEP' } }];
    const where = [
      JSON.stringify({ resourceSpans: [{ resource: { attributes: deep }, scopeSpans: [{ spans: [jsonSpan('x')] }] }] }),
      jsonBody([jsonSpan('x', { events: [{ name: 'e', attributes: deep }] })]),
      jsonBody([jsonSpan('x', { links: [{ traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), attributes: deep }] })]),
    ];
    expect(where.map((body) => decodeError(() => decodeJson(withValue(body, nestedJsonText(65)))).message.split(':')[0])).toEqual([
      'resourceSpans[0].resource.attributes[0].value' + '.arrayValue.values[0]'.repeat(64),
      'resourceSpans[0].scopeSpans[0].spans[0].events[0].attributes[0].value' + '.arrayValue.values[0]'.repeat(64),
      'resourceSpans[0].scopeSpans[0].spans[0].links[0].attributes[0].value' + '.arrayValue.values[0]'.repeat(64),
    ]);
  });

  it('OTLP/protobuf: 64 levels are read; 65 or thousands are a decode error, never a stack overflow', () => {
    const body = (depth: number) => pbBody(pbSpan('deep'), [pbKeyValue('v', nestedPbValue(depth))]);
    const ok = decodeProtobuf(body(64));
    expect(ok.spans).toHaveLength(1);
    expect(storedAttributes(ok)[0]!.v).toBe('['.repeat(63) + '"innermost"' + ']'.repeat(63));
    expect(decodeError(() => decodeProtobuf(body(65))).message).toBe(
      'resourceSpans[0].scopeSpans[0].spans[0].attributes: an attribute value nests arrays/kvlists more than 64 levels deep',
    );
    for (const depth of [5_000, 20_000]) {
      expect(decodeError(() => decodeProtobuf(body(depth))).message).toMatch(/nest/);
    }
    // the same value the generated encoder writes decodes the same way
    const generated = collectorTrace.ExportTraceServiceRequest.encode(
      collectorTrace.ExportTraceServiceRequest.fromObject({
        resourceSpans: [{ scopeSpans: [{ spans: [{ ...pbSpan('deep'), attributes: [{ key: 'v', value: JSON.parse(nestedJsonText(65)) }] }] }] }],
      }),
    ).finish();
    expect(decodeError(() => decodeProtobuf(Buffer.from(generated))).message).toMatch(/more than 64 levels deep/);
  });
});
