import express, { Router, type ErrorRequestHandler, type RequestHandler } from 'express';
import { SCOPE, requireScope, type ServiceCredentials } from '../common/credentials';
import { HttpError } from '../common/errors';
import { queryString } from '../common/http';
import { spiffeIdOf } from './certificates';
import { JWT_TOKEN_TYPE } from './exchange';
import { REVOCATIONS_PATH } from './revocation';
import type { KeyRing } from './keys';
import type { AgentRegistry } from './registry';
import type { IssuedToken, TokenKind, TokenService } from './service';

export const TOKEN_PATHS = {
  ISSUE: '/issue',
  TOKEN: '/token',
  JWKS: '/.well-known/jwks.json',
  REVOCATIONS: REVOCATIONS_PATH,
  CERTS: '/v1/certs',
  CA: '/v1/certs/ca.pem',
} as const;

const form = express.urlencoded({ extended: false, limit: '64kb', parameterLimit: 50 });

function tokenBody(t: IssuedToken) {
  return {
    token_type: 'Bearer' as const,
    // the token's lifetime from its iat (RFC 6749 §5.1), not from this instant
    expires_in: t.claims.ttl_seconds,
    token: t.token,
    claims: t.claims,
  };
}

/** POST /issue, POST /token (RFC 8693, JSON or form), GET /.well-known/jwks.json. */
export function tokenRouter(service: TokenService): Router {
  const router = Router();
  router.post(TOKEN_PATHS.ISSUE, form, async (req, res) => {
    const issued = await service.issue(req.body, req.get('authorization'));
    res.set('Cache-Control', 'no-store').status(201).json(tokenBody(issued));
  });
  router.post(TOKEN_PATHS.TOKEN, form, async (req, res) => {
    const issued = await service.exchange(req.body);
    res
      .set('Cache-Control', 'no-store')
      .status(200)
      .json({
        access_token: issued.token,
        issued_token_type: JWT_TOKEN_TYPE,
        scope: issued.claims.tools.join(' '),
        ...tokenBody(issued),
      });
  });
  // Short-lived mTLS client certificates: the same rules as /issue, a key to certify besides.
  router.post(TOKEN_PATHS.CERTS, async (req, res) => {
    const issued = await service.certify(req.body, req.get('authorization'));
    res.set('Cache-Control', 'no-store').status(201).json({
      certificate: issued.certificate,
      ca: issued.ca,
      expires_in: issued.claims.ttl_seconds,
      spiffe_id: spiffeIdOf(service.authority!.trustDomain, issued.claims),
      claims: issued.claims,
    });
  });
  // The authority's certificate, for servers' --client-ca.
  router.get(TOKEN_PATHS.CA, (_req, res) => {
    if (!service.authority) throw new HttpError(404, 'not_found', 'this token service issues no certificates');
    res.set('Cache-Control', 'public, max-age=60').type('application/x-pem-file').send(service.authority.certificatePem);
  });
  // Offboardings and revocations, for the policy plane and offline verifiers (createTokenVerifier({ revocations })).
  router.get(TOKEN_PATHS.REVOCATIONS, (_req, res) => {
    res.set('Cache-Control', 'no-store').json(service.revocationFeed());
  });
  router.get(TOKEN_PATHS.JWKS, (_req, res) => {
    res.set('Cache-Control', 'public, max-age=60').json(service.keys.jwks());
  });
  // What the token service enforces, for readiness checks and people: no key material.
  router.get('/v1/tokens/config', (_req, res) => {
    const c = service.config;
    res.json({
      issuer: c.issuer,
      mode: service.mode,
      default_ttl_seconds: c.default_ttl_seconds,
      max_ttl_seconds: c.max_ttl_seconds,
      require_sponsor: c.require_sponsor,
      supported_tools: c.supported_tools,
      roles: c.roles,
      delegation: c.delegation,
      algorithm: c.signing.algorithm,
    });
  });
  return router;
}

/**
 * For the control app, after its body parser: a body that cannot be parsed never reaches the
 * routes, but it is a refusal all the same and is reported as one.
 */
export function unreadableBodyReporter(service: TokenService): ErrorRequestHandler {
  return function reportUnreadableTokenRequest(err, req, _res, next) {
    // refusals from the routes themselves are HttpErrors, already reported
    if (err instanceof HttpError) return next(err);
    const status = typeof err?.status === 'number' ? err.status : 0;
    if (status >= 400 && status < 500) {
      const route = req.originalUrl.split('?')[0];
      const kind: TokenKind = route === TOKEN_PATHS.TOKEN ? 'exchange' : route === TOKEN_PATHS.CERTS ? 'certificate' : 'issue';
      const code = err.type === 'entity.too.large' ? 'payload_too_large' : 'invalid_request';
      const refusal = new HttpError(status, code, String(err.message ?? 'bad request'));
      service.reportRefusal(kind, refusal);
      return next(refusal);
    }
    next(err);
  };
}

