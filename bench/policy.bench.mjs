// Policy decision speed, measured three ways (BENCHMARKS.md "## Policy"):
//   1. in-process: decide() over a 100-rule policy, and Cedar (@cedar-policy/cedar-wasm) evaluating
//      the same 100 rules on the same requests in the same run (both answers compared);
//   2. POST /v1/check over loopback, load from a separate process, against `custody policy-plane`
//      alone and against the plane inside `custody up`;
//   3. a cached allow in the enforcer;
//   4. what signing each decision's receipt costs the plane's check (the /v1/check work without
//      HTTP: verify the token, decide, sign): the same checker without a signer, signing each
//      decision alone (one signature per decision), and signing the decisions of one event-loop
//      turn together (the plane's batcher: one signature per batch), with `--lanes` checks in
//      flight at once, in alternating rounds in one process, so a busy machine weighs on all
//      alike; then the same three behind the plane's fast route over loopback, load from a
//      separate process, `--connections` (default 8,32) connections each.
//
//   npm run build && node bench/policy.bench.mjs [--seconds 8] [--concurrency 16] [--only receipts [--lanes 16] [--connections 8,32]]
//
// The load generator is this file run as `node bench/policy.bench.mjs --load URL TOKENS_FILE C S MODE`,
// MODE `cycle` (closed loop: C connections back to back), `once` (each token used once) or
// `paced:RATE` (open loop: RATE requests/s on a fixed schedule, latency from the scheduled time).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};

if (args[0] === '--load') await loadGenerator(args.slice(1));
else if (args.includes('--only') && args[args.indexOf('--only') + 1] === 'receipts') console.log(JSON.stringify(await receiptCost(), null, 2));
else await main();

// ---------------------------------------------------------------------------------------------

