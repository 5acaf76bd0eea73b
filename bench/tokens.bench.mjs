// Token service speed: issuing (decide + sign) and verifying (signature + claims + chain), per
// algorithm, measured in process against dist/.
//
//   npm run build && node bench/tokens.bench.mjs [n=20000]
//
// "per CPU-second" divides by the process's CPU time (all threads: WebCrypto runs its jobs on the
// libuv pool), so it is the rate one core sustains; "wall" is one request in flight at a time.
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { tokenConfig } = require('../dist/identity/config.js');
const { createKeyRing, keySourceFor } = require('../dist/identity/keys.js');
const { createTokenService } = require('../dist/identity/service.js');
const { createTokenVerifier } = require('../dist/identity/verify.js');
const { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } = require('../dist/identity/exchange.js');
const { tokenRouter } = require('../dist/identity/routes.js');
const { createJsonApp, finish, listen } = require('../dist/common/http.js');
const { createLogger } = require('../dist/common/log.js');

const N = Number(process.argv[2] ?? 20_000);
const seed = {
  issuer: 'agent-token-svc',
  default_ttl_seconds: 300,
  max_ttl_seconds: 900,
  require_sponsor: true,
  supported_tools: ['billing', 'search', 'file-store'],
};

async function measure(name, n, fn) {
  for (let i = 0; i < Math.min(500, n); i++) await fn(i); // warm-up
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  const row = { name, n, wall_per_s: Math.round(n / wall), per_cpu_s: Math.round(n / cpuS), us_each: +((wall / n) * 1e6).toFixed(1) };
  console.log(`${name.padEnd(58)} ${String(row.wall_per_s).padStart(8)}/s wall  ${String(row.per_cpu_s).padStart(8)}/CPU-s  ${row.us_each} µs`);
  return row;
}

console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, n=${N}`);
const results = [];
for (const algorithm of ['EdDSA', 'ES256']) {
  const config = tokenConfig({ ...seed, signing: { algorithm } });
  const keys = await createKeyRing(keySourceFor(config, {}));
  const service = createTokenService({ config, keys, mode: 'open' });
  const body = { tool: 'billing', tools: ['billing', 'search'], sponsor_id: 'alice', role: 'support', ttl: 300 };

  results.push(await measure(`${algorithm}: issue (parse, decide, sign)`, N, () => service.issue(body)));

  const tokens = [];
  for (let i = 0; i < N; i++) tokens.push((await service.issue(body)).token);
  const parent = tokens[0];
  const child = (await service.exchange({ grant_type: TOKEN_EXCHANGE_GRANT, subject_token_type: JWT_TOKEN_TYPE, subject_token: parent, audience: 'search' })).token;
  const jwks = keys.jwks();

  const distinct = createTokenVerifier({ issuer: config.issuer, jwks, verifiedCacheSize: 0 });
  results.push(await measure(`${algorithm}: verify, distinct tokens (signature every time)`, N, (i) => distinct.verify(tokens[i], { audience: 'billing' })));
  const getter = createTokenVerifier({ issuer: config.issuer, jwks: () => keys.jwks(), verifiedCacheSize: 0 });
  results.push(await measure(`${algorithm}: verify, distinct, in-process key getter`, N, (i) => getter.verify(tokens[i], { audience: 'billing' })));
  const delegated = createTokenVerifier({ issuer: config.issuer, jwks, verifiedCacheSize: 0 });
  results.push(await measure(`${algorithm}: verify a delegated token (act chain checks)`, N, () => delegated.verify(child, { audience: 'search' })));
  const cached = createTokenVerifier({ issuer: config.issuer, jwks });
  results.push(await measure(`${algorithm}: verify, same token again (verified cache)`, N, (i) => cached.verify(tokens[i % 100], { audience: 'billing' })));
  results.push(
    await measure(`${algorithm}: exchange (verify subject, decide, sign)`, Math.min(N, 10_000), () =>
      service.exchange({ grant_type: TOKEN_EXCHANGE_GRANT, subject_token_type: JWT_TOKEN_TYPE, subject_token: parent, audience: 'search' }),
    ),
  );

  // the ceiling: the bare signature check in node:crypto (OpenSSL), no JOSE, no claims
  const publicKey = crypto.createPublicKey({ key: jwks.keys[0], format: 'jwk' });
  const [h, p, s] = tokens[0].split('.');
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  const key = algorithm === 'EdDSA' ? publicKey : { key: publicKey, dsaEncoding: 'ieee-p1363' };
  const digest = algorithm === 'EdDSA' ? null : 'sha256';
  results.push(await measure(`${algorithm}: bare node:crypto verify (reference)`, N, () => crypto.verify(digest, data, key, sig)));
}

// POST /issue over loopback HTTP (express, the token routes): the client runs in a separate
// process, so "per CPU-s" here is the server's own CPU time per request.
{
  const config = tokenConfig(seed);
  const keys = await createKeyRing(keySourceFor(config, {}));
  const service = createTokenService({ config, keys, mode: 'open' });
  const log = createLogger('bench', 'silent');
  const app = createJsonApp();
  app.use(tokenRouter(service));
  finish(app, log);
  const server = await listen(app, '127.0.0.1', 0);
  const inFlight = 32;
  const n = Math.min(N, 20_000);
  const client = `
    const body = JSON.stringify({ tool: 'billing', sponsor_id: 'alice', ttl: 300 });
    const post = async () => {
      const r = await fetch(process.argv[2] + '/issue', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      if (r.status !== 201) throw new Error('status ' + r.status);
      await r.arrayBuffer();
    };
    (async () => {
      for (let i = 0; i < 500; i++) await post();
      process.send('warm');
      await new Promise((r) => process.once('message', r));
      let next = 0;
      await Promise.all(Array.from({ length: ${inFlight} }, async () => { while (next++ < ${n}) await post(); }));
      process.send('done');
    })();`;
  const clientFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-')), 'client.cjs');
  fs.writeFileSync(clientFile, client);
  const child = fork(clientFile, [server.url], { stdio: 'inherit' });
  await new Promise((r) => child.once('message', r));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  child.send('go');
  await new Promise((r) => child.once('message', r));
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  child.kill();
  const row = { name: `EdDSA: POST /issue over HTTP, ${inFlight} in flight`, n, wall_per_s: Math.round(n / wall), per_cpu_s: Math.round(n / ((cpu.user + cpu.system) / 1e6)) };
  console.log(`${row.name.padEnd(58)} ${String(row.wall_per_s).padStart(8)}/s wall  ${String(row.per_cpu_s).padStart(8)}/CPU-s  (server CPU; client in another process)`);
  results.push(row);
  await server.close();
}

if (process.env.BENCH_JSON) console.log(JSON.stringify(results));
