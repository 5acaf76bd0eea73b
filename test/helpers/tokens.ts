import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { importPKCS8, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import { stringify } from 'yaml';
import { createFastRouter } from '../../common/fast-route';
import { createJsonApp, finish, listen } from '../../common/http';
import { createLogger } from '../../common/log';
import { SPAN } from '../../common/names';
import { createReporter } from '../../common/report';
import { SERVER_ENV, readEnv } from '../../common/env';
import type { RoleContext, RunningRole } from '../../common/role';
import { startTokenServiceRole } from '../../identity/role';
import { tempDir } from './custody';
import { JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../../identity/exchange';

/** The seed article's token-service-config.yml values, with custody's role maxima. */
export const SEED = {
  issuer: 'agent-token-svc',
  default_ttl_seconds: 300,
  max_ttl_seconds: 900,
  require_sponsor: true,
  supported_tools: ['billing', 'search', 'file-store'],
  roles: { user: { max_ttl_seconds: 60 }, support: { max_ttl_seconds: 300 }, admin: { max_ttl_seconds: 900 } },
  delegation: { max_depth: 3 },
};

/** The fixed RFC 8693 parameters of an exchange. */
export const EXCHANGE = { grant_type: TOKEN_EXCHANGE_GRANT, subject_token_type: JWT_TOKEN_TYPE };

export interface TokenRoleUnderTest {
  url: string;
  dataDir: string;
  role: RunningRole;
  services: Map<string, unknown>;
  /** Signs anything with the service's own private key: for tokens the service would never issue. */
  forge(payload: object, kid?: string): Promise<string>;
  kid: string;
  /** custody.token.issue spans reported so far. */
  events(): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

/**
 * The token-service role started the way a host starts it (a RoleContext, its routes on a real
 * control app on 127.0.0.1), with a real reporter whose spans land in memory.
 */
export async function startTokenRole(configOver: Record<string, unknown> = {}): Promise<TokenRoleUnderTest> {
  const dir = tempDir('custody-tokens-');
  const pem = crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  fs.writeFileSync(path.join(dir, 'signing-key.pem'), pem, { mode: 0o600 });
  const configFile = path.join(dir, 'token-service-config.yml');
  fs.writeFileSync(configFile, stringify({ ...SEED, signing: { algorithm: 'EdDSA', key_file: 'signing-key.pem' }, ...configOver }));
  const exporter = new InMemorySpanExporter();
  const reporter = createReporter({ serviceName: 'custody-test', exporter });
  const app = createJsonApp();
  const log = createLogger('test', 'silent');
  const services = new Map<string, unknown>();
  const ctx: RoleContext = {
    control: app,
    fast: createFastRouter(log),
    log,
    reporter,
    options: {
      host: '127.0.0.1',
      port: 0,
      otlpPort: 0,
      dataDir: dir,
      tokenConfigFile: configFile,
      publicUrl: 'http://127.0.0.1:0',
      otlpUrl: 'http://127.0.0.1:9',
    },
    env: readEnv(process.env, SERVER_ENV),
    services: { provide: (n, v) => void services.set(n, v), lookup: <T>(n: string) => services.get(n) as T | undefined },
    setOtlpUrl: () => undefined,
    addReadinessCheck: () => undefined,
  };
  const role = await startTokenServiceRole(ctx);
  finish(app, log);
  const server = await listen(app, '127.0.0.1', 0);
  const key: CryptoKey = await importPKCS8(pem, 'EdDSA');
  const kid = /key (\S+) \(/.exec(role.banner![0]!)![1]!;
  return {
    url: server.url,
    dataDir: dir,
    role,
    services,
    kid,
    forge: (payload, k = kid) => new SignJWT(payload as JWTPayload).setProtectedHeader({ alg: 'EdDSA', kid: k }).sign(key),
    async events() {
      await reporter.flush();
      return exporter
        .getFinishedSpans()
        .filter((s: ReadableSpan) => s.name === SPAN.TOKEN_ISSUE)
        .map((s: ReadableSpan) => ({ ...s.attributes, status: s.status.code }));
    },
    async close() {
      await server.close();
      await role.close();
      await reporter.shutdown();
    },
  };
}

export interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

/** One HTTP request; JSON unless `form` is given. */
export async function call(
  url: string,
  init: { method?: string; json?: unknown; form?: Record<string, string>; raw?: string; contentType?: string; auth?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = {};
  let body: string | undefined;
  if (init.form) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(init.form).toString();
  } else if (init.raw !== undefined) {
    headers['content-type'] = init.contentType ?? 'application/json';
    body = init.raw;
  } else if (init.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(init.json);
  }
  if (init.auth) headers.authorization = init.auth;
  const res = await fetch(url, { method: init.method ?? (body !== undefined ? 'POST' : 'GET'), headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
}
