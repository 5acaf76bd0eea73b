// Token service speed: issuing (decide + sign) and verifying (signature + claims + chain), per
// algorithm, measured in process against dist/.
//
//   npm run build && node bench/tokens.bench.mjs [n=20000]
//
// "per CPU-second" divides by the process's CPU time (all threads: WebCrypto runs its jobs on the
// libuv pool), so it is the rate one core sustains; "wall" is one request in flight at a time.
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
import os from 'node:os';

const require = createRequire(import.meta.url);
const { tokenConfig } = require('../dist/enforcer/tokens/config.js');
const { createKeyRing, keySourceFor } = require('../dist/enforcer/tokens/keys.js');
const { createTokenService } = require('../dist/enforcer/tokens/service.js');
const { createTokenVerifier } = require('../dist/enforcer/tokens/verify.js');
const { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } = require('../dist/enforcer/tokens/exchange.js');

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

if (process.env.BENCH_JSON) console.log(JSON.stringify(results));
