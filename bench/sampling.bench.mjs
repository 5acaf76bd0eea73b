// Bytes per tool call in the store with and without 1 % audit sampling, on a realistic mix.
//
//   npm run build && node bench/sampling.bench.mjs [calls=100000] [rate=0.01]
//
// The calls are OTLP/protobuf requests made with the OpenTelemetry SDK and its serializer, 1000
// tool-call spans each, in this mix (per 100 calls): 55 `search.query` and 20 `kb.lookup` (low
// risk: the policy gives them `audit: { sample }`), 10 `file-store.read` (medium, no sampling),
// 8 `billing.refund` (high: never sampled), 5 calls the plane denied and 2 whose tool threw
// (never sampled). With sampling, each span carries what custody/register puts there: the rate the
// plane granted and, when its bucket is past it, `custody.audit.sampled`. Each mode maps the
// requests with the collector's own mapping (collector/ingest/mapping.ts) into a fresh embedded
// store (its own process: one chDB engine per process), merges (`OPTIMIZE … FINAL`) and reads the
// compressed bytes of audit_events and otel_traces from `system.parts`.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const SPANS_PER_BATCH = 1000;
const TABLES = ['audit_events', 'otel_traces'];

function mixOf(i) {
  const k = i % 100;
  if (k < 5) return { tool: 'search', action: 'query', risk: 'low', outcome: 'deny' };
  if (k < 7) return { tool: 'kb', action: 'lookup', risk: 'low', outcome: 'error' };
  if (k < 60) return { tool: 'search', action: 'query', risk: 'low', outcome: 'ok' };
  if (k < 80) return { tool: 'kb', action: 'lookup', risk: 'low', outcome: 'ok' };
  if (k < 90) return { tool: 'file-store', action: 'read', risk: 'medium', outcome: 'ok' };
  if (k < 92) return { tool: 'search', action: 'query', risk: 'low', outcome: 'ok' };
  return { tool: 'billing', action: 'refund', risk: 'high', outcome: 'ok' };
}

function makeRequests(calls, rate) {
  const { isSampledOut } = require('../dist/common/audit-sample.js');
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
  const { resourceFromAttributes } = require('@opentelemetry/resources');
  const { ProtobufTraceSerializer } = require('@opentelemetry/otlp-transformer');
  const { SpanKind, SpanStatusCode, context, trace } = require('@opentelemetry/api');
  const out = [];
  let sampledOut = 0;
  const t0 = Date.now() - 3600_000;
  for (let b = 0; b * SPANS_PER_BATCH < calls; b++) {
    const memory = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({
        'service.name': 'support-agent', 'service.version': '1.4.2', 'telemetry.sdk.name': 'opentelemetry',
        'telemetry.sdk.language': 'nodejs', 'telemetry.sdk.version': '2.12.0', 'host.name': `worker-${b % 4}`,
        'process.pid': 4000 + b, 'process.runtime.name': 'nodejs', 'process.runtime.version': '20.20.0',
      }),
      spanProcessors: [new SimpleSpanProcessor(memory)],
    });
    const tracer = provider.getTracer('custody', '0.1.0');
    for (let j = 0; j < SPANS_PER_BATCH; j++) {
      const i = b * SPANS_PER_BATCH + j;
      const m = mixOf(i);
      const instance = `support-${Math.floor(i / 50)}`;
      const parent = trace.setSpanContext(context.active(), {
        traceId: crypto.createHash('md5').update(`turn:${Math.floor(i / 10)}`).digest('hex'),
        spanId: crypto.randomBytes(8).toString('hex'),
        traceFlags: 1,
      });
      const start = t0 + i * 17;
      const decision = m.outcome === 'deny' ? 'deny' : 'allow';
      const span = tracer.startSpan(`execute_tool ${m.tool}.${m.action}`, {
        kind: SpanKind.INTERNAL,
        startTime: start,
        attributes: {
          'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': `${m.tool}.${m.action}`, 'gen_ai.tool.type': 'function',
          'gen_ai.tool.call.id': `call_${crypto.randomBytes(12).toString('hex')}`, 'gen_ai.agent.id': instance,
          'gen_ai.agent.name': 'support-assistant', 'custody.sponsor_id': 'alice@example.com', 'custody.agent_instance_id': instance,
          'custody.parent_agent_id': i % 3 === 0 ? `support-root-${Math.floor(i / 500)}` : '', 'custody.role': 'support',
          'custody.tool_id': m.tool, 'custody.action': m.action, 'custody.purpose': `resolve ticket #${48000 + (i % 500)}`,
          'custody.request_hash': crypto.randomBytes(32).toString('hex'),
          'custody.policy_decision_id': crypto.randomUUID(), 'custody.policy.decision': decision,
          'custody.policy.rule_id': decision === 'deny' ? 'default-deny' : `allow-support-${m.tool}`,
          'custody.policy.reason': decision === 'deny' ? `no rule allows role 'support' ${m.action} on ${m.tool}` : `rule 'allow-support-${m.tool}' allows role 'support' ${m.action} on ${m.tool}`,
          'custody.policy.latency_ms': 2 + (i % 37) * 0.5, 'custody.policy.cached': i % 3 !== 0, 'custody.enforced': true,
          'custody.rollout.cohort': 'canary', 'custody.token.jti': crypto.randomUUID(),
          'custody.policy.receipt': `eyJhbGciOiJFZERTQSJ9.${crypto.randomBytes(220).toString('base64url')}.${crypto.randomBytes(64).toString('base64url')}`,
          'custody.audit.seq': (i % 50) + 1, 'custody.audit.prev_hash': crypto.randomBytes(32).toString('hex'),
        },
      }, parent);
      if (m.outcome === 'ok') {
        span.setAttribute('custody.response_hash', crypto.randomBytes(32).toString('hex'));
        span.setStatus({ code: SpanStatusCode.OK });
      } else {
        span.setAttribute('error.type', m.outcome === 'deny' ? 'policy_denied' : 'TimeoutError');
        span.setStatus({ code: SpanStatusCode.ERROR, message: m.outcome === 'deny' ? 'denied' : 'upstream timed out' });
      }
      // what custody/register does when the plane granted a rate (allowed calls of low-risk tools)
      if (rate < 1 && m.risk === 'low' && m.outcome === 'ok') {
        span.setAttribute('custody.audit.sample_rate', rate);
        const sc = span.spanContext();
        if (isSampledOut(sc.traceId, sc.spanId, rate)) {
          span.setAttribute('custody.audit.sampled', true);
          sampledOut++;
        }
      }
      span.end(start + 5 + (i % 40));
    }
    out.push(Buffer.from(ProtobufTraceSerializer.serializeRequest(memory.getFinishedSpans())));
  }
  return { requests: out, sampledOut };
}

