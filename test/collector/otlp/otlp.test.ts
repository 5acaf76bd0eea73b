import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import generatedRoot from 'otlp-proto-root/build/src/generated/root';
import { AUDIT_COLUMNS, DECISION_COLUMNS, ROLLOUT_COLUMNS, TOKEN_COLUMNS, TRACE_COLUMNS, mapSpans, nsText } from '../../../collector/ingest/mapping';
import { CustodyError, HttpError } from '../../../common/errors';
import { OtlpDecodeError, OtlpHttpError, decodeJson, decodeProtobuf, encodeExportResponse, encodeStatus } from '../../../collector/otlp';

// the generated OTLP messages, to read what the receiver writes
const collectorTrace = (generatedRoot as any).opentelemetry.proto.collector.trace.v1;

function sdkSpans(build: (tracer: ReturnType<BasicTracerProvider['getTracer']>) => void): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'unit-agent', 'process.pid': 42 }),
    spanProcessors: [new SimpleSpanProcessor(memory)],
  });
  build(provider.getTracer('unit', '9.9.9'));
  return memory.getFinishedSpans() as ReadableSpan[];
}

/** Body lines → rows as objects keyed by column. */
function rowsOf(body: Buffer | undefined, columns: readonly string[]): Record<string, unknown>[] {
  if (!body) return [];
  return body
    .toString()
    .trim()
    .split('\n')
    .flatMap((line) => JSON.parse(`[${line}]`) as unknown[][])
    .map((row) => Object.fromEntries(columns.map((c, i) => [c, row[i]])));
}

const T = 1_700_000_000_000; // ms

function toolSpans() {
  return sdkSpans((tracer) => {
    const root = tracer.startSpan('invoke_agent', { kind: SpanKind.SERVER, startTime: T });
    const ctx = trace.setSpan(context.active(), root);
    const call = tracer.startSpan(
      'execute_tool billing.refund',
      {
        kind: SpanKind.INTERNAL,
        startTime: T + 1,
        attributes: {
          'gen_ai.operation.name': 'execute_tool',
          'gen_ai.tool.name': 'billing.refund',
          'gen_ai.tool.call.id': 'call-1',
          'gen_ai.agent.name': 'support',
          'custody.sponsor_id': 'alice',
          'custody.agent_instance_id': 'inst-1',
          'custody.parent_agent_id': 'root-1',
          'custody.role': 'support',
          'custody.tool_id': 'billing',
          'custody.action': 'refund',
          'custody.purpose': 'ticket "42"\nline two\ttab',
          'custody.policy_decision_id': 'pd-1',
          'custody.policy.decision': 'deny',
          'custody.policy.rule_id': 'r-1',
          'custody.policy.latency_ms': 12.5,
          'custody.policy.cached': true,
          'custody.enforced': true,
          'custody.rollout.cohort': 'canary',
          'custody.token.jti': 'jti-1',
          'custody.audit.seq': 7,
          'custody.audit.prev_hash': 'f'.repeat(64),
          'error.type': 'policy_denied',
          'x.extra': 'kept',
          'x.list': [1, 2],
        },
      },
      ctx,
    );
    call.addEvent('retry', { attempt: 2 }, T + 2);
    call.setStatus({ code: SpanStatusCode.ERROR, message: 'denied' });
    call.end(T + 6);
    const client = tracer.startSpan('GET /x', { kind: SpanKind.CLIENT, startTime: T + 7, links: [{ context: call.spanContext() }] }, ctx);
    client.setStatus({ code: SpanStatusCode.OK });
    client.end(T + 8);
    root.end(T + 10);
  });
}