async function main() {
  const seconds = flag('seconds', 8);
  const concurrency = flag('concurrency', 16);
  const results = { machine: machine(), inProcess: inProcess() };
  printInProcess(results.inProcess);
  results.receipts = await receiptCost();
  const servers = await startServers();
  try {
    results.cachedAllow = await cachedAllow(servers.up.url);
    console.log(`\ncached allow (enforcer.check, decision cache hit): p50 ${us(results.cachedAllow.p50)} p99 ${us(results.cachedAllow.p99)} mean ${us(results.cachedAllow.mean)} over ${results.cachedAllow.n} calls`);
    results.check = await loopback(servers, seconds, concurrency);
  } finally {
    await servers.stop();
  }
  fs.mkdirSync(path.join(ROOT, 'bench/out'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench/out/policy.json'), JSON.stringify(results, null, 2));
  console.log('\nwritten bench/out/policy.json');
}

function machine() {
  return { node: process.version, cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavg: os.loadavg().map((x) => x.toFixed(2)) };
}

// --- 4. receipts: the check with and without signing ----------------------------------------------

async function receiptCost() {
  const { tokenConfig } = require(path.join(ROOT, 'dist/identity/config.js'));
  const { createKeyRing, keySourceFor, generateSigningKey } = require(path.join(ROOT, 'dist/identity/keys.js'));
  const { createTokenService } = require(path.join(ROOT, 'dist/identity/service.js'));
  const { createTokenVerifier } = require(path.join(ROOT, 'dist/identity/verify.js'));
  const { readPolicyFile } = require(path.join(ROOT, 'dist/enforcer/policy/compile.js'));
  const { createChecker } = require(path.join(ROOT, 'dist/enforcer/plane/check.js'));
  const { receiptBatcher } = require(path.join(ROOT, 'dist/enforcer/plane/receipt-batcher.js'));
  const { receiptSigner } = require(path.join(ROOT, 'dist/common/receipt.js'));
  const config = tokenConfig({ issuer: 'agent-token-svc', default_ttl_seconds: 300, max_ttl_seconds: 900, require_sponsor: true, supported_tools: ['billing', 'search', 'file-store'] });
  const keys = await createKeyRing(keySourceFor(config, {}));
  const service = createTokenService({ config, keys, mode: 'open' });
  // the enforcer reuses a token for its tool until it nears expiry: 500 agents, each token checked 4 times
  const tokens = [];
  for (let i = 0; i < 500; i++) tokens.push((await service.issue({ tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: `bench-${i}` })).token);
  const policy = readPolicyFile(path.join(ROOT, 'policy-config.yaml'));
  const verifier = createTokenVerifier({ issuer: config.issuer, jwks: () => keys.jwks() });
  const key = await generateSigningKey('EdDSA');
  const signer = receiptSigner(key.kid, key.privateKey);
  // receipts per signature, per variant (reset before each measured run)
  const batches = { single: { n: 0, receipts: 0 }, batched: { n: 0, receipts: 0 } };
  const counted = (k, maxBatch) => receiptBatcher(() => signer, { maxBatch, onBatch: (size) => ((batches[k].n += 1), (batches[k].receipts += size)) });
  const VARIANTS = ['without', 'single', 'batched'];
  const checkers = {
    without: createChecker({ policy: () => policy, verifier, rolloutPercent: () => 100 }),
    // what the plane did before batches: one signature per decision
    single: createChecker({ policy: () => policy, verifier, rolloutPercent: () => 100, signer: counted('single', 1) }),
    batched: createChecker({ policy: () => policy, verifier, rolloutPercent: () => 100, signer: counted('batched') }),
  };
  const meanBatch = (k) => (batches[k].n ? +(batches[k].receipts / batches[k].n).toFixed(1) : 0);
  const resetBatches = () => Object.values(batches).forEach((b) => ((b.n = 0), (b.receipts = 0)));
  const n = tokens.length * 4;
  const lanes = flag('lanes', 16);
  // `lanes` checks in flight at once, as concurrent requests are on a busy plane
  const round = async (check) => {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: lanes }, async () => {
        while (next < n) {
          const i = next++;
          await check({ token: tokens[i % tokens.length], tool: 'billing', action: 'refund' });
        }
      }),
    );
    const cpu = process.cpuUsage(cpu0);
    return { wall: n / ((performance.now() - t0) / 1000), cpu: n / ((cpu.user + cpu.system) / 1e6) };
  };
  for (const k of VARIANTS) await round(checkers[k]);
  resetBatches();
  const runs = { without: [], single: [], batched: [] };
  for (let r = 0; r < 5; r++) for (const k of VARIANTS) runs[k].push(await round(checkers[k]));
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const out = { lanes };
  for (const k of VARIANTS) out[k] = { checks_per_s_wall: Math.round(median(runs[k].map((x) => x.wall))), checks_per_cpu_s: Math.round(median(runs[k].map((x) => x.cpu))) };
  out.batched.mean_batch = meanBatch('batched');
  for (const k of ['single', 'batched']) {
    out[k].cost_pct_cpu = +((1 - out[k].checks_per_cpu_s / out.without.checks_per_cpu_s) * 100).toFixed(1);
    out[k].cost_pct_wall = +((1 - out[k].checks_per_s_wall / out.without.checks_per_s_wall) * 100).toFixed(1);
  }
  console.log(`\nreceipts in process, ${lanes} checks in flight, ${n} checks per round, median of 5 alternating rounds:`);
  console.log(`  without signing           ${out.without.checks_per_cpu_s}/CPU-s (${out.without.checks_per_s_wall}/s wall)`);
  console.log(`  one signature a decision  ${out.single.checks_per_cpu_s}/CPU-s (${out.single.checks_per_s_wall}/s wall): costs ${out.single.cost_pct_cpu} % of CPU throughput (${out.single.cost_pct_wall} % wall)`);
  console.log(`  batched (mean ${out.batched.mean_batch} a signature)  ${out.batched.checks_per_cpu_s}/CPU-s (${out.batched.checks_per_s_wall}/s wall): costs ${out.batched.cost_pct_cpu} % of CPU throughput (${out.batched.cost_pct_wall} % wall)`);

  // the same over HTTP: POST /v1/check on the plane's fast route (bare node:http, as the plane
  // serves it) in this process, load from a separate process
  const { createFastRouter } = require(path.join(ROOT, 'dist/common/fast-route.js'));
  const { listen } = require(path.join(ROOT, 'dist/common/http.js'));
  const { createLogger } = require(path.join(ROOT, 'dist/common/log.js'));
  const log = createLogger('bench', 'silent');
  const searchTokens = [];
  for (let i = 0; i < 500; i++) searchTokens.push((await service.issue({ tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: `bench-${i}` })).token);
  const tokensFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-receipts-')), 'tokens.json');
  fs.writeFileSync(tokensFile, JSON.stringify(searchTokens));
  const servers = {};
  for (const k of VARIANTS) {
    const router = createFastRouter(log);
    router.post('/v1/check', (body) => checkers[k](body));
    servers[k] = await listen(
      router.listener((_req, res) => res.writeHead(404).end()),
      '127.0.0.1',
      0,
    );
  }
  const seconds = flag('seconds', 8);
  const connections = String(args.includes('--connections') ? args[args.indexOf('--connections') + 1] : '8,32').split(',').map(Number).filter((c) => c > 0);
  out.http = {};
  for (const c of connections) {
    const rps = { without: [], single: [], batched: [] };
    const sizes = [];
    for (let r = 0; r < 2; r++) {
      for (const k of VARIANTS) {
        resetBatches();
        rps[k].push((await runLoad(servers[k].url, tokensFile, c, seconds, 'cycle')).rps);
        if (k === 'batched') sizes.push(meanBatch('batched'));
      }
    }
    const h = { without_rps: Math.round(median(rps.without)), single_rps: Math.round(median(rps.single)), batched_rps: Math.round(median(rps.batched)), mean_batch: sizes, rounds: rps };
    h.single_cost_pct = +((1 - h.single_rps / h.without_rps) * 100).toFixed(1);
    h.batched_cost_pct = +((1 - h.batched_rps / h.without_rps) * 100).toFixed(1);
    out.http[c] = h;
    console.log(
      `receipts over HTTP (fast route, ${c} connections, ${seconds} s, 2 alternating rounds each): without ${h.without_rps} req/s, ` +
        `one signature a decision ${h.single_rps} req/s (costs ${h.single_cost_pct} %), batched ${h.batched_rps} req/s (costs ${h.batched_cost_pct} %, mean batch ${sizes.join(' / ')} incl. warm-up)`,
    );
  }
  for (const k of VARIANTS) await servers[k].close();
  return { n, ...out };
}

