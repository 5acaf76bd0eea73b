import zlib from 'node:zlib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../../collector/store';
import { startCustody, type RunningCustody } from '../../helpers/custody';
import { collectorTrace, hex, jsonBody, jsonSpan, nestedJsonText, nestedPbValue, pbBody, pbKeyValue, pbSpan, withValue } from '../../helpers/otlp-bodies';

/**
 * Fuzzing the OTLP receiver of a real collector with JSON and protobuf bodies: no input gets a
 * 5xx, and the valid request sent after each input is acknowledged (200 means stored) and is in
 * the store afterwards.
 */

const RUN = hex(4);
// every acknowledged request waits for a durable insert (a few hundred ms on a busy machine)
const RUNS = 60;
const TIMEOUT_MS = 300_000;
const CANARY_INSTANCE = `fuzz-canary-${RUN}`;

let custody: RunningCustody;
const canaries: string[] = [];
const statuses = new Map<number, number>();

beforeAll(async () => {
  custody = await startCustody({ command: 'collector', env: { CUSTODY_CHECKPOINTER: 'off' } });
});

afterAll(async () => {
  await custody?.stop();
});

async function post(body: Buffer | string, type: 'json' | 'protobuf', gzip = false) {
  const headers: Record<string, string> = { 'Content-Type': type === 'json' ? 'application/json' : 'application/x-protobuf' };
  if (gzip) headers['Content-Encoding'] = 'gzip';
  const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', body: gzip ? zlib.gzipSync(body) : body, headers });
  const answer = Buffer.from(await res.arrayBuffer());
  statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
  return { status: res.status, answer };
}

/** The valid request after each input: one tool call, alternately JSON and protobuf. */
async function canary(): Promise<void> {
  const attributes = { 'custody.agent_instance_id': CANARY_INSTANCE, 'custody.tool_id': 'fuzz.canary', 'custody.sponsor_id': 'alice' };
  const json = canaries.length % 2 === 0;
  let res;
  let spanId: string;
  if (json) {
    const span = jsonSpan('execute_tool fuzz.canary', { attributes: Object.entries(attributes).map(([key, v]) => ({ key, value: { stringValue: v } })) });
    spanId = span.spanId as string;
    res = await post(jsonBody([span], 'fuzz'), 'json');
    expect(JSON.parse(res.answer.toString())).toEqual({});
  } else {
    const span = pbSpan('execute_tool fuzz.canary', { attributes: Object.entries(attributes).map(([key, v]) => ({ key, value: { stringValue: v } })) });
    spanId = (span.spanId as Buffer).toString('hex');
    res = await post(pbBody(span), 'protobuf');
    expect(collectorTrace.ExportTraceServiceResponse.decode(res.answer).partialSuccess).toBeNull();
  }
  expect(res.status, 'the valid request after the input').toBe(200);
  canaries.push(spanId);
}

// ---------------------------------------------------------------------------------------------
// what is sent

/** Text with what breaks naive handling: lone surrogates, NUL, quotes, backslashes, astral code points. */
const text = fc.string({
  unit: fc.oneof(
    { weight: 4, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
    fc.constantFrom('\ud800', '\udfff', '\ud83d', '\u0000', '\\', '"', '\u001b', '😀'),
  ),
  maxLength: 24,
});
const YEAR_9999 = '253402300800000000000';
const nanosJson = fc.oneof(
  fc.bigInt({ min: 0n, max: 2n ** 64n }).map(String),
  fc.constantFrom(YEAR_9999, '-5', '1.5', '0', '', '9'.repeat(400), '1e18'),
  fc.integer(),
  fc.double(),
  fc.constant(undefined),
  text,
);
const idJson = (bytes: number) =>
  fc.oneof(fc.uint8Array({ minLength: bytes, maxLength: bytes }).map((b) => Buffer.from(b).toString('hex')), fc.constant('0'.repeat(bytes * 2)), text, fc.integer());

const { anyJson, kvJson } = fc.letrec((tie) => ({
  anyJson: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ stringValue: text }),
    fc.record({ intValue: fc.oneof(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n }).map(String), fc.integer(), fc.double(), text) }),
    fc.record({ doubleValue: fc.oneof(fc.double(), fc.constantFrom('NaN', 'Infinity', '-Infinity'), text) }),
    fc.record({ boolValue: fc.oneof(fc.boolean(), text) }),
    fc.record({ bytesValue: fc.oneof(fc.base64String(), text) }),
    fc.record({ string_value: text }),
    fc.record({ arrayValue: fc.record({ values: fc.array(tie('anyJson'), { maxLength: 3 }) }) }),
    fc.record({ kvlistValue: fc.record({ values: fc.array(tie('kvJson'), { maxLength: 3 }) }) }),
    fc.constant({}),
    fc.constant(null),
    fc.anything({ maxDepth: 2 }),
  ),
  kvJson: fc.oneof({ weight: 5, arbitrary: fc.record({ key: text, value: tie('anyJson') }) }, fc.anything({ maxDepth: 1 })),
}));

