// Evidence: the cost of sealing and of verifying, and what checkpointing adds to ingest.
//
//   npm run build && node bench/evidence.bench.mjs [calls=1000000] [ingestSpans=200000]
//
// 1. Verify at scale: `calls` tool calls (chained per agent instance with common/audit-chain, 100
//    calls per instance) with one allow decision and one issued token each, written over 60 s
//    periods of 10,000 calls; every period sealed by the checkpointer (timed: seal throughput),
//    then `custody audit verify` run as a child process on the store (timed: wall clock, the
//    figure the target is about). Sealed rows = 3 × calls.
// 2. Ingest with and without the checkpointer: `custody collector` as a child process, OTLP/HTTP
//    JSON batches of 500 tool-call spans (plus their decision and token spans) from this process,
//    `ingestSpans` spans per run, runs alternating off/on; the checkpointer seals every 5 s with
//    no lag (twelve times more often than the 60 s default, so its fixed per-seal cost is
//    overstated). Needs the OTLP receiver (collector ingest); skipped with a message without it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const { openStore } = require('../dist/collector/store.js');
const { AuditChain } = require('../dist/common/audit-chain.js');
const { Checkpointer, CheckpointJournal, openAuditKeyRing } = require('../dist/collector/evidence/index.js');

const CALLS = Number(process.argv[2] ?? 1_000_000);
const INGEST_SPANS = Number(process.argv[3] ?? 200_000);
const PER_PERIOD = 10_000;
const PERIOD_MS = 60_000;
const PER_INSTANCE = 100;
const CLI = path.join(root, 'dist/cli/main.js');

const hex = (n) => randomBytes(n).toString('hex');
const secs = (ms) => (ms / 1000).toFixed(2);
const results = {};

async function generate(store, calls) {
  const { client } = store;
  const periods = Math.ceil(calls / PER_PERIOD);
  const base = Math.floor(Date.now() / PERIOD_MS) * PERIOD_MS - (periods + 2) * PERIOD_MS;
  const chains = new Map();
  const BATCH = 50_000;
  let rows = [];
  const flush = async () => {
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

async function verifyAtScale() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-evidence-bench-'));
  const store = await openStore({ dataDir: dir });
  let t = Date.now();
  const { base, periods } = await generate(store, CALLS);
  console.log(`generated ${CALLS.toLocaleString('en')} calls (+ decisions and tokens) in ${secs(Date.now() - t)} s`);
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
  await store.close();

  t = Date.now();
  const out = await run(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir, '--json']);
  const verifyMs = Date.now() - t;
  const report = JSON.parse(out.stdout);
  console.log(`custody audit verify: exit ${out.code}, ${secs(verifyMs)} s for ${report.checked.rows_verified.toLocaleString('en')} sealed rows, ${report.checked.chained_calls.toLocaleString('en')} chained calls, ${report.checked.instances} instances; findings ${JSON.stringify(report.counts)}`);
  results.verify = { calls: CALLS, sealed_rows: sealed, seal_s: sealMs / 1000, verify_s: verifyMs / 1000, verify_exit: out.code, peak_rss_mb: out.maxRssMb };
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

await verifyAtScale();
console.log(JSON.stringify(results));
