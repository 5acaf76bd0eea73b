import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, type Listening } from '../../common/http';
import { mcpToolGuard } from '../../identity/guard';
import { auditEventsOf, runAgent } from '../helpers/agents';
import { ROOT, eventually, startCustody, type RunningCustody } from '../helpers/custody';
import { PROPAGATION } from '../../common/names';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';
import { call } from '../helpers/tokens';

/**
 * Enforcement at the tool, with real processes: `custody up`, a billing API (Express) behind
 * custody/guard, agents started with `--require custody/register` calling it over HTTP from
 * their tool calls, and callers without custody (a script, curl). The API takes only a valid,
 * unused token for billing; its span joins the agent's trace; the token never reaches an origin
 * outside CUSTODY_TOOL_ORIGINS.
 */
describe('a billing API behind custody/guard, called by real agents', () => {
  let custody: RunningCustody;
  let api: { proc: ChildProcess; url: string; output: () => string };
  let other: Listening;
  const otherSaw: Array<Record<string, unknown>> = [];

  const agentEnv = (instance: string) => ({
    CUSTODY_SPONSOR_ID: 'alice',
    CUSTODY_ROLE: 'support',
    CUSTODY_AGENT_INSTANCE_ID: instance,
    CUSTODY_TOOL_ORIGINS: new URL(api.url).origin,
    BILLING_URL: api.url,
    OTHER_URL: other.url,
  });
  const spans = async (): Promise<any[]> => (await fetch(`${api.url}/spans`)).json() as Promise<any[]>;
  const refund = (headers: Record<string, string> = {}) =>
    fetch(`${api.url}/refunds`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{"amount":3}' }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
  const issue = async (body: Record<string, unknown>) => {
    const r = await call(`${custody.url}/issue`, { json: { tool: 'billing', sponsor_id: 'alice', role: 'support', ...body } });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body.token as string;
  };

  beforeAll(async () => {
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    // every agent in the canary: its calls wait for their decision and carry their token
    expect((await putRollout(custody.url, { percent: 100, reason: 'guard test' })).status).toBe(200);
    other = await listen(
      (req, res) => {
        otherSaw.push({ path: req.url, ...req.headers });
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(req.headers));
      },
      '127.0.0.1',
      0,
    );
    const env: NodeJS.ProcessEnv = { ...process.env, CUSTODY_URL: custody.url, GUARD_CLOCK_SKEW_S: '0', GUARD_JWKS_COOLDOWN_MS: '0' };
    delete env.NODE_OPTIONS;
    const proc = spawn(process.execPath, [path.join(ROOT, 'test/fixtures/guard/billing-api.cjs')], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (d) => (out += d));
    proc.stderr!.on('data', (d) => (out += d));
    const port = await eventually(async () => (/\{"port":(\d+)\}/.exec(out)?.[1] ?? (proc.exitCode !== null ? Promise.reject(new Error(out)) : undefined)), 30_000);
    api = { proc, url: `http://127.0.0.1:${port}`, output: () => out };
  }, 120_000);
  afterAll(async () => {
    api?.proc.kill('SIGTERM');
    await other?.close();
    await custody?.stop();
  });

  it("accepts the agent's refund with its token; the API's span joins the agent's trace with sponsor, instance and decision", async () => {
    const instance = `assistant-${randomUUID()}`;
    const run = await runAgent('guarded-call.cjs', { custody, env: agentEnv(instance) });
    expect(run.code, run.stderr).toBe(0);
    const { api: answer } = run.report.refund.value;
    expect(answer.status, JSON.stringify(answer.body)).toBe(201);
    expect(answer.body.custody).toMatchObject({ sponsor_id: 'alice', agent_instance_id: instance, parent_agent_id: null, role: 'support', tool: 'billing', action: 'refund' });
    expect(answer.body.baggage).toMatch(/custody\.sponsor_id=alice/);

    // the agent's audited tool call and the API's span are one trace, parent and child
    const [row] = (await auditEventsOf(custody, instance, 2)).filter((e) => e.tool_id === 'billing');
    expect(row).toMatchObject({ decision: 'allow', sponsor_id: 'alice' });
    expect(answer.body.traceparent).toBe(`00-${row!.trace_id}-${row!.span_id}-01`);
    const guardSpan = (await spans()).find((s) => s.attributes['custody.agent_instance_id'] === instance && s.attributes['custody.policy.decision'] === 'allow');
    expect(guardSpan).toMatchObject({ name: 'custody.guard billing', kind: 1, traceId: row!.trace_id, parentSpanId: row!.span_id });
    expect(guardSpan.attributes).toMatchObject({ 'custody.sponsor_id': 'alice', 'custody.tool_id': 'billing', 'custody.action': 'refund', 'custody.purpose': 'ticket:42', 'http.response.status_code': 201 });
  });

  it('never sends the token or the baggage to an origin outside CUSTODY_TOOL_ORIGINS; the trace context goes there too', async () => {
    const instance = `assistant-${randomUUID()}`;
    const run = await runAgent('guarded-call.cjs', { custody, env: agentEnv(instance) });
    expect(run.code, run.stderr).toBe(0);
    const { otherHttp, otherFetch } = run.report.refund.value;
    for (const seen of [otherHttp, otherFetch]) {
      expect(seen.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      expect(seen['x-custody-token']).toBeUndefined();
      expect(seen.baggage).toBeUndefined();
    }
    expect(otherSaw.some((h) => 'x-custody-token' in h || 'baggage' in h)).toBe(false);
  });

  it("refuses, with 403 wrong_tool, a search call's token sent to billing", async () => {
    const run = await runAgent('guarded-call.cjs', { custody, env: agentEnv(`assistant-${randomUUID()}`) });
    expect(run.code, run.stderr).toBe(0);
    const { value } = run.report.wrongTool;
    expect(value.status).toBe(403);
    expect(value.body.error).toMatchObject({ code: 'wrong_tool' });
    expect(value.body.error.message).toMatch(/the token is for 'search', not 'billing'/);
  });

  it('refuses with 401 a caller without custody (a process without custody/register, curl)', async () => {
    const rogue = await runAgent('guarded-call.cjs', { flag: null, custody, env: { ...agentEnv('rogue'), MODE: 'rogue' } });
    expect(rogue.code, rogue.stderr).toBe(0);
    expect(rogue.report.refund.status).toBe(401);
    expect(rogue.report.refund.body.error).toMatchObject({ code: 'token_required' });
    const spansNow = await spans();
    expect(spansNow.some((s) => s.attributes['error.type'] === 'token_required' && s.attributes['custody.policy.decision'] === 'deny')).toBe(true);
  });

  it('takes a valid token from any client once (billing is single use), and refuses it replayed, expired or revoked', async () => {
    const token = await issue({ agent_instance_id: `script-${randomUUID()}` });
    expect((await refund({ 'x-custody-token': token })).status).toBe(201);
    const replayed = await refund({ 'x-custody-token': token });
    expect([replayed.status, replayed.body.error.code]).toEqual([401, 'token_replayed']);

    const short = await issue({ ttl: 1 });
    await new Promise((r) => setTimeout(r, 2100));
    const expired = await refund({ 'x-custody-token': short });
    expect([expired.status, expired.body.error.code]).toEqual([401, 'token_expired']);

    const bobs = await issue({ sponsor_id: 'bob' });
    await new Promise((r) => setTimeout(r, 1100));
    const off = await call(`${custody.url}/v1/sponsors/bob/offboard`, { method: 'POST', json: { reason: 'left the company' }, auth: `Bearer ${ADMIN_TOKEN}` });
    expect(off.status, JSON.stringify(off.body)).toBe(200);
    // the guard reads the revocation feed again within 2 s
    const revoked = await eventually(async () => {
      const r = await refund({ 'x-custody-token': bobs });
      return r.status === 401 ? r : undefined;
    }, 10_000);
    expect(revoked.body.error.code).toBe('token_revoked');
  });

  it('verifies tokens of a key rotated in after it cached the JWKS (an unknown kid refetches the set)', async () => {
    const before = await issue({});
    expect((await refund({ 'x-custody-token': before })).status).toBe(201);
    const rotated = await call(`${custody.url}/v1/tokens/keys/rotate`, { method: 'POST', json: {}, auth: `Bearer ${ADMIN_TOKEN}` });
    expect(rotated.status, JSON.stringify(rotated.body)).toBe(200);
    const instance = `assistant-${randomUUID()}`;
    const run = await runAgent('guarded-call.cjs', { custody, env: agentEnv(instance) });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report.refund.value.api.status, JSON.stringify(run.report.refund.value.api.body)).toBe(201);
    const kid = (t: string) => JSON.parse(Buffer.from(t.split('.')[0]!, 'base64url').toString()).kid;
    expect(kid(await issue({}))).not.toBe(kid(before));
  });

  it('a baseline (shadow) agent, let through before its decision, still brings a token the guard accepts', async () => {
    expect((await putRollout(custody.url, { percent: 0, reason: 'guard test: every agent in the baseline' })).status).toBe(200);
    try {
      const instance = `baseline-${randomUUID()}`;
      const run = await runAgent('guarded-call.cjs', { custody, env: { ...agentEnv(instance), WARM_UP: '1' } });
      expect(run.code, run.stderr).toBe(0);
      expect(run.report.refund.value.api.status, JSON.stringify(run.report.refund.value.api.body)).toBe(201);
      const billing = (await auditEventsOf(custody, instance, 3)).find((e) => e.tool_id === 'billing');
      expect(billing).toMatchObject({ cohort: 'baseline', enforced: false });
    } finally {
      expect((await putRollout(custody.url, { percent: 100, reason: 'guard test' })).status).toBe(200);
    }
  });

  it("MCP over HTTP: a server outside CUSTODY_TOOL_ORIGINS gets the trace context in _meta, never the baggage or the delegation token", async () => {
    const metas: Array<Record<string, unknown>> = [];
    const mcp = await startMcpHttpServer(
      (server) => server.registerTool('web_search', { description: 'search' }, async () => ({ content: [{ type: 'text' as const, text: 'found' }] })),
      (body) => {
        if (body?.method === 'tools/call') metas.push(body.params?._meta ?? {});
      },
    );
    try {
      const env = (origins: string) => ({ ...agentEnv(`assistant-${randomUUID()}`), CUSTODY_TOOL_ORIGINS: origins, MCP_URL: `${mcp.url}/mcp` });
      const third = await runAgent('mcp-http.cjs', { custody, env: env(new URL(api.url).origin) });
      expect(third.code, third.stderr).toBe(0);
      const listed = await runAgent('mcp-http.cjs', { custody, env: env(`${new URL(api.url).origin},${new URL(mcp.url).origin}`) });
      expect(listed.code, listed.stderr).toBe(0);
      expect(metas).toHaveLength(2);
      const [outside, inside] = metas;
      expect(outside![PROPAGATION.TRACEPARENT]).toMatch(/^00-/);
      expect(outside).not.toHaveProperty([PROPAGATION.BAGGAGE]);
      expect(outside).not.toHaveProperty([PROPAGATION.MCP_DELEGATION_TOKEN]);
      expect(outside).not.toHaveProperty([PROPAGATION.MCP_CALL_TOKEN]);
      expect(inside![PROPAGATION.TRACEPARENT]).toMatch(/^00-/);
      expect(inside![PROPAGATION.BAGGAGE]).toMatch(/custody\.sponsor_id=alice/);
      expect(inside![PROPAGATION.MCP_DELEGATION_TOKEN]).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      expect(inside![PROPAGATION.MCP_CALL_TOKEN]).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    } finally {
      await mcp.close();
    }
  });
  it('an MCP server guarded with mcpToolGuard runs the tool for a custody agent it trusts, and refuses a client without custody', async () => {
    const seen: Array<Record<string, unknown> | undefined> = [];
    const guarded = mcpToolGuard({ tool: 'search', url: custody.url });
    const mcp = await startMcpHttpServer((server) =>
      server.registerTool(
        'web_search',
        { description: 'search' },
        guarded(async (extra: any) => {
          seen.push(extra.custody);
          return { content: [{ type: 'text' as const, text: `found for ${extra.custody.sponsor_id}` }] };
        }),
      ),
    );
    try {
      const instance = `assistant-${randomUUID()}`;
      const env = (i: string, origins: string) => ({ ...agentEnv(i), CUSTODY_TOOL_ORIGINS: origins, MCP_URL: `${mcp.url}/mcp` });
      // the server's origin is trusted: the call's token travels in _meta and the tool runs
      const trusted = await runAgent('mcp-http.cjs', { custody, env: env(instance, `${new URL(api.url).origin},${new URL(mcp.url).origin}`) });
      expect(trusted.code, trusted.stderr).toBe(0);
      expect(trusted.report.result).toMatchObject({ content: [{ type: 'text', text: 'found for alice' }] });
      expect(trusted.report.result.isError).toBeUndefined();
      expect(seen).toEqual([expect.objectContaining({ sponsor_id: 'alice', agent_instance_id: instance, tool: 'search' })]);
      // not listed: no token leaves the agent, so the guarded tool refuses it
      const untrusted = await runAgent('mcp-http.cjs', { custody, env: env(`assistant-${randomUUID()}`, new URL(api.url).origin) });
      expect(untrusted.code, untrusted.stderr).toBe(0);
      expect(untrusted.report.result).toMatchObject({ isError: true, content: [{ type: 'text', text: expect.stringMatching(/token_required/) }] });
      // a client without custody at all, and one that sends a token for another tool
      const rogue = new Client({ name: 'rogue', version: '1.0.0' });
      await rogue.connect(new StreamableHTTPClientTransport(new URL(`${mcp.url}/mcp`)));
      const bare = (await rogue.callTool({ name: 'web_search', arguments: {} })) as any;
      expect(bare).toMatchObject({ isError: true, content: [{ text: expect.stringMatching(/token_required/) }] });
      const billingToken = await issue({});
      const wrong = (await rogue.callTool({ name: 'web_search', arguments: {}, _meta: { [PROPAGATION.MCP_CALL_TOKEN]: billingToken } })) as any;
      expect(wrong).toMatchObject({ isError: true, content: [{ text: expect.stringMatching(/wrong_tool/) }] });
      await rogue.close();
      expect(seen).toHaveLength(1);
    } finally {
      await mcp.close();
    }
  });
});

/** An MCP server over streamable HTTP on 127.0.0.1 (a new server per request, stateless): `setup` registers its tools. */
async function startMcpHttpServer(setup: (server: McpServer) => unknown, onBody?: (body: any) => void): Promise<Listening> {
  const app = express();
  app.use(express.json());
  app.post('/mcp', async (req, res) => {
    onBody?.(req.body);
    const server = new McpServer({ name: 'test-tools', version: '1.0.0' });
    setup(server);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => void transport.close().then(() => server.close()));
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
  return listen(app, '127.0.0.1', 0);
}
