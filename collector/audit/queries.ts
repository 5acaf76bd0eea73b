import { CustodyError } from '../../common/errors';
import { ATTR, TABLE } from '../../common/names';
import type { Store } from '../store';

/**
 * Chain-of-custody queries over audit_events (one row per tool call), with policy_decisions and
 * token_events filling in agents that asked the plane or held tokens but made no call themselves.
 *
 * - `auditTrail`: one agent instance with its sponsor, its ancestors (parent_agent_id walked up),
 *   its descendants (instances whose parent it is, recursively, to a bounded depth) and the calls
 *   of every instance in that subtree.
 * - `auditEvents`: filtered tool calls, newest first, keyset-paged on (timestamp, span_id,
 *   trace_id) so that a page never repeats or skips a row when new calls arrive. A span stored
 *   twice (an export retried) is listed once, so such a page may hold fewer than `limit` rows.
 */

export interface AuditEvent {
  /** ISO-8601 with nanoseconds. */
  timestamp: string;
  trace_id: string;
  span_id: string;
  sponsor_id: string;
  agent_instance_id: string;
  parent_agent_id: string;
  role: string;
  tool_id: string;
  action: string;
  purpose: string;
  /** allow | deny | error, or '' when no policy check happened. */
  decision: string;
  policy_decision_id: string;
  rule_id: string;
  policy_latency_ms: number;
  policy_cached: boolean;
  enforced: boolean;
  cohort: string;
  status: string;
  error_type: string;
  token_jti: string;
  request_hash: string;
  response_hash: string;
  agent_name: string;
  tool_name: string;
  tool_call_id: string;
  service_name: string;
  duration_ns: number;
  /** duration_ns in milliseconds, kept for readers of the first field name. */
  duration_ms: number;
  audit_seq: number;
  audit_prev_hash: string;
  /**
   * Who could have written the row (TRUST in common/names.ts): `verified`, `gateway`,
   * `unverified` (no credential, or an identity its credential does not prove), '' if stored
   * before this was recorded. The decision and token fields of an unverified row are the agent's
   * word only.
   */
  trust: string;
  /** Which tracing convention recorded the call (audit-log-schema.json `convention`); '' if stored before this was recorded. */
  convention: string;
  /** Human approval of the call (require_approval rules): its request, outcome, who answered and why; '' when none. */
  approval_id: string;
  approval_status: string;
  approval_approver: string;
  approval_reason: string;
  /** The argument fields the plane saw, comma-separated; '' when none. */
  args_disclosed: string;
  /** Sampled out of the audit (the policy's `audit: { sample }`): a stub that keeps its chain fields and no attributes. */
  audit_sampled: boolean;
}

export interface AgentSummary {
  agent_instance_id: string;
  parent_agent_id: string | null;
  sponsor_id: string | null;
  role: string | null;
  agent_name: string | null;
  first_seen: string | null;
  last_seen: string | null;
  /** Tool calls stored for this instance. */
  call_count: number;
}

/**
 * The tool's side of a call: what custody/guard in front of the tool recorded (`custody.guard`
 * spans of the call's trace, for the call's token). Reported by the tool's own process: evidence
 * that the tool checked the token, not a record custody's services wrote.
 */
export interface ToolSide {
  service: string;
  /** allow | deny | error, as the guard recorded it */
  decision: string;
  /** The guard's refusal code, when it refused. */
  error_type: string | null;
  timestamp: string;
}

/** A call in a trail: the audit event, with the tool's side when the tool is guarded. */
export type TrailCall = AuditEvent & { tool_side?: ToolSide[] };

export interface AgentNode extends AgentSummary {
  /** The most recent calls, oldest first. */
  calls: TrailCall[];
  calls_truncated: boolean;
  children: AgentNode[];
}

export interface AuditTrail {
  agent_instance_id: string;
  /** The instance's sponsor, or the nearest ancestor's when its own rows carry none. */
  sponsor_id: string | null;
  /** Root first, the direct parent last. */
  ancestors: AgentSummary[];
  agent: AgentNode;
  /** Depth or size limits cut the descendants. */
  truncated: boolean;
}

