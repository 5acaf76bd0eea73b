import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import express from 'express';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { listen, type Listening } from '../../common/http';
import { GUARD_ERROR, GuardError, toolGuard, toolRequestVerifier, verifyToolRequest, type CustodyIdentity, type ToolGuardOptions } from '../../identity/guard';
import { call, startTokenRole, type TokenRoleUnderTest } from '../helpers/tokens';

/**
 * custody/guard in front of a real Express app on 127.0.0.1, verifying tokens of a real token
 * service over HTTP (JWKS and revocation feed): who gets in, who gets which refusal, and the
 * span the guard records on the API's side, joined to the caller's trace.
 */
describe('custody/guard', () => {
  let svc: TokenRoleUnderTest;
  let plane: Listening;
  let api: Listening;
  const exporter = new InMemorySpanExporter();
  const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer('test');
  let planeAnswer: Record<string, unknown> = {};
  const planeAsked: unknown[] = [];

  const issue = async (body: Record<string, unknown>): Promise<string> => {
    const r = await call(`${svc.url}/issue`, { json: { sponsor_id: 'alice', role: 'support', ...body } });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body.token;
  };
  const refund = (path: string, headers: Record<string, string> = {}) =>
    fetch(`${api.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{"amount":5}' }).then(async (r) => ({
      status: r.status,
      body: (await r.json()) as any,
      headers: r.headers,
    }));

  beforeAll(async () => {
    svc = await startTokenRole();
    plane = await listen(
      (req, res) => {
        let body = '';
        req.on('data', (d) => (body += d)).on('end', () => {
          planeAsked.push(JSON.parse(body));
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify(planeAnswer));
        });
      },
      '127.0.0.1',
      0,
    );
    const common: Partial<ToolGuardOptions> = { url: svc.url, tracer, jwksCooldownMs: 0 };
    const app = express();
    const ok = (req: express.Request, res: express.Response) => res.json({ custody: (req as unknown as { custody: CustodyIdentity }).custody, traceparent: req.get('traceparent') });
    app.post('/refunds', toolGuard({ ...common, tool: 'billing', action: 'refund' }), express.json(), ok);
    app.post('/once', toolGuard({ ...common, tool: 'billing', action: 'refund', singleUse: true }), ok);
    app.post('/bearer', toolGuard({ ...common, tool: 'billing', bearer: true }), ok);
    app.post('/planned', toolGuard({ ...common, tool: 'billing', action: 'refund', check: 'plane', policyUrl: plane.url }), ok);
    api = await listen(app, '127.0.0.1', 0);
  });
  afterAll(async () => {
    await api?.close();
    await plane?.close();
    await svc?.close();
  });
  beforeEach(() => exporter.reset());

  it('lets a valid token for the tool in, with the verified identity on req.custody', async () => {
    const token = await issue({ tool: 'billing', agent_instance_id: 'assistant-1', purpose: 'refund' });
    const r = await refund('/refunds', { 'x-custody-token': token });
    expect(r.status).toBe(200);
    expect(r.body.custody).toMatchObject({ sponsor_id: 'alice', agent_instance_id: 'assistant-1', parent_agent_id: null, role: 'support', tool: 'billing', action: 'refund', purpose: 'refund' });
    expect(r.body.custody.jti).toMatch(/./);
  });

  it('answers 401 token_required without a token, naming the header', async () => {
    const r = await refund('/refunds');
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe(GUARD_ERROR.TOKEN_REQUIRED);
    expect(r.body.error.message).toMatch(/x-custody-token/);
    expect(r.headers.get('www-authenticate')).toMatch(/^Bearer realm="custody"/);
  });

  it('answers 403 wrong_tool for a valid token of another tool', async () => {
    const token = await issue({ tool: 'search' });
    const r = await refund('/refunds', { 'x-custody-token': token });
    expect(r.status).toBe(403);
    expect(r.body.error).toMatchObject({ code: GUARD_ERROR.WRONG_TOOL });
    expect(r.body.error.message).toMatch(/'search', not 'billing'/);
  });

  it('answers 401 for expired, tampered, foreign-key and garbage tokens, each with its reason', async () => {
    const now = Math.floor(Date.now() / 1000);
    const valid = await issue({ tool: 'billing', agent_instance_id: 'assistant-1' });
    const claims = JSON.parse(Buffer.from(valid.split('.')[1]!, 'base64url').toString());
    const expired = await svc.forge({ ...claims, iat: now - 400, nbf: now - 400, exp: now - 100, ttl_seconds: 300 });
    const e = await refund('/refunds', { 'x-custody-token': expired });
    expect([e.status, e.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_EXPIRED]);
    expect(e.body.error.message).toMatch(/ERR_TOKEN_EXPIRED.*expired at/);

    const [h, p, s] = valid.split('.');
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, sponsor_id: 'mallory' })).toString('base64url')}.${s}`;
    const t = await refund('/refunds', { 'x-custody-token': tampered });
    expect([t.status, t.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_INVALID]);
    expect(t.body.error.message).toMatch(/ERR_TOKEN_SIGNATURE/);

    const unknown = await refund('/refunds', { 'x-custody-token': await svc.forge(claims, 'not-a-kid') });
    expect([unknown.status, unknown.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_INVALID]);
    expect(unknown.body.error.message).toMatch(/ERR_TOKEN_UNKNOWN_KID/);

    const junk = await refund('/refunds', { 'x-custody-token': 'not.a.token' });
    expect([junk.status, junk.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_INVALID]);
    expect(p).toBeTruthy();
  });

  it('accepts a single-use token once and refuses it replayed', async () => {
    const token = await issue({ tool: 'billing' });
    expect((await refund('/once', { 'x-custody-token': token })).status).toBe(200);
    const again = await refund('/once', { 'x-custody-token': token });
    expect([again.status, again.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_REPLAYED]);
  });

  it('takes Authorization: Bearer only where configured', async () => {
    const token = await issue({ tool: 'billing' });
    expect((await refund('/bearer', { authorization: `Bearer ${token}` })).status).toBe(200);
    expect((await refund('/refunds', { authorization: `Bearer ${token}` })).status).toBe(401);
  });

  it("verifies a token signed by a key rotated in after the JWKS was cached (unknown kid refetches)", async () => {
    const before = await issue({ tool: 'billing' });
    expect((await refund('/refunds', { 'x-custody-token': before })).status).toBe(200);
    // a key file's key is rotated by putting the new key there first
    fs.writeFileSync(path.join(svc.dataDir, 'signing-key.pem'), crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    const rotated = await call(`${svc.url}/v1/tokens/keys/rotate`, { method: 'POST', json: {} });
    expect(rotated.status, JSON.stringify(rotated.body)).toBe(200);
    const after = await issue({ tool: 'billing' });
    expect(JSON.parse(Buffer.from(after.split('.')[0]!, 'base64url').toString()).kid).not.toBe(JSON.parse(Buffer.from(before.split('.')[0]!, 'base64url').toString()).kid);
    expect((await refund('/refunds', { 'x-custody-token': after })).status).toBe(200);
    // the old key stays published until its last token expires
    expect((await refund('/refunds', { 'x-custody-token': before })).status).toBe(200);
  });

  it("refuses a revoked sponsor's token (the token service's revocation feed)", async () => {
    const token = await issue({ tool: 'billing', sponsor_id: 'carol' });
    expect((await refund('/refunds', { 'x-custody-token': token })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 1100)); // issued in an earlier second than the offboarding
    expect((await call(`${svc.url}/v1/sponsors/carol/offboard`, { method: 'POST', json: { reason: 'left' } })).status).toBe(200);
    let r = await refund('/refunds', { 'x-custody-token': token });
    // the feed is read again within revocationRefreshMs (2 s)
    for (let i = 0; i < 40 && r.status === 200; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await refund('/refunds', { 'x-custody-token': token });
    }
    expect([r.status, r.body.error.code]).toEqual([401, GUARD_ERROR.TOKEN_REVOKED]);
    expect(r.body.error.message).toMatch(/sponsor 'carol' was offboarded/);
  });

  it("check 'plane' asks POST /v1/check for the route's action: 403 action_denied on deny", async () => {
    const token = await issue({ tool: 'billing' });
    planeAnswer = { decision: 'allow', policy_decision_id: 'pd_1', rule_id: 'r', reason: 'ok', cohort: 'canary', enforced: true };
    const ok = await refund('/planned', { 'x-custody-token': token });
    expect(ok.status).toBe(200);
    expect(ok.body.custody.policy_decision_id).toBe('pd_1');
    expect(planeAsked.at(-1)).toEqual({ token, tool: 'billing', action: 'refund' });
    planeAnswer = { decision: 'deny', policy_decision_id: 'pd_2', rule_id: 'support-no-refund', reason: 'support may not refund', cohort: 'canary', enforced: true };
    const denied = await refund('/planned', { 'x-custody-token': token });
    expect([denied.status, denied.body.error.code]).toEqual([403, GUARD_ERROR.ACTION_DENIED]);
    expect(denied.body.error.message).toMatch(/support-no-refund.*support may not refund/);
    planeAnswer = { nonsense: true };
    expect((await refund('/planned', { 'x-custody-token': token })).status).toBe(503);
  });

  it("records a SERVER span joined to the caller's traceparent, with sponsor, instance and decision", async () => {
    const token = await issue({ tool: 'billing', agent_instance_id: 'assistant-7' });
    const traceId = 'ab'.repeat(16);
    await refund('/refunds', { 'x-custody-token': token, traceparent: `00-${traceId}-${'cd'.repeat(8)}-01` });
    await refund('/refunds', { traceparent: `00-${traceId}-${'ef'.repeat(8)}-01` });
    const spans = exporter.getFinishedSpans();
    expect(spans.map((s) => s.name)).toEqual(['custody.guard billing', 'custody.guard billing']);
    const [allowed, refused] = spans;
    expect(allowed!.spanContext().traceId).toBe(traceId);
    expect(allowed!.parentSpanContext?.spanId).toBe('cd'.repeat(8));
    expect(allowed!.kind).toBe(1); // SERVER
    expect(allowed!.attributes).toMatchObject({
      'custody.sponsor_id': 'alice',
      'custody.agent_instance_id': 'assistant-7',
      'custody.tool_id': 'billing',
      'custody.action': 'refund',
      'custody.policy.decision': 'allow',
      'custody.guard.check': 'offline',
      'http.response.status_code': 200,
    });
    expect(refused!.spanContext().traceId).toBe(traceId);
    expect(refused!.attributes).toMatchObject({ 'custody.policy.decision': 'deny', 'error.type': 'token_required', 'http.response.status_code': 401 });
    // the token itself is never recorded
    expect(JSON.stringify(spans.map((s) => s.attributes))).not.toContain(token);
  });

  it('verifyToolRequest: the same checks without a framework, on Node or fetch headers', async () => {
    const options: ToolGuardOptions = { url: svc.url, tool: 'billing', tracer: trace.getTracer('noop') };
    const token = await issue({ tool: 'billing', agent_instance_id: 'worker-2' });
    expect((await verifyToolRequest({ 'x-custody-token': token }, options)).agent_instance_id).toBe('worker-2');
    expect((await verifyToolRequest(new Headers({ 'x-custody-token': token }), toolRequestVerifier(options))).sponsor_id).toBe('alice');
    const err = await verifyToolRequest({}, options).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuardError);
    expect(err).toMatchObject({ status: 401, code: 'token_required' });
  });

  it('refuses options it cannot work with, naming the option', () => {
    expect(() => toolGuard({} as ToolGuardOptions)).toThrow(/'tool'/);
    expect(() => toolGuard({ tool: 'billing', check: 'plane' })).toThrow(/'action'/);
    expect(() => toolGuard({ tool: 'billing', check: 'nope' as 'plane' })).toThrow(/'check'/);
  });
});

