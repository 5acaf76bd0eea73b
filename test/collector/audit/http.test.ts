import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, seedStore, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';

/**
 * GET /v1/audit/trail, GET /v1/audit/events and `custody audit trail` against a real `custody up`
 * child whose store holds a crafted three-level chain (seeded by another child beforehand).
 */

const dataDir = tempDir('custody-audit-http-');
let custody: RunningCustody;
// an hour ago: well inside the 90-day retention
const T0 = Date.now() - 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();


let n = 0;
function call(at: number, agent: string, parent: string, over: Record<string, unknown> = {}) {
  n += 1;
  return {
    timestamp: iso(at),
    trace_id: `trace-${String(n).padStart(4, '0')}`,
    span_id: `span-${String(n).padStart(4, '0')}`,
    sponsor_id: 'alice',
    agent_instance_id: agent,
    parent_agent_id: parent,
    role: 'support',
    tool_id: 'billing',
    action: 'charge',
    purpose: 'ticket-42',
    decision: 'allow',
    policy_decision_id: `pd-${n}`,
    rule_id: 'allow-support-billing',
    cohort: 'canary',
    status: 'ok',
    ...over,
  };
}

const cli = (args: string[]) => runCli(args);

const get = async (url: string) => {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as any };
};

beforeAll(async () => {
  seedStore(dataDir, {
    audit_events: [
      call(T0 + 1000, 'planner-1', '', { tool_id: 'crm', action: 'read', rule_id: 'allow-crm' }),
      call(T0 + 2000, 'worker-1', 'planner-1'),
      call(T0 + 3000, 'worker-1', 'planner-1', { action: 'refund', decision: 'deny', rule_id: 'deny-refunds', status: 'error', error_type: 'policy_denied' }),
      call(T0 + 4000, 'helper-1', 'worker-1', { tool_id: 'email', action: 'send', purpose: 'notify' }),
      call(T0 + 5000, 'helper-1', 'worker-1', { tool_id: 'email', action: 'send', decision: 'error', policy_decision_id: '', rule_id: '', status: 'error', error_type: 'policy_unavailable' }),
      ...Array.from({ length: 12 }, (_, i) => call(T0 + 10_000 + i, 'batch-1', '', { sponsor_id: 'bob', tool_id: 'crm', action: 'read' })),
    ],
  });
  custody = await startCustody({ dataDir });
});

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('GET /v1/audit/trail/:agent_instance_id', () => {
  it('returns the sponsor, the ancestors, the sub-agents and the calls', async () => {
    const { status, body } = await get(`${custody.url}/v1/audit/trail/worker-1`);
    expect(status).toBe(200);
    expect(body.sponsor_id).toBe('alice');
    expect(body.ancestors.map((a: { agent_instance_id: string }) => a.agent_instance_id)).toEqual(['planner-1']);
    expect(body.agent.agent_instance_id).toBe('worker-1');
    expect(body.agent.calls.map((c: any) => [c.tool_id, c.action, c.purpose, c.decision, c.policy_decision_id, c.rule_id, c.status])).toEqual([
      ['billing', 'charge', 'ticket-42', 'allow', 'pd-2', 'allow-support-billing', 'ok'],
      ['billing', 'refund', 'ticket-42', 'deny', 'pd-3', 'deny-refunds', 'error'],
    ]);
    expect(body.agent.calls[0].timestamp).toBe(iso(T0 + 2000).replace('Z', '000000Z'));
    expect(body.agent.children.map((c: any) => [c.agent_instance_id, c.calls.length])).toEqual([['helper-1', 2]]);
  });

  it('answers 404 for an unknown instance and 400 for bad parameters', async () => {
    const missing = await get(`${custody.url}/v1/audit/trail/nobody`);
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe('not_found');
    for (const [query, name] of [
      ['depth=0', 'depth'],
      ['depth=x', 'depth'],
      ['calls=100000', 'calls'],
      ['limit=5', 'limit'],
      ['depth=99999999999999999999', 'depth'],
      ['calls=1.5', 'calls'],
    ] as const) {
      const { status, body } = await get(`${custody.url}/v1/audit/trail/worker-1?${query}`);
      expect(status, query).toBe(400);
      expect(body.error.message).toContain(`'${name}'`);
    }
  });
});