export interface TrailOptions {
  /** Levels of sub-agents below the instance (default 10). */
  depth?: number;
  /** Calls shown per instance, the most recent (default 1000). */
  callsPerAgent?: number;
  /** Instances in the subtree (default 1000). */
  maxAgents?: number;
}

export const DECISION_FILTERS = ['allow', 'deny', 'error', 'none'] as const;
export type DecisionFilter = (typeof DECISION_FILTERS)[number];

export interface EventFilters {
  sponsor?: string;
  agentInstanceId?: string;
  tool?: string;
  /** `none`: calls that had no policy check. */
  decision?: DecisionFilter;
  /** epoch ms, inclusive */
  from?: number;
  /** epoch ms, exclusive */
  to?: number;
  limit?: number;
  cursor?: string;
}

export interface EventPage {
  events: AuditEvent[];
  /** Pass back as `cursor` for the next (older) page; null on the last page. */
  next_cursor: string | null;
}

export class AuditQueryError extends CustodyError {
  readonly parameter: string;
  constructor(parameter: string, message: string) {
    super('ERR_AUDIT_QUERY', message);
    this.parameter = parameter;
  }
}

export const MAX_EVENTS_LIMIT = 1000;
const LOOK_BACK_MS = [3_600_000, 86_400_000, 7 * 86_400_000, undefined];
const MAX_ANCESTORS = 32;

const EVENT_COLUMNS = `toString(toUnixTimestamp64Nano(timestamp)) AS ts_ns, trace_id, span_id, sponsor_id, agent_instance_id,
  parent_agent_id, toString(role) AS role, toString(tool_id) AS tool_id, toString(action) AS action, purpose,
  toString(decision) AS decision, policy_decision_id, toString(rule_id) AS rule_id, policy_latency_ms, policy_cached,
  enforced, toString(cohort) AS cohort, toString(status) AS status, toString(error_type) AS error_type, token_jti,
  request_hash, response_hash, toString(agent_name) AS agent_name, toString(tool_name) AS tool_name, tool_call_id,
  toString(service_name) AS service_name, duration_ns, audit_seq, audit_prev_hash, toString(trust) AS trust,
  toString(convention) AS convention, attributes['${ATTR.APPROVAL_ID}'] AS approval_id,
  attributes['${ATTR.APPROVAL_STATUS}'] AS approval_status, attributes['${ATTR.APPROVAL_APPROVER}'] AS approval_approver,
  attributes['${ATTR.APPROVAL_REASON}'] AS approval_reason, attributes['${ATTR.ARGS_DISCLOSED}'] AS args_disclosed, audit_sampled`;

interface EventRow extends Omit<AuditEvent, 'timestamp' | 'duration_ns' | 'duration_ms' | 'audit_seq'> {
  ts_ns: string;
  duration_ns: string | number;
  audit_seq: string | number;
}

/** Nanoseconds since the epoch (decimal string) as ISO-8601 with nine fraction digits. */
export function isoFromNanos(ns: string): string {
  const big = BigInt(ns);
  const seconds = big / 1_000_000_000n;
  const fraction = (big % 1_000_000_000n).toString().padStart(9, '0');
  return `${new Date(Number(seconds) * 1000).toISOString().slice(0, 19)}.${fraction}Z`;
}

function toEvent(r: EventRow): AuditEvent {
  const { ts_ns, duration_ns, audit_seq, ...rest } = r;
  return {
    timestamp: isoFromNanos(ts_ns),
    ...rest,
    policy_latency_ms: Number(rest.policy_latency_ms),
    policy_cached: Boolean(rest.policy_cached),
    enforced: Boolean(rest.enforced),
    audit_sampled: Boolean(Number(rest.audit_sampled)),
    duration_ns: Number(duration_ns),
    duration_ms: Number(duration_ns) / 1e6,
    audit_seq: Number(audit_seq),
  };
}

