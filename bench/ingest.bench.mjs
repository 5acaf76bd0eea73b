// Sustained OTLP ingest into the embedded store, with durable acks, against a raw chDB insert of
// the same rows measured in the same run.
//
//   npm run build && node bench/ingest.bench.mjs [seconds=20] [concurrency=8] [batches=24]
//
// 1. `batches` OTLP/protobuf requests of 1000 realistic tool-call spans each are made with the
//    OpenTelemetry SDK and its protobuf serializer (what the stock -proto exporter sends).
// 2. Raw baseline (its own process, fresh chDB directory, same schema and settings): those spans'
//    rows (otel_traces + audit_events), pre-serialized as JSONEachRow, inserted straight into chDB
//    1000 spans at a time. Only the inserts are timed.
// 3. `custody collector` (fresh data directory) takes the requests from a SEPARATE load process
//    over loopback, `concurrency` requests in flight; a span counts once its 200 is back (200
//    means inserted). 5 s warm-up, then `seconds` measured. Afterwards the collector is stopped
//    and its store opened to check that every acknowledged span is there.
// 4. The baseline again, so that drift on the shared machine shows.
//
// Modes used internally: --raw <payloads> <dir>, --load <otlp url> <payloads> <seconds> <concurrency>,
// --count <data dir>; and --payloads <file> [batches] writes the requests, e.g. for profiling.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { startCollector } from './lib/collector.mjs';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..');
const SPANS_PER_BATCH = 1000;
const WARMUP_S = 5;

// ---------------------------------------------------------------------------------------------
// payloads: realistic tool-call spans through the real SDK and serializer

function makePayloads(batches) {
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
  const { resourceFromAttributes } = require('@opentelemetry/resources');
  const { ProtobufTraceSerializer } = require('@opentelemetry/otlp-transformer');
  const { SpanKind, SpanStatusCode, context, trace } = require('@opentelemetry/api');
  const crypto = require('node:crypto');
  const tools = [
    ['billing', 'refund'],
    ['crm', 'lookup'],
    ['email', 'send'],
    ['kb', 'search'],
    ['ticket', 'update'],
  ];
  const out = [];
  for (let b = 0; b < batches; b++) {
    const memory = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({
        'service.name': 'support-agent',
        'service.version': '1.4.2',
        'telemetry.sdk.name': 'opentelemetry',
        'telemetry.sdk.language': 'nodejs',
        'telemetry.sdk.version': '2.12.0',
        'host.name': `worker-${b % 4}`,
        'process.pid': 4000 + b,
        'process.runtime.name': 'nodejs',
        'process.runtime.version': '20.20.0',
      }),
      spanProcessors: [new SimpleSpanProcessor(memory)],
    });
    const tracer = provider.getTracer('custody', '0.1.0');
    const t0 = Date.now() - 60_000;
    for (let i = 0; i < SPANS_PER_BATCH; i++) {
      const [tool, action] = tools[i % tools.length];
      const instance = `inst-${b}-${i % 20}`;
      // one trace per agent turn of ~10 tool calls
      const parent = trace.setSpanContext(context.active(), {
        traceId: crypto.createHash('md5').update(`${b}:${Math.floor(i / 10)}`).digest('hex'),
        spanId: crypto.randomBytes(8).toString('hex'),
        traceFlags: 1,
      });
      const start = t0 + i * 3;
      const span = tracer.startSpan(
        `execute_tool ${tool}.${action}`,
        {
          kind: SpanKind.INTERNAL,
          startTime: start,
          attributes: {
            'gen_ai.operation.name': 'execute_tool',
            'gen_ai.tool.name': `${tool}.${action}`,
            'gen_ai.tool.call.id': `call_${crypto.randomBytes(12).toString('hex')}`,
            'gen_ai.agent.id': instance,
            'gen_ai.agent.name': 'support-assistant',
            'custody.sponsor_id': i % 1000 === 999 ? undefined : 'alice@example.com',
            'custody.agent_instance_id': instance,
            'custody.parent_agent_id': `root-${b}`,
            'custody.role': 'support',
            'custody.tool_id': tool,
            'custody.action': action,
            'custody.purpose': `resolve ticket #${48000 + (i % 500)}`,
            'custody.request_hash': crypto.randomBytes(32).toString('hex'),
            'custody.response_hash': crypto.randomBytes(32).toString('hex'),
            'custody.policy_decision_id': crypto.randomUUID(),
            'custody.policy.decision': i % 50 === 0 ? 'deny' : 'allow',
            'custody.policy.rule_id': `${tool}-${action}-support`,
            'custody.policy.latency_ms': 2 + (i % 37) * 0.5,
            'custody.policy.cached': i % 3 !== 0,
            'custody.enforced': i % 10 === 0,
            'custody.rollout.cohort': i % 10 === 0 ? 'canary' : 'baseline',
            'custody.token.jti': crypto.randomUUID(),
            'custody.audit.seq': Math.floor(i / 20) + 1,
            'custody.audit.prev_hash': crypto.randomBytes(32).toString('hex'),
          },
        },
        parent,
      );
      if (i % 50 === 0) {
        span.setAttribute('error.type', 'policy_denied');
        span.setStatus({ code: SpanStatusCode.ERROR, message: `denied by ${tool}-${action}-support` });
      } else {
        span.setStatus({ code: SpanStatusCode.OK });
      }
      span.end(start + 5 + (i % 40));
    }
    out.push(Buffer.from(ProtobufTraceSerializer.serializeRequest(memory.getFinishedSpans())));
  }
  return out;
}

