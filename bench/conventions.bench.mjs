// What recognising the tool-call conventions costs ingest: decode + map of the ingest bench's
// requests (1000 GenAI tool-call spans each, custody's own shape) and of the same number of
// OpenInference TOOL spans, in process, by this build and optionally by a baseline build of an
// earlier commit (its dist/ directory), alternating rounds so that drift falls on both.
//
//   npm run build && node bench/conventions.bench.mjs [baseline dist dir] [rounds=5] [batches=24]
//
// A baseline build: git archive <commit> | tar -x -C /tmp/base && ln -s "$PWD/node_modules" /tmp/base/ && (cd /tmp/base && npx tsc -p tsconfig.json)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..');
const [baselineArg, roundsArg, batchesArg] = process.argv.slice(2);
const rounds = Number(roundsArg ?? 5);
const batches = Number(batchesArg ?? 24);

function build(dist) {
  const { decodeProtobuf } = require(path.join(dist, 'collector/otlp/index.js'));
  const { mapSpans } = require(path.join(dist, 'collector/ingest/mapping.js'));
  return (payload) => mapSpans(decodeProtobuf(payload).spans, 'unverified');
}

function openInferencePayloads(n) {
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
  const { resourceFromAttributes } = require('@opentelemetry/resources');
  const { ProtobufTraceSerializer } = require('@opentelemetry/otlp-transformer');
  const out = [];
  for (let b = 0; b < n; b++) {
    const memory = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': 'py-agent', 'custody.sponsor_id': 'alice@example.com', 'custody.agent_instance_id': `py-${b}` }),
      spanProcessors: [new SimpleSpanProcessor(memory)],
    });
    const tracer = provider.getTracer('openinference.instrumentation.langchain', '0.1.29');
    for (let i = 0; i < 1000; i++) {
      tracer
        .startSpan('lookup_order', {
          attributes: {
            'openinference.span.kind': 'TOOL',
            'tool.name': 'lookup_order',
            'tool.description': 'Look up an order by its id.',
            'input.value': JSON.stringify({ order_id: `A-${b}-${i}` }),
            'input.mime_type': 'application/json',
            'output.value': JSON.stringify({ order_id: `A-${b}-${i}`, status: 'shipped' }),
            'output.mime_type': 'application/json',
            metadata: '{"ls_run_depth": 1}',
          },
        })
        .end();
    }
    out.push(Buffer.from(ProtobufTraceSerializer.serializeRequest(memory.getFinishedSpans())));
  }
  return out;
}

function spansPerS(map, payloads) {
  const t = process.hrtime.bigint();
  for (const p of payloads) map(p);
  return (payloads.length * 1000) / (Number(process.hrtime.bigint() - t) / 1e9);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-conventions-bench-'));
const file = path.join(work, 'payloads.json');
const r = spawnSync(process.execPath, [path.join(here, 'ingest.bench.mjs'), '--payloads', file, String(batches)], { stdio: 'inherit' });
if (r.status !== 0) process.exit(1);
const genai = JSON.parse(fs.readFileSync(file, 'utf8')).map((s) => Buffer.from(s, 'base64'));
const oi = openInferencePayloads(batches);
fs.rmSync(work, { recursive: true, force: true });

const builds = [['this build', build(path.join(ROOT, 'dist'))]];
if (baselineArg) builds.push(['baseline', build(path.resolve(baselineArg))]);
const results = new Map(builds.map(([name]) => [name, { genai: [], oi: [] }]));
// warm-up
for (const [, map] of builds) {
  spansPerS(map, genai.slice(0, 4));
  spansPerS(map, oi.slice(0, 4));
}
for (let round = 0; round < rounds; round++) {
  for (const [name, map] of round % 2 ? [...builds].reverse() : builds) {
    results.get(name).genai.push(spansPerS(map, genai));
    results.get(name).oi.push(spansPerS(map, oi));
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
process.stdout.write(`decode + map, ${batches} requests of 1000 spans, median of ${rounds} rounds; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} on ${os.cpus().length} cores\n`);
for (const [name, r] of results) {
  process.stdout.write(`${name.padEnd(10)} GenAI tool calls ${median(r.genai).toFixed(0)} spans/s · OpenInference TOOL spans ${median(r.oi).toFixed(0)} spans/s\n`);
}
if (baselineArg) {
  const a = results.get('this build');
  const b = results.get('baseline');
  process.stdout.write(`this build / baseline, GenAI tool calls: ${(median(a.genai) / median(b.genai)).toFixed(2)} (target ≥ 0.90)\n`);
}