// ---- events ----

export function encodeCursor(tsNs: string, spanId: string, traceId: string): string {
  return Buffer.from(JSON.stringify([tsNs, spanId, traceId])).toString('base64url');
}

export function decodeCursor(cursor: string): { tsNs: string; spanId: string; traceId: string } {
  try {
    const v: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (
      Array.isArray(v) &&
      v.length === 3 &&
      typeof v[0] === 'string' &&
      /^\d{1,19}$/.test(v[0]) &&
      BigInt(v[0]) <= MAX_INT64 &&
      typeof v[1] === 'string' &&
      v[1].length <= 256 &&
      typeof v[2] === 'string' &&
      v[2].length <= 256
    ) {
      return { tsNs: v[0] as string, spanId: v[1], traceId: v[2] };
    }
  } catch {
    /* reported below */
  }
  throw new AuditQueryError('cursor', `cursor '${cursor.slice(0, 64)}' is not one this API returned`);
}

/** The latest instant a DateTime64(9) column holds (2262-04-11T23:47:16.854Z), in epoch ms. */
export const MAX_INSTANT_MS = 9_223_372_036_854;
const MAX_INT64 = 9_223_372_036_854_775_807n;

/** An instant as ISO-8601 (with a date) or epoch milliseconds, from 1970 to 2262 (what the store holds). */
export function parseInstant(text: string, parameter: string): number {
  const t = text.trim();
  let ms: number | undefined;
  if (/^\d{1,16}$/.test(t)) ms = Number(t);
  else if (/^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(t)) {
    const parsed = Date.parse(t);
    if (!Number.isNaN(parsed)) ms = parsed;
  }
  if (ms === undefined) throw new AuditQueryError(parameter, `${parameter} '${text}' is neither an ISO-8601 time nor epoch milliseconds`);
  if (ms < 0 || ms > MAX_INSTANT_MS) {
    throw new AuditQueryError(parameter, `${parameter} '${text}' is out of range (from 1970-01-01T00:00:00Z to ${new Date(MAX_INSTANT_MS).toISOString()})`);
  }
  return ms;
}