const spanJson = fc.record(
  {
    traceId: idJson(16),
    spanId: idJson(8),
    parentSpanId: idJson(8),
    name: fc.oneof({ weight: 5, arbitrary: text }, fc.anything({ maxDepth: 1 })),
    kind: fc.oneof(fc.integer({ min: -1, max: 7 }), fc.constantFrom('SPAN_KIND_SERVER', 'BOGUS')),
    traceState: text,
    startTimeUnixNano: nanosJson,
    endTimeUnixNano: nanosJson,
    attributes: fc.oneof({ weight: 5, arbitrary: fc.array(kvJson, { maxLength: 4 }) }, fc.anything({ maxDepth: 1 })),
    events: fc.array(fc.record({ timeUnixNano: nanosJson, name: text, attributes: fc.array(kvJson, { maxLength: 2 }) }, { requiredKeys: [] }), { maxLength: 2 }),
    links: fc.array(fc.record({ traceId: idJson(16), spanId: idJson(8), traceState: text, attributes: fc.array(kvJson, { maxLength: 2 }) }, { requiredKeys: [] }), {
      maxLength: 2,
    }),
    status: fc.record({ code: fc.oneof(fc.integer({ min: -1, max: 3 }), text), message: text }, { requiredKeys: [] }),
  },
  { requiredKeys: [] },
);

/** A valid span, so that most requests mix good spans with bad ones. */
const goodJson = fc.constant(null).map(() => jsonSpan('fuzz good', { attributes: [{ key: 'k', value: { stringValue: 'v' } }] }));

const jsonBodies = fc.oneof(
  { weight: 6, arbitrary: fc.array(fc.oneof(spanJson, goodJson), { maxLength: 6 }).map((spans) => jsonBody(spans, 'fuzz-input')) },
  // attribute values nested around the limit and far past it
  fc.tuple(fc.integer({ min: 60, max: 70 }), fc.constantFrom<'array' | 'kvlist'>('array', 'kvlist')).map(([depth, kind]) =>
    withValue(jsonBody([jsonSpan('deep', { attributes: [{ key: 'v', value: { stringValue: 'DEEP' } }] })]), nestedJsonText(depth, kind)),
  ),
  fc.integer({ min: 100, max: 5000 }).map((depth) => withValue(jsonBody([jsonSpan('deeper', { attributes: [{ key: 'v', value: { stringValue: 'DEEP' } }] })]), nestedJsonText(depth))),
  fc.json().map((j) => j),
  fc.string(),
  // a valid body cut or spliced
  fc.tuple(fc.nat(), fc.nat(), fc.string({ maxLength: 8 })).map(([a, b, insert]) => {
    const body = jsonBody([jsonSpan('spliced', { attributes: [{ key: 'k', value: { arrayValue: { values: [{ intValue: '1' }] } } }] })]);
    const i = a % body.length;
    return body.slice(0, i) + insert + body.slice(i + (b % 8));
  }),
);

const { anyPb, kvPb } = fc.letrec((tie) => ({
  anyPb: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ stringValue: text }),
    fc.record({ intValue: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String) }),
    fc.record({ doubleValue: fc.double() }),
    fc.record({ boolValue: fc.boolean() }),
    fc.record({ bytesValue: fc.uint8Array({ maxLength: 16 }) }),
    fc.record({ arrayValue: fc.record({ values: fc.array(tie('anyPb'), { maxLength: 3 }) }) }),
    fc.record({ kvlistValue: fc.record({ values: fc.array(tie('kvPb'), { maxLength: 3 }) }) }),
    fc.constant({}),
  ),
  kvPb: fc.record({ key: text, value: tie('anyPb') }, { requiredKeys: [] }),
}));
const nanosPb = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(0n, 7258118400000000000n, 2n ** 63n)).map(String);
const idPb = (bytes: number) => fc.oneof(fc.uint8Array({ minLength: bytes, maxLength: bytes }), fc.uint8Array({ maxLength: 20 }));
const spanPb = fc.record(
  {
    traceId: idPb(16),
    spanId: idPb(8),
    parentSpanId: idPb(8),
    name: text,
    kind: fc.integer({ min: 0, max: 9 }),
    traceState: text,
    startTimeUnixNano: nanosPb,
    endTimeUnixNano: nanosPb,
    attributes: fc.array(kvPb, { maxLength: 4 }),
    events: fc.array(fc.record({ timeUnixNano: nanosPb, name: text, attributes: fc.array(kvPb, { maxLength: 2 }) }, { requiredKeys: [] }), { maxLength: 2 }),
    links: fc.array(fc.record({ traceId: idPb(16), spanId: idPb(8), traceState: text, attributes: fc.array(kvPb, { maxLength: 2 }) }, { requiredKeys: [] }), { maxLength: 2 }),
    status: fc.record({ code: fc.integer({ min: 0, max: 5 }), message: text }, { requiredKeys: [] }),
  },
  { requiredKeys: [] },
);
const goodPb = fc.constant(null).map(() => pbSpan('fuzz good', { attributes: [{ key: 'k', value: { stringValue: 'v' } }] }));
const encodePb = (spans: object[]) =>
  Buffer.from(
    collectorTrace.ExportTraceServiceRequest.encode(
      collectorTrace.ExportTraceServiceRequest.fromObject({
        resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'fuzz-input' } }] }, scopeSpans: [{ spans }] }],
      }),
    ).finish(),
  );

