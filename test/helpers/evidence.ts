import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { AuditChain } from '../../common/audit-chain';
import { hashValue } from '../../common/canonical';
import type { Store } from '../../collector/store';
import { Checkpointer } from '../../collector/evidence/checkpoint';
import { CheckpointJournal } from '../../collector/evidence/journal';
import { openAuditKeyRing } from '../../collector/evidence/keys';

/**
 * Crafted evidence rows, as the collector writes them for a real tool call: the call (chained per
 * agent instance with common/audit-chain), the plane's allow decision made during the call's
 * policy check, and the token issued just before. Times are epoch ms; `ingested` is the write time.
 */
export interface Call {
  instance: string;
  parent: string;
  sponsor: string;
  tool: string;
  action: string;
  seq: number;
  prevHash: string;
  trace: string;
  span: string;
  decisionId: string;
  jti: string;
  requestHash: string;
  ts: number;
  ingested: number;
  cohort: 'canary' | 'baseline';
}

const hex = (n: number) => randomBytes(n).toString('hex');
export const iso = (ms: number) => new Date(ms).toISOString();

export class Scenario {
  readonly calls: Call[] = [];
  private readonly chains = new Map<string, AuditChain>();

  /** A call at `ts`, written at `ingested` (default ts + 1 s). */
  call(o: { instance: string; ts: number; ingested?: number; tool?: string; action?: string; sponsor?: string; parent?: string; cohort?: Call['cohort'] }): Call {
    const tool = o.tool ?? 'billing';
    const action = o.action ?? 'refund';
    const sponsor = o.sponsor ?? 'alice';
    const parent = o.parent ?? '';
    let chain = this.chains.get(o.instance);
    if (!chain) this.chains.set(o.instance, (chain = new AuditChain()));
    const trace = hex(16);
    const span = hex(8);
    const decisionId = `dec-${hex(6)}`;
    const requestHash = hashValue({ tool, n: this.calls.length });
    const link = chain.next({
      agent_instance_id: o.instance, trace_id: trace, span_id: span, sponsor_id: sponsor, parent_agent_id: parent, tool_id: tool,
      action, policy_decision_id: decisionId, request_hash: requestHash, response_hash: requestHash, status: 'ok',
    });
    const c: Call = {
      instance: o.instance, parent, sponsor, tool, action, seq: link.seq, prevHash: link.prevHash, trace, span, decisionId,
      jti: `jti-${hex(6)}`, requestHash, ts: o.ts, ingested: o.ingested ?? o.ts + 1000, cohort: o.cohort ?? 'canary',
    };
    this.calls.push(c);
    return c;
  }
}

export function auditRow(c: Call, over: Record<string, unknown> = {}): Record<string, unknown> {
  const requestHash = c.requestHash;
  return {
    timestamp: iso(c.ts),
    end_timestamp: iso(c.ts + 30),
    trace_id: c.trace,
    span_id: c.span,
    service_name: 'support-assistant',
    sponsor_id: c.sponsor,
    agent_instance_id: c.instance,
    parent_agent_id: c.parent,
    agent_name: 'support-assistant',
    role: 'support',
    tool_id: c.tool,
    tool_name: c.tool,
    action: c.action,
    purpose: 'ticket 4711',
    request_hash: requestHash,
    response_hash: requestHash,
    policy_decision_id: c.decisionId,
    decision: 'allow',
    rule_id: 'allow-support-billing',
    policy_latency_ms: 4,
    enforced: c.cohort === 'canary',
    cohort: c.cohort,
    status: 'ok',
    token_jti: c.jti,
    audit_seq: c.seq,
    audit_prev_hash: c.prevHash,
    duration_ns: 30_000_000,
    attributes: { 'gen_ai.operation.name': 'execute_tool' },
    ingested_at: iso(c.ingested),
    ...over,
  };
}

export function decisionRow(c: Call, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timestamp: iso(c.ts + 2),
    policy_decision_id: c.decisionId,
    decision: 'allow',
    rule_id: 'allow-support-billing',
    reason: 'support may refund',
    sponsor_id: c.sponsor,
    agent_instance_id: c.instance,
    parent_agent_id: c.parent,
    role: 'support',
    tool_id: c.tool,
    action: c.action,
    purpose: 'ticket 4711',
    cohort: c.cohort,
    enforced: c.cohort === 'canary',
    token_jti: c.jti,
    latency_ms: 1.5,
    trace_id: c.trace,
    span_id: hex(8),
    service_name: 'custody',
    ingested_at: iso(c.ingested - 400),
    ...over,
  };
}

export function tokenRow(c: Call, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timestamp: iso(c.ts - 50),
    result: 'issued',
    kind: 'issue',
    jti: c.jti,
    sponsor_id: c.sponsor,
    agent_instance_id: c.instance,
    parent_agent_id: c.parent,
    tool_id: c.tool,
    role: 'support',
    ttl_seconds: 300,
    expires_at: iso(c.ts - 50 + 300_000),
    trace_id: c.trace,
    span_id: hex(8),
    service_name: 'custody',
    ingested_at: iso(c.ingested - 500),
    ...over,
  };
}

export async function insert(store: Store, table: string, rows: Record<string, unknown>[]): Promise<void> {
  if (rows.length) await store.client.insert({ table: `custody.${table}`, values: rows, format: 'JSONEachRow' });
}

/** Writes the call with its decision and token. */
export async function insertCalls(store: Store, calls: Call[]): Promise<void> {
  await insert(store, 'audit_events', calls.map((c) => auditRow(c)));
  await insert(store, 'policy_decisions', calls.map((c) => decisionRow(c)));
  await insert(store, 'token_events', calls.map((c) => tokenRow(c)));
}

export async function command(store: Store, query: string): Promise<void> {
  await store.client.command({ query: `${query} SETTINGS mutations_sync = 2` });
}

/** A checkpointer on the store, keys and journal under `dataDir`, not ticking: tests seal explicit periods. */
export async function checkpointerFor(store: Store, dataDir: string, periodMs = 60_000): Promise<{ cp: Checkpointer; journal: CheckpointJournal }> {
  const keys = await openAuditKeyRing({ dir: path.join(dataDir, 'evidence', 'keys') });
  const journal = new CheckpointJournal(path.join(dataDir, 'checkpoints'));
  journal.init();
  for (const k of keys.jwks().keys) journal.publishKey(k);
  const cp = new Checkpointer({ store, keys, journal, periodMs, lagMs: 0 });
  await cp.open({ startupSeal: false });
  return { cp, journal };
}

/** The minute boundary `minutes` before now. */
export function minutesAgo(minutes: number): number {
  return Math.floor(Date.now() / 60_000) * 60_000 - minutes * 60_000;
}