/**
 * The admin API's guard: `Authorization: Bearer $CUSTODY_ADMIN_TOKEN` (the rollout and audit-reader
 * credentials are refused with 403). Without a configured admin token it is open only in open
 * mode (loopback), and closed otherwise.
 */
export function adminAuth(adminToken: string | undefined, openMode: boolean, credentials: ServiceCredentials = {}): RequestHandler {
  return requireScope(SCOPE.ADMIN, { ...credentials, admin: adminToken }, { what: 'admin API calls', open: !adminToken && openMode });
}

export const ADMIN_PATHS = {
  AGENTS: '/v1/agents',
  SPONSORS: '/v1/sponsors',
  KEYS: '/v1/tokens/keys',
} as const;

/**
 * Agent registration and the sponsor lifecycle, and key rotation:
 *   POST /v1/agents {sponsor_id, role, tools, max_ttl_seconds?, name?} → 201 {agent, credential}
 *   GET  /v1/agents[?sponsor_id=&status=] → {agents}     GET /v1/agents/:id → {agent}
 *   POST /v1/agents/:id/rotate → {agent, credential}     POST /v1/agents/:id/revoke {reason?} → {agent}
 *   POST /v1/sponsors/:id/offboard {reason?} → {sponsor_id, revoked}   POST /v1/sponsors/:id/reinstate
 *   GET  /v1/tokens/keys → {keys}                        POST /v1/tokens/keys/rotate → {kid, retired, keys}
 */
export function adminRouter(opts: {
  registry: AgentRegistry;
  keys: KeyRing;
  adminToken: string | undefined;
  openMode: boolean;
  /** The other configured credentials, so that holding one of them is told apart (403) from holding none (401). */
  credentials?: ServiceCredentials;
}): Router {
  const { registry, keys } = opts;
  const router = Router();
  const guard = adminAuth(opts.adminToken, opts.openMode, opts.credentials);
  router.use([ADMIN_PATHS.AGENTS, ADMIN_PATHS.SPONSORS, ADMIN_PATHS.KEYS], guard, form);
  const reason = (body: unknown) => {
    const r = typeof body === 'object' && body !== null ? (body as { reason?: unknown }).reason : undefined;
    if (r !== undefined && (typeof r !== 'string' || r.length > 512)) throw new HttpError(400, 'invalid_request', "field 'reason' must be a string of at most 512 characters");
    return r || undefined;
  };

  router.post(ADMIN_PATHS.AGENTS, async (req, res) => {
    res.status(201).json(await registry.register(req.body, opts.adminToken ? 'admin' : 'open-mode'));
  });
  router.get(ADMIN_PATHS.AGENTS, (req, res) => {
    const q = req.query as Record<string, unknown>;
    const status = queryString(q, 'status');
    if (status !== undefined && status !== 'active' && status !== 'revoked') {
      throw new HttpError(400, 'invalid_parameter', "query parameter 'status' must be active or revoked");
    }
    const sponsor = queryString(q, 'sponsor_id');
    res.json({ agents: registry.list({ ...(sponsor ? { sponsor_id: sponsor } : {}), ...(status ? { status } : {}) }) });
  });
  router.get(`${ADMIN_PATHS.AGENTS}/:id`, (req, res) => {
    const agent = registry.get(req.params.id);
    if (!agent) throw new HttpError(404, 'agent_not_found', `no agent '${req.params.id}'`);
    res.json({ agent });
  });
  router.post(`${ADMIN_PATHS.AGENTS}/:id/rotate`, async (req, res) => {
    res.json(await registry.rotate(req.params.id));
  });
  router.post(`${ADMIN_PATHS.AGENTS}/:id/revoke`, async (req, res) => {
    res.json({ agent: await registry.revoke(req.params.id, reason(req.body)) });
  });
  router.post(`${ADMIN_PATHS.SPONSORS}/:id/offboard`, async (req, res) => {
    res.json(await registry.offboardSponsor(req.params.id, reason(req.body)));
  });
  router.post(`${ADMIN_PATHS.SPONSORS}/:id/reinstate`, async (req, res) => {
    await registry.reinstateSponsor(req.params.id);
    res.json({ sponsor_id: req.params.id, offboarded: false });
  });
  router.get(ADMIN_PATHS.KEYS, (_req, res) => {
    res.json({ source: keys.source.description, keys: keys.status() });
  });
  router.post(`${ADMIN_PATHS.KEYS}/rotate`, async (_req, res) => {
    let rotated;
    try {
      rotated = await keys.rotate();
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_KEY_UNCHANGED') throw new HttpError(409, 'key_unchanged', (err as Error).message);
      throw new HttpError(500, 'key_source_error', (err as Error).message);
    }
    res.json({ ...rotated, keys: keys.status() });
  });
  return router;
}