// --- 1. in-process: decide() and Cedar on the same 100 rules ------------------------------------

function policyWith100Rules() {
  const roles = Array.from({ length: 10 }, (_, i) => `role${i}`);
  const tools = Array.from({ length: 25 }, (_, i) => `tool${i}`);
  const actions = ['read', 'write', 'delete', 'refund', 'charge'];
  const purposes = ['ticket', 'renewal', 'audit', 'marketing'];
  const rules = [];
  for (let i = 0; i < 100; i++) {
    const rule = {
      id: `rule-${i}`,
      effect: i % 10 === 9 ? 'deny' : 'allow',
      role: roles[(i * 7) % roles.length],
      tool: tools[i % tools.length],
      actions: actions.filter((_, k) => (i + k) % 3 !== 0),
    };
    if (i % 5 === 0) rule.purposes = [purposes[i % 4], purposes[(i + 1) % 4]];
    rules.push(rule);
  }
  const yaml = [
    'rules:',
    ...rules.map(
      (r) =>
        `  - {id: ${r.id}, effect: ${r.effect}, role: ${r.role}, tool: ${r.tool}, actions: [${r.actions.join(', ')}]` +
        (r.purposes ? `, conditions: {purpose: {in: [${r.purposes.join(', ')}]}}` : '') +
        '}',
    ),
  ].join('\n');
  const cedar = rules
    .map((r) => {
      const when = [`principal.role == "${r.role}"`];
      if (r.purposes) when.push(`context has purpose && [${r.purposes.map((p) => `"${p}"`).join(', ')}].contains(context.purpose)`);
      return `${r.effect === 'deny' ? 'forbid' : 'permit'}(principal, action in [${r.actions.map((a) => `Action::"${a}"`).join(', ')}], resource == Tool::"${r.tool}") when { ${when.join(' && ')} };`;
    })
    .join('\n');
  let seed = 42;
  const rnd = (n) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  const requests = Array.from({ length: 1000 }, () => ({
    role: roles[rnd(roles.length)],
    tool: tools[rnd(tools.length)],
    action: actions[rnd(actions.length)],
    purpose: rnd(3) === 0 ? undefined : purposes[rnd(purposes.length)],
  }));
  return { yaml, cedar, requests };
}

function timeEach(n, fn) {
  const samples = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    fn(i);
    samples[i] = Number(process.hrtime.bigint() - t);
  }
  return stats(samples);
}