describe('OTLP decoding', () => {
  it('reads what the stock protobuf and JSON serializers write, into identical rows', () => {
    const spans = toolSpans();
    const pb = decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!));
    const json = decodeJson(Buffer.from(JsonTraceSerializer.serializeRequest(spans)!).toString());
    expect(pb.rejectedCount).toBe(0);
    expect(json.rejectedCount).toBe(0);
    expect(pb.spans.map((s) => s.spanId).sort()).toEqual(spans.map((s) => s.spanContext().spanId).sort());
    const a = mapSpans(pb.spans);
    const b = mapSpans(json.spans);
    expect(a.rows).toEqual(b.rows);
    expect(a.counts).toEqual({ otel_traces: 3, audit_events: 1 });
  });

  it('writes otel_traces rows the way the ClickHouse exporter does', () => {
    const spans = toolSpans();
    const rows = rowsOf(mapSpans(decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!)).spans).rows.otel_traces, TRACE_COLUMNS);
    const byName = Object.fromEntries(rows.map((r) => [r.SpanName, r]));
    const call = byName['execute_tool billing.refund']!;
    const sdkCall = spans.find((s) => s.name === 'execute_tool billing.refund')!;
    expect(call.TraceId).toBe(sdkCall.spanContext().traceId);
    expect(call.SpanId).toBe(sdkCall.spanContext().spanId);
    expect(call.ParentSpanId).toBe(byName.invoke_agent!.SpanId);
    expect(byName.invoke_agent!.ParentSpanId).toBe('');
    expect(call.Timestamp).toBe('1700000000.001000000');
    expect(call.Duration).toBe('5000000');
    expect([call.SpanKind, byName.invoke_agent!.SpanKind, byName['GET /x']!.SpanKind]).toEqual(['Internal', 'Server', 'Client']);
    expect([call.StatusCode, byName['GET /x']!.StatusCode, byName.invoke_agent!.StatusCode]).toEqual(['Error', 'Ok', 'Unset']);
    expect(call.StatusMessage).toBe('denied');
    expect(call.ServiceName).toBe('unit-agent');
    expect(call.ResourceAttributes).toMatchObject({ 'service.name': 'unit-agent', 'process.pid': '42' });
    expect([call.ScopeName, call.ScopeVersion]).toEqual(['unit', '9.9.9']);
    // values as pcommon's AsString renders them
    expect(call.SpanAttributes).toMatchObject({
      'custody.policy.latency_ms': '12.5',
      'custody.policy.cached': 'true',
      'custody.audit.seq': '7',
      'x.list': '[1,2]',
      'custody.purpose': 'ticket "42"\nline two\ttab',
    });
    expect(call['Events.Name']).toEqual(['retry']);
    expect(call['Events.Timestamp']).toEqual(['1700000000.002000000']);
    expect(call['Events.Attributes']).toEqual([{ attempt: '2' }]);
    expect(byName['GET /x']!['Links.SpanId']).toEqual([call.SpanId]);
    expect(byName['GET /x']!['Links.TraceId']).toEqual([call.TraceId]);
  });

  it('turns a tool-call span into a typed audit row; the rest of its attributes stay in the map', () => {
    const spans = toolSpans();
    const mapped = mapSpans(decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!)).spans);
    const [row] = rowsOf(mapped.rows.audit_events, AUDIT_COLUMNS);
    expect(row).toMatchObject({
      timestamp: '1700000000.001000000',
      end_timestamp: '1700000000.006000000',
      service_name: 'unit-agent',
      sponsor_id: 'alice',
      agent_instance_id: 'inst-1',
      parent_agent_id: 'root-1',
      agent_name: 'support',
      role: 'support',
      tool_id: 'billing',
      tool_name: 'billing.refund',
      action: 'refund',
      purpose: 'ticket "42"\nline two\ttab',
      policy_decision_id: 'pd-1',
      decision: 'deny',
      rule_id: 'r-1',
      policy_latency_ms: 12.5,
      policy_cached: true,
      enforced: true,
      cohort: 'canary',
      status: 'error',
      error_type: 'policy_denied',
      token_jti: 'jti-1',
      tool_call_id: 'call-1',
      audit_seq: 7,
      audit_prev_hash: 'f'.repeat(64),
      duration_ns: '5000000',
      attributes: { 'x.extra': 'kept', 'x.list': '[1,2]' },
    });
    expect(mapped.toolCalls).toEqual(new Map([['billing\0deny\0canary', 1]]));
    expect(mapped.missingSponsor).toBe(0);
  });

  it('classifies tool calls by name prefix or gen_ai.operation.name, and nothing else', () => {
    const spans = sdkSpans((tracer) => {
      tracer.startSpan('execute_tool', { startTime: T }).end(T + 1);
      tracer.startSpan('run lookup', { startTime: T, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'crm' } }).end(T + 1);
      tracer.startSpan('execute_toolbox', { startTime: T }).end(T + 1);
      tracer.startSpan('chat gpt', { startTime: T, attributes: { 'gen_ai.operation.name': 'chat' } }).end(T + 1);
    });
    const mapped = mapSpans(decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!)).spans);
    expect(mapped.counts).toEqual({ otel_traces: 4, audit_events: 2 });
    const audit = rowsOf(mapped.rows.audit_events, AUDIT_COLUMNS);
    expect(audit.map((r) => r.tool_id).sort()).toEqual(['', 'crm']);
    // no sponsor: stored, and counted
    expect(audit.every((r) => r.sponsor_id === '')).toBe(true);
    expect(mapped.missingSponsor).toBe(2);
  });

  it('takes the sponsor from baggage-copied or resource attributes when the span has none', () => {
    const spans = sdkSpans((tracer) => {
      tracer.startSpan('execute_tool a', { startTime: T, attributes: { 'baggage.custody.sponsor_id': 'bob' } }).end(T + 1);
      tracer.startSpan('execute_tool b', { startTime: T }).end(T + 1);
    });
    const body = JSON.parse(Buffer.from(JsonTraceSerializer.serializeRequest(spans)!).toString());
    body.resourceSpans[0].resource.attributes.push({ key: 'custody.sponsor_id', value: { stringValue: 'carol' } });
    const audit = rowsOf(mapSpans(decodeJson(JSON.stringify(body)).spans).rows.audit_events, AUDIT_COLUMNS);
    expect(Object.fromEntries(audit.map((r) => [r.tool_id, r.sponsor_id]))).toEqual({ a: 'bob', b: 'carol' });
  });

  it("maps custody's event spans to the decision log, token events and rollout changes", () => {
    const spans = sdkSpans((tracer) => {
      tracer
        .startSpan('custody.policy.decision', {
          startTime: T,
          attributes: {
            'custody.policy_decision_id': 'pd-9',
            'custody.policy.decision': 'allow',
            'custody.policy.rule_id': 'r-9',
            'custody.policy.reason': 'ok',
            'custody.sponsor_id': 'alice',
            'custody.agent_instance_id': 'i-9',
            'custody.tool_id': 'billing',
            'custody.rollout.cohort': 'baseline',
            'custody.enforced': false,
            'custody.policy.latency_ms': 3,
            'custody.policy.version': 'v7',
          },
        })
        .end(T);
      tracer
        .startSpan('custody.token.issue', {
          startTime: T,
          attributes: {
            'custody.token.result': 'refused',
            'custody.token.kind': 'issue',
            'custody.token.refusal_code': 'sponsor_required',
            'custody.token.ttl_seconds': 300,
            'custody.token.expires_at': T + 300_000,
            'custody.tool_id': 'billing',
          },
        })
        .end(T);
      tracer
        .startSpan('custody.rollout.change', {
          startTime: T,
          attributes: { 'custody.rollout.from_percent': 10, 'custody.rollout.to_percent': 0, 'custody.rollout.reason': 'breach', 'custody.rollout.actor': 'rollback' },
        })
        .end(T);
    });
    const mapped = mapSpans(decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!)).spans);
    expect(mapped.counts).toEqual({ otel_traces: 3, policy_decisions: 1, token_events: 1, rollout_events: 1 });
    expect(rowsOf(mapped.rows.policy_decisions, DECISION_COLUMNS)[0]).toMatchObject({
      policy_decision_id: 'pd-9',
      decision: 'allow',
      rule_id: 'r-9',
      reason: 'ok',
      sponsor_id: 'alice',
      agent_instance_id: 'i-9',
      tool_id: 'billing',
      cohort: 'baseline',
      enforced: false,
      latency_ms: 3,
      attributes: { 'custody.policy.version': 'v7' },
    });
    expect(rowsOf(mapped.rows.token_events, TOKEN_COLUMNS)[0]).toMatchObject({
      result: 'refused',
      kind: 'issue',
      code: 'sponsor_required',
      ttl_seconds: 300,
      expires_at: '1700000300.000',
      tool_id: 'billing',
    });
    expect(rowsOf(mapped.rows.rollout_events, ROLLOUT_COLUMNS)[0]).toMatchObject({ from_percent: 10, to_percent: 0, reason: 'breach', actor: 'rollback' });
  });
});

