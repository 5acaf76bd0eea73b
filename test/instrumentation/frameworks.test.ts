import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../collector/audit/queries';
import { hashValue } from '../../common/canonical';
import { isDecisionId } from '../../enforcer/policy/ids';
import { auditEventsOf, runAgent, type AgentRun } from '../helpers/agents';
import { startCustody, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';

/**
 * Real agent processes (`node --require custody/register`, `node --import custody/register`)
 * drive the tool layer of LangChain, the AI SDK, the OpenAI Agents SDK and the manual API
 * against a real `custody up`; the audit rows come back through the collector's HTTP API.
 */
describe.each([
  ['--require', 'frameworks.cjs'],
  ['--import', 'frameworks.mjs'],
] as const)('an agent started with %s custody/register', (flag, script) => {
  let custody: RunningCustody;
  let run: AgentRun;
  let events: AuditEvent[];
  const instance = `agent-${randomUUID()}`;
  const byTool = (tool: string, action: string) => events.filter((e) => e.tool_id === tool && e.action === action);

  beforeAll(async () => {
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    // every instance in the canary cohort: decisions are enforced
    expect((await putRollout(custody.url, { percent: 100, reason: 'instrumentation test' })).status).toBe(200);
    run = await runAgent(script, {
      flag,
      custody,
      env: { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: instance, CUSTODY_AGENT_NAME: 'support-bot' },
    });
    expect(run.code, run.stderr).toBe(0);
    // manual 2, langchain 3, ai sdk 3 (2 generate + 1 stream), openai agents 2, mcp 2
    events = await auditEventsOf(custody, instance, 12);
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('runs the allowed bodies and never a denied one', () => {
    expect(run.report.agent).toEqual({ agentInstanceId: instance, sponsorId: 'alice', role: 'support', agentName: 'support-bot' });
    expect([...run.report.ran].sort()).toEqual(
      ['agents:billing.charge', 'ai:web_search', 'ai:web_search', 'langchain:refund_customer', 'langchain:search.query', 'manual:billing.refund', 'mcp:search.query'].sort(),
    );
  });

  it('surfaces each refusal the way its framework surfaces tool errors', () => {
    const r = run.report.results;
    expect(r.manual.allowed).toEqual({ ok: true, value: { refunded: 10 } });
    expect(r.manual.denied).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED', name: 'PolicyDeniedError' });
    expect(r.langchain.allowed).toEqual({ ok: true, value: 'results for custody' });
    expect(r.langchain.mapped).toEqual({ ok: true, value: 'refunded 5 to c-9' });
    expect(r.langchain.denied).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED' });
    expect(r.langchain.callbackErrors).toEqual(['ERR_POLICY_DENIED']);
    expect(r.aiSdk.parts).toEqual([
      { type: 'tool-result', toolName: 'web_search', toolCallId: 'ai-call-1', output: 'found refund policy' },
      { type: 'tool-error', toolName: 'file-store.write', toolCallId: 'ai-call-2', error: { code: 'ERR_POLICY_DENIED' } },
    ]);
    expect(r.aiSdk.streamParts).toEqual([{ type: 'tool-result', toolName: 'web_search', output: 'found streamed' }]);
    expect(r.openaiAgents.allowed).toEqual({ ok: true, value: 'charged 7' });
    expect(r.openaiAgents.denied).toEqual({ ok: true, value: expect.stringMatching(/error occurred while running the tool/i) });
    // MCP: the refusal is thrown before any request leaves; the server saw only the allowed call,
    // and read the sponsor from the baggage in _meta
    expect(r.mcp.allowed).toEqual({ ok: true, value: 'docs for alice' });
    expect(r.mcp.denied).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED' });
    expect(r.mcp.received).toEqual(['search.query']);
    // tools/list left out the tool the support role may never call; calling it anyway was still refused
    expect(r.mcp.listed).toEqual(['search.query']);
  });

  it('stores one audit row per call with the sponsor, instance, role and a plane decision id', () => {
    expect(events).toHaveLength(12);
    for (const e of events) {
      expect(e).toMatchObject({ sponsor_id: 'alice', agent_instance_id: instance, parent_agent_id: '', role: 'support', enforced: true, cohort: 'canary' });
      expect(isDecisionId(e.policy_decision_id), JSON.stringify(e)).toBe(true);
      expect(e.request_hash).toMatch(/^[0-9a-f]{64}$/);
    }
    expect(events.map((e) => e.audit_seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  });

  it('records allowed calls as allow/ok with a response hash, denied ones as deny/error without', () => {
    const allowed = [['billing', 'refund'], ['search', 'query'], ['search', 'call'], ['billing', 'charge']] as const;
    for (const [tool, action] of allowed) {
      for (const e of byTool(tool, action)) expect(e, `${tool}.${action}`).toMatchObject({ decision: 'allow', status: 'ok', error_type: '' });
    }
    expect(byTool('billing', 'refund')).toHaveLength(2); // manual + LangChain's refund_customer through the plane's tool_map
    expect(byTool('search', 'call')).toHaveLength(2); // AI SDK web_search: generateText and streamText
    const denied = [['file-store', 'delete'], ['file-store', 'delete'], ['file-store', 'write'], ['billing', 'read']] as const;
    for (const [tool, action] of new Set(denied)) {
      for (const e of byTool(tool, action)) {
        expect(e, `${tool}.${action}`).toMatchObject({ decision: 'deny', status: 'error', error_type: 'policy_denied', response_hash: '' });
        expect(e.rule_id).toBe('default-deny');
      }
    }
    expect(byTool('file-store', 'delete')).toHaveLength(3); // manual, LangChain, MCP
    expect(byTool('search', 'query')).toHaveLength(2); // LangChain, MCP
  });

  it('hashes the canonical JSON of the arguments and the result', () => {
    const manual = events.find((e) => e.tool_id === 'billing' && e.action === 'refund' && e.request_hash === hashValue({ currency: 'EUR', amount: 10 }));
    expect(manual?.response_hash).toBe(hashValue({ refunded: 10 }));
    const charge = byTool('billing', 'charge')[0]!;
    expect(charge.request_hash).toBe(hashValue({ amount: 7 }));
    expect(charge.response_hash).toBe(hashValue('charged 7'));
  });
});