function writePayloads(file, payloads) {
  fs.writeFileSync(file, JSON.stringify(payloads.map((p) => p.toString('base64'))));
}

function readPayloads(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8')).map((s) => Buffer.from(s, 'base64'));
}

// ---------------------------------------------------------------------------------------------
// --raw: the baseline, in its own process (one chDB engine per process)

async function raw(payloadFile, dir) {
  const { openStore } = require('../dist/collector/store/index.js');
  const { decodeProtobuf } = require('../dist/collector/otlp/index.js');
  const { mapSpans, INGEST_TABLES, INSERT_SETTINGS } = require('../dist/collector/ingest/mapping.js');
  const store = await openStore({ dataDir: dir });
  const payloads = readPayloads(payloadFile);
  // the same rows the collector writes, as JSONEachRow objects
  const toEachRow = (table, body) =>
    Buffer.from(
      body
        .toString()
        .trim()
        .split('\n')
        .flatMap((line) => JSON.parse(`[${line}]`))
        .map((row) => JSON.stringify(Object.fromEntries(INGEST_TABLES[table].map((c, i) => [c, row[i]]))))
        .join('\n') + '\n',
    );
  const batches = payloads.map((p) => {
    const m = mapSpans(decodeProtobuf(p).spans);
    return { traces: toEachRow('otel_traces', m.rows.otel_traces), audit: toEachRow('audit_events', m.rows.audit_events) };
  });
  const insert = (table, body) => store.insertRaw({ table, columns: INGEST_TABLES[table], format: 'JSONEachRow', body, settings: INSERT_SETTINGS });
  // warm-up, not timed
  await insert('otel_traces', batches[0].traces);
  await insert('audit_events', batches[0].audit);
  let t = process.hrtime.bigint();
  for (const b of batches) {
    await insert('otel_traces', b.traces);
    await insert('audit_events', b.audit);
  }
  const both = Number(process.hrtime.bigint() - t) / 1e9;
  t = process.hrtime.bigint();
  for (const b of batches) await insert('audit_events', b.audit);
  const auditOnly = Number(process.hrtime.bigint() - t) / 1e9;
  // for comparison: the raw insert batched like the collector batches (8 requests per insert,
  // both tables at once), to tell what batching gives from what the row format gives
  t = process.hrtime.bigint();
  for (let i = 0; i < batches.length; i += 8) {
    const group = batches.slice(i, i + 8);
    await Promise.all([
      insert('otel_traces', Buffer.concat(group.map((b) => b.traces))),
      insert('audit_events', Buffer.concat(group.map((b) => b.audit))),
    ]);
  }
  const coalesced = Number(process.hrtime.bigint() - t) / 1e9;
  const spans = batches.length * SPANS_PER_BATCH;
  process.stdout.write(
    JSON.stringify({
      spansPerS: spans / both,
      auditRowsPerS: spans / auditOnly,
      coalescedSpansPerS: spans / coalesced,
      jsonEachRowBytesPerSpan: (batches[0].traces.length + batches[0].audit.length) / SPANS_PER_BATCH,
    }) + '\n',
  );
  await store.close();
}

// ---------------------------------------------------------------------------------------------
// --load: the separate load process

async function load(otlpUrl, payloadFile, seconds, concurrency) {
  const payloads = readPayloads(payloadFile);
  const url = new URL(`${otlpUrl}/v1/traces`);
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const post = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent, headers: { 'Content-Type': 'application/x-protobuf', 'Content-Length': body.length } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const start = Date.now();
  const measureFrom = start + WARMUP_S * 1000;
  const end = measureFrom + seconds * 1000;
  let next = 0;
  let acked = 0;
  let ackedMeasured = 0;
  let refused = 0;
  const latencies = [];
  async function worker() {
    while (Date.now() < end) {
      const body = payloads[next++ % payloads.length];
      const t = Date.now();
      const status = await post(body);
      const now = Date.now();
      if (status === 200) {
        acked += SPANS_PER_BATCH;
        if (t >= measureFrom) {
          ackedMeasured += SPANS_PER_BATCH;
          latencies.push(now - t);
        }
      } else {
        refused++;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0;
  process.stdout.write(JSON.stringify({ acked, spansPerS: ackedMeasured / seconds, refused, p50: pct(50), p99: pct(99) }) + '\n');
  agent.destroy();
}

// ---------------------------------------------------------------------------------------------
// orchestration

function runNode(args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`${args.join(' ')} exited with ${code}`))));
  });
}

