import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
// @peculiar/x509 resolves its parts through tsyringe, which needs the Reflect metadata API
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { safeText as t } from '../../common/terminal';
import { ENV } from '../../common/names';
import { endpoint, requestJson } from '../../identity/client';
import type { TokenClaims } from '../../identity/claims';
import { TokenRequestError } from '../../identity/errors';
import { TOKEN_PATHS } from '../../identity/routes';
import { cliEnv, withClientOptions } from '../options';
import { list, seconds } from './token';

/**
 * `custody cert issue|ca`: short-lived mTLS client certificates from the token service (POST
 * /v1/certs), the alternative to per-call tokens. The key is made here and never leaves the
 * machine: the service sees a certificate request signed with it. Exit codes: 0 done, 1 refused,
 * 2 usage or connection error.
 */

const KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;

interface CertAnswer {
  certificate: string;
  ca: string;
  expires_in: number;
  spiffe_id: string;
  claims: TokenClaims;
}

/** A P-256 key and a PKCS#10 request signed with it (proof of possession). */
async function keyAndRequest(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const keys = (await crypto.webcrypto.subtle.generateKey(KEY, true, ['sign', 'verify'])) as crypto.webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [commonName] }],
    keys: keys as unknown as Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[0]['keys'],
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
  });
  const pkcs8 = Buffer.from(await crypto.webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
  return { keyPem, csrPem: csr.toString('pem') };
}

export function registerCertCommands(program: Command): void {
  const cert = program.command('cert').description('short-lived mTLS client certificates (the alternative to per-call tokens)');

  withClientOptions(cert.command('issue').description('makes a key, and asks the token service to certify it (POST /v1/certs)'))
    .requiredOption('--tool <tool>', 'the tool the certificate is for')
    .requiredOption('--out <dir>', 'where to write key.pem (mode 0600), cert.pem and ca.pem')
    .option('--sponsor <sponsor_id>', 'the human sponsor (registered agents: taken from the registration)')
    .option('--ttl <seconds>', 'lifetime, the same rules as tokens (per role, at most 900 s)', seconds)
    .option('--role <role>', 'role (open mode; a registered agent may only ask a lower one)')
    .option('--purpose <purpose>', 'why the certificate is needed')
    .option('--tools <tools>', 'tools a token exchanged from it may be for (comma-separated)', list)
    .option('--agent-instance-id <id>', 'the agent instance (default: a new one)')
    .option('--credential <credential>', `the agent credential (default $${ENV.AGENT_CREDENTIAL})`)
    .option('--json', 'print the answer (certificate, claims, SPIFFE id) as JSON')
    .action(async (f) => {
      const { keyPem, csrPem } = await keyAndRequest(f.agentInstanceId ?? 'custody-agent');
      const credential = f.credential ?? cliEnv(ENV.AGENT_CREDENTIAL)[ENV.AGENT_CREDENTIAL];
      let answer: CertAnswer;
      try {
        answer = await requestJson<CertAnswer>(
          endpoint(f.url, TOKEN_PATHS.CERTS),
          {
            body: {
              tool: f.tool,
              csr: csrPem,
              ...(f.sponsor ? { sponsor_id: f.sponsor } : {}),
              ...(f.ttl ? { ttl: f.ttl } : {}),
              ...(f.role ? { role: f.role } : {}),
              ...(f.purpose ? { purpose: f.purpose } : {}),
              ...(f.tools ? { tools: f.tools } : {}),
              ...(f.agentInstanceId ? { agent_instance_id: f.agentInstanceId } : {}),
            },
            headers: credential ? { authorization: `Bearer ${credential}` } : {},
          },
          { timeoutMs: 10_000 },
        );
      } catch (err) {
        if (err instanceof TokenRequestError && err.code === 'ERR_TOKEN_REFUSED') {
          process.stderr.write(`custody: refused: ${t(err.message)}\n`);
          process.exitCode = 1;
          return;
        }
        throw err;
      }
      const dir = path.resolve(f.out);
      fs.mkdirSync(dir, { recursive: true });
      const files = { key: path.join(dir, 'key.pem'), cert: path.join(dir, 'cert.pem'), ca: path.join(dir, 'ca.pem') };
      fs.rmSync(files.key, { force: true });
      fs.writeFileSync(files.key, keyPem, { mode: 0o600 });
      fs.writeFileSync(files.cert, answer.certificate);
      fs.writeFileSync(files.ca, answer.ca);
      if (f.json) {
        process.stdout.write(`${JSON.stringify({ ...answer, files }, null, 2)}\n`);
        return;
      }
      const c = answer.claims;
      process.stdout.write(
        `${files.cert}\n` +
          `certificate for '${t(c.tool)}' (${t(answer.spiffe_id)}), sponsor ${t(c.sponsor_id ?? '(none)')}, agent ${t(c.agent_instance_id)}` +
          `${c.role ? `, role ${t(c.role)}` : ''}, expires ${new Date(c.exp * 1000).toISOString()} (${c.ttl_seconds} s)\n` +
          `  key ${files.key}  authority ${files.ca}\n`,
      );
    });

  withClientOptions(cert.command('ca').description("prints the token service's certificate authority (GET /v1/certs/ca.pem): servers' --client-ca"))
    .action(async (f) => {
      const res = await fetch(endpoint(f.url, TOKEN_PATHS.CA), { signal: AbortSignal.timeout(10_000) }).catch((err: Error) => {
        throw new TokenRequestError('ERR_TOKEN_SERVICE_UNAVAILABLE', 0, 'unavailable', `cannot reach ${f.url}: ${err.message}`);
      });
      const text = await res.text();
      if (!res.ok) {
        process.stderr.write(`custody: ${res.status}: ${t(text)}\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(text);
    });
}