export async function auditEvents(store: Store, filters: EventFilters = {}): Promise<EventPage> {
  const limit = filters.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_EVENTS_LIMIT) {
    throw new AuditQueryError('limit', `limit must be an integer from 1 to ${MAX_EVENTS_LIMIT}`);
  }
  if (filters.from !== undefined && filters.to !== undefined && filters.from >= filters.to) {
    throw new AuditQueryError('to', `to (${new Date(filters.to).toISOString()}) must be later than from (${new Date(filters.from).toISOString()})`);
  }
  const where: string[] = [];
  const params: Record<string, unknown> = { limit: limit + 1 };
  if (filters.sponsor !== undefined) {
    where.push('sponsor_id = {sponsor:String}');
    params.sponsor = filters.sponsor;
  }
  if (filters.agentInstanceId !== undefined) {
    where.push('agent_instance_id = {agent:String}');
    params.agent = filters.agentInstanceId;
  }
  if (filters.tool !== undefined) {
    where.push('tool_id = {tool:String}');
    params.tool = filters.tool;
  }
  if (filters.decision !== undefined) {
    where.push('decision = {decision:String}');
    params.decision = filters.decision === 'none' ? '' : filters.decision;
  }
  if (filters.from !== undefined) {
    where.push('timestamp >= fromUnixTimestamp64Milli({from:Int64})');
    params.from = filters.from;
  }
  if (filters.to !== undefined) {
    where.push('timestamp < fromUnixTimestamp64Milli({to:Int64})');
    params.to = filters.to;
  }
  let anchorMs = Math.max(Date.now(), filters.to ?? 0);
  if (filters.cursor !== undefined) {
    const c = decodeCursor(filters.cursor);
    where.push('(timestamp, span_id, trace_id) < (fromUnixTimestamp64Nano({c_ts:Int64}), {c_span:String}, {c_trace:String})');
    Object.assign(params, { c_ts: c.tsNs, c_span: c.spanId, c_trace: c.traceId });
    anchorMs = Number(BigInt(c.tsNs) / 1_000_000n) + 1;
  }
  if (filters.to !== undefined) anchorMs = Math.min(anchorMs, filters.to);
  // Newest first without sorting the whole table: look back an hour from the page's upper end,
  // then a day, a week, everything, and stop as soon as a window holds a full page. Rows older
  // than a window cannot outrank the rows inside it.
  let found: EventRow[] = [];
  for (const lookBackMs of LOOK_BACK_MS) {
    const lower = lookBackMs === undefined ? undefined : anchorMs - lookBackMs;
    const bounded = lower !== undefined && (filters.from === undefined || lower > filters.from);
    found = await store.rows<EventRow>(`SELECT ${EVENT_COLUMNS}
       FROM ${store.database}.${TABLE.AUDIT_EVENTS}
       WHERE ${[...where, ...(bounded ? ['timestamp >= fromUnixTimestamp64Milli({lower:Int64})'] : []), '1'].join(' AND ')}
       ORDER BY timestamp DESC, span_id DESC, trace_id DESC
       LIMIT {limit:UInt32}`,
      bounded ? { ...params, lower } : params,
    );
    if (found.length > limit || !bounded) break;
  }
  // a span stored twice (an export retried) is listed once; its copies sort next to each other
  const unique = found.filter((r, i) => {
    const prev = found[i - 1];
    return !prev || prev.ts_ns !== r.ts_ns || prev.span_id !== r.span_id || prev.trace_id !== r.trace_id;
  });
  const page = unique.slice(0, limit);
  const more = found.length > limit;
  const last = page[page.length - 1];
  return {
    events: page.map(toEvent),
    next_cursor: more && last ? encodeCursor(last.ts_ns, last.span_id, last.trace_id) : null,
  };
}

// ---- trail ----

interface IdentityRow {
  agent_instance_id: string;
  parent_agent_id: string;
  sponsor_id: string;
  role: string;
  agent_name: string;
  first_ns: string;
  last_ns: string;
  call_count: string | number;
}

/** Who each instance is, from every table that names it. */
async function identities(store: Store, ids: string[]): Promise<Map<string, AgentSummary>> {
  const db = store.database;
  const found = new Map<string, AgentSummary>();
  if (ids.length === 0) return found;
  const list = await store.rows<IdentityRow>(`SELECT agent_instance_id,
        argMaxIf(parent_agent_id, timestamp, parent_agent_id != '') AS parent_agent_id,
        argMaxIf(sponsor_id, timestamp, sponsor_id != '') AS sponsor_id,
        argMaxIf(role, timestamp, role != '') AS role,
        argMaxIf(agent_name, timestamp, agent_name != '') AS agent_name,
        toString(toUnixTimestamp64Nano(min(timestamp))) AS first_ns,
        toString(toUnixTimestamp64Nano(max(timestamp))) AS last_ns,
        sum(is_call) AS call_count
     FROM (
       SELECT agent_instance_id, parent_agent_id, sponsor_id, toString(role) AS role, toString(agent_name) AS agent_name, timestamp, toUInt8(1) AS is_call
       FROM ${db}.${TABLE.AUDIT_EVENTS} WHERE agent_instance_id IN {ids:Array(String)}
       UNION ALL
       SELECT agent_instance_id, parent_agent_id, sponsor_id, toString(role), '', timestamp, toUInt8(0)
       FROM ${db}.${TABLE.POLICY_DECISIONS} WHERE agent_instance_id IN {ids:Array(String)}
       UNION ALL
       SELECT agent_instance_id, parent_agent_id, sponsor_id, toString(role), '', timestamp, toUInt8(0)
       FROM ${db}.${TABLE.TOKEN_EVENTS} WHERE agent_instance_id IN {ids:Array(String)}
     )
     GROUP BY agent_instance_id`,
    { ids },
  );
  const orNull = (s: string) => (s === '' ? null : s);
  for (const r of list) {
    found.set(r.agent_instance_id, {
      agent_instance_id: r.agent_instance_id,
      parent_agent_id: orNull(r.parent_agent_id),
      sponsor_id: orNull(r.sponsor_id),
      role: orNull(r.role),
      agent_name: orNull(r.agent_name),
      first_seen: isoFromNanos(r.first_ns),
      last_seen: isoFromNanos(r.last_ns),
      call_count: Number(r.call_count),
    });
  }
  return found;
}