function inProcess() {
  const { compilePolicyText } = require(path.join(ROOT, 'dist/enforcer/policy/compile.js'));
  const { decide } = require(path.join(ROOT, 'dist/enforcer/policy/decide.js'));
  const { decisionId } = require(path.join(ROOT, 'dist/enforcer/policy/ids.js'));
  const cedar = require('@cedar-policy/cedar-wasm/nodejs');
  const { yaml, cedar: cedarText, requests } = policyWith100Rules();
  const policy = compilePolicyText(yaml, 'bench-100-rules.yaml');
  const now = Date.now();
  const identity = (r) => ({ sponsorId: 'alice', agentInstanceId: 'bench-agent', role: r.role });
  const custodyDecide = (r) => decide({ identity: identity(r), tool: r.tool, action: r.action, purpose: r.purpose }, policy, { now });

  const policies = { staticPolicies: cedarText };
  const cedarCall = (r) => ({
    principal: { type: 'Agent', id: 'bench-agent' },
    action: { type: 'Action', id: r.action },
    resource: { type: 'Tool', id: r.tool },
    context: r.purpose ? { purpose: r.purpose } : {},
    entities: [{ uid: { type: 'Agent', id: 'bench-agent' }, attrs: { role: r.role }, parents: [] }],
  });
  const pre = cedar.preparsePolicySet('bench', policies);
  if (pre.type !== 'success') throw new Error(`cedar: ${JSON.stringify(pre)}`);

  // the same answers, or the comparison means nothing
  let mismatches = 0;
  let allows = 0;
  for (const r of requests) {
    const ours = custodyDecide(r).decision;
    const theirs = cedar.isAuthorized({ ...cedarCall(r), policies });
    if (theirs.type !== 'success') throw new Error(`cedar: ${JSON.stringify(theirs)}`);
    if (theirs.response.decision !== ours) mismatches++;
    if (ours === 'allow') allows++;
  }

  for (let i = 0; i < 50_000; i++) custodyDecide(requests[i % 1000]); // warm-up
  const decideStats = timeEach(300_000, (i) => custodyDecide(requests[i % 1000]));
  const decideWithIdStats = timeEach(300_000, (i) => {
    custodyDecide(requests[i % 1000]);
    decisionId();
  });
  for (let i = 0; i < 200; i++) cedar.isAuthorized({ ...cedarCall(requests[i % 1000]), policies });
  const cedarStats = timeEach(3_000, (i) => cedar.isAuthorized({ ...cedarCall(requests[i % 1000]), policies }));
  for (let i = 0; i < 1000; i++) cedar.statefulIsAuthorized({ ...cedarCall(requests[i % 1000]), preparsedPolicySetId: 'bench' });
  const cedarPreparsedStats = timeEach(30_000, (i) => cedar.statefulIsAuthorized({ ...cedarCall(requests[i % 1000]), preparsedPolicySetId: 'bench' }));
  return {
    rules: policy.ruleCount,
    requests: requests.length,
    allows,
    mismatches,
    decide: decideStats,
    decideWithId: decideWithIdStats,
    cedarIsAuthorized: cedarStats,
    cedarPreparsed: cedarPreparsedStats,
    cedarVersion: cedar.getCedarVersion(),
  };
}

function printInProcess(r) {
  console.log(`in-process decision, ${r.rules} rules, ${r.requests} distinct requests (${r.allows} allowed), custody vs Cedar ${r.cedarVersion}: ${r.mismatches} different answers`);
  const row = (name, s) => console.log(`  ${name.padEnd(44)} p50 ${us(s.p50).padStart(10)}  p99 ${us(s.p99).padStart(10)}  mean ${us(s.mean).padStart(10)}  (n=${s.n})`);
  row('custody decide()', r.decide);
  row('custody decide() + decision id', r.decideWithId);
  row('Cedar isAuthorized (policies as text)', r.cedarIsAuthorized);
  row('Cedar statefulIsAuthorized (preparsed set)', r.cedarPreparsed);
}

// --- 2. POST /v1/check over loopback ----------------------------------------------------------

