import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import { AuditQueryError, auditEvents, auditTrail, decodeCursor, isoFromNanos, parseInstant, type AgentNode } from '../../../collector/audit/queries';
import { tempDir } from '../../helpers/custody';

const dir = tempDir('custody-audit-');
let store: Store;
const T0 = Date.now() - 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();
const hex = (n: number) => randomBytes(n).toString('hex');

interface Call {
  at: number;
  agent: string;
  parent?: string;
  sponsor?: string;
  tool?: string;
  action?: string;
  purpose?: string;
  decision?: string;
  pd?: string;
  rule?: string;
  status?: string;
  span?: string;
  trace?: string;
}

function row(c: Call) {
  return {
    timestamp: iso(c.at),
    end_timestamp: iso(c.at + 4),
    trace_id: c.trace ?? hex(16),
    span_id: c.span ?? hex(8),
    sponsor_id: c.sponsor ?? 'alice',
    agent_instance_id: c.agent,
    parent_agent_id: c.parent ?? '',
    role: 'support',
    tool_id: c.tool ?? 'billing',
    action: c.action ?? 'charge',
    purpose: c.purpose ?? 'ticket-1',
    decision: c.decision ?? 'allow',
    policy_decision_id: c.pd ?? `pd-${hex(4)}`,
    rule_id: c.rule ?? 'allow-support-billing',
    policy_latency_ms: 12,
    enforced: true,
    cohort: 'canary',
    status: c.status ?? 'ok',
    duration_ns: 4_000_000,
  };
}

