import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { RequestHandler } from 'express';
import type { CustodyEnv } from './env';
import { HttpError } from './errors';
import { ENV } from './names';

/**
 * custody's service credentials and what each may do (least privilege):
 *   admin        registration, keys, offboarding, and everything below
 *   rollout      moving the rollout (PUT /v1/rollout, the incident switch): what the rollback job,
 *                Argo Rollouts or Flagger hold
 *   audit:read   reading the audit API (GET /v1/audit/…)
 *   service      writing the services' own records (decision log, token events, rollout changes)
 *                from a role in another process; no agent holds it
 *   ingest       an upstream OpenTelemetry Collector forwarding agents' spans (a gateway)
 * Every comparison is constant-time; the `Bearer` scheme is matched case-insensitively.
 */
export const SCOPE = {
  ADMIN: 'admin',
  ROLLOUT: 'rollout',
  AUDIT_READ: 'audit:read',
  SERVICE: 'service',
  INGEST: 'ingest',
} as const;
export type Scope = (typeof SCOPE)[keyof typeof SCOPE];

/** The credentials configured for this process, by scope; absent ones are undefined. */
export interface ServiceCredentials {
  readonly admin?: string | undefined;
  readonly rollout?: string | undefined;
  readonly auditReader?: string | undefined;
  readonly service?: string | undefined;
  readonly ingest?: string | undefined;
}

/** The environment variable that holds each credential. */
export const CREDENTIAL_ENV = {
  admin: ENV.ADMIN_TOKEN,
  rollout: ENV.ROLLOUT_TOKEN,
  auditReader: ENV.AUDIT_READER_TOKEN,
  service: ENV.SERVICE_TOKEN,
  ingest: ENV.INGEST_TOKEN,
} as const satisfies Record<keyof ServiceCredentials, string>;

/** The credentials of the parsed environment (common/env.ts trims them; blank is unset). */
export function credentialsFromEnv(env: Pick<CustodyEnv, (typeof CREDENTIAL_ENV)[keyof typeof CREDENTIAL_ENV]>): ServiceCredentials {
  const out: { -readonly [K in keyof ServiceCredentials]: string | undefined } = {};
  for (const [key, name] of Object.entries(CREDENTIAL_ENV) as [keyof ServiceCredentials, (typeof CREDENTIAL_ENV)[keyof typeof CREDENTIAL_ENV]][]) {
    const v = env[name];
    if (v) out[key] = v;
  }
  return out;
}

/** The credential in `Authorization: Bearer <credential>` (scheme in any case), else undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^\s*bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : undefined;
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time equality of two secrets (hashed first, so their lengths do not show either). */
export function secretEquals(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}

/** Which scopes a presented credential carries: admin carries every operator scope. */
export function scopesOf(credential: string, creds: ServiceCredentials): Set<Scope> {
  const scopes = new Set<Scope>();
  // compare with every configured credential, whatever matched first: no early exit to time
  const admin = creds.admin !== undefined && secretEquals(credential, creds.admin);
  const rollout = creds.rollout !== undefined && secretEquals(credential, creds.rollout);
  const reader = creds.auditReader !== undefined && secretEquals(credential, creds.auditReader);
  const service = creds.service !== undefined && secretEquals(credential, creds.service);
  const ingest = creds.ingest !== undefined && secretEquals(credential, creds.ingest);
  if (admin) scopes.add(SCOPE.ADMIN).add(SCOPE.ROLLOUT).add(SCOPE.AUDIT_READ);
  if (rollout) scopes.add(SCOPE.ROLLOUT);
  if (reader) scopes.add(SCOPE.AUDIT_READ);
  if (service) scopes.add(SCOPE.SERVICE);
  if (ingest) scopes.add(SCOPE.INGEST);
  return scopes;
}

/** The env variables whose credentials carry `scope`, for messages. */
function holders(scope: Scope): string {
  switch (scope) {
    case SCOPE.ROLLOUT:
      return `${ENV.ROLLOUT_TOKEN} or ${ENV.ADMIN_TOKEN}`;
    case SCOPE.AUDIT_READ:
      return `${ENV.AUDIT_READER_TOKEN} or ${ENV.ADMIN_TOKEN}`;
    case SCOPE.SERVICE:
      return ENV.SERVICE_TOKEN;
    case SCOPE.INGEST:
      return ENV.INGEST_TOKEN;
    default:
      return ENV.ADMIN_TOKEN;
  }
}

function configured(scope: Scope, creds: ServiceCredentials): boolean {
  switch (scope) {
    case SCOPE.ROLLOUT:
      return !!(creds.rollout || creds.admin);
    case SCOPE.AUDIT_READ:
      return !!(creds.auditReader || creds.admin);
    case SCOPE.SERVICE:
      return !!creds.service;
    case SCOPE.INGEST:
      return !!creds.ingest;
    default:
      return !!creds.admin;
  }
}

export interface RequireScopeOptions {
  /** What the guarded routes do, for messages ("rollout changes"). */
  what: string;
  /** No check at all (open first-day mode on loopback). */
  open?: boolean;
  /** The status and code when no credential for the scope is configured (default 403 `<scope>_disabled`). */
  disabled?: { status: number; code: string };
}

/**
 * Express middleware: the request must carry a credential with `scope`. 401 when none or an
 * unknown one is sent, 403 when a valid credential lacks the scope or none is configured.
 */
export function requireScope(scope: Scope, creds: ServiceCredentials, options: RequireScopeOptions): RequestHandler {
  return function requireCredentialScope(req, _res, next) {
    if (options.open) return next();
    if (!configured(scope, creds)) {
      const d = options.disabled ?? { status: 403, code: 'admin_disabled' };
      return next(new HttpError(d.status, d.code, `${options.what} are disabled: set ${holders(scope)} where this service runs`));
    }
    const header = req.get('authorization');
    const given = bearerToken(header);
    if (given === undefined) {
      return next(
        new HttpError(401, 'unauthorized', `${options.what} need "Authorization: Bearer <credential>" (${holders(scope)})`, {
          'WWW-Authenticate': 'Bearer',
        }),
      );
    }
    const scopes = scopesOf(given, creds);
    if (scopes.has(scope)) return next();
    if (scopes.size > 0) {
      return next(new HttpError(403, 'insufficient_scope', `this credential cannot be used for ${options.what} (${holders(scope)} can)`, {
        'WWW-Authenticate': `Bearer error="insufficient_scope"`,
      }));
    }
    return next(new HttpError(401, 'unauthorized', `the credential is not valid for ${options.what}`, { 'WWW-Authenticate': 'Bearer error="invalid_token"' }));
  };
}

/**
 * Reads a credential kept in `<dataDir>/<name>` (mode 0600), generating it the first time: the
 * loopback first-day mode of `custody up`. Returns the credential.
 */
export function bootstrapCredentialFile(dataDir: string, name: string): { token: string; file: string } {
  const file = path.join(dataDir, name);
  let token = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : '';
  if (!token) {
    fs.mkdirSync(dataDir, { recursive: true });
    token = randomBytes(24).toString('base64url');
    fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  }
  return { token, file };
}