// A hand-written OTLP/JSON request: hex ids, int64 as strings, enums as integers.
function jsonRequest(spans: object[], resourceAttributes: object[] = []) {
  return JSON.stringify({ resourceSpans: [{ resource: { attributes: resourceAttributes }, scopeSpans: [{ scope: { name: 's' }, spans }] }] });
}
const okSpan = (over: Record<string, unknown> = {}) => ({
  traceId: '5B8EFFF798038103D269B633813FC60C',
  spanId: 'EEE19B7EC3C1B174',
  name: 'execute_tool t',
  kind: 3,
  startTimeUnixNano: '1700000000000000001',
  endTimeUnixNano: '1700000000500000001',
  ...over,
});

describe('OTLP/JSON', () => {
  it('reads every AnyValue kind and renders it as the exporter does', () => {
    const attributes = [
      { key: 's', value: { stringValue: 'x' } },
      { key: 'i_str', value: { intValue: '9007199254740993' } },
      { key: 'i_num', value: { intValue: 42 } },
      { key: 'd', value: { doubleValue: 0.1 } },
      { key: 'd_int', value: { doubleValue: 5 } },
      { key: 'b', value: { boolValue: false } },
      { key: 'bytes', value: { bytesValue: Buffer.from('hi').toString('base64') } },
      { key: 'arr', value: { arrayValue: { values: [{ stringValue: 'a' }, { intValue: '2' }, { boolValue: true }, { arrayValue: { values: [] } }] } } },
      { key: 'kv', value: { kvlistValue: { values: [{ key: 'z', value: { intValue: 1 } }, { key: 'a', value: { stringValue: 'q' } }] } } },
      { key: 'empty', value: {} },
      { key: 'snake', value: { string_value: 'old style' } },
    ];
    const decoded = decodeJson(jsonRequest([okSpan({ attributes, status: { code: 2, message: 'm' } })]));
    const [row] = rowsOf(mapSpans(decoded.spans).rows.otel_traces, TRACE_COLUMNS);
    expect(row!.SpanAttributes).toEqual({
      s: 'x',
      i_str: '9007199254740993',
      i_num: '42',
      d: '0.1',
      d_int: '5',
      b: 'false',
      bytes: 'aGk=',
      arr: '["a",2,true,[]]',
      kv: '{"a":"q","z":1}',
      empty: '',
      snake: 'old style',
    });
    expect(row!.TraceId).toBe('5b8efff798038103d269b633813fc60c');
    expect(row!.SpanKind).toBe('Client');
    expect(row!.StatusCode).toBe('Error');
    expect(row!.Timestamp).toBe('1700000000.000000001');
    expect(row!.Duration).toBe('500000000');
  });

  it('accepts enum names and snake_case field names too', () => {
    const decoded = decodeJson(
      JSON.stringify({
        resource_spans: [
          {
            scope_spans: [
              {
                spans: [
                  {
                    trace_id: '5b8efff798038103d269b633813fc60c',
                    span_id: 'eee19b7ec3c1b174',
                    name: 'n',
                    kind: 'SPAN_KIND_PRODUCER',
                    start_time_unix_nano: 1700000000000000,
                    end_time_unix_nano: '1700000000000001',
                    status: { code: 'STATUS_CODE_OK' },
                  },
                ],
              },
            ],
          },
        ],
      }),
    );
    expect(decoded.spans).toHaveLength(1);
    const [row] = rowsOf(mapSpans(decoded.spans).rows.otel_traces, TRACE_COLUMNS);
    expect([row!.SpanKind, row!.StatusCode, row!.Duration]).toEqual(['Producer', 'Ok', '1']);
  });

  it('rejects a span with bad ids or times alone, counts it by reason, keeps the rest', () => {
    const decoded = decodeJson(
      jsonRequest([
        okSpan({ spanId: '0000000000000001' }),
        okSpan({ traceId: '00000000000000000000000000000000' }),
        okSpan({ traceId: 'abc' }),
        okSpan({ spanId: '0000000000000000' }),
        okSpan({ spanId: 'eee19b7ec3c1b17' }),
        okSpan({ parentSpanId: 'eee19b' }),
        okSpan({ startTimeUnixNano: '0' }),
        okSpan({ startTimeUnixNano: undefined }),
        okSpan({ endTimeUnixNano: '1600000000000000000' }),
        okSpan({ endTimeUnixNano: '99999999999999999999' }),
        okSpan({ spanId: '0000000000000002', parentSpanId: '0000000000000000' }),
      ]),
    );
    expect(decoded.spans.map((s) => s.spanId)).toEqual(['0000000000000001', '0000000000000002']);
    expect(decoded.spans[1]!.parentSpanId).toBe('');
    expect(decoded.rejectedCount).toBe(9);
    expect(Object.fromEntries(decoded.rejected)).toEqual({
      invalid_trace_id: 2,
      invalid_span_id: 2,
      invalid_parent_span_id: 1,
      invalid_timestamp: 4,
    });
    expect(decoded.rejectionMessages[0]).toMatch(/trace_id must be 16 bytes/);
  });

  it('refuses a malformed body with a message naming what is wrong', () => {
    const bad: [string, RegExp][] = [
      ['{bad', /malformed OTLP JSON/],
      ['[]', /must be a JSON object/],
      ['{"resourceSpans": 5}', /resourceSpans must be an array/],
      [jsonRequest([okSpan({ attributes: [{ key: 'k', value: { boolValue: 'yes' } }] })]), /attributes\[0\]\.value\.boolValue must be a boolean/],
      [jsonRequest([okSpan({ attributes: [{ key: 'k', value: { intValue: '1.5' } }] })]), /intValue must be an integer/],
      [jsonRequest([okSpan({ attributes: [{ value: { stringValue: 'x' } }] })]), /key must be a string/],
      [jsonRequest([okSpan({ kind: 'SIDEWAYS' })]), /kind must be an enum/],
      [jsonRequest([okSpan({ name: 7 })]), /name must be a string/],
    ];
    for (const [body, message] of bad) {
      expect(() => decodeJson(body), body).toThrow(OtlpDecodeError);
      expect(() => decodeJson(body), body).toThrow(message);
    }
  });

  it("raises the project's errors, with stable codes", () => {
    const err = (() => {
      try {
        decodeJson('{bad');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(CustodyError);
    expect(err).toMatchObject({ name: 'OtlpDecodeError', code: 'ERR_OTLP_MALFORMED' });
    const http = new OtlpHttpError(413, 8, 'payload_too_large', 'too big', { Connection: 'close' });
    expect(http).toBeInstanceOf(HttpError);
    expect(http).toMatchObject({ name: 'OtlpHttpError', status: 413, grpcCode: 8, code: 'payload_too_large', headers: { Connection: 'close' } });
  });

  it('keeps any well-formed string through the row format unchanged, and only lone surrogates become U+FFFD (property)', () => {
    // code points of every plane, and lone surrogates: 'binary' alone never makes one
    const unit = fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff', '\ud83d'));
    fc.assert(
      fc.property(fc.dictionary(fc.string({ unit: 'grapheme' }), fc.string({ unit }), { maxKeys: 8 }), fc.string({ unit }), (attrs, name) => {
        const attributes = Object.entries(attrs).map(([key, v]) => ({ key, value: { stringValue: v } }));
        const decoded = decodeJson(jsonRequest([okSpan({ name, attributes })]));
        const [row] = rowsOf(mapSpans(decoded.spans).rows.otel_traces, TRACE_COLUMNS);
        expect(row!.SpanName).toBe(name.toWellFormed());
        expect(row!.SpanAttributes).toEqual(Object.fromEntries(Object.entries(attrs).map(([k, v]) => [k, v.toWellFormed()])));
      }),
      { numRuns: 300 },
    );
  });
});

describe('OTLP protobuf', () => {
  it('refuses bytes that are not an ExportTraceServiceRequest', () => {
    // field 1, length-delimited, with a length far past the end
    expect(() => decodeProtobuf(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]))).toThrow(OtlpDecodeError);
  });

  it('rejects a span with a short trace id alone', () => {
    const spans = toolSpans();
    const request = collectorTrace.ExportTraceServiceRequest.decode(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!));
    request.resourceSpans[0].scopeSpans[0].spans[0].traceId = Buffer.from('abcd', 'hex');
    const decoded = decodeProtobuf(Buffer.from(collectorTrace.ExportTraceServiceRequest.encode(request).finish()));
    expect(decoded.spans).toHaveLength(2);
    expect(Object.fromEntries(decoded.rejected)).toEqual({ invalid_trace_id: 1 });
  });

  it('keeps 64-bit integers exact', () => {
    const spans = sdkSpans((tracer) => tracer.startSpan('n', { startTime: T, attributes: { big: 2 ** 53 + 2, neg: -5 } }).end(T + 1));
    const request = collectorTrace.ExportTraceServiceRequest.decode(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!));
    const kv = request.resourceSpans[0].scopeSpans[0].spans[0].attributes;
    // set an int64 beyond 2^53 on the wire
    kv[0].value = { intValue: { low: 1, high: 0x200000, unsigned: false } };
    const decoded = decodeProtobuf(Buffer.from(collectorTrace.ExportTraceServiceRequest.encode(request).finish()));
    const [row] = rowsOf(mapSpans(decoded.spans).rows.otel_traces, TRACE_COLUMNS);
    expect((row!.SpanAttributes as Record<string, string>).big).toBe(String(2n ** 53n + 1n));
    expect((row!.SpanAttributes as Record<string, string>).neg).toBe('-5');
  });
});