async function startServers() {
  const procs = [];
  const start = async (argv, env = {}) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-policy-'));
    const p = spawn(process.execPath, [CLI, ...argv, '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
      env: { ...process.env, CUSTODY_LOG_LEVEL: 'error', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    procs.push(p);
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    for (let i = 0; i < 600; i++) {
      const url = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
      if (url) {
        const otlp = /OTLP\s+(http:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
        const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
        if (ok) return { url, otlp, pid: p.pid };
      }
      if (p.exitCode !== null) throw new Error(`custody exited:\n${out}`);
      await sleep(100);
    }
    throw new Error(`custody did not start:\n${out}`);
  };
  const admin = 'bench-admin';
  const up = await start(['up'], { CUSTODY_ADMIN_TOKEN: admin });
  const plane = await start(['policy-plane', '--token-url', up.url, ...(up.otlp ? ['--otlp-url', up.otlp] : [])], { CUSTODY_ADMIN_TOKEN: admin });
  for (const u of [up.url, plane.url]) {
    await fetch(`${u}/v1/rollout`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` },
      body: JSON.stringify({ percent: 100, reason: 'bench: every instance enforced' }),
    });
  }
  return {
    up,
    plane,
    stop: async () => {
      for (const p of procs) p.kill('SIGTERM');
      await sleep(300);
    },
  };
}

async function issueTokens(url, n, prefix) {
  const tokens = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < n) {
        const i = next++;
        const res = await fetch(`${url}/issue`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ tool: 'search', sponsor_id: 'alice', agent_instance_id: `${prefix}-${i}`, role: 'support', ttl: 300 }),
        });
        if (res.status !== 201) throw new Error(`/issue: ${res.status} ${await res.text()}`);
        tokens.push((await res.json()).token);
      }
    }),
  );
  return tokens;
}

async function loopback(servers, seconds, concurrency) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-tokens-'));
  const reuse = path.join(dir, 'reuse.json');
  fs.writeFileSync(reuse, JSON.stringify(await issueTokens(servers.up.url, 500, 'reuse')));
  const out = {};
  // Few connections show the latency a call sees; many show how much one plane process takes.
  const runs = [
    ['policy-plane alone, 500 agents reusing their tokens, 2,000 req/s offered (open loop)', servers.plane.url, reuse, 64, 'paced:2000'],
    ['custody up, 500 agents reusing their tokens, 2,000 req/s offered (open loop)', servers.up.url, reuse, 64, 'paced:2000'],
    ['policy-plane alone, 500 agents reusing their tokens', servers.plane.url, reuse, 4, 'cycle'],
    ['policy-plane alone, 500 agents reusing their tokens', servers.plane.url, reuse, concurrency, 'cycle'],
    ['policy-plane alone, every token new (signature checked each time)', servers.plane.url, null, 8, 'once'],
    ['custody up (plane beside collector and token service), reused tokens', servers.up.url, reuse, 4, 'cycle'],
  ];
  console.log(`\nPOST /v1/check over loopback, load from a separate process, ${seconds} s per run:`);
  for (const [name, url, file, c, mode] of runs) {
    let tokensFile = file;
    if (!tokensFile) {
      tokensFile = path.join(dir, 'fresh.json');
      fs.writeFileSync(tokensFile, JSON.stringify(await issueTokens(servers.up.url, 12_000, 'fresh')));
    }
    const r = await runLoad(url, tokensFile, c, seconds, mode);
    const label = mode.startsWith('paced') ? `${name}, up to ${c} connections` : `${name}, ${c} connections`;
    out[label] = r;
    console.log(
      `  ${label}\n    ${r.rps.toFixed(0)} req/s over ${r.seconds.toFixed(1)} s, latency p50 ${ms(r.p50)} p95 ${ms(r.p95)} p99 ${ms(r.p99)}, ` +
        `${r.errors} errors, decisions ${JSON.stringify(r.decisions)}`,
    );
  }
  return out;
}

function runLoad(url, tokensFile, concurrency, seconds, mode) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [fileURLToPath(import.meta.url), '--load', url, tokensFile, String(concurrency), String(seconds), mode], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load generator exited ${code}`))));
  });
}

