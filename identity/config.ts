import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { loadConfigFile } from '../common/config';
import { packageRoot } from '../common/package-root';
import { ConfigError } from '../common/errors';
import { DEFAULTS, ENV } from '../common/names';

const name = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9_.:-]{0,63}$/, 'must start with a letter and use only letters, digits, _ . : - (at most 64)');
const seconds = z.number().int('must be a whole number of seconds').positive('must be more than 0');

export const SIGNING_ALGORITHMS = ['EdDSA', 'ES256'] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];

/** Who may ask for a token: `open` trusts the request body (loopback only), `registered` needs an agent credential. */
export const TOKEN_MODES = ['auto', 'open', 'registered'] as const;
export type TokenMode = (typeof TOKEN_MODES)[number];

/** token-service-config.yml */
export const tokenServiceConfigSchema = z
  .object({
    issuer: z.string().min(1, 'must not be empty'),
    default_ttl_seconds: seconds.default(DEFAULTS.TOKEN_TTL_S),
    max_ttl_seconds: seconds.default(DEFAULTS.TOKEN_MAX_TTL_S),
    require_sponsor: z.boolean().default(true),
    supported_tools: z.array(name).min(1, 'must name at least one tool'),
    /** Lowest authority first: an exchanged token never gets a role later in this map than its parent's. */
    roles: z
      .record(name, z.strictObject({ max_ttl_seconds: seconds }))
      .default({ user: { max_ttl_seconds: 60 }, support: { max_ttl_seconds: 300 }, admin: { max_ttl_seconds: 900 } }),
    /** The role of an open-mode token whose request names none; absent: such tokens carry no role. */
    default_role: name.optional(),
    /** auto: open on a loopback address, registered anywhere else. */
    mode: z.enum(TOKEN_MODES).default('auto'),
    delegation: z.strictObject({ max_depth: z.number().int().min(0).max(32) }).default({ max_depth: 3 }),
    signing: z
      .strictObject({
        algorithm: z.enum(SIGNING_ALGORITHMS).default('EdDSA'),
        /** A private key file: PKCS8 PEM, a JWK, or a JWK set whose first key signs. Relative to the config file. */
        key_file: z.string().min(1).optional(),
        /** An environment variable holding the private key (PEM or JWK JSON); it wins over key_file when set. */
        key_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name').default(ENV.TOKEN_SIGNING_KEY),
      })
      .default({ algorithm: 'EdDSA', key_env: ENV.TOKEN_SIGNING_KEY }),
    /**
     * The certificate authority of short-lived mTLS client certificates (POST /v1/certs): its key
     * and certificate files (PEM, relative to this file), made on first start when absent. Without
     * them the authority is generated in memory: certificates then do not outlive the process.
     */
    certificates: z
      .strictObject({
        ca_key_file: z.string().min(1),
        ca_cert_file: z.string().min(1),
        /** The SPIFFE trust domain of the certificates' URI SAN. */
        trust_domain: z.string().regex(/^[a-z0-9.\-_]+$/, 'must be a SPIFFE trust domain (lowercase letters, digits, ".", "-", "_")').default('custody'),
      })
      .optional(),
    /** Tolerance for the subject token's exp/nbf in an exchange. */
    clock_skew_seconds: z.number().int().min(0).max(300).default(5),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.default_ttl_seconds > c.max_ttl_seconds) {
      ctx.addIssue({ code: 'custom', path: ['default_ttl_seconds'], message: `must not exceed max_ttl_seconds (${c.max_ttl_seconds})` });
    }
    for (const [role, r] of Object.entries(c.roles)) {
      if (r.max_ttl_seconds > c.max_ttl_seconds) {
        ctx.addIssue({ code: 'custom', path: ['roles', role, 'max_ttl_seconds'], message: `must not exceed max_ttl_seconds (${c.max_ttl_seconds})` });
      }
    }
    if (Object.keys(c.roles).length === 0) ctx.addIssue({ code: 'custom', path: ['roles'], message: 'must name at least one role' });
    if (c.default_role !== undefined && !(c.default_role in c.roles)) {
      ctx.addIssue({ code: 'custom', path: ['default_role'], message: `must be one of the roles (${Object.keys(c.roles).join(', ')})` });
    }
    const seen = new Set<string>();
    c.supported_tools.forEach((tool, i) => {
      if (seen.has(tool)) ctx.addIssue({ code: 'custom', path: ['supported_tools', i], message: `'${tool}' is listed twice` });
      seen.add(tool);
    });
  });

export type TokenServiceConfigFile = z.infer<typeof tokenServiceConfigSchema>;

/** The parsed configuration plus what was derived from it once. */
export interface TokenServiceConfig extends TokenServiceConfigFile {
  /** Where it was read from; key_file is resolved against its directory. */
  readonly file: string;
  /** Role names, lowest authority first. */
  readonly roleOrder: readonly string[];
}

export const TOKEN_CONFIG_FILE = 'token-service-config.yml';

/**
 * The configuration file to use: the one given (--token-config), else ./token-service-config.yml
 * in the working directory, else the example shipped with the package.
 */
export function resolveTokenConfigFile(file?: string, cwd = process.cwd()): string {
  if (file) return path.resolve(cwd, file);
  const local = path.resolve(cwd, TOKEN_CONFIG_FILE);
  if (fs.existsSync(local)) return local;
  return path.join(packageRoot(), TOKEN_CONFIG_FILE);
}

export function withDerived(parsed: TokenServiceConfigFile, file: string): TokenServiceConfig {
  return Object.freeze({ ...parsed, file, roleOrder: Object.freeze(Object.keys(parsed.roles)) });
}

/** Loads and validates the file; a bad file is a ConfigError naming file:line and the field. */
export function loadTokenConfig(file?: string, cwd?: string): TokenServiceConfig {
  const resolved = resolveTokenConfigFile(file, cwd);
  return withDerived(loadConfigFile(resolved, tokenServiceConfigSchema), resolved);
}

/** A configuration from an object (tests, embedding), validated by the same schema. */
export function tokenConfig(input: z.input<typeof tokenServiceConfigSchema>, file = '(inline)'): TokenServiceConfig {
  const parsed = tokenServiceConfigSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(`${file}: field '${issue.path.join('.') || '(top level)'}': ${issue.message}`);
  }
  return withDerived(parsed.data, file);
}

/** The highest TTL a token for this role may have. */
export function maxTtlFor(config: TokenServiceConfig, role: string | undefined): number {
  const roleMax = role !== undefined ? config.roles[role]?.max_ttl_seconds : undefined;
  return roleMax !== undefined ? Math.min(roleMax, config.max_ttl_seconds) : config.max_ttl_seconds;
}

/** -1 for no role, else the position in the role order (higher = more authority); undefined for an unknown role. */
export function roleRank(order: readonly string[], role: string | undefined): number | undefined {
  if (role === undefined) return -1;
  const i = order.indexOf(role);
  return i < 0 ? undefined : i;
}
