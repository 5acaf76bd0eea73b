import net from 'node:net';
import path from 'node:path';
import { credentialsFromEnv } from '../common/credentials';
import { ConfigError } from '../common/errors';
import { ENV } from '../common/names';
import { SERVICE, type RoleContext, type RunningRole } from '../common/role';
import { loadCertificateAuthority } from './certificates';
import { loadTokenConfig, type TokenMode, type TokenServiceConfig } from './config';
import { createKeyRing, keySourceFor } from './keys';
import { openAgentRegistry } from './registry';
import type { RevocationIndex } from './revocation';
import { adminRouter, tokenRouter, TOKEN_PATHS, unreadableBodyReporter } from './routes';
import { createTokenService, type ServiceMode } from './service';

/** What the token service offers other roles in the same process (SERVICE.TOKEN_KEYS). */
export interface TokenKeysService {
  readonly issuer: string;
  jwks(): import('jose').JSONWebKeySet;
  /** Offboardings and revocations as the registry holds them now. */
  revocations(): RevocationIndex;
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/** auto: open on loopback, registered elsewhere. Open on any other address is refused. */
export function resolveMode(mode: TokenMode, host: string, configFile: string): ServiceMode {
  const loopback = isLoopback(host);
  if (mode === 'open' && !loopback) {
    throw new ConfigError(
      `${configFile}: field 'mode': open mode (/issue trusts the request body) is for loopback only, and --host is ${host}; ` +
        `use mode: registered (agents present a credential from 'custody agent register') or listen on 127.0.0.1`,
    );
  }
  if (mode === 'auto') return loopback ? 'open' : 'registered';
  return mode;
}

/**
 * The signing key's variable: $CUSTODY_TOKEN_SIGNING_KEY from the environment the host parsed, or
 * the one the token config's `signing.key_env` names instead, which only that file knows of and so
 * is read here, once, at start.
 */
function signingKeyEnv(ctx: RoleContext, name: string): Record<string, string | undefined> {
  return { [name]: name === ENV.TOKEN_SIGNING_KEY ? ctx.env[ENV.TOKEN_SIGNING_KEY] : process.env[name] };
}

export const AGENT_REGISTRY_FILE = path.join('tokens', 'agents.json');

/** The token-service role: POST /issue, POST /token, the JWKS, and the agent admin API. */
export async function startTokenServiceRole(ctx: RoleContext): Promise<RunningRole> {
  const { options, log } = ctx;
  const loaded: TokenServiceConfig = loadTokenConfig(options.tokenConfigFile);
  // staging: every token names a sponsor, whatever the file says
  const config: TokenServiceConfig = ctx.env[ENV.ENVIRONMENT] === 'staging' && !loaded.require_sponsor ? { ...loaded, require_sponsor: true } : loaded;
  const mode = resolveMode(config.mode, options.host, config.file);
  const keys = await createKeyRing(keySourceFor(config, signingKeyEnv(ctx, config.signing.key_env)), { clockSkewSeconds: config.clock_skew_seconds });
  const registry = openAgentRegistry({ config, file: path.join(options.dataDir, AGENT_REGISTRY_FILE) });
  const credentials = credentialsFromEnv(ctx.env);
  const adminToken = credentials.admin;
  const certs = config.certificates;
  const authority = await loadCertificateAuthority({
    ...(certs ? { keyFile: path.resolve(path.dirname(config.file), certs.ca_key_file), certFile: path.resolve(path.dirname(config.file), certs.ca_cert_file), trustDomain: certs.trust_domain } : {}),
  });
  const service = createTokenService({
    config,
    authority,
    keys,
    mode,
    registry,
    log,
    reporter: { event: (name, attrs, opts) => ctx.reporter.event(name, attrs, opts) },
  });

  ctx.control.use(tokenRouter(service));
  ctx.control.use(adminRouter({ registry, keys, adminToken, openMode: mode === 'open', credentials }));
  ctx.control.use([TOKEN_PATHS.ISSUE, TOKEN_PATHS.TOKEN, TOKEN_PATHS.CERTS], unreadableBodyReporter(service));
  const keysService: TokenKeysService = { issuer: config.issuer, jwks: () => keys.jwks(), revocations: () => registry.revocations() };
  ctx.services.provide(SERVICE.TOKEN_KEYS, keysService);
  // the collector in this process checks agents' OTLP credentials against the registry
  ctx.services.provide(SERVICE.AGENT_CREDENTIALS, { authenticate: (credential: string) => registry.authenticate(credential) });
  ctx.addReadinessCheck('token-keys', () => keys.jwks().keys.length > 0);

  const key = keys.current();
  const banner = [
    `token service issuer '${config.issuer}', ${key.alg} key ${key.kid} (${keys.source.description})`,
    `  config      ${config.file}`,
    `  agents      ${registry.list({ status: 'active' }).length} registered (${registry.file})`,
  ];
  if (mode === 'open') {
    banner.push(
      '!! OPEN MODE: /issue trusts the sponsor and role in the request body, for a first day on loopback only.',
      '!!   Register agents (custody agent register) and set mode: registered before anyone else can reach this port.',
    );
    log.warn({ host: options.host }, 'token service in open mode: /issue trusts the request body (loopback only)');
  } else if (!adminToken) {
    banner.push(`registered mode; the admin API is disabled until ${ENV.ADMIN_TOKEN} is set`);
  } else {
    banner.push('registered mode: /issue needs an agent credential');
  }
  if (keys.source.kind === 'generated') {
    banner.push('signing key generated in memory: tokens do not outlive this process (set signing.key_file for production)');
  }
  return { name: 'token-service', banner, close: async () => undefined };
}