async function insert(calls: Call[]): Promise<void> {
  await store.client.insert({ table: 'custody.audit_events', values: calls.map(row), format: 'JSONEachRow' });
}

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
  // root-0 never called a tool: it only holds a token; orch-1 is its sub-agent
  await store.client.insert({
    table: 'custody.token_events',
    values: [
      { timestamp: iso(T0), result: 'issued', kind: 'issue', jti: 'j0', sponsor_id: 'alice', agent_instance_id: 'root-0', role: 'admin' },
      { timestamp: iso(T0 + 10), result: 'issued', kind: 'exchange', jti: 'j1', sponsor_id: 'alice', agent_instance_id: 'orch-1', parent_agent_id: 'root-0' },
    ],
    format: 'JSONEachRow',
  });
  await insert([
    { at: T0 + 1000, agent: 'orch-1', parent: 'root-0', tool: 'crm', action: 'read', pd: 'pd-o1', rule: 'allow-crm' },
    { at: T0 + 2000, agent: 'orch-1', parent: 'root-0', tool: 'billing', action: 'charge', pd: 'pd-o2' },
    { at: T0 + 3000, agent: 'orch-1', parent: 'root-0', tool: 'billing', action: 'refund', pd: 'pd-o3', purpose: 'ticket-9' },
    { at: T0 + 4000, agent: 'sub-1', parent: 'orch-1', tool: 'billing', action: 'charge', pd: 'pd-s1' },
    { at: T0 + 5000, agent: 'sub-1', parent: 'orch-1', tool: 'billing', action: 'delete', decision: 'deny', pd: 'pd-s2', rule: 'default-deny', status: 'error' },
    // the grandchild's own rows carry no sponsor: its trail inherits the chain's
    { at: T0 + 6000, agent: 'sub-1a', parent: 'sub-1', sponsor: '', tool: 'email', action: 'send', decision: 'error', pd: 'pd-g1', rule: '', status: 'error' },
    { at: T0 + 7000, agent: 'sub-2', parent: 'orch-1', tool: 'crm', action: 'read', pd: 'pd-s3' },
    { at: T0 + 8000, agent: 'other-1', sponsor: 'bob', tool: 'crm', action: 'read', pd: 'pd-x1' },
  ]);
  // sub-3 asked the plane but has no finished call yet
  await store.client.insert({
    table: 'custody.policy_decisions',
    values: [{ timestamp: iso(T0 + 9000), policy_decision_id: 'pd-s4', decision: 'allow', sponsor_id: 'alice', agent_instance_id: 'sub-3', parent_agent_id: 'orch-1', tool_id: 'crm' }],
    format: 'JSONEachRow',
  });
});
afterAll(async () => {
  await store?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const ids = (nodes: AgentNode[]) => nodes.map((n) => n.agent_instance_id);

describe('audit trail', () => {
  it('gives the sponsor, the ancestors, the sub-agents and every call with its decision', async () => {
    const trail = (await auditTrail(store, 'orch-1'))!;
    expect(trail.sponsor_id).toBe('alice');
    expect(trail.truncated).toBe(false);
    expect(trail.ancestors.map((a) => [a.agent_instance_id, a.sponsor_id, a.role, a.call_count])).toEqual([['root-0', 'alice', 'admin', 0]]);
    const orch = trail.agent;
    expect(orch).toMatchObject({ agent_instance_id: 'orch-1', parent_agent_id: 'root-0', sponsor_id: 'alice', call_count: 3 });
    expect(orch.calls.map((c) => [c.tool_id, c.action, c.purpose, c.decision, c.policy_decision_id, c.rule_id, c.status])).toEqual([
      ['crm', 'read', 'ticket-1', 'allow', 'pd-o1', 'allow-crm', 'ok'],
      ['billing', 'charge', 'ticket-1', 'allow', 'pd-o2', 'allow-support-billing', 'ok'],
      ['billing', 'refund', 'ticket-9', 'allow', 'pd-o3', 'allow-support-billing', 'ok'],
    ]);
    expect(orch.calls[0]!.timestamp).toBe(`${iso(T0 + 1000).slice(0, 23)}000000Z`);
    expect(ids(orch.children)).toEqual(['sub-1', 'sub-2', 'sub-3']);
    const sub1 = orch.children[0]!;
    expect(sub1.calls.map((c) => [c.action, c.decision, c.policy_decision_id])).toEqual([
      ['charge', 'allow', 'pd-s1'],
      ['delete', 'deny', 'pd-s2'],
    ]);
    expect(ids(sub1.children)).toEqual(['sub-1a']);
    expect(sub1.children[0]!.calls.map((c) => [c.tool_id, c.decision, c.policy_decision_id])).toEqual([['email', 'error', 'pd-g1']]);
    // known only from the decision log
    expect(orch.children[2]).toMatchObject({ agent_instance_id: 'sub-3', parent_agent_id: 'orch-1', call_count: 0, calls: [] });
  });

  it('walks three levels up from the grandchild and inherits the sponsor', async () => {
    const trail = (await auditTrail(store, 'sub-1a'))!;
    expect(trail.ancestors.map((a) => a.agent_instance_id)).toEqual(['root-0', 'orch-1', 'sub-1']);
    expect(trail.agent.sponsor_id).toBeNull();
    expect(trail.sponsor_id).toBe('alice');
    expect(trail.agent.children).toEqual([]);
  });

  it('bounds the depth and says so', async () => {
    const trail = (await auditTrail(store, 'orch-1', { depth: 1 }))!;
    expect(ids(trail.agent.children)).toEqual(['sub-1', 'sub-2', 'sub-3']);
    expect(trail.agent.children[0]!.children).toEqual([]);
    expect(trail.truncated).toBe(true);
  });

  it('keeps the most recent calls per agent when asked for fewer', async () => {
    const trail = (await auditTrail(store, 'orch-1', { callsPerAgent: 2 }))!;
    expect(trail.agent.calls.map((c) => c.policy_decision_id)).toEqual(['pd-o2', 'pd-o3']);
    expect(trail.agent.calls_truncated).toBe(true);
  });

  it('returns null for an instance nothing names', async () => {
    expect(await auditTrail(store, 'nobody')).toBeNull();
  });
});

describe('audit events', () => {
  it('filters by sponsor, agent, tool, decision and time', async () => {
    const pds = async (f: Parameters<typeof auditEvents>[1]) => (await auditEvents(store, f)).events.map((e) => e.policy_decision_id);
    expect(await pds({ sponsor: 'bob' })).toEqual(['pd-x1']);
    expect(await pds({ agentInstanceId: 'sub-1' })).toEqual(['pd-s2', 'pd-s1']);
    expect(await pds({ tool: 'crm', sponsor: 'alice' })).toEqual(['pd-s3', 'pd-o1']);
    expect(await pds({ decision: 'deny' })).toEqual(['pd-s2']);
    expect(await pds({ decision: 'error' })).toEqual(['pd-g1']);
    expect(await pds({ from: T0 + 2000, to: T0 + 4000 })).toEqual(['pd-o3', 'pd-o2']);
    expect(await pds({ from: T0 + 2000, to: T0 + 4000, agentInstanceId: 'orch-1', tool: 'billing', decision: 'allow' })).toEqual(['pd-o3', 'pd-o2']);
    expect(await pds({ sponsor: 'nobody' })).toEqual([]);
  });

  it('pages with a stable keyset cursor, ties broken by span id, duplicates listed once', async () => {
    const base = T0 + 100_000;
    const calls: Call[] = Array.from({ length: 25 }, (_, i) => ({
      at: base + Math.floor(i / 3) * 1000, // three calls share each millisecond
      agent: 'pager',
      pd: `pg-${String(i).padStart(2, '0')}`,
      span: hex(8),
      trace: hex(16),
    }));
    await insert(calls);
    await insert([calls[10]!]); // the same span exported twice
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await auditEvents(store, { agentInstanceId: 'pager', limit: 7, ...(cursor ? { cursor } : {}) });
      seen.push(...page.events.map((e) => e.policy_decision_id));
      cursor = page.next_cursor ?? undefined;
      if (pages === 0) {
        // calls arriving while paging are newer than the cursor: later pages are unaffected
        await insert([{ at: base + 60_000, agent: 'pager', pd: 'late' }]);
      }
      pages += 1;
    } while (cursor);
    expect(pages).toBe(4);
    expect(seen).toHaveLength(25);
    expect(new Set(seen).size).toBe(25);
    // newest first: descending by time, then span id
    const expected = [...calls].sort((a, b) => b.at - a.at || (b.span! < a.span! ? -1 : 1)).map((c) => c.pd);
    expect(seen).toEqual(expected);
    expect((await auditEvents(store, { agentInstanceId: 'pager', limit: 1 })).events[0]!.policy_decision_id).toBe('late');
  });

  it('finds older calls past the look-back steps (an hour, a day, a week, all) in order', async () => {
    const now = Date.now();
    const ages = [5 * 60_000, 2 * 3_600_000, 3 * 86_400_000, 20 * 86_400_000, 60 * 86_400_000];
    await insert(ages.map((age, i) => ({ at: now - age, agent: 'sparse', pd: `age-${i}` })));
    const first = await auditEvents(store, { agentInstanceId: 'sparse', limit: 2 });
    expect(first.events.map((e) => e.policy_decision_id)).toEqual(['age-0', 'age-1']);
    const second = await auditEvents(store, { agentInstanceId: 'sparse', limit: 2, cursor: first.next_cursor! });
    expect(second.events.map((e) => e.policy_decision_id)).toEqual(['age-2', 'age-3']);
    const third = await auditEvents(store, { agentInstanceId: 'sparse', limit: 2, cursor: second.next_cursor! });
    expect(third.events.map((e) => e.policy_decision_id)).toEqual(['age-4']);
    expect(third.next_cursor).toBeNull();
    const bounded = await auditEvents(store, { agentInstanceId: 'sparse', from: now - 30 * 86_400_000, to: now - 3_600_000 });
    expect(bounded.events.map((e) => e.policy_decision_id)).toEqual(['age-1', 'age-2', 'age-3']);
  });

  it('names the bad parameter', async () => {
    const param = async (f: Parameters<typeof auditEvents>[1]) => {
      try {
        await auditEvents(store, f);
      } catch (err) {
        expect(err).toBeInstanceOf(AuditQueryError);
        return (err as AuditQueryError).parameter;
      }
      return 'no error';
    };
    expect(await param({ limit: 0 })).toBe('limit');
    expect(await param({ limit: 1001 })).toBe('limit');
    expect(await param({ from: 5, to: 5 })).toBe('to');
    expect(await param({ cursor: 'garbage' })).toBe('cursor');
    expect(() => decodeCursor(Buffer.from('["x","a","b"]').toString('base64url'))).toThrow(AuditQueryError);
    expect(() => parseInstant('yesterday', 'from')).toThrow(/from 'yesterday'/);
    expect(parseInstant('2030-01-02T03:04:05.006Z', 'from')).toBe(Date.UTC(2030, 0, 2, 3, 4, 5, 6));
    expect(parseInstant('1700000000000', 'to')).toBe(1_700_000_000_000);
  });

  it('renders nanosecond timestamps', () => {
    expect(isoFromNanos('1700000000123456789')).toBe('2023-11-14T22:13:20.123456789Z');
  });
});