/** The load generator: C keep-alive connections posting /v1/check back to back for S seconds. */
async function loadGenerator([url, tokensFile, c, s, mode]) {
  const tokens = JSON.parse(fs.readFileSync(tokensFile, 'utf8'));
  const concurrency = Number(c);
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const target = new URL('/v1/check', url);
  const post = (token) =>
    new Promise((resolve, reject) => {
      const body = JSON.stringify({ token, tool: 'search', action: 'call' });
      const req = http.request(
        { agent, hostname: target.hostname, port: target.port, path: target.pathname, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode, text }));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  // warm-up (connections, JIT, the plane's verified-token cache): the same load for 3 s, not
  // counted; in `once` mode a short serial one from the end of the list, kept apart from the measured tokens
  if (mode === 'once') {
    const warm = tokens.splice(-400);
    for (const t of warm) await post(t);
  } else await measure(tokens, concurrency, 3, mode, post);
  const r = await measure(tokens, concurrency, Number(s), mode, post);
  process.stdout.write(JSON.stringify(r));
  agent.destroy();
}

/** One measured run of the load generator. */
async function measure(tokens, concurrency, seconds, mode, post) {
  const latencies = [];
  const decisions = {};
  let errors = 0;
  let next = 0;
  const record = (r) => {
    if (r.status !== 200) errors++;
    else {
      const d = JSON.parse(r.text).decision;
      decisions[d] = (decisions[d] ?? 0) + 1;
    }
  };
  const started = process.hrtime.bigint();
  const deadline = Date.now() + seconds * 1000;
  const paced = /^paced:(\d+)$/.exec(mode);
  if (paced) {
    // Open loop: requests leave on a fixed schedule (rate/s), whatever the answers do; latency
    // counts from the scheduled time, so a stall shows in full (no coordinated omission).
    const rate = Number(paced[1]);
    const inflight = new Set();
    let sent = 0;
    while (Date.now() < deadline) {
      const due = Math.floor((Number(process.hrtime.bigint() - started) / 1e9) * rate);
      for (; sent < due; sent++) {
        const scheduled = started + BigInt(Math.round((sent / rate) * 1e9));
        const p = post(tokens[sent % tokens.length]).then(
          (r) => {
            latencies.push(Number(process.hrtime.bigint() - scheduled));
            record(r);
          },
          () => errors++,
        );
        inflight.add(p);
        p.finally(() => inflight.delete(p));
      }
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(inflight);
  } else {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (Date.now() < deadline) {
          if (mode === 'once' && next >= tokens.length) return;
          const token = tokens[next++ % tokens.length];
          const t = process.hrtime.bigint();
          try {
            const r = await post(token);
            latencies.push(Number(process.hrtime.bigint() - t));
            record(r);
          } catch {
            errors++;
          }
        }
      }),
    );
  }
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  const st = stats(Float64Array.from(latencies));
  return { rps: latencies.length / elapsed, seconds: elapsed, n: latencies.length, errors, decisions, p50: st.p50, p95: st.p95, p99: st.p99, mean: st.mean };
}

// --- 3. a cached allow ------------------------------------------------------------------------

async function cachedAllow(url) {
  const { createEnforcer } = require(path.join(ROOT, 'dist/enforcer/client/enforcer.js'));
  const e = createEnforcer({ url, timeoutMs: 2000, recordOnActiveSpan: true });
  const req = { tool: 'search', action: 'call', identity: { sponsorId: 'alice', agentInstanceId: 'bench-cache', role: 'support' } };
  const first = await e.check(req);
  if (first.decision !== 'allow') throw new Error(`expected an allow to cache: ${first.reason}`);
  for (let i = 0; i < 20_000; i++) await e.check(req);
  const n = 200_000;
  const samples = new Float64Array(n);
  let cached = 0;
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    const d = await e.check(req);
    samples[i] = Number(process.hrtime.bigint() - t);
    if (d.cached) cached++;
  }
  await e.close();
  if (cached !== n) throw new Error(`only ${cached} of ${n} were cache hits`);
  return stats(samples);
}

// ---------------------------------------------------------------------------------------------

function stats(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  let sum = 0;
  for (const v of sorted) sum += v;
  return { n: sorted.length, p50: at(0.5), p95: at(0.95), p99: at(0.99), max: sorted[sorted.length - 1], mean: sum / sorted.length };
}

function us(ns) {
  return `${(ns / 1000).toFixed(2)} µs`;
}

function ms(ns) {
  return `${(ns / 1e6).toFixed(2)} ms`;
}

function sleep(msec) {
  return new Promise((r) => setTimeout(r, msec));
}