async function measure(calls, rate) {
  const { openStore } = require('../dist/collector/store/index.js');
  const { decodeProtobuf } = require('../dist/collector/otlp/index.js');
  const { mapSpans, INGEST_TABLES, INSERT_SETTINGS, ROW_FORMAT } = require('../dist/collector/ingest/mapping.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-sampling-bench-'));
  const store = await openStore({ dataDir: dir });
  const { requests, sampledOut } = makeRequests(calls, rate);
  let stubs = 0;
  let wire = 0;
  for (const req of requests) {
    wire += req.length;
    const m = mapSpans(decodeProtobuf(req).spans, 'verified');
    for (const n of m.sampledOut.values()) stubs += n;
    for (const table of TABLES) {
      if (m.rows[table]) await store.insertRaw({ table, columns: INGEST_TABLES[table], format: ROW_FORMAT, body: m.rows[table], settings: INSERT_SETTINGS });
    }
  }
  for (const table of TABLES) await store.client.command({ query: `OPTIMIZE TABLE custody.${table} FINAL` });
  const parts = await store.rows(
    `SELECT table, sum(rows) AS rows, sum(data_compressed_bytes) AS compressed, sum(data_uncompressed_bytes) AS uncompressed
      FROM system.parts WHERE database = 'custody' AND active AND table IN ('audit_events', 'otel_traces') GROUP BY table ORDER BY table`,
  );
  const [rollup] = await store.rows(`SELECT sum(calls) AS calls FROM custody.audit_rollup_1m`);
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { calls: requests.length * SPANS_PER_BATCH, rate, sampledOut, stubs, wireBytesPerCall: wire / (requests.length * SPANS_PER_BATCH), rollupCalls: Number(rollup.calls), parts };
}

const here = fileURLToPath(import.meta.url);
if (process.argv[2] === '--mode') {
  process.stdout.write(JSON.stringify(await measure(Number(process.argv[3]), Number(process.argv[4]))) + '\n');
} else {
  const calls = Number(process.argv[2] ?? 100_000);
  const rate = Number(process.argv[3] ?? 0.01);
  const run = (r) => {
    const p = spawnSync(process.execPath, [here, '--mode', String(calls), String(r)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 16 << 20 });
    if (p.status !== 0) throw new Error(`measure ${r} exited with ${p.status}`);
    return JSON.parse(p.stdout.trim().split('\n').pop());
  };
  const results = [run(1), run(rate)];
  const perDay = 100_000;
  const days = 90;
  console.log(`sampling: ${calls} tool calls (75 % low-risk allowed, 10 % medium, 8 % high, 5 % denied, 2 % failed), load ${os.loadavg()[0].toFixed(1)}`);
  console.log('| | audit_events B/call | otel_traces B/call | both B/call | stubs | rollup calls | seed volume, 90 days |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    const by = Object.fromEntries(r.parts.map((p) => [p.table, Number(p.compressed) / r.calls]));
    const both = (by.audit_events ?? 0) + (by.otel_traces ?? 0);
    const label = r.rate < 1 ? `${r.rate * 100} % sampling` : 'no sampling';
    console.log(`| ${label} | ${(by.audit_events ?? 0).toFixed(1)} | ${(by.otel_traces ?? 0).toFixed(1)} | ${both.toFixed(1)} | ${r.stubs} (${((100 * r.stubs) / r.calls).toFixed(1)} %) | ${r.rollupCalls} | ${((both * perDay * days) / 1e9).toFixed(2)} GB |`);
    if (r.stubs !== r.sampledOut) throw new Error(`the collector stored ${r.stubs} stubs for ${r.sampledOut} calls marked sampled out`);
    if (r.rollupCalls !== r.calls) throw new Error(`the rollup counted ${r.rollupCalls} of ${r.calls} calls`);
  }
  console.log(`(seed volume: ${perDay} events/day x ${days} days; the seed estimates 9 GB at 1 KB/event)`);
}
