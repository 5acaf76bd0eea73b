import crypto, { X509Certificate } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
// @peculiar/x509 resolves its parts through tsyringe, which needs the Reflect metadata API
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIMS_EXTENSION_OID } from '../../identity/certificates';
import { toolGuard } from '../../identity/guard';
import { Utf8String } from 'asn1js';
import { CLI, ROOT, eventually, startCustody, tempDir, tlsRequest, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile } from '../helpers/policy';

x509.cryptoProvider.set(crypto.webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
type Keys = crypto.webcrypto.CryptoKeyPair;

async function keyPair(): Promise<{ keys: Keys; keyPem: string; spki: ArrayBuffer; publicPem: string }> {
  const keys = (await crypto.webcrypto.subtle.generateKey(KEY, true, ['sign', 'verify'])) as Keys;
  const pkcs8 = Buffer.from(await crypto.webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
  const spki = await crypto.webcrypto.subtle.exportKey('spki', keys.publicKey);
  const publicPem = crypto.createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string;
  return { keys, keyPem, spki, publicPem };
}

/** A self-made authority: the server's TLS certificate, and an attacker's forged client certificates. */
async function selfMadeAuthority(name: string) {
  const ca = await keyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}`,
    keys: ca.keys as never,
    signingAlgorithm: SIGN,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3600_000),
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  return {
    pem: cert.toString('pem'),
    async issue(o: { cn: string; ip?: string; serverAuth?: boolean; claims?: unknown; spki: ArrayBuffer }) {
      const leaf = await x509.X509CertificateGenerator.create({
        subject: `CN=${o.cn}`,
        issuer: cert.subject,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + 3600_000),
        signingAlgorithm: SIGN,
        signingKey: ca.keys.privateKey as never,
        publicKey: o.spki,
        extensions: [
          new x509.ExtendedKeyUsageExtension([o.serverAuth ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
          ...(o.ip ? [new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: o.ip }])] : []),
          ...(o.claims ? [new x509.Extension(CLAIMS_EXTENSION_OID, false, new Utf8String({ value: JSON.stringify(o.claims) }).toBER())] : []),
        ],
      });
      return leaf.toString('pem');
    },
  };
}

function custodyCli(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Short-lived mTLS client certificates: the token service's authority issues them under the
 * rules of tokens; the policy plane, the tool guard and the OTLP receiver take one as the caller's
 * identity over real TLS on loopback, with a token's refusals (expired, wrong tool, revoked, not
 * custody's authority).
 */
describe('mTLS client certificates', () => {
  const dir = tempDir('custody-mtls-');
  const caKeyFile = path.join(dir, 'ca', 'ca.key.pem');
  const caCertFile = path.join(dir, 'ca', 'ca.pem');
  let tokens: RunningCustody;
  let plane: RunningCustody;
  let serverCa: string;
  let caPem: string;
  const serverFiles = { cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };

  /** A certificate from POST /v1/certs for a fresh key. */
  async function certify(body: Record<string, unknown>): Promise<{ status: number; body: any; keyPem: string }> {
    const k = await keyPair();
    const res = await fetch(`${tokens.url}/v1/certs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, public_key: k.publicPem }) });
    return { status: res.status, body: await res.json(), keyPem: k.keyPem };
  }
  const check = (cert: { certificate: string; keyPem: string } | undefined, tool: string, action: string) =>
    tlsRequest(`${plane.url}/v1/check`, { body: { tool, action }, ca: serverCa, ...(cert ? { cert: cert.certificate, key: cert.keyPem } : {}) });

  beforeAll(async () => {
    const config = path.join(dir, 'token-service-config.yml');
    const shipped = fs.readFileSync(path.join(ROOT, 'token-service-config.yml'), 'utf8');
    fs.writeFileSync(config, `${shipped}\ncertificates:\n  ca_key_file: ${caKeyFile}\n  ca_cert_file: ${caCertFile}\n`);
    tokens = await startCustody({ command: 'token-service', args: ['--token-config', config], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    caPem = fs.readFileSync(caCertFile, 'utf8');
    const server = await selfMadeAuthority('test server authority');
    const serverKey = await keyPair();
    serverCa = server.pem;
    fs.writeFileSync(serverFiles.cert, await server.issue({ cn: '127.0.0.1', ip: '127.0.0.1', serverAuth: true, spki: serverKey.spki }));
    fs.writeFileSync(serverFiles.key, serverKey.keyPem);
    plane = await startCustody({
      command: 'policy-plane',
      args: ['--token-url', tokens.url, '--policy', policyFile(), '--tls-cert', serverFiles.cert, '--tls-key', serverFiles.key, '--client-ca', caCertFile],
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN },
      ca: serverCa,
    });
    const put = await tlsRequest(`${plane.url}/v1/rollout`, { method: 'PUT', body: { percent: 100, reason: 'mTLS test' }, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, ca: serverCa });
    expect(put.status, put.text).toBe(200);
  }, 180_000);
  afterAll(async () => {
    await plane?.stop();
    await tokens?.stop();
  });

  it('names the TLS flag that is wrong', () => {
    const bad = (args: string[]) => custodyCli(['policy-plane', '--port', '0', '--otlp-port', '0', '--data-dir', path.join(dir, 'bad'), ...args]);
    expect(bad(['--tls-cert', path.join(dir, 'missing.pem'), '--tls-key', serverFiles.key])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--tls-cert .*missing\.pem: cannot read/) });
    expect(bad(['--tls-cert', serverFiles.cert])).toMatchObject({ code: 2, stderr: expect.stringMatching(/give both --tls-cert and --tls-key/) });
    expect(bad(['--tls-cert', serverFiles.cert, '--tls-key', serverFiles.cert])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--tls-key .*: not a PEM private key/) });
    expect(bad(['--client-ca', caCertFile])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--client-ca needs --tls-cert and --tls-key/) });
  });

  it('the authority is made on first start, kept in its files and published at /v1/certs/ca.pem', async () => {
    expect(fs.statSync(caKeyFile).mode & 0o777).toBe(0o600);
    const served = await fetch(`${tokens.url}/v1/certs/ca.pem`);
    expect(served.status).toBe(200);
    expect(await served.text()).toBe(caPem);
    expect(new X509Certificate(caPem).ca).toBe(true);
  });

  it('custody cert issue: a key made locally, a certificate with the claims of a token under the same TTL rules', async () => {
    const out = path.join(dir, 'cli-cert');
    const r = custodyCli(['cert', 'issue', '--url', tokens.url, '--tool', 'search', '--sponsor', 'alice', '--role', 'support', '--agent-instance-id', 'cli-agent-1', '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.statSync(path.join(out, 'key.pem')).mode & 0o777).toBe(0o600);
    const cert = new X509Certificate(fs.readFileSync(path.join(out, 'cert.pem')));
    expect(cert.checkIssued(new X509Certificate(caPem))).toBe(true);
    expect(cert.subjectAltName).toBe('URI:spiffe://custody/sponsor/alice/agent/cli-agent-1');
    expect(cert.subject).toBe('CN=cli-agent-1');
    // support's TTL: 300 s
    expect((Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 1000).toBe(300);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']); // clientAuth
    expect(fs.readFileSync(path.join(out, 'ca.pem'), 'utf8')).toBe(caPem);

    // the same refusals as /issue: a lifetime over the role's maximum, a tool the service does not know
    const long = custodyCli(['cert', 'issue', '--url', tokens.url, '--tool', 'search', '--sponsor', 'alice', '--role', 'user', '--ttl', '120', '--out', path.join(dir, 'x')]);
    expect([long.code, long.stderr]).toEqual([1, expect.stringMatching(/ttl_too_long/)]);
    const tool = await certify({ tool: 'shell', sponsor_id: 'alice', role: 'support' });
    expect([tool.status, tool.body.error.code]).toEqual([400, 'tool_not_supported']);
    const noKey = await fetch(`${tokens.url}/v1/certs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'search', sponsor_id: 'alice' }) });
    expect(noKey.status).toBe(400);
    expect(((await noKey.json()) as any).error.message).toMatch(/public_key.*csr/);
    // a root certificate's claims carry parent_agent_id null, like a root token's
    const root = await certify({ tool: 'search', sponsor_id: 'alice', role: 'support' });
    expect(root.status).toBe(201);
    expect(root.body.claims).toMatchObject({ parent_agent_id: null, sponsor_id: 'alice', tool: 'search', ttl_seconds: 300 });
  });

  it('the policy plane takes a certificate as the caller: allowed for its tool, denied for another', async () => {
    const issued = await certify({ tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'mtls-agent-1' });
    const cert = { certificate: issued.body.certificate, keyPem: issued.keyPem };
    const allowed = await check(cert, 'search', 'query');
    expect(allowed.status, allowed.text).toBe(200);
    expect(allowed.body).toMatchObject({ decision: 'allow', rule_id: 'allow-support-search', token_jti: issued.body.claims.jti, enforced: true });
    const wrongTool = await check(cert, 'billing', 'refund');
    expect(wrongTool.body).toMatchObject({ decision: 'deny', rule_id: 'token-invalid', reason: expect.stringMatching(/ERR_TOKEN_AUDIENCE/) });
    // no certificate and no token: nothing to decide on
    const none = await check(undefined, 'search', 'query');
    expect(none.body).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/no token/) });
  });

  it("refuses a certificate another authority signed, even one carrying custody's claims", async () => {
    const attacker = await selfMadeAuthority('custody client CA');
    const k = await keyPair();
    const genuine = await certify({ tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'forged-1' });
    const forged = await attacker.issue({ cn: 'forged-1', spki: k.spki, claims: genuine.body.claims });
    const r = await check({ certificate: forged, keyPem: k.keyPem }, 'billing', 'refund');
    expect(r.body).toMatchObject({ decision: 'deny', rule_id: 'token-invalid', reason: expect.stringMatching(/ERR_TOKEN_SIGNATURE.*not issued by custody's certificate authority/) });
  });

  it('refuses an expired certificate', async () => {
    const issued = await certify({ tool: 'search', sponsor_id: 'alice', role: 'support', ttl: 1 });
    expect(issued.status).toBe(201);
    await new Promise((r) => setTimeout(r, 2500));
    const r = await check({ certificate: issued.body.certificate, keyPem: issued.keyPem }, 'search', 'query');
    expect(r.body).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/ERR_TOKEN_EXPIRED/) });
  });

  it('refuses the certificates of an offboarded sponsor', async () => {
    const issued = await certify({ tool: 'search', sponsor_id: 'dave', role: 'support' });
    const cert = { certificate: issued.body.certificate, keyPem: issued.keyPem };
    expect((await check(cert, 'search', 'query')).body.decision).toBe('allow');
    const off = await fetch(`${tokens.url}/v1/sponsors/dave/offboard`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ reason: 'left the company' }),
    });
    expect(off.status).toBe(200);
    await eventually(async () => {
      expect((await check(cert, 'search', 'query')).body).toMatchObject({ decision: 'deny', reason: expect.stringMatching(/ERR_TOKEN_REVOKED/) });
      return true;
    }, 30_000);
  });

  it('the tool guard takes a certificate in place of x-custody-token', async () => {
    const app = express();
    app.get('/search', toolGuard({ tool: 'search', tokenUrl: tokens.url, clientCa: caCertFile }), (req, res) => {
      res.json({ sponsor: (req as any).custody.sponsor_id, agent: (req as any).custody.agent_instance_id });
    });
    const server = https.createServer({ cert: fs.readFileSync(serverFiles.cert), key: fs.readFileSync(serverFiles.key), ca: caPem, requestCert: true, rejectUnauthorized: false }, app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/search`;
    try {
      const ok = await certify({ tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'guarded-1' });
      const allowed = await tlsRequest(url, { ca: serverCa, cert: ok.body.certificate, key: ok.keyPem });
      expect([allowed.status, allowed.body]).toEqual([200, { sponsor: 'alice', agent: 'guarded-1' }]);
      const other = await certify({ tool: 'billing', sponsor_id: 'alice', role: 'support' });
      const wrong = await tlsRequest(url, { ca: serverCa, cert: other.body.certificate, key: other.keyPem });
      expect([wrong.status, wrong.body.error.code]).toEqual([403, 'wrong_tool']);
      const none = await tlsRequest(url, { ca: serverCa });
      expect([none.status, none.body.error.code]).toEqual([401, 'token_required']);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('the OTLP receiver takes a certificate as the sender in registered mode, and refuses a request without one', async () => {
    const config = path.join(dir, 'registered.yml');
    fs.writeFileSync(config, fs.readFileSync(path.join(ROOT, 'token-service-config.yml'), 'utf8').replace(/^mode: auto$/m, 'mode: registered'));
    const collector = await startCustody({
      command: 'collector',
      args: ['--token-config', config, '--otlp-grpc-port', '0', '--tls-cert', serverFiles.cert, '--tls-key', serverFiles.key, '--client-ca', caCertFile],
      env: { CUSTODY_TOKEN_URL: tokens.url },
      ca: serverCa,
    });
    try {
      expect(collector.otlpUrl).toMatch(/^https:/);
      const body = { resourceSpans: [] };
      const anonymous = await tlsRequest(`${collector.otlpUrl}/v1/traces`, { body, ca: serverCa });
      expect(anonymous.status).toBe(401);
      const issued = await certify({ tool: 'search', sponsor_id: 'alice', role: 'support' });
      const sent = await tlsRequest(`${collector.otlpUrl}/v1/traces`, { body, ca: serverCa, cert: issued.body.certificate, key: issued.keyPem });
      expect(sent.status, sent.text).toBe(200);
    } finally {
      await collector.stop();
    }
  });
});