/** Bytes changed the ways a broken or hostile sender changes them. */
const mutate = (body: Buffer) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constant(body) },
    fc.nat().map((n) => body.subarray(0, n % (body.length + 1))),
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }).map((flips) => {
      const copy = Buffer.from(body);
      for (const [at, byte] of flips) if (copy.length) copy[at % copy.length] = byte;
      return copy;
    }),
  );

const pbBodies = fc.oneof(
  { weight: 6, arbitrary: fc.array(fc.oneof(spanPb, goodPb), { maxLength: 6 }).chain((spans) => mutate(encodePb(spans))) },
  fc.integer({ min: 60, max: 70 }).map((depth) => pbBody(pbSpan('deep'), [pbKeyValue('v', nestedPbValue(depth))])),
  fc.integer({ min: 100, max: 20_000 }).map((depth) => pbBody(pbSpan('deeper'), [pbKeyValue('v', nestedPbValue(depth))])),
  fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b)),
);

// inputs that must be in every run, whatever the random ones reach
const LONE_SURROGATE_JSON = jsonBody([jsonSpan('execute_tool cut', { attributes: [{ key: 'note', value: { stringValue: 'a\ud800b' } }] })]);
const YEAR_9999_JSON = jsonBody([jsonSpan('late', { startTimeUnixNano: YEAR_9999, endTimeUnixNano: YEAR_9999 }), jsonSpan('fine')]);
const DEEP_JSON = withValue(jsonBody([jsonSpan('deep', { attributes: [{ key: 'v', value: { stringValue: 'DEEP' } }] })]), nestedJsonText(3000));
const INVALID_UTF8_PB = (() => {
  const body = pbBody(pbSpan('XXXX'));
  Buffer.from([0xed, 0xa0, 0x80, 0xff]).copy(body, body.indexOf('XXXX'));
  return body;
})();

describe('the OTLP receiver under fuzzed input', () => {
  it('OTLP/JSON: no input gets a 5xx; the next valid request is stored', async () => {
    await fc.assert(
      fc.asyncProperty(jsonBodies, fc.boolean(), async (body, gzip) => {
        const res = await post(body, 'json', gzip);
        expect(res.status, body.slice(0, 300)).toBeLessThan(500);
        await canary();
      }),
      { numRuns: RUNS, examples: [[LONE_SURROGATE_JSON, false], [YEAR_9999_JSON, false], [DEEP_JSON, true], ['{"resourceSpans":[', false]] },
    );
  }, TIMEOUT_MS);

  it('OTLP/protobuf: no input gets a 5xx; the next valid request is stored', async () => {
    await fc.assert(
      fc.asyncProperty(pbBodies, fc.boolean(), async (body, gzip) => {
        const res = await post(body, 'protobuf', gzip);
        expect(res.status, body.subarray(0, 100).toString('hex')).toBeLessThan(500);
        await canary();
      }),
      {
        numRuns: RUNS,
        examples: [[INVALID_UTF8_PB, false], [pbBody(pbSpan('deep'), [pbKeyValue('v', nestedPbValue(50_000))]), false], [Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f]), false]],
      },
    );
  }, TIMEOUT_MS);

  it('answered both ways: spans stored and requests refused', () => {
    // the runs reached both outcomes, not only one of them
    expect(statuses.get(200)).toBeGreaterThan(canaries.length);
    expect(statuses.get(400)).toBeGreaterThan(0);
    expect([...statuses.keys()].every((s) => s < 500)).toBe(true);
  });

  it('every acknowledged valid request is in the store', async () => {
    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, migrate: false });
    try {
      const rows = await (
        await store.client.query({
          query: `SELECT span_id FROM custody.audit_events WHERE agent_instance_id = {instance:String}`,
          query_params: { instance: CANARY_INSTANCE },
          format: 'JSONEachRow',
        })
      ).json<{ span_id: string }>();
      expect(rows.map((r) => r.span_id).sort()).toEqual([...canaries].sort());
      // the fixed examples run within numRuns
      expect(canaries.length).toBe(2 * RUNS);
    } finally {
      await store.close();
    }
  });
});
