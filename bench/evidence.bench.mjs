// Evidence: the cost of sealing and of verifying, and what checkpointing adds to ingest.
//
//   npm run build && node bench/evidence.bench.mjs [calls=300000,1000000] [ingestSeconds=20] [rounds=3]
//   (EVIDENCE_BENCH_PERIOD_S=60 for the default checkpoint period in part 2; 0 as calls skips part 1;
//   EVIDENCE_BENCH_RECEIPT_BATCH=16 for receipts signed 16 to a signature)
//
// 1. Verify at scale, for each size: `calls` tool calls (chained per agent instance with common/audit-chain, 100
//    calls per instance) with one allow decision and one issued token each, written over 60 s
//    periods of 10,000 calls; every period sealed by the checkpointer (timed: seal throughput),
//    then `custody audit verify` run as a child process on the store (timed: wall clock, the
//    figure the target is about), with its peak RSS: work is paged, so memory stops growing once
//    the pages are full (about 200,000 calls). Sealed rows = 3 × calls.
//    Every call carries the policy plane's signed receipt of its own decision, and the plane's key
//    set is where verify looks for it (<dir>/policy/keys/jwks.json). EVIDENCE_BENCH_RECEIPT_BATCH
//    (default 1) is how many decisions share a signature: 1 is the worst case (one signature to
//    verify per call, as a plane answering one request at a time signs); more is what a loaded
//    plane makes, signing the decisions of one event-loop turn together (batch receipts, a Merkle
//    path each; e.g. 16 for a plane serving 16 or more concurrent checks).
// 2. Ingest with and without the checkpointer: `custody collector` (fresh data directory) fed by
//    the ingest bench's load process (bench/ingest.bench.mjs --load: OTLP/protobuf requests of 1000
//    realistic tool-call spans from the real SDK, 8 in flight, 5 s warm-up, `ingestSeconds`
//    measured), `rounds` times each way, alternating off/on so that drift on the shared machine
//    falls on both. Ingest cost = the collector's CPU seconds (process_cpu_seconds_total, chDB
//    included) per acknowledged span, counted until the checkpointer has sealed everything; the
//    throughput is printed too but swings with the machine's load. The checkpointer seals every
//    EVIDENCE_BENCH_PERIOD_S (default 5 s, twelve times more seals than the 60 s default, so its
//    fixed per-seal cost is overstated, not hidden) with a 1 s lag.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const { openStore } = require('../dist/collector/store/index.js');
const { AuditChain } = require('../dist/common/audit-chain.js');
const { Checkpointer, CheckpointJournal, openAuditKeyRing } = require('../dist/collector/evidence/index.js');
const { RECEIPT_TYPE, receiptSigner } = require('../dist/common/receipt.js');
const { openKeyArchive } = require('../dist/identity/key-archive.js');

const SIZES = String(process.argv[2] ?? '300000,1000000').split(',').map(Number).filter((n) => n > 0);
const SEAL_PERIOD_S = Number(process.env.EVIDENCE_BENCH_PERIOD_S ?? 5);
const INGEST_SECONDS = Number(process.argv[3] ?? 20);
const INGEST_ROUNDS = Number(process.argv[4] ?? 3);
const PER_PERIOD = 10_000;
const PERIOD_MS = 60_000;
const PER_INSTANCE = 100;
const RECEIPT_BATCH = Math.max(1, Math.trunc(Number(process.env.EVIDENCE_BENCH_RECEIPT_BATCH ?? 1)));
const CLI = path.join(root, 'dist/cli/main.js');

const hex = (n) => randomBytes(n).toString('hex');
const secs = (ms) => (ms / 1000).toFixed(2);
const results = {};

