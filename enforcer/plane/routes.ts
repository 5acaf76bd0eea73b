import type { IncomingHttpHeaders } from 'node:http';
import { ROOT_CONTEXT, defaultTextMapGetter, type Context } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { Request, Router } from 'express';
import { z } from 'zod';
import type { JSONWebKeySet } from 'jose';
import { SCOPE, requireScope, type ServiceCredentials } from '../../common/credentials';
import { CustodyError, HttpError, badRequest } from '../../common/errors';
import { CALLABLE_PATH, callableTools } from '../policy/callable';
import type { Policy } from '../policy/compile';
import { describeFetchError } from '../../common/json-client';
import { MAX_INCIDENT_CACHE_TTL_S, RolloutConflictError, rolloutView, type RolloutStore } from '../policy/rollout';

export interface PlaneRoutesOptions {
  policy: () => Policy;
  rollout: RolloutStore;
  /**
   * Who may move the rollout: the rollout credential (CUSTODY_ROLLOUT_TOKEN) or the admin one;
   * with neither configured every change is refused (an open PUT would let anyone switch
   * enforcement off).
   */
  credentials: ServiceCredentials;
  /**
   * The revocations in force (version, count), announced with the rollout so that enforcers drop
   * cached allows when it changes. Absent or failing: not announced.
   */
  revocations?: () => Promise<{ version: string; count: number }>;
  /** Called after a change has been stored. */
  onRolloutChange: (change: { from: number; to: number; reason: string; actor: string }) => void;
  onIncidentChange: (change: { cacheTtlS: number | null; percent: number; reason: string; actor: string }) => void;
  /**
   * A replica's owner (shared-state.ts): rollout changes are handed to it as they came (the
   * caller's credential, If-Match, body) and its answer is relayed and taken as the newest state.
   */
  replicaOf?: { owner: string; accept(body: unknown): void };
  /** The keys that sign receipts: GET /v1/policy/jwks.json, POST /v1/policy/keys/rotate (admin). */
  receiptKeys?: { jwks(): JSONWebKeySet; rotate(): Promise<{ kid: string; retired: string }> };
  /** Staging: GET /v1/rollout says so (`environment: 'staging'`), and agents refuse calls without a sponsor in every cohort. */
  staging?: () => boolean;
}

export const PLANE_PATHS = {
  JWKS: '/v1/policy/jwks.json',
  ROTATE: '/v1/policy/keys/rotate',
  CALLABLE: CALLABLE_PATH,
} as const;

const propagator = new W3CTraceContextPropagator();

const rolloutChange = z.strictObject({
  percent: z.number({ error: "'percent' is required: a number from 0 to 100" }).min(0).max(100),
  reason: z.string({ error: "'reason' is required: why the rollout moves" }).trim().min(1, "'reason' must not be empty").max(500),
  actor: z.string().trim().min(1).max(128).optional(),
  /** Refuse (409) unless the percent is still this: the caller decided on a read that may be stale. */
  expected_percent: z.number().min(0).max(100).optional(),
});

const incidentChange = z.strictObject({
  cache_ttl_s: z.union([z.number().min(0).max(MAX_INCIDENT_CACHE_TTL_S), z.null()], {
    error: `'cache_ttl_s' is required: seconds (at most ${MAX_INCIDENT_CACHE_TTL_S}) allows stay cached, or 0/null to end the incident`,
  }),
  reason: z.string({ error: "'reason' is required" }).trim().min(1, "'reason' must not be empty").max(500),
  actor: z.string().trim().min(1).max(128).optional(),
});

/**
 * The policy plane's control-API routes (POST /v1/check is a fast route: see role.ts): GET and PUT /v1/rollout; PUT
 * /v1/rollout/incident (the incident switch: agents keep allows cached longer); GET /v1/policy
 * (what is in force, and the tool_map agents resolve tool names with).
 */