describe('responses', () => {
  it('encodes ExportTraceServiceResponse with partial_success only when spans were refused', () => {
    const full = collectorTrace.ExportTraceServiceResponse.decode(encodeExportResponse('protobuf', 0, ''));
    expect(full.partialSuccess).toBeNull();
    const partial = collectorTrace.ExportTraceServiceResponse.decode(encodeExportResponse('protobuf', 3, 'three bad'));
    expect(Number(partial.partialSuccess.rejectedSpans)).toBe(3);
    expect(partial.partialSuccess.errorMessage).toBe('three bad');
    expect(JSON.parse(encodeExportResponse('json', 0, '').toString())).toEqual({});
    expect(JSON.parse(encodeExportResponse('json', 2, 'x').toString())).toEqual({ partialSuccess: { rejectedSpans: '2', errorMessage: 'x' } });
  });

  it('encodes google.rpc.Status: code as field 1, message as field 2', () => {
    const bytes = encodeStatus('protobuf', 3, 'bad', { code: 'invalid_request', message: 'bad' });
    expect([...bytes]).toEqual([0x08, 3, 0x12, 3, ...Buffer.from('bad')]);
    expect(JSON.parse(encodeStatus('json', 14, 'down', { code: 'storage_unavailable', message: 'down' }).toString())).toEqual({
      code: 14,
      message: 'down',
      error: { code: 'storage_unavailable', message: 'down' },
    });
  });

  it('writes nanosecond timestamps exactly', () => {
    expect(nsText(1n)).toBe('0.000000001');
    expect(nsText(1_700_000_000_123_456_789n)).toBe('1700000000.123456789');
    expect(nsText(9_223_372_036_854_775_807n)).toBe('9223372036.854775807');
  });
});