async function generate(store, calls, dir) {
  const { client } = store;
  const planeKeys = await openKeyArchive({ dir: path.join(dir, 'policy', 'keys'), envVar: 'CUSTODY_BENCH_UNSET_KEY' });
  const signer = receiptSigner(planeKeys.current().kid, planeKeys.current().privateKey);
  const periods = Math.ceil(calls / PER_PERIOD);
  const base = Math.floor(Date.now() / PERIOD_MS) * PERIOD_MS - (periods + 2) * PERIOD_MS;
  const chains = new Map();
  const BATCH = 50_000;
  let rows = [];
  // calls waiting for their receipts: signed RECEIPT_BATCH at a time, as the plane signs a turn's decisions
  let unsigned = [];
  const signPending = () => {
    if (!unsigned.length) return;
    const receipts = signer.signBatch(
      RECEIPT_TYPE.DECISION,
      unsigned.map((u) => u.receipt),
    );
    unsigned.forEach((u, k) => (u.attributes['custody.policy.receipt'] = receipts[k]));
    unsigned = [];
  };
  const flush = async () => {
    signPending();
    if (!rows.length) return;
    await client.insert({ table: 'custody.audit_events', values: rows, format: 'JSONEachRow' });
    rows = [];
  };
  for (let i = 0; i < calls; i++) {
    const period = Math.floor(i / PER_PERIOD);
    const ingested = base + period * PERIOD_MS + 1000 + Math.floor(((i % PER_PERIOD) / PER_PERIOD) * (PERIOD_MS - 2000));
    const ts = ingested - 800;
    const instance = `agent-${Math.floor(i / PER_INSTANCE).toString(36).padStart(6, '0')}`;
    let chain = chains.get(instance);
    if (!chain) chains.set(instance, (chain = new AuditChain()));
    const rec = {
      agent_instance_id: instance,
      trace_id: hex(16),
      span_id: hex(8),
      sponsor_id: 'alice',
      parent_agent_id: '',
      tool_id: i % 3 ? 'billing' : 'search',
      action: i % 3 ? 'refund' : 'query',
      policy_decision_id: `dec-${i}`,
      request_hash: hex(32),
      response_hash: hex(32),
      status: 'ok',
    };
    const link = chain.next(rec);
    if (i % PER_INSTANCE === PER_INSTANCE - 1) chains.delete(instance);
    rows.push({
      ...rec,
      timestamp: new Date(ts).toISOString(),
      end_timestamp: new Date(ts + 40).toISOString(),
      service_name: 'support-assistant',
      agent_name: 'support-assistant',
      role: 'support',
      tool_name: rec.tool_id,
      purpose: 'ticket 4711',
      decision: 'allow',
      rule_id: 'allow-support-billing',
      policy_latency_ms: 4.5,
      enforced: true,
      cohort: 'canary',
      token_jti: `jti-${i}`,
      audit_seq: link.seq,
      audit_prev_hash: link.prevHash,
      duration_ns: 40_000_000,
      attributes: { 'gen_ai.operation.name': 'execute_tool' },
      ingested_at: new Date(ingested).toISOString(),
    });
    unsigned.push({
      attributes: rows[rows.length - 1].attributes,
      receipt: {
        id: rec.policy_decision_id, decision: 'allow', sponsor_id: 'alice', agent_instance_id: instance, parent_agent_id: '',
        tool_id: rec.tool_id, action: rec.action, cohort: 'canary', enforced: true, token_jti: `jti-${i}`,
        token_exp: Math.floor(ts / 1000) + 300, time: ts + 2, policy_version: 'bench', rule_id: 'allow-support-billing', rollout_percent: 100,
      },
    });
    if (unsigned.length >= RECEIPT_BATCH) signPending();
    if (rows.length >= BATCH) await flush();
  }
  await flush();
  // the decision and token event of each call, derived in SQL from the call
  await client.command({
    query: `INSERT INTO custody.policy_decisions (timestamp, policy_decision_id, decision, rule_id, reason, sponsor_id,
        agent_instance_id, parent_agent_id, role, tool_id, action, purpose, cohort, enforced, token_jti, latency_ms, trace_id,
        span_id, service_name, ingested_at)
      SELECT timestamp + toIntervalMillisecond(2), policy_decision_id, 'allow', rule_id, 'role support may', sponsor_id,
        agent_instance_id, parent_agent_id, role, tool_id, action, purpose, cohort, true, token_jti, 1.2, trace_id,
        lower(hex(randomString(8))), 'custody', ingested_at - toIntervalMillisecond(500)
      FROM custody.audit_events`,
  });
  await client.command({
    query: `INSERT INTO custody.token_events (timestamp, result, kind, jti, sponsor_id, agent_instance_id, parent_agent_id,
        tool_id, role, ttl_seconds, expires_at, trace_id, span_id, service_name, ingested_at)
      SELECT timestamp - toIntervalMillisecond(100), 'issued', 'issue', token_jti, sponsor_id, agent_instance_id, parent_agent_id,
        tool_id, role, 300, timestamp + toIntervalSecond(300), trace_id, lower(hex(randomString(8))), 'custody',
        ingested_at - toIntervalMillisecond(600)
      FROM custody.audit_events`,
  });
  return { base, periods };
}

