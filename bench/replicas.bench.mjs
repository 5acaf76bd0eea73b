// How long a rollout change takes to be in force on every policy-plane replica (target: 2 s).
// `custody up` owns the state; two `custody policy-plane --state-url` replicas share it. Each round
// moves the rollout through replica A and polls replica B and the owner every 10 ms until both
// answer the new revision.
//
//   npm run build && node bench/replicas.bench.mjs [rounds=20]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const rounds = Number(process.argv[2] ?? 20);
const ADMIN = 'bench-admin';
const SERVICE = 'bench-service';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function start(argv) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-replicas-'));
  const p = spawn(process.execPath, [CLI, ...argv, '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
    env: { ...process.env, CUSTODY_LOG_LEVEL: 'error', CUSTODY_ADMIN_TOKEN: ADMIN, CUSTODY_SERVICE_TOKEN: SERVICE },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  for (let i = 0; i < 900; i++) {
    const url = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (url && (await fetch(`${url}/readyz`).then((r) => r.ok, () => false))) return { p, url };
    if (p.exitCode !== null) throw new Error(`exited:\n${out}`);
    await sleep(100);
  }
  throw new Error(`did not start:\n${out}`);
}

const revisionOf = async (url) => ((await (await fetch(`${url}/v1/rollout`)).json()).revision);

const procs = [];
try {
  const owner = await start(['up', '--no-demo']);
  procs.push(owner.p);
  const [a, b] = await Promise.all([0, 1].map(() => start(['policy-plane', '--state-url', owner.url, '--token-url', owner.url])));
  procs.push(a.p, b.p);
  const times = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    const res = await fetch(`${a.url}/v1/rollout`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify({ percent: i % 2 ? 10 : 30, reason: `bench round ${i}` }),
    });
    if (res.status !== 200) throw new Error(`PUT answered ${res.status}: ${await res.text()}`);
    const { revision } = await res.json();
    while ((await revisionOf(b.url)) !== revision || (await revisionOf(owner.url)) !== revision) await sleep(10);
    times.push(performance.now() - t0);
    await sleep(100 + Math.random() * 400);
  }
  times.sort((x, y) => x - y);
  const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(0);
  console.log(`${rounds} rollout changes through replica A, in force on replica B and the owner after: p50 ${q(0.5)} ms, p95 ${q(0.95)} ms, max ${times.at(-1).toFixed(0)} ms`);
  console.log(`load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} cores`);
} finally {
  for (const p of procs) p.kill('SIGTERM');
  await sleep(500);
}
