// custody/guard's offline check, per request: the x-custody-token header read, the token verified
// against a cached remote JWKS (signature included: every token is a distinct one), claims, the
// tool, the revocation list, and the custody.guard span — measured in process against dist/.
//
//   npm run build && node bench/guard.bench.mjs [n=20000]
//
// The JWKS and the revocation feed are served over real HTTP on 127.0.0.1 and fetched once (then
// cached), as a tool API sees them. Target: ≤ 50 µs per request.
import crypto from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { BasicTracerProvider } = require('@opentelemetry/sdk-trace-base');
const { tokenConfig } = require('../dist/identity/config.js');
const { createKeyRing, keySourceFor } = require('../dist/identity/keys.js');
const { createTokenService } = require('../dist/identity/service.js');
const { revocationsVersion } = require('../dist/identity/revocation.js');
const { toolRequestVerifier } = require('../dist/identity/guard.js');

const N = Number(process.argv[2] ?? 20_000);
console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, n=${N}`);

async function measure(name, fn) {
  for (let i = 0; i < 500; i++) await fn(N + i); // warm-up: fetches and caches the JWKS and the feed
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < N; i++) await fn(i);
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const us = (wall / N) * 1e6;
  console.log(`${name.padEnd(66)} ${us.toFixed(1).padStart(6)} µs/request  ${String(Math.round(N / wall)).padStart(7)}/s wall  ${String(Math.round(N / ((cpu.user + cpu.system) / 1e6))).padStart(7)}/CPU-s`);
}

for (const algorithm of ['EdDSA', 'ES256']) {
  const config = tokenConfig({ issuer: 'agent-token-svc', supported_tools: ['billing', 'search'], signing: { algorithm } });
  const keys = await createKeyRing(keySourceFor(config, {}));
  const service = createTokenService({ config, keys, mode: 'open' });
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/.well-known/jwks.json') return res.end(JSON.stringify(keys.jwks()));
    if (req.url === '/v1/tokens/revocations') return res.end(JSON.stringify({ issuer: config.issuer, version: revocationsVersion([]), refresh_seconds: 2, revocations: [] }));
    res.statusCode = 404;
    res.end('{}');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  const tokens = [];
  for (let i = 0; i < N + 500; i++) tokens.push((await service.issue({ tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: `a-${i}`, ttl: 300 })).token);
  const headers = tokens.map((t) => ({ 'x-custody-token': t, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', host: '127.0.0.1' }));
  const options = { tool: 'billing', action: 'refund', url };
  // a recording span per request (no processor: exporting is the SDK's own cost)
  const tracer = new BasicTracerProvider({ spanProcessors: [] }).getTracer('bench');

  // the ceiling: the bare signature check in node:crypto on the same tokens
  const publicKey = crypto.createPublicKey({ key: keys.jwks().keys[0], format: 'jwk' });
  const key = algorithm === 'EdDSA' ? publicKey : { key: publicKey, dsaEncoding: 'ieee-p1363' };
  const parts = tokens.map((t) => t.split('.')).map(([h, p, s]) => [Buffer.from(`${h}.${p}`), Buffer.from(s, 'base64url')]);
  await measure(`${algorithm}: bare crypto.verify of the signature (reference)`, (i) => crypto.verify(algorithm === 'EdDSA' ? null : 'sha256', parts[i][0], key, parts[i][1]));
  const distinct = toolRequestVerifier({ ...options, tracer });
  await measure(`${algorithm}: guard offline check, distinct tokens, recording span`, (i) => distinct(headers[i]));
  const noTracer = toolRequestVerifier({ ...options });
  await measure(`${algorithm}: guard offline check, distinct tokens, no tracer provider`, (i) => noTracer(headers[i]));
  const once = toolRequestVerifier({ ...options, tracer, singleUse: true });
  await measure(`${algorithm}: guard offline check, single use (replay cache)`, (i) => once(headers[i]));
  const again = toolRequestVerifier({ ...options, tracer });
  await measure(`${algorithm}: guard offline check, a token presented again (cached)`, (i) => again(headers[i % 100]));
  server.close();
}