async function main() {
  const seconds = Number(process.argv[2] ?? 20);
  const concurrency = Number(process.argv[3] ?? 8);
  const batches = Number(process.argv[4] ?? 24);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-ingest-bench-'));
  const payloadFile = path.join(work, 'payloads.json');
  const payloads = makePayloads(batches);
  writePayloads(payloadFile, payloads);
  const bytes = payloads.reduce((n, p) => n + p.length, 0) / payloads.length;
  process.stdout.write(`${batches} OTLP/protobuf requests of ${SPANS_PER_BATCH} tool-call spans, ${(bytes / 1024).toFixed(0)} KiB each\n`);

  const before = await runNode([fileURLToPath(import.meta.url), '--raw', payloadFile, path.join(work, 'raw-1')]);
  process.stdout.write(
    `raw chDB JSONEachRow insert (before): ${before.spansPerS.toFixed(0)} spans/s (otel_traces + audit_events, 1000 spans per insert), ` +
      `audit_events alone ${before.auditRowsPerS.toFixed(0)} rows/s; batched like the collector ${before.coalescedSpansPerS.toFixed(0)} spans/s\n`,
  );

  const dataDir = path.join(work, 'collector');
  const collector = await startCollector(dataDir);
  const loadResult = await runNode([fileURLToPath(import.meta.url), '--load', collector.otlp, payloadFile, String(seconds), String(concurrency)]);
  const metrics = await (await fetch(`${collector.control}/metrics`)).text();
  const sum = (name, table) => Number(new RegExp(`^${name}_sum\\{table="${table}"\\} (\\S+)`, 'm').exec(metrics)?.[1] ?? NaN);
  const count = (name, table) => Number(new RegExp(`^${name}_count\\{table="${table}"\\} (\\S+)`, 'm').exec(metrics)?.[1] ?? NaN);
  const rowsPerInsert = sum('custody_ingest_insert_rows', 'otel_traces') / count('custody_ingest_insert_rows', 'otel_traces');
  const msPerInsert = (1000 * sum('custody_ingest_insert_duration_seconds', 'otel_traces')) / count('custody_ingest_insert_duration_seconds', 'otel_traces');
  collector.child.kill('SIGTERM');
  await new Promise((r) => collector.child.once('exit', r));
  process.stdout.write(
    `custody collector: ${loadResult.spansPerS.toFixed(0)} spans/s acknowledged (${concurrency} requests in flight, p50 ${loadResult.p50} ms, p99 ${loadResult.p99} ms per request, ${loadResult.refused} refused), ` +
      `${rowsPerInsert.toFixed(0)} rows per otel_traces insert (${msPerInsert.toFixed(0)} ms each)\n`,
  );

  const after = await runNode([fileURLToPath(import.meta.url), '--raw', payloadFile, path.join(work, 'raw-2')]);
  process.stdout.write(
    `raw chDB JSONEachRow insert (after): ${after.spansPerS.toFixed(0)} spans/s, audit_events alone ${after.auditRowsPerS.toFixed(0)} rows/s; ` +
      `batched like the collector ${after.coalescedSpansPerS.toFixed(0)} spans/s\n`,
  );

  // every acknowledged span is in the store
  const stored = await runNode([fileURLToPath(import.meta.url), '--count', dataDir]);
  process.stdout.write(`stored ${stored.traces} otel_traces rows and ${stored.audit} audit_events rows for ${loadResult.acked} acknowledged spans\n`);
  if (stored.traces < loadResult.acked || stored.audit < loadResult.acked) throw new Error('acknowledged spans are missing from the store');

  const baseline = (before.spansPerS + after.spansPerS) / 2;
  const batched = (before.coalescedSpansPerS + after.coalescedSpansPerS) / 2;
  process.stdout.write(
    `ratio to the raw insert of the same rows: ${(loadResult.spansPerS / baseline).toFixed(2)} ` +
      `(to the raw insert batched like the collector: ${(loadResult.spansPerS / batched).toFixed(2)})\n`,
  );
  fs.rmSync(work, { recursive: true, force: true });
}

async function count(dataDir) {
  const { openStore } = require('../dist/collector/store/index.js');
  const store = await openStore({ dataDir, migrate: false });
  const n = async (table) => Number((await (await store.client.query({ query: `SELECT count() AS n FROM custody.${table}`, format: 'JSONEachRow' })).json())[0].n);
  process.stdout.write(JSON.stringify({ traces: await n('otel_traces'), audit: await n('audit_events') }) + '\n');
  await store.close();
}

const mode = process.argv[2];
if (mode === '--raw') await raw(process.argv[3], process.argv[4]);
else if (mode === '--load') await load(process.argv[3], process.argv[4], Number(process.argv[5]), Number(process.argv[6]));
else if (mode === '--count') await count(process.argv[3]);
else if (mode === '--payloads') writePayloads(process.argv[3], makePayloads(Number(process.argv[4] ?? 24)));
else await main();