async function verifyAtScale(CALLS) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-evidence-bench-'));
  const store = await openStore({ dataDir: dir });
  let t = Date.now();
  const { base, periods } = await generate(store, CALLS, dir);
  console.log(`generated ${CALLS.toLocaleString('en')} calls (+ decisions and tokens), receipts signed ${RECEIPT_BATCH} to a signature, in ${secs(Date.now() - t)} s`);
  const keys = await openAuditKeyRing({ dir: path.join(dir, 'evidence', 'keys') });
  const journal = new CheckpointJournal(path.join(dir, 'checkpoints'));
  for (const k of keys.jwks().keys) (journal.init(), journal.publishKey(k));
  const cp = new Checkpointer({ store, keys, journal, periodMs: PERIOD_MS, lagMs: 0 });
  await cp.open({ startupSeal: false });
  t = Date.now();
  for (let p = 0; p < periods; p++) await cp.seal(base + p * PERIOD_MS, base + (p + 1) * PERIOD_MS, 'periodic');
  const sealMs = Date.now() - t;
  const sealed = CALLS * 3;
  console.log(`sealed ${periods} periods, ${sealed.toLocaleString('en')} rows, in ${secs(sealMs)} s: ${Math.round(sealed / (sealMs / 1000)).toLocaleString('en')} rows/s, ${((sealMs * 1000) / sealed).toFixed(2)} µs/row`);
  const sizes = await (await store.client.query({
    query: `SELECT table, sum(data_compressed_bytes) AS bytes, sum(rows) AS rows FROM system.parts
      WHERE database = 'custody' AND active AND table IN ('audit_events', 'policy_decisions', 'token_events', 'audit_checkpoint_leaves') GROUP BY table`,
    format: 'JSONEachRow',
  })).json();
  const size = Object.fromEntries(sizes.map((r) => [r.table, Number(r.bytes)]));
  const evidenceBytes = size.audit_events + size.policy_decisions + size.token_events;
  console.log(`  leaf index: ${(size.audit_checkpoint_leaves / 2 ** 20).toFixed(1)} MiB compressed (${(size.audit_checkpoint_leaves / sealed).toFixed(1)} B a row), ${((100 * size.audit_checkpoint_leaves) / evidenceBytes).toFixed(0)} % of the ${(evidenceBytes / 2 ** 20).toFixed(1)} MiB of the three tables it seals`);
  await store.close();

  t = Date.now();
  const out = await run(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir, '--json']);
  const verifyMs = Date.now() - t;
  const report = JSON.parse(out.stdout);
  console.log(`custody audit verify: exit ${out.code}, ${secs(verifyMs)} s, peak RSS ${out.maxRssMb} MB, for ${report.checked.rows_verified.toLocaleString('en')} sealed rows, ${report.checked.chained_calls.toLocaleString('en')} chained calls, ${report.checked.instances} instances, ${(report.receipts?.verified ?? 0).toLocaleString('en')} receipts verified; findings ${JSON.stringify(report.counts)}`);
  const progressLines = out.stderr.split('\n').filter((l) => l.startsWith('verifying'));
  console.log(`  progress on stderr: ${progressLines.length} lines, e.g. "${progressLines[0] ?? ''}"`);
  (results.verify ??= []).push({ calls: CALLS, receipt_batch: RECEIPT_BATCH, sealed_rows: sealed, seal_s: sealMs / 1000, verify_s: verifyMs / 1000, verify_exit: out.code, peak_rss_mb: out.maxRssMb });
  if (process.env.EVIDENCE_BENCH_KEEP) console.log(`store kept in ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
}

function run(cmd, args, env = {}) {
  return new Promise((resolve) => {
    const p = spawn('/usr/bin/time', ['-f', '%M', cmd, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('exit', (code) => {
      const kb = Number(/(\d+)\s*$/.exec(stderr.trim())?.[1] ?? 0);
      resolve({ code, stdout, stderr, maxRssMb: Math.round(kb / 1024) });
    });
  });
}

async function startCollector(dataDir, env) {
  const child = spawn(process.execPath, [CLI, 'collector', '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
    cwd: root,
    env: { ...process.env, CUSTODY_LOG_LEVEL: 'error', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  for (let i = 0; i < 600; i++) {
    const otlp = /OTLP\s+(http:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
    const control = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (otlp && control) {
      const r = await fetch(`${control}/readyz`).catch(() => undefined);
      if (r?.status === 200) return { child, otlp, control };
    }
    if (child.exitCode !== null) throw new Error(`collector exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('collector did not become ready');
}

