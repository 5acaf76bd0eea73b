import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent, AuditTrail } from '../../collector/audit/queries';
import { PROPAGATION } from '../../common/names';
import { auditEventsOf, runAgent, type AgentRun } from '../helpers/agents';
import { CLI, ROOT, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';

/**
 * The chain of custody across processes: sponsor alice → root agent (process A) → in-process
 * sub-agent → MCP tool server (process S, started by the MCP SDK over stdio) acting for that
 * sub-agent; and a plain child_process sub-agent of the root. Nothing in the agents' code names
 * custody's identity: it travels in the environment, in MCP `_meta` and in delegated tokens.
 */
describe('a chain of agents across processes and an MCP hop', () => {
  let custody: RunningCustody;
  let run: AgentRun;
  let mcpLog: Array<Record<string, any>>;
  const root = `root-${randomUUID()}`;
  let sub: string;
  let server: string;
  let child: string;
  const rows: Record<string, AuditEvent[]> = {};

  beforeAll(async () => {
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    expect((await putRollout(custody.url, { percent: 100, reason: 'instrumentation test' })).status).toBe(200);
    const log = path.join(tempDir('custody-mcp-'), 'mcp.log');
    run = await runAgent('chain.cjs', { custody, env: { MCP_LOG: log, CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: root } });
    expect(run.code, run.stderr).toBe(0);
    mcpLog = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    sub = run.report.sub.agent.agentInstanceId;
    server = run.report.sub.allowed.value.seen.agent.agentInstanceId;
    child = run.report.child.agent.agentInstanceId;
    rows.root = await auditEventsOf(custody, root, 1);
    rows.sub = await auditEventsOf(custody, sub, 2);
    rows.server = await auditEventsOf(custody, server, 1);
    rows.child = await auditEventsOf(custody, child, 2);
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('gives each hop its own instance whose parent is the one that started it, all sponsored by alice', () => {
    const r = run.report;
    expect(r.root).toEqual({ agentInstanceId: root, sponsorId: 'alice', role: 'support' });
    expect(r.sub.agent).toMatchObject({ parentAgentId: root, sponsorId: 'alice', agentName: 'researcher' });
    expect(r.sub.allowed.value.seen.agent).toMatchObject({ parentAgentId: sub, sponsorId: 'alice', role: 'support' });
    expect(r.child.agent).toMatchObject({ parentAgentId: root, sponsorId: 'alice', role: 'support' });
    expect(new Set([root, sub, server, child]).size).toBe(4);
  });

  it('a plain child process inherits custody/register, its parent, sponsor and a delegation token — not the parent’s instance id', () => {
    const c = run.report.child;
    expect(c.instrumented).toBe(true);
    expect(c.inherited).toMatchObject({ delegationToken: true, ownInstanceFromEnv: null });
    expect(decodeURIComponent(c.inherited.baggage)).toContain(`custody.agent_instance_id=${root}`);
    expect(c.allowed).toBe('child found from child');
    expect(c.denied).toBe('ERR_POLICY_DENIED');
    expect(c.ran).toEqual(['search']);
  });

  it('the MCP server never sees a denied call; the allowed one carries the trace, the baggage and the delegation token in _meta', () => {
    const calls = mcpLog.filter((e) => e.received === 'tools/call');
    expect(calls).toEqual([{ received: 'tools/call', tool: 'search.query', meta: expect.arrayContaining([PROPAGATION.TRACEPARENT, PROPAGATION.BAGGAGE, PROPAGATION.MCP_DELEGATION_TOKEN]) }]);
    expect(mcpLog.some((e) => e.handled === 'file-store.delete')).toBe(false);
    expect(run.report.sub.denied).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED' });
  });

  it('the sponsor arrives at the MCP server in baggage, and the server’s spans join the caller’s trace', () => {
    const seen = run.report.sub.allowed.value.seen;
    expect(seen.sponsor).toBe('alice');
    expect(seen.caller).toBe(sub);
    const mcpCall = rows.sub!.find((e) => e.tool_id === 'search' && e.action === 'query')!;
    expect(seen.traceId).toBe(mcpCall.trace_id);
    expect(rows.server![0]!.trace_id).toBe(mcpCall.trace_id);
    // the server process itself was started inside the sub-agent's span
    expect(seen.envTraceparent).toMatch(new RegExp(`^00-${run.report.sub.spanTraceId}-[0-9a-f]{16}-01$`));
  });

  it('stores every hop’s calls with its own instance, parent and sponsor', () => {
    expect(rows.root!.map((e) => [e.tool_id, e.action, e.decision, e.parent_agent_id])).toEqual([['search', 'query', 'allow', '']]);
    expect(rows.sub!.map((e) => [e.tool_id, e.action, e.decision, e.parent_agent_id])).toEqual([
      ['search', 'query', 'allow', root],
      ['file-store', 'delete', 'deny', root],
    ]);
    expect(rows.server!.map((e) => [e.tool_id, e.action, e.decision, e.parent_agent_id])).toEqual([['search', 'lookup', 'allow', sub]]);
    expect(rows.child!.map((e) => [e.tool_id, e.action, e.decision, e.parent_agent_id])).toEqual([
      ['search', 'query', 'allow', root],
      ['file-store', 'read', 'deny', root],
    ]);
    for (const e of Object.values(rows).flat()) {
      expect(e.sponsor_id).toBe('alice');
      expect(e.policy_decision_id).not.toBe('');
    }
    expect(rows.sub!.every((e) => e.purpose === 'research')).toBe(true);
  });

  it('`custody audit trail` reconstructs sponsor → agent → sub-agent → sub-sub-agent', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'audit', 'trail', root, '--json', '--url', custody.url], { cwd: ROOT });
    const trail = JSON.parse(stdout) as AuditTrail;
    expect(trail.sponsor_id).toBe('alice');
    expect(trail.agent.agent_instance_id).toBe(root);
    const kids = Object.fromEntries(trail.agent.children.map((c) => [c.agent_instance_id, c]));
    expect(Object.keys(kids).sort()).toEqual([child, sub].sort());
    expect(kids[sub]!.children.map((c) => c.agent_instance_id)).toEqual([server]);
    expect(kids[sub]!.children[0]!).toMatchObject({ parent_agent_id: sub, sponsor_id: 'alice' });
    expect(kids[sub]!.children[0]!.calls.map((c) => `${c.tool_id}.${c.action}:${c.decision}`)).toEqual(['search.lookup:allow']);

    // and from the bottom: the server instance's ancestors are the sub-agent and the root
    const up = JSON.parse((await promisify(execFile)(process.execPath, [CLI, 'audit', 'trail', server, '--json', '--url', custody.url], { cwd: ROOT })).stdout) as AuditTrail;
    expect(up.ancestors.map((a) => a.agent_instance_id)).toEqual([root, sub]);
    expect(up.sponsor_id).toBe('alice');
  });
});
