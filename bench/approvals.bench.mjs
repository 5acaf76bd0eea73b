// Human approval's cost where no human is needed, and the inbox page at scale
// (BENCHMARKS.md "## Human approval"):
//   1. decide() in process for a decision that needs no approval, this build and (with --before DIR)
//      another build of custody (e.g. the commit before approvals, built in DIR);
//   2. POST /v1/check inside `custody up` over loopback, closed loop, for the same decision: this
//      build, the --before build, and this build with an argument-aware policy (args disclosed,
//      a require_approval rule that does not match: the decision is still an allow);
//   3. the approval inbox page (GET /approvals) with --pending requests waiting (default 1,000):
//      server time for the whole page, and a real headless Chromium's load when /usr/bin/chromium exists.
//
//   npm run build && node bench/approvals.bench.mjs [--seconds 6] [--concurrency 4] [--pending 1000] [--before DIR] [--only cached|inbox]
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const SECONDS = Number(opt('seconds', 6));
const CONCURRENCY = Number(opt('concurrency', 4));
const PENDING = Number(opt('pending', 1000));
const BEFORE = opt('before', undefined);
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));

const PLAIN = `version: bench-plain
tools:
  billing: { actions: [refund] }
  search: {}
rules:
  - { id: allow-support-search, role: support, tool: search }
  - { id: allow-support-refunds, role: support, tool: billing, allowed_actions: [refund] }
rollout: { percent: 100 }
`;
const CAROL = 'cap.bench-carol';
const ARGS = `version: bench-args
tools:
  billing: { actions: [refund], disclose_args: [amount] }
  search: {}
rules:
  - { id: allow-support-search, role: support, tool: search }
  - { id: allow-support-refunds, role: support, tool: billing, allowed_actions: [refund] }
  - id: large-refunds
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [refund]
    conditions: { args: { amount: { gt: 100 } } }
    approvers: { roles: [finance] }
approvals:
  people:
    carol: { roles: [finance], credential_sha256: ${createHash('sha256').update(CAROL).digest('hex')} }
rollout: { percent: 100 }
`;

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const fmt = (ms) => (ms < 1 ? `${(ms * 1000).toFixed(ms < 0.1 ? 2 : 0)} µs` : `${ms.toFixed(2)} ms`);