/** Instances whose parent is one of `parents`: [child, parent] pairs. */
async function childrenOf(store: Store, parents: string[], limit: number): Promise<[string, string][]> {
  const db = store.database;
  const list = await store.rows<{ agent_instance_id: string; parent_agent_id: string }>(`SELECT DISTINCT agent_instance_id, parent_agent_id FROM (
       -- an unverified call cannot make itself anyone's sub-agent
       SELECT agent_instance_id, parent_agent_id FROM ${db}.${TABLE.AUDIT_EVENTS} WHERE parent_agent_id IN {ids:Array(String)} AND trust != 'unverified'
       UNION ALL
       SELECT agent_instance_id, parent_agent_id FROM ${db}.${TABLE.POLICY_DECISIONS} WHERE parent_agent_id IN {ids:Array(String)}
       UNION ALL
       SELECT agent_instance_id, parent_agent_id FROM ${db}.${TABLE.TOKEN_EVENTS} WHERE parent_agent_id IN {ids:Array(String)}
     )
     WHERE agent_instance_id != ''
     ORDER BY parent_agent_id, agent_instance_id
     LIMIT {limit:UInt32}`,
    { ids: parents, limit },
  );
  return list.map((r) => [r.agent_instance_id, r.parent_agent_id]);
}

const unknownAgent = (id: string): AgentSummary => ({
  agent_instance_id: id,
  parent_agent_id: null,
  sponsor_id: null,
  role: null,
  agent_name: null,
  first_seen: null,
  last_seen: null,
  call_count: 0,
});

