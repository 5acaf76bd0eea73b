import { Router } from 'express';
import { SCOPE, credentialsFromEnv, requireScope } from '../../common/credentials';
import { badRequest, HttpError, notFound } from '../../common/errors';
import { isLoopback } from '../../identity/role';
import { queryInt, queryString } from '../../common/http';
import type { Logger } from '../../common/log';
import type { RoleContext } from '../../common/role';
import {
  AuditQueryError,
  auditEvents,
  auditTrail,
  DECISION_FILTERS,
  MAX_EVENTS_LIMIT,
  parseInstant,
  type DecisionFilter,
  type EventFilters,
} from './queries';
import type { Store } from '../store';
import { auditHealth } from './health';
import { MAX_POLICY_EVENTS, policyEvents } from './policy';
import { parseWindow } from '../rules/evaluate';

/**
 * GET /v1/audit/trail/:agent_instance_id[?depth=N&calls=N]
 * GET /v1/audit/events?sponsor&agent_instance_id&tool&decision&from&to&limit&cursor
 * Any unknown or malformed parameter is a 400 that names it.
 */

const MAX_ID_LENGTH = 256;

function rejectUnknown(query: Record<string, unknown>, allowed: readonly string[]): void {
  for (const name of Object.keys(query)) {
    if (!allowed.includes(name)) throw badRequest('invalid_parameter', `unknown query parameter '${name}' (expected ${allowed.join(', ')})`);
  }
}

function identifier(value: string | undefined, name: string): string | undefined {
  if (value === undefined) return undefined;
  // eslint-disable-next-line no-control-regex
  if (value.length > MAX_ID_LENGTH || /[\u0000-\u001f]/.test(value)) {
    throw badRequest('invalid_parameter', `query parameter '${name}' must be at most ${MAX_ID_LENGTH} printable characters`);
  }
  return value;
}

async function fromStore<T>(log: Logger, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof AuditQueryError) throw badRequest('invalid_parameter', `query parameter '${err.parameter}': ${err.message}`);
    log.error({ err }, 'audit query failed');
    throw new HttpError(503, 'storage_unavailable', `the store did not answer: ${(err as Error).message}`, { 'Retry-After': '5' });
  }
}

export function auditRouter(store: Store, log: Logger): Router {
  const router = Router();

  router.get('/v1/audit/trail/:agent_instance_id', async (req, res) => {
    const q = req.query as Record<string, unknown>;
    rejectUnknown(q, ['depth', 'calls']);
    const id = identifier(String(req.params.agent_instance_id), 'agent_instance_id')!;
    const depth = queryInt(q, 'depth', 1, 20);
    const calls = queryInt(q, 'calls', 1, 10_000);
    const trail = await fromStore(log, () =>
      auditTrail(store, id, { ...(depth !== undefined ? { depth } : {}), ...(calls !== undefined ? { callsPerAgent: calls } : {}) }),
    );
    if (!trail) throw notFound(`no agent instance '${id}' in the audit`);
    res.json(trail);
  });

  const EVENT_PARAMETERS = ['sponsor', 'agent_instance_id', 'tool', 'decision', 'from', 'to', 'limit', 'cursor'];
  router.get('/v1/audit/events', async (req, res) => {
    const q = req.query as Record<string, unknown>;
    rejectUnknown(q, EVENT_PARAMETERS);
    const filters: EventFilters = {};
    const sponsor = identifier(queryString(q, 'sponsor'), 'sponsor');
    const agent = identifier(queryString(q, 'agent_instance_id'), 'agent_instance_id');
    const tool = identifier(queryString(q, 'tool'), 'tool');
    const decision = queryString(q, 'decision');
    const from = queryString(q, 'from');
    const to = queryString(q, 'to');
    const limit = queryInt(q, 'limit', 1, MAX_EVENTS_LIMIT);
    const cursor = queryString(q, 'cursor');
    if (sponsor !== undefined) filters.sponsor = sponsor;
    if (agent !== undefined) filters.agentInstanceId = agent;
    if (tool !== undefined) filters.tool = tool;
    if (decision !== undefined) {
      if (!(DECISION_FILTERS as readonly string[]).includes(decision)) {
        throw badRequest('invalid_parameter', `query parameter 'decision' must be one of ${DECISION_FILTERS.join(', ')}, got '${decision}'`);
      }
      filters.decision = decision as DecisionFilter;
    }
    const instant = (text: string, name: string) => {
      try {
        return parseInstant(text, name);
      } catch (err) {
        throw badRequest('invalid_parameter', `query parameter '${name}': ${(err as Error).message}`);
      }
    };
    if (from !== undefined) filters.from = instant(from, 'from');
    if (to !== undefined) filters.to = instant(to, 'to');
    if (limit !== undefined) filters.limit = limit;
    if (cursor !== undefined) filters.cursor = cursor;
    res.json(await fromStore(log, () => auditEvents(store, filters)));
  });

  // each policy load or refused reload, with the plane's signed receipt
  router.get('/v1/audit/policy', async (req, res) => {
    const q = req.query as Record<string, unknown>;
    rejectUnknown(q, ['limit']);
    const limit = queryInt(q, 'limit', 1, MAX_POLICY_EVENTS);
    res.json({ events: await fromStore(log, () => policyEvents(store, limit ?? 100)) });
  });

  router.get('/v1/audit/health', async (req, res) => {
    const q = req.query as Record<string, unknown>;
    rejectUnknown(q, ['window']);
    const text = queryString(q, 'window') ?? '24h';
    let windowS: number;
    try {
      windowS = parseWindow(text);
    } catch (err) {
      throw badRequest('invalid_parameter', `query parameter 'window': ${(err as Error).message}`);
    }
    res.json(await fromStore(log, () => auditHealth(store, { windowS })));
  });

  return router;
}

/** The audit API's read paths (the published audit keys are public and not among them). */
export const AUDIT_READ_PATHS = ['/v1/audit/trail', '/v1/audit/events', '/v1/audit/health', '/v1/audit/checkpoints', '/v1/audit/policy'] as const;

/**
 * Off loopback, reading the audit API needs the reader credential (CUSTODY_AUDIT_READER_TOKEN) or
 * the admin one; /metrics and the rollback status stay open. Mounted before any audit route.
 */
export function mountAuditReadGuard(ctx: RoleContext, credentials = credentialsFromEnv(ctx.env)): { open: boolean } {
  const open = isLoopback(ctx.options.host);
  ctx.control.use([...AUDIT_READ_PATHS], requireScope(SCOPE.AUDIT_READ, credentials, { what: 'audit API reads', open }));
  return { open };
}

/** Mounts the audit queries; the collector role calls it once its store is open. */
export function mountAudit(ctx: RoleContext, store: Store): void {
  ctx.control.use(auditRouter(store, ctx.log));
}