export function mountPlaneRoutes(router: Router, o: PlaneRoutesOptions): void {
  const admin = requireScope(SCOPE.ROLLOUT, o.credentials, { what: 'rollout changes', disabled: { status: 403, code: 'forbidden' } });

  const sendRollout = async (res: import('express').Response) => {
    const state = o.rollout.get();
    let revocations: { version: string; count: number } | null = null;
    try {
      revocations = o.revocations ? await o.revocations() : null;
    } catch {
      /* unknown: enforcers keep what they know; the checks themselves fail closed */
    }
    res
      .set('etag', `"${state.revision}"`)
      .set('cache-control', 'no-store')
      .json({ ...rolloutView(state, o.policy().rollout), ...(o.revocations ? { revocations } : {}), ...(o.staging?.() ? { environment: 'staging' } : {}) });
  };

  router.get('/v1/rollout', (_req, res) => sendRollout(res));

  const keys = o.receiptKeys;
  if (keys) {
    // Every key that ever signed a receipt stays here: receipts are verified as long as the audit is kept.
    router.get(PLANE_PATHS.JWKS, (_req, res) => {
      res.set('cache-control', 'max-age=60').json(keys.jwks());
    });
    router.post(PLANE_PATHS.ROTATE, requireScope(SCOPE.ADMIN, o.credentials, { what: 'receipt key rotations' }), async (_req, res) => {
      try {
        res.json({ ...(await keys.rotate()), keys: keys.jwks().keys });
      } catch (err) {
        if (err instanceof CustodyError) throw new HttpError(409, err.code, err.message);
        throw err;
      }
    });
  }

  const replica = o.replicaOf;
  if (replica) {
    // the owner decides (credentials, compare-and-set, receipts, the change's record); this replica relays
    const forward = async (req: Request, res: import('express').Response) => {
      const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'application/json' };
      for (const h of ['authorization', 'if-match'] as const) {
        const v = req.get(h);
        if (v) headers[h] = v;
      }
      let answer: Response;
      let text: string;
      try {
        answer = await fetch(new URL(req.path, replica.owner), { method: 'PUT', headers, body: JSON.stringify(req.body ?? {}), signal: AbortSignal.timeout(10_000) });
        text = await answer.text();
      } catch (err) {
        throw new HttpError(503, 'state_unavailable', `the rollout's owner at ${new URL(replica.owner).origin} did not answer (${describeFetchError(err)}): nothing changed here`, { 'retry-after': '1' });
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw new HttpError(502, 'state_unavailable', `the rollout's owner answered ${answer.status} without JSON`);
      }
      if (answer.ok) replica.accept(body);
      const etag = answer.headers.get('etag');
      if (etag) res.set('etag', etag);
      res.status(answer.status).set('cache-control', 'no-store').json(body);
    };
    router.put('/v1/rollout', forward);
    router.put('/v1/rollout/incident', forward);
  }

  router.put('/v1/rollout', admin, async (req, res) => {
    const body = parse(rolloutChange, req.body);
    const actor = body.actor ?? 'admin';
    const ifRevision = ifMatchRevision(req);
    try {
      const { from, state } = await o.rollout.setPercent({
        percent: body.percent,
        reason: body.reason,
        actor,
        ifRevision,
        ifPercent: body.expected_percent,
      });
      o.onRolloutChange({ from, to: state.percent, reason: body.reason, actor });
    } catch (err) {
      if (err instanceof RolloutConflictError) {
        throw new HttpError(err.expected === 'revision' ? 412 : 409, 'rollout_conflict', err.message);
      }
      throw err;
    }
    await sendRollout(res);
  });

  router.put('/v1/rollout/incident', admin, async (req, res) => {
    const body = parse(incidentChange, req.body);
    const actor = body.actor ?? 'admin';
    const ttl = body.cache_ttl_s ? body.cache_ttl_s : null;
    const { state } = await o.rollout.setIncident({ cache_ttl_s: ttl, reason: body.reason, actor });
    o.onIncidentChange({ cacheTtlS: ttl, percent: state.percent, reason: body.reason, actor });
    await sendRollout(res);
  });

  router.get('/v1/policy', (_req, res) => {
    const p = o.policy();
    res.set('cache-control', 'no-store').json({
      version: p.version,
      hash: p.hash,
      source: p.source,
      loaded_at: new Date(p.loadedAt).toISOString(),
      rules: p.ruleCount,
      tools: Object.fromEntries([...p.tools].map(([name, t]) => [name, { risk: t.risk, single_use_tokens: t.singleUseTokens, require_purpose: t.requirePurpose, actions: t.actions ? [...t.actions] : null, disclose_args: t.discloseArgs ? [...t.discloseArgs] : null }])),
      tool_map: Object.fromEntries(p.toolMap),
    });
  });

  // What a role may ever call (GET /v1/policy/callable?role=support): for leaving tools out of the
  // lists an agent is offered. Readable by whoever may read the policy; every call is still decided.
  router.get(PLANE_PATHS.CALLABLE, (req, res) => {
    const role = req.query.role;
    if (role !== undefined && (typeof role !== 'string' || role.length === 0 || role.length > 128)) {
      throw badRequest('invalid_request', "'role' must be one role name (1 to 128 characters), or absent for a caller without a role");
    }
    res.set('cache-control', 'no-store').json(callableTools(o.policy(), role ?? null, Date.now()));
  });
}

/** The caller's trace, so the decision-log record joins it. */
export function traceContextOf(headers: IncomingHttpHeaders): Context | undefined {
  if (!headers.traceparent) return undefined;
  return propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
}

function parse<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  const r = schema.safeParse(body ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.length ? `'${issue.path.join('.')}': ` : '';
  throw badRequest('invalid_request', `${field}${issue.message}`);
}

/** `If-Match: "7"` → 7; `*` or absent → no condition. */
function ifMatchRevision(req: Request): number | undefined {
  const header = req.get('if-match');
  if (!header || header.trim() === '*') return undefined;
  const m = /^\s*(?:W\/)?"?(\d+)"?\s*$/.exec(header);
  if (!m) throw badRequest('invalid_request', `If-Match must be the rollout's ETag (e.g. "7"), got '${header}'`);
  return Number(m[1]);
}
