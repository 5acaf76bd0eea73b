// The policy plane's hot path against the floor of the machine, side by side in one run
// (BENCHMARKS.md "## Policy plane hot path"):
//   1. a bare node:http server that parses the JSON body and answers a small JSON;
//   2. Express 5 with express.json() doing the same;
//   3. `custody policy-plane` answering POST /v1/check (tokens reused: the verified-token cache hits);
// each as its own process, loaded closed-loop from a separate process (bench/policy.bench.mjs's
// load generator) with the same connections; then custody open-loop at half its own maximum rate.
//
// Then `custody policy-plane --workers N` for each N of --workers (default 2): the same closed loop,
// to show how the plane's throughput scales with its workers.
//
//   npm run build && node bench/plane-http.bench.mjs [--seconds 8] [--concurrency 8] [--workers 2,4] [--sink]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const LOAD = path.join(ROOT, 'bench/policy.bench.mjs');
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

if (args[0] === '--serve') await serve(args[1]);
else await main();

/** The two reference servers: what any JSON endpoint on this machine costs at the least. */
async function serve(kind) {
  if (kind === 'sink') {
    // an OTLP receiver that acknowledges and discards: the decision log's collector, off this machine's budget
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 }).end());
    });
    server.keepAliveTimeout = 65_000;
    server.listen(0, '127.0.0.1', () => process.stdout.write(`listening http://127.0.0.1:${server.address().port}\n`));
    return;
  }
  const answer = JSON.stringify({ decision: 'allow', policy_decision_id: 'pd_0', rule_id: 'r', reason: 'ok', cohort: 'canary', enforced: true });
  let server;
  if (kind === 'node') {
    const http = await import('node:http');
    server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (typeof body.token !== 'string') res.writeHead(400).end();
        else res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) }).end(answer);
      });
    });
  } else {
    const { default: express } = await import('express');
    const app = express();
    app.use(express.json());
    app.post('/v1/check', (req, res) => {
      if (typeof req.body.token !== 'string') res.status(400).end();
      else res.type('application/json').send(answer);
    });
    const http = await import('node:http');
    server = http.createServer(app);
  }
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => process.stdout.write(`listening http://127.0.0.1:${server.address().port}\n`));
}