async function ingestOverhead() {
  const ingestBench = path.join(root, 'bench/ingest.bench.mjs');
  if (!fs.existsSync(ingestBench) || !fs.existsSync(path.join(root, 'dist/collector/ingest/receiver.js'))) {
    console.log('ingest overhead: skipped (needs the OTLP receiver and bench/ingest.bench.mjs)');
    return;
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-evidence-ingest-'));
  const payloads = path.join(work, 'payloads.json');
  await run(process.execPath, [ingestBench, '--payloads', payloads, '24']);
  const runs = { off: [], on: [] };
  const cpus = { off: [], on: [] };
  const offline = [];
  const seal = { rows: 0, seconds: 0, checkpoints: 0 };
  for (let round = 0; round < INGEST_ROUNDS; round++) {
    for (const mode of ['off', 'on']) {
      const dataDir = path.join(work, `${mode}-${round}`);
      const env = mode === 'off' ? { CUSTODY_CHECKPOINTER: 'off' } : { CUSTODY_CHECKPOINT_PERIOD: `${SEAL_PERIOD_S}s`, CUSTODY_CHECKPOINT_LAG: '1s' };
      const c = await startCollector(dataDir, env);
      const cpu = async () => Number(/^process_cpu_seconds_total (\S+)/m.exec(await (await fetch(`${c.control}/metrics`)).text())?.[1] ?? NaN);
      const cpu0 = await cpu();
      const load = await run(process.execPath, [ingestBench, '--load', c.otlp, payloads, String(INGEST_SECONDS), '8']);
      const r = JSON.parse(load.stdout.trim().split('\n').pop());
      // let the checkpointer seal what was written (a period plus the lag), both ways alike
      await new Promise((res) => setTimeout(res, Number(process.env.EVIDENCE_BENCH_WAIT_S ?? SEAL_PERIOD_S + 2) * 1000));
      const cpuPerKSpan = ((await cpu()) - cpu0) / (r.acked / 1000);
      cpus[mode].push(cpuPerKSpan);
      if (mode === 'on') {
        const metrics = await (await fetch(`${c.control}/metrics`)).text();
        const m = (re) => Number(re.exec(metrics)?.[1] ?? 0);
        seal.rows += m(/^custody_audit_checkpoint_rows_total (\S+)/m);
        seal.seconds += m(/^custody_audit_checkpoint_duration_seconds_sum (\S+)/m);
        seal.checkpoints += m(/^custody_audit_checkpoint_duration_seconds_count (\S+)/m);
      }
      c.child.kill('SIGTERM');
      await new Promise((res) => c.child.once('exit', res));
      runs[mode].push(r.spansPerS);
      if (mode === 'off') {
        // the same data sealed afterwards, alone in its process: what sealing costs per ingested span
        const sealRun = await run(process.execPath, [fileURLToPath(import.meta.url), '--seal', dataDir, String(SEAL_PERIOD_S)]);
        const sr = JSON.parse(sealRun.stdout.trim().split('\n').pop());
        offline.push({ ...sr, collectorCpuMs: cpuPerKSpan * sr.rows });
        console.log(`  sealed offline: ${sr.rows.toLocaleString('en')} rows in ${sr.checkpoints} checkpoints, ${Math.round(sr.cpu_ms)} ms CPU (${((sr.cpu_ms * 1000) / sr.rows).toFixed(2)} µs a row) = ${((100 * sr.cpu_ms) / (cpuPerKSpan * sr.rows)).toFixed(1)} % of the collector's CPU for those spans`);
      }
      console.log(`ingest round ${round + 1}, checkpointer ${mode}: ${Math.round(r.spansPerS).toLocaleString('en')} spans/s acknowledged (p50 ${r.p50} ms, p99 ${r.p99} ms per 1000-span request), collector CPU ${(cpuPerKSpan * 1000).toFixed(1)} ms per 1000 spans`);
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  const off = mean(runs.off);
  const on = mean(runs.on);
  const overhead = (off - on) / off;
  const usPerRow = seal.rows ? (seal.seconds * 1e6) / seal.rows : 0;
  const cpuOff = mean(cpus.off);
  const cpuOn = mean(cpus.on);
  const cpuOverhead = (cpuOn - cpuOff) / cpuOff;
  const offCpu = offline.reduce((a, o) => a + o.cpu_ms, 0);
  const offCollector = offline.reduce((a, o) => a + o.collectorCpuMs, 0);
  console.log(`sealing alone: ${((100 * offCpu) / offCollector).toFixed(1)} % of ingest CPU (all off rounds, sealed afterwards in ${SEAL_PERIOD_S} s periods)`);
  console.log(
    `ingest cost: collector CPU ${(cpuOff * 1000).toFixed(1)} ms per 1000 spans without the checkpointer, ${(cpuOn * 1000).toFixed(1)} with it: ${(cpuOverhead * 100).toFixed(1)} % more`,
  );
  console.log(
    `ingest: ${Math.round(off).toLocaleString('en')} spans/s without the checkpointer, ${Math.round(on).toLocaleString('en')} with it: ` +
      `${(overhead * 100).toFixed(1)} % less; sealing took ${seal.seconds.toFixed(2)} s wall (sharing the cores with ingest) for ${seal.rows.toLocaleString('en')} rows in ${seal.checkpoints} checkpoints (${usPerRow.toFixed(2)} µs/row)`,
  );
  results.ingest = {
    period_s: SEAL_PERIOD_S,
    off_spans_per_s: runs.off,
    on_spans_per_s: runs.on,
    throughput_overhead: overhead,
    off_cpu_ms_per_1000_spans: cpus.off.map((x) => x * 1000),
    on_cpu_ms_per_1000_spans: cpus.on.map((x) => x * 1000),
    cpu_overhead: cpuOverhead,
    seal_alone_cpu_share: offCpu / offCollector,
    seal_alone: offline,
    seal_wall_us_per_row: usPerRow,
    seal_checkpoints: seal.checkpoints,
  };
  fs.rmSync(work, { recursive: true, force: true });
}

// --seal <data dir> <period s>: seals a stopped collector's store period by period, in its own
// process (one chDB engine per process), and prints the CPU it took.
async function sealStore(dataDir, periodS) {
  const store = await openStore({ dataDir, migrate: false });
  const q = async (query) => (await (await store.client.query({ query, format: 'JSONEachRow' })).json())[0];
  const r = await q(`SELECT toUnixTimestamp64Milli(min(ingested_at)) AS a, toUnixTimestamp64Milli(max(ingested_at)) AS b, count() AS n FROM custody.audit_events`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-evidence-seal-'));
  const keys = await openAuditKeyRing({ dir: path.join(work, 'keys') });
  const journal = new CheckpointJournal(path.join(work, 'checkpoints'));
  const p = periodS * 1000;
  const cp = new Checkpointer({ store, keys, journal, periodMs: p, lagMs: 0 });
  await cp.open({ startupSeal: false });
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  let checkpoints = 0;
  for (let start = Math.floor(Number(r.a) / p) * p; start <= Number(r.b); start += p) {
    await cp.seal(start, start + p, 'periodic');
    checkpoints += 1;
  }
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(JSON.stringify({ rows: Number(r.n), checkpoints, cpu_ms: (cpu.user + cpu.system) / 1000, wall_ms: Date.now() - t0 }) + '\n');
  await store.close();
  fs.rmSync(work, { recursive: true, force: true });
}

if (process.argv[2] === '--seal') {
  await sealStore(process.argv[3], Number(process.argv[4]));
  process.exit(0);
}

console.log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
for (const calls of SIZES) await verifyAtScale(calls);
if (INGEST_SECONDS > 0) await ingestOverhead();
console.log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
console.log(JSON.stringify(results));