describe('GET /v1/audit/events', () => {
  it('filters and pages', async () => {
    const ids = async (q: string) => (await get(`${custody.url}/v1/audit/events?${q}`)).body.events.map((e: any) => e.policy_decision_id);
    expect(await ids('sponsor=alice&decision=deny')).toEqual(['pd-3']);
    expect(await ids('agent_instance_id=helper-1')).toEqual(['', 'pd-4']);
    expect(await ids(`tool=email&decision=error`)).toEqual(['']);
    expect(await ids(`from=${T0 + 2000}&to=${iso(T0 + 4000)}`)).toEqual(['pd-3', 'pd-2']);
    const pages: string[][] = [];
    let cursor: string | null = null;
    do {
      const page: { body: { events: { policy_decision_id: string }[]; next_cursor: string | null } } = await get(
        `${custody.url}/v1/audit/events?sponsor=bob&limit=5${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
      );
      pages.push(page.body.events.map((e) => e.policy_decision_id));
      cursor = page.body.next_cursor;
    } while (cursor);
    expect(pages.map((p) => p.length)).toEqual([5, 5, 2]);
    expect(pages.flat()).toEqual(Array.from({ length: 12 }, (_, i) => `pd-${17 - i}`));
  });

  it('answers 400 naming each bad parameter', async () => {
    for (const [query, name] of [
      ['decision=maybe', 'decision'],
      ['from=yesterday', 'from'],
      ['to=2030-13-45', 'to'],
      [`from=${T0}&to=${T0}`, 'to'],
      ['limit=0', 'limit'],
      ['limit=5000', 'limit'],
      ['cursor=abc', 'cursor'],
      ['sponsor_id=alice', 'sponsor_id'],
      ['tool=a&tool=b', 'tool'],
      // past what the store holds: a 400, not a storage error
      ['from=9999999999999999', 'from'],
      ['to=9999-12-31', 'to'],
      ['from=0000-01-01', 'from'],
      [`cursor=${Buffer.from(JSON.stringify(['9999999999999999999', 'span-0001', 'trace-0001'])).toString('base64url')}`, 'cursor'],
      [`cursor=${Buffer.from(JSON.stringify([1, 'span-0001', 'trace-0001'])).toString('base64url')}`, 'cursor'],
      [`sponsor=${'x'.repeat(300)}`, 'sponsor'],
      ['tool=a%00b', 'tool'],
      ['agent_instance_id=a%1B%5B2Jb', 'agent_instance_id'],
      ['limit=1e2', 'limit'],
      ['limit=-1', 'limit'],
    ] as const) {
      const { status, body } = await get(`${custody.url}/v1/audit/events?${query}`);
      expect(status, query).toBe(400);
      expect(body.error.code).toBe('invalid_parameter');
      expect(body.error.message, query).toContain(`'${name}'`);
    }
  });
});

describe('GET /v1/audit/health', () => {
  it('answers for a window and 400 naming each bad parameter', async () => {
    const ok = await get(`${custody.url}/v1/audit/health?window=2h`);
    expect(ok.status).toBe(200);
    for (const [query, name] of [
      ['window=soon', 'window'],
      ['window=0s', 'window'],
      ['window=-1h', 'window'],
      ['window=99999999999999999999d', 'window'],
      ['window=1h&window=2h', 'window'],
      ['windows=1h', 'windows'],
    ] as const) {
      const { status, body } = await get(`${custody.url}/v1/audit/health?${query}`);
      expect(status, query).toBe(400);
      expect(body.error.code).toBe('invalid_parameter');
      expect(body.error.message, query).toContain(`'${name}'`);
    }
  });
});

describe('custody audit trail', () => {
  it('prints the indented tree: sponsor, ancestors, the instance, its calls and sub-agents', async () => {
    const r = await cli(['audit', 'trail', 'worker-1', '--url', custody.url]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('sponsor alice');
    expect(lines[1]).toBe('└─ planner-1  (role support, sponsor alice, 1 call)');
    expect(lines[2]).toBe('   └─ worker-1  (role support, sponsor alice, 2 calls)  ◀ this instance');
    expect(lines[3]).toMatch(/^ {6}├─ \S+Z {2}billing\.charge {2}purpose=ticket-42 {2}allow {2}decision_id=pd-2 {2}rule=allow-support-billing {2}status=ok$/);
    expect(lines[4]).toMatch(/^ {6}├─ \S+Z {2}billing\.refund .* deny {2}decision_id=pd-3 {2}rule=deny-refunds {2}status=error \(policy_denied\)$/);
    expect(lines[5]).toBe('      └─ helper-1  (role support, sponsor alice, 2 calls)');
    expect(lines[6]).toMatch(/^ {9}├─ \S+ {2}email\.send {2}purpose=notify {2}allow {2}decision_id=pd-4/);
    expect(lines[7]).toMatch(/^ {9}└─ \S+ {2}email\.send {2}purpose=ticket-42 {2}error {2}status=error \(policy_unavailable\)$/);
    expect(lines).toHaveLength(8);
  }, 120_000);

  it('prints JSON with --json, exits 1 for an unknown instance and 2 on a usage error', async () => {
    const json = await cli(['audit', 'trail', 'helper-1', '--json', '--url', custody.url]);
    expect(json.code).toBe(0);
    const body = JSON.parse(json.stdout);
    expect(body.ancestors.map((a: any) => a.agent_instance_id)).toEqual(['planner-1', 'worker-1']);
    expect(body.agent.calls).toHaveLength(2);
    const unknown = await cli(['audit', 'trail', 'nobody', '--url', custody.url]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no agent instance 'nobody'/);
    const usage = await cli(['audit', 'trail', 'worker-1', '--depth', '0', '--url', custody.url]);
    expect(usage.code).toBe(2);
    const missingArg = await cli(['audit', 'trail', '--url', custody.url]);
    expect(missingArg.code).toBe(2);
  }, 180_000);
});