/** The chain of custody of one agent instance; null when nothing names it. */
export async function auditTrail(store: Store, agentInstanceId: string, options: TrailOptions = {}): Promise<AuditTrail | null> {
  const depth = options.depth ?? 10;
  const perAgent = options.callsPerAgent ?? 1000;
  const maxAgents = options.maxAgents ?? 1000;

  // descendants, level by level; `parentOf` keeps the first parent found for each instance
  const parentOf = new Map<string, string>();
  const inTree = new Set([agentInstanceId]);
  let level = [agentInstanceId];
  let truncated = false;
  for (let d = 0; d < depth && level.length > 0; d++) {
    const pairs = await childrenOf(store, level, maxAgents + 1);
    const next: string[] = [];
    for (const [child, parent] of pairs) {
      if (inTree.has(child)) continue; // a cycle or a second parent: the first one wins
      if (inTree.size >= maxAgents) {
        truncated = true;
        break;
      }
      inTree.add(child);
      parentOf.set(child, parent);
      next.push(child);
    }
    level = next;
    if (d === depth - 1 && level.length > 0 && (await childrenOf(store, level, 1)).length > 0) truncated = true;
  }

  const ids = [...inTree];
  const who = await identities(store, ids);
  const self = who.get(agentInstanceId);
  if (!self && parentOf.size === 0) return null;

  // ancestors: walk parent_agent_id up, guarding against cycles
  const ancestors: AgentSummary[] = [];
  const seen = new Set(inTree);
  let up = self?.parent_agent_id ?? null;
  while (up && !seen.has(up) && ancestors.length < MAX_ANCESTORS) {
    seen.add(up);
    const info = (await identities(store, [up])).get(up) ?? unknownAgent(up);
    ancestors.unshift(info);
    up = info.parent_agent_id;
  }

  const calls = await store.rows<EventRow & { agent_instance_id: string }>(`SELECT * FROM (
       SELECT ${EVENT_COLUMNS} FROM ${store.database}.${TABLE.AUDIT_EVENTS}
       WHERE agent_instance_id IN {ids:Array(String)}
       ORDER BY agent_instance_id, timestamp DESC, span_id DESC, trace_id DESC
       LIMIT 1 BY agent_instance_id, timestamp, span_id, trace_id
     )
     ORDER BY agent_instance_id, toUInt64(ts_ns) DESC, span_id DESC, trace_id DESC
     LIMIT {per:UInt32} BY agent_instance_id`,
    { ids, per: perAgent },
  );
  const callsOf = new Map<string, AuditEvent[]>();
  for (const r of calls) {
    const list = callsOf.get(r.agent_instance_id) ?? [];
    list.push(toEvent(r));
    callsOf.set(r.agent_instance_id, list);
  }

  await attachToolSides(store, [...callsOf.values()].flat());

  const nodes = new Map<string, AgentNode>();
  for (const id of ids) {
    const info = who.get(id) ?? { ...unknownAgent(id), parent_agent_id: parentOf.get(id) ?? null };
    const mine = (callsOf.get(id) ?? []).reverse();
    nodes.set(id, { ...info, calls: mine, calls_truncated: info.call_count > mine.length && mine.length === perAgent, children: [] });
  }
  for (const [child, parent] of parentOf) nodes.get(parent)?.children.push(nodes.get(child)!);
  // sub-agents in the order they appeared
  for (const node of nodes.values()) node.children.sort((a, b) => (a.first_seen ?? '').localeCompare(b.first_seen ?? ''));
  const agent = nodes.get(agentInstanceId)!;
  const sponsor = agent.sponsor_id ?? [...ancestors].reverse().find((a) => a.sponsor_id)?.sponsor_id ?? null;
  return { agent_instance_id: agentInstanceId, sponsor_id: sponsor, ancestors, agent, truncated };
}

/** Guard spans are named `custody.guard {tool}` (common/names.ts SPAN.GUARD). */
const GUARD_SPAN_PREFIX = 'custody.guard ';

/**
 * The tool's side of each call that had a token: the `custody.guard` spans of the call's trace
 * that verified the call's token (same jti), in one query over otel_traces.
 */
async function attachToolSides(store: Store, calls: TrailCall[]): Promise<void> {
  const withToken = calls.filter((c) => c.token_jti && c.trace_id);
  if (withToken.length === 0) return;
  const rows = await store.rows<{ trace_id: string; jti: string; service: string; decision: string; error_type: string; ts: string }>(
    `SELECT TraceId AS trace_id, SpanAttributes['custody.token.jti'] AS jti, ServiceName AS service,
            SpanAttributes['custody.policy.decision'] AS decision, SpanAttributes['error.type'] AS error_type,
            toString(Timestamp) AS ts
       FROM ${store.database}.${TABLE.OTEL_TRACES}
      WHERE TraceId IN {traces:Array(String)} AND startsWith(SpanName, {prefix:String})
        AND SpanAttributes['custody.token.jti'] IN {jtis:Array(String)}
      ORDER BY Timestamp
      LIMIT 10000`,
    { traces: [...new Set(withToken.map((c) => c.trace_id))], prefix: GUARD_SPAN_PREFIX, jtis: [...new Set(withToken.map((c) => c.token_jti))] },
  );
  const byKey = new Map<string, ToolSide[]>();
  for (const r of rows) {
    const key = `${r.trace_id}\0${r.jti}`;
    const list = byKey.get(key) ?? [];
    list.push({ service: r.service, decision: r.decision || 'unknown', error_type: r.error_type || null, timestamp: r.ts });
    byKey.set(key, list);
  }
  for (const c of withToken) {
    const sides = byKey.get(`${c.trace_id}\0${c.token_jti}`);
    if (sides) c.tool_side = sides;
  }
}