function startProcess(argv, env = {}) {
  const p = spawn(process.execPath, argv, { env: { ...process.env, CUSTODY_LOG_LEVEL: 'error', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  return { p, out: () => out };
}

async function waitFor(proc, pattern) {
  for (let i = 0; i < 600; i++) {
    const m = pattern.exec(proc.out());
    if (m) return m[1];
    if (proc.p.exitCode !== null) throw new Error(`exited:\n${proc.out()}`);
    await sleep(100);
  }
  throw new Error(`did not start:\n${proc.out()}`);
}

async function startCustody(argv, env) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-plane-'));
  const proc = startProcess([CLI, ...argv, '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], env);
  const url = await waitFor(proc, /control API\s+(http:\/\/\S+)/);
  const otlp = /OTLP\s+(http:\/\/[^\s/]+:\d+)/.exec(proc.out())?.[1];
  for (let i = 0; i < 600 && !(await fetch(`${url}/readyz`).then((r) => r.ok, () => false)); i++) await sleep(100);
  return { ...proc, url, otlp };
}

function runLoad(url, tokensFile, concurrency, seconds, mode) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [LOAD, '--load', url, tokensFile, String(concurrency), String(seconds), mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load generator exited ${code}`))));
  });
}

async function main() {
  const seconds = flag('seconds', 8);
  const concurrency = flag('concurrency', 8);
  const admin = 'bench-admin';
  const procs = [];
  try {
    const up = await startCustody(['up', '--no-demo'], { CUSTODY_ADMIN_TOKEN: admin });
    procs.push(up.p);
    // The decision log goes to a collector; with --sink, to one that acknowledges and discards (in a
    // fleet the collector runs elsewhere), otherwise to `custody up`'s own, storing on these cores.
    let logUrl = up.otlp;
    if (args.includes('--sink')) {
      const sink = startProcess([fileURLToPath(import.meta.url), '--serve', 'sink']);
      procs.push(sink.p);
      logUrl = await waitFor(sink, /listening (\S+)/);
    }
    console.log(`decision log to ${args.includes('--sink') ? 'a discarding OTLP receiver (--sink)' : "custody up's collector, storing on the same cores"}`);
    const plane = await startCustody(['policy-plane', '--token-url', up.url, ...(logUrl ? ['--otlp-url', logUrl] : [])], { CUSTODY_ADMIN_TOKEN: admin });
    procs.push(plane.p);
    await fetch(`${plane.url}/v1/rollout`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` },
      body: JSON.stringify({ percent: 100, reason: 'bench: every instance enforced' }),
    });
    const tokens = [];
    for (let i = 0; i < 500; i++) {
      const res = await fetch(`${up.url}/issue`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tool: 'search', sponsor_id: 'alice', agent_instance_id: `bench-${i}`, role: 'support', ttl: 300 }),
      });
      if (res.status !== 201) throw new Error(`/issue: ${res.status} ${await res.text()}`);
      tokens.push((await res.json()).token);
    }
    const tokensFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-tokens-')), 'tokens.json');
    fs.writeFileSync(tokensFile, JSON.stringify(tokens));

    const servers = [];
    for (const kind of ['node', 'express']) {
      const proc = startProcess([fileURLToPath(import.meta.url), '--serve', kind]);
      procs.push(proc.p);
      servers.push({ name: kind === 'node' ? 'bare node:http answering a small JSON' : 'Express 5 with express.json() answering a small JSON', url: await waitFor(proc, /listening (\S+)/) });
    }
    servers.push({ name: 'custody POST /v1/check (policy-plane, reused tokens, cached verify)', url: plane.url });

    const results = { machine: { node: process.version, cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavg: os.loadavg().map((x) => x.toFixed(2)) }, closedLoop: {}, openLoop: undefined };
    console.log(`closed loop, ${concurrency} connections, ${seconds} s each (after 3 s warm-up), load from a separate process:\n`);
    console.log('| server | requests/s | p50 | p99 | errors |');
    console.log('|---|---:|---:|---:|---:|');
    for (const s of servers) {
      const r = await runLoad(s.url, tokensFile, concurrency, seconds, 'cycle');
      results.closedLoop[s.name] = r;
      console.log(`| ${s.name} | ${r.rps.toFixed(0)} | ${ms(r.p50)} | ${ms(r.p99)} | ${r.errors} |`);
    }
    const bare = results.closedLoop[servers[0].name].rps;
    const custody = results.closedLoop[servers[2].name].rps;
    console.log(`\ncustody / bare node:http: ${(custody / bare).toFixed(2)}`);
    const half = Math.max(1, Math.floor(custody / 2));
    const open = await runLoad(plane.url, tokensFile, 64, seconds, `paced:${half}`);
    results.openLoop = { offered: half, ...open };
    console.log(`custody open loop at half its maximum (${half} req/s offered): ${open.rps.toFixed(0)} req/s, p50 ${ms(open.p50)} p95 ${ms(open.p95)} p99 ${ms(open.p99)}, ${open.errors} errors`);
    const workerCounts = (args.includes('--workers') ? args[args.indexOf('--workers') + 1] : '2').split(',').map(Number).filter((n) => n > 1);
    results.workers = { 1: custody };
    for (const n of workerCounts) {
      const multi = await startCustody(['policy-plane', '--workers', String(n), '--token-url', up.url, ...(logUrl ? ['--otlp-url', logUrl] : [])], { CUSTODY_ADMIN_TOKEN: admin });
      procs.push(multi.p);
      const r = await runLoad(multi.url, tokensFile, concurrency, seconds, 'cycle');
      results.workers[n] = r.rps;
      console.log(`custody policy-plane --workers ${n}, closed loop, ${concurrency} connections: ${r.rps.toFixed(0)} req/s (${(r.rps / custody).toFixed(2)}× one process), p50 ${ms(r.p50)} p99 ${ms(r.p99)}, ${r.errors} errors`);
      multi.p.kill('SIGTERM');
      await sleep(2000);
    }
    fs.mkdirSync(path.join(ROOT, 'bench/out'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench/out/plane-http.json'), JSON.stringify(results, null, 2));
  } finally {
    for (const p of procs) p.kill('SIGTERM');
    await sleep(300);
  }
}

function ms(ns) {
  return `${(ns / 1e6).toFixed(2)} ms`;
}
