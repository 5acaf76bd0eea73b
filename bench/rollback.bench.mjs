// Rollback watch cost: the pure decision, and one watch tick (GET /v1/rollout, GET
// /v1/rollback/status, and the status since the last change when a healthy period is over)
// against a real `custody up` on an embedded store holding 300 canary calls.
//
//   npm run build && node bench/rollback.bench.mjs [ticks=300]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { nextAction } = require('../dist/enforcer/rollback/decide.js');
const { httpPlane } = require('../dist/enforcer/rollback/plane.js');
const { createRollbackWatcher } = require('../dist/enforcer/rollback/watch.js');
const pino = require('pino');

const TICKS = Number(process.argv[2] ?? 300);
console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

// 1. nextAction, in process
{
  const rules = ['missing_sponsor_ratio', 'policy_error_rate', 'policy_latency_p95_ms'].map((rule) => ({ rule, value: 0, threshold: 1, breached: false }));
  const status = { action: 'advance', window_s: 900, sample_size: 500, rules };
  const state = { percent: 30, stages: [10, 30, 60, 100], updatedAt: Date.now() - 90_000_000 };
  const options = { healthyPeriodS: 86_400, minSample: 100, manualGates: false };
  const clock = { now: () => Date.now() };
  const n = 1_000_000;
  for (let i = 0; i < 10_000; i++) nextAction(state, { recent: status, sinceChange: status }, clock, options);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) nextAction(state, { recent: status, sinceChange: status }, clock, options);
  const s = (performance.now() - t0) / 1000;
  console.log(`nextAction (advance decision)                 ${Math.round(n / s).toLocaleString('en')}/s  ${((s / n) * 1e9).toFixed(0)} ns each`);
}

// 2. one tick against custody up
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-rollback-'));
const now = Date.now();
const rows = Array.from({ length: 300 }, (_, i) => ({
  timestamp: new Date(now - 10_000 + i * 30).toISOString(),
  sponsor_id: 'alice',
  agent_instance_id: `a${i % 7}`,
  tool_id: 'billing',
  decision: 'allow',
  policy_latency_ms: 4,
  cohort: 'canary',
}));
const seed = spawnSync(
  process.execPath,
  ['-e', `const {openStore}=require(${JSON.stringify(path.join(ROOT, 'dist/collector/store/index.js'))});(async()=>{const s=await openStore({dataDir:${JSON.stringify(dataDir)}});await s.client.insert({table:'custody.audit_events',values:${JSON.stringify(rows)},format:'JSONEachRow'});await s.close();process.exit(0)})()`],
  { encoding: 'utf8' },
);
if (seed.status !== 0) throw new Error(seed.stderr);

const child = spawn(process.execPath, [path.join(ROOT, 'dist/cli/main.js'), 'up', '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
  env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn', CUSTODY_ROLLBACK_WATCH: 'off' },
  stdio: ['ignore', 'pipe', 'pipe'],
});
let out = '';
child.stdout.on('data', (d) => (out += d));
child.stderr.on('data', (d) => (out += d));
try {
  let url;
  for (let i = 0; i < 600 && !url; i++) {
    url = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (!url) await new Promise((r) => setTimeout(r, 100));
  }
  if (!url) throw new Error(`custody did not start:\n${out}`);
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  const log = pino({ level: 'silent' });
  for (const [name, healthyPeriodS] of [
    ['tick, stage still young (2 requests)', 86_400],
    ['tick, healthy period over, awaiting approval (3 requests)', 0.001],
  ]) {
    const watcher = createRollbackWatcher({ plane: httpPlane({ url }), intervalS: 60, windowS: 900, healthyPeriodS, minSample: 100, manualGates: true, dryRun: true, log });
    for (let i = 0; i < 20; i++) await watcher.tick();
    const times = [];
    for (let i = 0; i < TICKS; i++) {
      const t0 = performance.now();
      const r = await watcher.tick();
      times.push(performance.now() - t0);
      if (r.error) throw r.error;
    }
    times.sort((a, b) => a - b);
    const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(2);
    console.log(`${name.padEnd(52)} p50 ${q(0.5)} ms  p95 ${q(0.95)} ms  p99 ${q(0.99)} ms  (${TICKS} ticks)`);
  }
} finally {
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  fs.rmSync(dataDir, { recursive: true, force: true });
}
