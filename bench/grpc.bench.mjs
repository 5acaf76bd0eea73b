// OTLP/gRPC ingest against OTLP/HTTP protobuf on the same requests, into one `custody collector`
// with durable acks (a call counts once its answer is back, which means inserted).
//
//   npm run build && node bench/grpc.bench.mjs [seconds per phase=10] [concurrency=8] [batches=120]
//
// 1. `batches` requests of 1000 tool-call spans, made by ingest.bench.mjs's generator (the SDK and
//    its protobuf serializer): the same bytes are the HTTP body and the gRPC message.
// 2. One collector (fresh data directory); a SEPARATE load process sends them for 5 s of warm-up,
//    then in alternating phases HTTP, gRPC, HTTP, gRPC of `seconds` each, `concurrency` requests in
//    flight (HTTP: keep-alive connections; gRPC: one channel, as an exporter has), so that drift on a
//    shared machine falls on both transports alike.
// 3. Afterwards the collector is stopped and its store opened to check every acknowledged span is
//    there. A request sent again once the batches run out is stored once (insert deduplication),
//    so enough batches keep nearly every insert a real one.
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
const TRACES = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

const readPayloads = (file) => JSON.parse(fs.readFileSync(file, 'utf8')).map((s) => Buffer.from(s, 'base64'));

function httpSender(otlpUrl, concurrency) {
  const url = new URL(`${otlpUrl}/v1/traces`);
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const send = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent, headers: { 'Content-Type': 'application/x-protobuf', 'Content-Length': body.length } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode === 200));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  return { send, close: () => agent.destroy() };
}

function grpcSender(grpcUrl) {
  const { Client, Metadata, credentials } = require('@grpc/grpc-js');
  const client = new Client(grpcUrl.replace(/^http:\/\//, ''), credentials.createInsecure(), { 'grpc.max_send_message_length': -1 });
  const id = (b) => b;
  const send = (body) => new Promise((resolve) => client.makeUnaryRequest(TRACES, id, id, body, new Metadata(), (err) => resolve(!err)));
  return { send, close: () => client.close() };
}

// --load: the separate load process
async function load(otlpUrl, grpcUrl, payloadFile, seconds, concurrency) {
  const payloads = readPayloads(payloadFile);
  const senders = { http: httpSender(otlpUrl, concurrency), grpc: grpcSender(grpcUrl) };
  let next = 0;
  async function phase(kind, durationS, measured) {
    const end = Date.now() + durationS * 1000;
    let acked = 0;
    let refused = 0;
    const latencies = [];
    async function worker() {
      while (Date.now() < end) {
        const t = Date.now();
        const ok = await senders[kind].send(payloads[next++ % payloads.length]);
        if (ok) {
          acked += SPANS_PER_BATCH;
          latencies.push(Date.now() - t);
        } else {
          refused++;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker));
    latencies.sort((a, b) => a - b);
    const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0;
    return measured ? { kind, spansPerS: acked / durationS, acked, refused, p50: pct(50), p99: pct(99) } : { kind, acked };
  }
  const warm = [await phase('http', WARMUP_S / 2, false), await phase('grpc', WARMUP_S / 2, false)];
  const phases = [];
  for (const kind of ['http', 'grpc', 'http', 'grpc']) phases.push(await phase(kind, seconds, true));
  senders.http.close();
  senders.grpc.close();
  const acked = [...warm, ...phases].reduce((n, p) => n + p.acked, 0);
  process.stdout.write(JSON.stringify({ phases, acked }) + '\n');
}

function runNode(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`${args.join(' ')} exited with ${code}`))));
  });
}

async function main() {
  const seconds = Number(process.argv[2] ?? 10);
  const concurrency = Number(process.argv[3] ?? 8);
  const batches = Number(process.argv[4] ?? 120);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-grpc-bench-'));
  const payloadFile = path.join(work, 'payloads.json');
  await runNode([path.join(here, 'ingest.bench.mjs'), '--payloads', payloadFile, String(batches)]);
  const bytes = readPayloads(payloadFile).reduce((n, p, _, all) => n + p.length / all.length, 0);
  process.stdout.write(`${batches} OTLP/protobuf requests of ${SPANS_PER_BATCH} tool-call spans, ${(bytes / 1024).toFixed(0)} KiB each; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} on ${os.cpus().length} cores\n`);

  const dataDir = path.join(work, 'collector');
  const collector = await startCollector(dataDir);
  const result = JSON.parse((await runNode([fileURLToPath(import.meta.url), '--load', collector.otlp, collector.grpc, payloadFile, String(seconds), String(concurrency)])).split('\n').pop());
  collector.child.kill('SIGTERM');
  await new Promise((r) => collector.child.once('exit', r));
  for (const p of result.phases) {
    process.stdout.write(`${p.kind.padEnd(4)} ${p.spansPerS.toFixed(0)} spans/s acknowledged (${concurrency} in flight, p50 ${p.p50} ms, p99 ${p.p99} ms per request, ${p.refused} refused)\n`);
  }
  const mean = (kind) => {
    const ps = result.phases.filter((p) => p.kind === kind);
    return ps.reduce((n, p) => n + p.spansPerS, 0) / ps.length;
  };
  const stored = JSON.parse((await runNode([path.join(here, 'ingest.bench.mjs'), '--count', dataDir])).split('\n').pop());
  // a request sent again is stored once
  const distinct = Math.min(result.acked, batches * SPANS_PER_BATCH);
  process.stdout.write(`stored ${stored.traces} otel_traces rows and ${stored.audit} audit_events rows for ${result.acked} acknowledged spans (${distinct} distinct)\n`);
  if (stored.traces < distinct || stored.audit < distinct) throw new Error('acknowledged spans are missing from the store');
  process.stdout.write(`gRPC / HTTP protobuf: ${(mean('grpc') / mean('http')).toFixed(2)} (target ≥ 0.80); load average after ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
  fs.rmSync(work, { recursive: true, force: true });
}

const mode = process.argv[2];
if (mode === '--load') await load(process.argv[3], process.argv[4], process.argv[5], Number(process.argv[6]), Number(process.argv[7]));
else await main();