async function startUp(root, policyText) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-approvals-'));
  fs.writeFileSync(path.join(dir, 'policy.yaml'), policyText);
  const proc = spawn(process.execPath, [path.join(root, 'dist/cli/main.js'), 'up', '--no-demo', '--port', '0', '--otlp-port', '0', '--otlp-grpc-port', '0', '--data-dir', path.join(dir, 'data'), '--policy', path.join(dir, 'policy.yaml')], {
    cwd: root,
    env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn', CUSTODY_ADMIN_TOKEN: 'bench-admin' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const deadline = Date.now() + 90_000;
  let url;
  while (Date.now() < deadline) {
    url ??= /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (url) {
      try {
        if ((await fetch(`${url}/readyz`)).status === 200) break;
      } catch {}
    }
    if (proc.exitCode !== null) throw new Error(`custody exited:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    stop: () => new Promise((resolve) => {
      proc.once('exit', resolve);
      proc.kill('SIGTERM');
    }),
  };
}

async function issue(url, body) {
  const res = await fetch(`${url}/issue`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.status !== 201) throw new Error(`/issue ${res.status}: ${await res.text()}`);
  return (await res.json()).token;
}

function post(agent, url, body) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': data.length } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** Closed loop: CONCURRENCY callers back to back for SECONDS after a 2 s warm-up. */
async function closedLoop(url, makeBody) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const target = `${url}/v1/check`;
  const lat = [];
  let errors = 0;
  let measuring = false;
  const end = performance.now() + 2000 + SECONDS * 1000;
  const warm = performance.now() + 2000;
  let i = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        const r = await post(agent, target, makeBody(i++));
        const ms = performance.now() - t0;
        if (r.status !== 200 || !r.body.includes('"decision":"allow"')) errors++;
        if (t0 >= warm) {
          measuring = true;
          lat.push(ms);
        }
      }
    }),
  );
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { rps: measuring ? lat.length / SECONDS : 0, p50: pct(lat, 50), p95: pct(lat, 95), p99: pct(lat, 99), errors };
}

async function checkBench(label, root, policyText, withArgs) {
  const up = await startUp(root, policyText);
  try {
    const tokens = [];
    for (let i = 0; i < 200; i++) tokens.push(await issue(up.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: `bench-${i}` }));
    const r = await closedLoop(up.url, (i) => ({ token: tokens[i % tokens.length], tool: 'billing', action: 'refund', ...(withArgs ? { args: { amount: 50 } } : {}) }));
    console.log(`| ${label} | ${Math.round(r.rps).toLocaleString('en')} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ${r.errors} |`);
  } finally {
    await up.stop();
  }
}

/** The agent side: enforcer.check answered from the allow cache (the most common decision of all), 200,000 calls. */
async function cachedBench(label, root, policyText, args) {
  const up = await startUp(root, policyText);
  try {
    const { createEnforcer } = await import(path.join(root, 'dist/enforcer/client/enforcer.js'));
    const e = createEnforcer({ url: up.url, timeoutMs: 5000, recordOnActiveSpan: true });
    const req = { tool: 'billing', action: 'refund', identity: { sponsorId: 'alice', agentInstanceId: 'bench-cache', role: 'support' }, ...(args ? { args } : {}) };
    const first = await e.check(req);
    if (first.decision !== 'allow') throw new Error(`expected an allow to cache: ${first.reason}`);
    for (let i = 0; i < 20_000; i++) await e.check(req);
    const n = 200_000;
    const lat = new Float64Array(n);
    let cached = 0;
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      const d = await e.check(req);
      lat[i] = performance.now() - t;
      if (d.cached) cached++;
    }
    await e.close();
    lat.sort();
    let sum = 0;
    for (const v of lat) sum += v;
    console.log(`| ${label} | ${fmt(pct(lat, 50))} | ${fmt(pct(lat, 99))} | ${fmt(sum / n)} | ${cached === n ? 'all' : cached} |`);
  } finally {
    await up.stop();
  }
}

async function decideBench(label, root, policyText, request) {
  const { compilePolicyText } = await import(path.join(root, 'dist/enforcer/policy/compile.js'));
  const { decide } = await import(path.join(root, 'dist/enforcer/policy/decide.js'));
  const policy = compilePolicyText(policyText, 'bench.yaml');
  const now = { now: Date.now() };
  for (let i = 0; i < 200_000; i++) decide(request, policy, now);
  const n = 1_000_000;
  const t0 = performance.now();
  let allows = 0;
  for (let i = 0; i < n; i++) if (decide(request, policy, now).decision === 'allow') allows++;
  const us = ((performance.now() - t0) * 1000) / n;
  console.log(`| ${label} | ${us.toFixed(3)} µs | ${allows === n ? 'allow' : 'NOT allow'} |`);
}

async function inboxBench() {
  const up = await startUp(ROOT, ARGS);
  try {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    const t0 = performance.now();
    let made = 0;
    for (let i = 0; i < PENDING; i += 8) {
      await Promise.all(
        Array.from({ length: Math.min(8, PENDING - i) }, async (_, j) => {
          const token = await issue(up.url, { tool: 'billing', sponsor_id: `sponsor-${(i + j) % 50}`, role: 'support', agent_instance_id: `inbox-${i + j}`, purpose: `ticket-${i + j}` });
          const r = await post(agent, `${up.url}/v1/check`, { token, tool: 'billing', action: 'refund', purpose: `ticket-${i + j}`, args: { amount: 500 + i + j } });
          if (r.status === 200 && r.body.includes('"pending"')) made++;
        }),
      );
    }
    agent.destroy();
    console.log(`${made} pending requests opened in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const login = await fetch(`${up.url}/approvals/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `credential=${CAROL}`, redirect: 'manual' });
    const cookie = login.headers.get('set-cookie').split(';')[0];
    const times = [];
    let bytes = 0;
    let rows = 0;
    for (let i = 0; i < 20; i++) {
      const s = performance.now();
      const text = await (await fetch(`${up.url}/approvals`, { headers: { cookie } })).text();
      times.push(performance.now() - s);
      bytes = text.length;
      rows = (text.match(/<tr id=/g) ?? []).length;
      if (!text.includes(`${PENDING} pending`)) throw new Error('the page does not count every pending request');
    }
    times.sort((a, b) => a - b);
    console.log(`GET /approvals, ${rows} rows on the first page, ${(bytes / 1024).toFixed(0)} KiB: p50 ${fmt(pct(times, 50))}, p95 ${fmt(pct(times, 95))}, max ${fmt(times[times.length - 1])} (20 loads)`);
    if (!CHROMIUM) return void console.log('Chromium not found (apt-get install chromium): browser load not measured');
    const { default: puppeteer } = await import('puppeteer-core');
    const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
    try {
      const page = await browser.newPage();
      await page.goto(`${up.url}/approvals`);
      await page.type('input[name=credential]', CAROL);
      await Promise.all([page.waitForNavigation(), page.click('#login button[type=submit]')]);
      const loads = [];
      for (let i = 0; i < 10; i++) {
        const s = performance.now();
        await page.goto(`${up.url}/approvals`, { waitUntil: 'load' });
        loads.push(performance.now() - s);
      }
      const shown = await page.$$eval('tbody tr', (r) => r.length);
      const count = await page.$eval('#count', (e) => e.textContent);
      loads.sort((a, b) => a - b);
      console.log(`Chromium, navigation to load event, "${count}", ${shown} rows on the first page: p50 ${fmt(pct(loads, 50))}, max ${fmt(loads[loads.length - 1])} (10 loads)`);
    } finally {
      await browser.close();
    }
  } finally {
    await up.stop();
  }
}

const ONLY = opt('only', undefined);
console.log(`machine: ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, node ${process.version}`);
if (ONLY === 'cached') {
  console.log('\nenforcer.check answered from the allow cache, 200,000 calls, each awaited:\n');
  console.log('| build | p50 | p99 | mean | cache hits |\n| --- | ---: | ---: | ---: | ---: |');
  for (let round = 0; round < 2; round++) {
    if (BEFORE) await cachedBench('before (--before build)', BEFORE, PLAIN, undefined);
    await cachedBench('this build, same policy, no arguments', ROOT, PLAIN, undefined);
    await cachedBench('this build, args policy, {amount: 50, order, card} (amount disclosed)', ROOT, ARGS, { amount: 50, order: 'o-1', card: '4242' });
  }
  process.exit(0);
}
if (ONLY !== 'inbox') {
console.log('\ndecide() in process, a decision that needs no approval (1,000,000 calls):\n');
console.log('| build | per decision | answer |\n| --- | ---: | --- |');
const who = { sponsorId: 'alice', agentInstanceId: 'a-1', role: 'support' };
if (BEFORE) await decideBench('before (--before build)', BEFORE, PLAIN, { identity: who, tool: 'billing', action: 'refund' });
await decideBench('this build, same policy', ROOT, PLAIN, { identity: who, tool: 'billing', action: 'refund' });
await decideBench('this build, args policy, amount 50 (require_approval rule not matching)', ROOT, ARGS, { identity: who, tool: 'billing', action: 'refund', args: { amount: 50 } });

console.log(`\nPOST /v1/check inside custody up, ${CONCURRENCY} connections, ${SECONDS} s after 2 s warm-up, an allow needing no approval:\n`);
console.log('| build | req/s | p50 | p95 | p99 | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |');
if (BEFORE) await checkBench('before (--before build)', BEFORE, PLAIN, false);
await checkBench('this build, same policy', ROOT, PLAIN, false);
await checkBench('this build, args policy, args sent', ROOT, ARGS, true);
if (BEFORE) await checkBench('before again (drift check)', BEFORE, PLAIN, false);

console.log('\nenforcer.check answered from the allow cache, 200,000 calls, each awaited:\n');
console.log('| build | p50 | p99 | mean | cache hits |\n| --- | ---: | ---: | ---: | ---: |');
if (BEFORE) await cachedBench('before (--before build)', BEFORE, PLAIN, undefined);
await cachedBench('this build, same policy, no arguments', ROOT, PLAIN, undefined);
await cachedBench('this build, args policy, {amount: 50, order, card} (amount disclosed)', ROOT, ARGS, { amount: 50, order: 'o-1', card: '4242' });
}

console.log(`\nthe inbox page with ${PENDING} pending requests:\n`);
await inboxBench();
