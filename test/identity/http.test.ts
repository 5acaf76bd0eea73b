import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry as metrics } from '../../common/metrics';
import { ATTR, METRIC } from '../../common/names';
import { SERVICE } from '../../common/role';
import { exchangeToken, issueToken } from '../../identity/client';
import { TokenRequestError } from '../../identity/errors';
import { createTokenVerifier } from '../../identity/verify';
import { call, EXCHANGE, startTokenRole, type TokenRoleUnderTest } from '../helpers/tokens';

async function issuedCount(result: 'issued' | 'refused'): Promise<number> {
  const m = await metrics.getSingleMetric(METRIC.TOKENS_ISSUED_TOTAL)!.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe('token service over HTTP, open mode (loopback)', () => {
  let svc: TokenRoleUnderTest;
  beforeAll(async () => {
    svc = await startTokenRole();
  });
  afterAll(() => svc.close());

  const issue = (json: unknown) => call(`${svc.url}/issue`, { json });
  const refusal = async (p: Promise<{ status: number; body: any }>, status: number, code: string) => {
    const r = await p;
    expect(r.status, JSON.stringify(r.body)).toBe(status);
    expect(r.body.error.code).toBe(code);
    expect(typeof r.body.error.message).toBe('string');
    expect(r.body).not.toHaveProperty('token');
    return r.body.error.message as string;
  };

  it('says so at start', () => {
    expect(svc.role.banner!.join('\n')).toMatch(/OPEN MODE: \/issue trusts the sponsor and role in the request body/);
  });

  it("answers the seed's curl with a token bound to the sponsor", async () => {
    const r = await issue({ tool: 'billing', sponsor_id: 'alice', ttl: 300 });
    expect(r.status).toBe(201);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expect(r.body).toMatchObject({ token_type: 'Bearer', expires_in: 300 });
    expect(r.body.claims).toMatchObject({
      iss: 'agent-token-svc', aud: 'billing', tool: 'billing', tools: ['billing'], sponsor_id: 'alice', ttl_seconds: 300, depth: 0,
    });
    const c = r.body.claims;
    expect(c.sub).toBe(c.agent_instance_id);
    expect(c.exp - c.iat).toBe(300);
    expect(c.nbf).toBe(c.iat);
    const header = JSON.parse(Buffer.from(r.body.token.split('.')[0], 'base64url').toString());
    expect(header).toMatchObject({ alg: 'EdDSA', kid: svc.kid });
  });

  it('accepts a form as well as JSON, and keeps the asked instance, role and purpose; an issued token is a root', async () => {
    const r = await call(`${svc.url}/issue`, {
      form: { tool: 'search', sponsor_id: 'bob', ttl: '60', role: 'user', agent_instance_id: 'run-7', purpose: 'triage' },
    });
    expect(r.status).toBe(201);
    expect(r.body.claims).toMatchObject({ sub: 'run-7', agent_instance_id: 'run-7', parent_agent_id: null, role: 'user', purpose: 'triage', ttl_seconds: 60 });
    // every seed claim is present, parent_agent_id as null
    const payload = JSON.parse(Buffer.from(r.body.token.split('.')[1], 'base64url').toString());
    for (const claim of ['sponsor_id', 'agent_instance_id', 'parent_agent_id', 'ttl_seconds']) expect(payload, claim).toHaveProperty(claim);
    expect(payload.parent_agent_id).toBeNull();
  });

  it('takes no parent from a request body, even in open mode: parents come from token exchange', async () => {
    const r = await call(`${svc.url}/issue`, { json: { tool: 'search', sponsor_id: 'bob', agent_instance_id: 'run-8', parent_agent_id: 'alice-root-0' } });
    expect([r.status, r.body.error.code]).toEqual([400, 'parent_requires_exchange']);
    expect(r.body.error.message).toMatch(/POST \/token/);
  });

  it('in open mode, refuses an instance id inside a registered agent\'s namespace', async () => {
    for (const instance of ['agt_abc123', 'agt_abc123:root-0']) {
      const r = await call(`${svc.url}/issue`, { json: { tool: 'search', sponsor_id: 'bob', agent_instance_id: instance } });
      expect([r.status, r.body.error.code], instance).toEqual([403, 'instance_not_bound']);
    }
    expect((await call(`${svc.url}/issue`, { json: { tool: 'search', sponsor_id: 'bob', agent_instance_id: 'agt-lookalike' } })).status).toBe(201);
  });

  it('refuses a missing sponsor, a TTL above the maximum (never shortened), an unknown tool, a bad body', async () => {
    await refusal(issue({ tool: 'billing', ttl: 300 }), 400, 'sponsor_required');
    await refusal(issue({ tool: 'billing', sponsor_id: '', ttl: 300 }), 400, 'sponsor_required');
    await refusal(issue({ tool: 'billing', sponsor_id: 'alice', ttl: 901 }), 400, 'ttl_too_long');
    expect(await refusal(issue({ tool: 'billing', sponsor_id: 'alice', role: 'user', ttl: 61 }), 400, 'ttl_too_long')).toMatch(/role 'user' \(60 s\)/);
    await refusal(issue({ tool: 'billing', sponsor_id: 'alice', role: 'support', ttl: 301 }), 400, 'ttl_too_long');
    expect((await issue({ tool: 'billing', sponsor_id: 'alice', role: 'admin', ttl: 900 })).status).toBe(201);
    await refusal(issue({ tool: 'payroll', sponsor_id: 'alice' }), 400, 'tool_not_supported');
    await refusal(issue({ tool: 'billing', tools: ['billing', 'shell'], sponsor_id: 'alice' }), 400, 'tool_not_supported');
    await refusal(issue({ tool: 'billing', sponsor_id: 'alice', role: 'root' }), 400, 'role_not_supported');
    await refusal(call(`${svc.url}/issue`, { raw: '{"tool":"billing",' }), 400, 'invalid_request');
    await refusal(call(`${svc.url}/issue`, { raw: '[1,2]' }), 400, 'invalid_request');
    await refusal(call(`${svc.url}/issue`, { raw: 'tool=billing', contentType: 'text/plain' }), 400, 'invalid_request');
    await refusal(call(`${svc.url}/issue`, { form: { tool: 'billing', sponsor_id: 'alice', ttl: 'soon' } }), 400, 'invalid_request');
    await refusal(issue({ sponsor_id: 'alice' }), 400, 'invalid_request');
    await refusal(issue({ tool: 'billing', sponsor_id: 'alice', ttl: 1.5 }), 400, 'invalid_request');
    await refusal(issue({ tool: 'billing', sponsor_id: 'alice', ttl: 0 }), 400, 'invalid_request');
    await refusal(issue({ tool: 'billing', sponsor_id: 'x'.repeat(300) }), 400, 'invalid_request');
  });

  it('default TTL is the global default within the role maximum', async () => {
    expect((await issue({ tool: 'billing', sponsor_id: 'alice' })).body.claims.ttl_seconds).toBe(300);
    expect((await issue({ tool: 'billing', sponsor_id: 'alice', role: 'user' })).body.claims.ttl_seconds).toBe(60);
  });

  it('reports every issuance and every refusal, with custody_tokens_issued_total{result}', async () => {
    const [issued0, refused0] = [await issuedCount('issued'), await issuedCount('refused')];
    const before = (await svc.events()).length;
    const ok = await issue({ tool: 'search', sponsor_id: 'carol', ttl: 120, role: 'support', purpose: 'lookup' });
    await refusal(issue({ tool: 'billing', sponsor_id: 'carol', ttl: 5000 }), 400, 'ttl_too_long');
    await refusal(call(`${svc.url}/issue`, { raw: '{oops' }), 400, 'invalid_request');
    await refusal(call(`${svc.url}/token`, { raw: '{oops' }), 400, 'invalid_request');
    expect(await issuedCount('issued')).toBe(issued0 + 1);
    expect(await issuedCount('refused')).toBe(refused0 + 3);
    const events = (await svc.events()).slice(before);
    expect(events).toHaveLength(4);
    expect(events[0]).toMatchObject({
      [ATTR.TOKEN_RESULT]: 'issued',
      [ATTR.TOKEN_KIND]: 'issue',
      [ATTR.TOKEN_JTI]: ok.body.claims.jti,
      [ATTR.SPONSOR_ID]: 'carol',
      [ATTR.AGENT_INSTANCE_ID]: ok.body.claims.agent_instance_id,
      [ATTR.TOOL_ID]: 'search',
      [ATTR.ROLE]: 'support',
      [ATTR.PURPOSE]: 'lookup',
      [ATTR.TOKEN_TTL_SECONDS]: 120,
      [ATTR.TOKEN_EXPIRES_AT]: ok.body.claims.exp * 1000,
      status: 0,
    });
    expect(events[1]).toMatchObject({
      [ATTR.TOKEN_RESULT]: 'refused', [ATTR.TOKEN_KIND]: 'issue', [ATTR.TOKEN_REFUSAL_CODE]: 'ttl_too_long',
      [ATTR.SPONSOR_ID]: 'carol', [ATTR.TOOL_ID]: 'billing', [ATTR.TOKEN_TTL_SECONDS]: 5000, status: 2,
    });
    expect(events[2]).toMatchObject({ [ATTR.TOKEN_RESULT]: 'refused', [ATTR.TOKEN_KIND]: 'issue', [ATTR.TOKEN_REFUSAL_CODE]: 'invalid_request' });
    expect(events[3]).toMatchObject({ [ATTR.TOKEN_RESULT]: 'refused', [ATTR.TOKEN_KIND]: 'exchange', [ATTR.TOKEN_REFUSAL_CODE]: 'invalid_request' });
  });

  it('publishes its keys, and offers them in-process to the policy plane', async () => {
    const r = await call(`${svc.url}/.well-known/jwks.json`);
    expect(r.status).toBe(200);
    expect(r.body.keys).toEqual([expect.objectContaining({ kid: svc.kid, kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA' })]);
    expect(r.body.keys[0]).not.toHaveProperty('d');
    const keys = svc.services.get(SERVICE.TOKEN_KEYS) as { issuer: string; jwks(): unknown };
    expect(keys.issuer).toBe('agent-token-svc');
    expect(keys.jwks()).toEqual(r.body);
  });

  describe('POST /token (RFC 8693)', () => {
    let parent: { token: string; claims: any };
    beforeAll(async () => {
      parent = (await issue({ tool: 'billing', tools: ['billing', 'search'], sponsor_id: 'alice', role: 'support', ttl: 300, agent_instance_id: 'parent-1' })).body;
    });
    const exchange = (params: Record<string, unknown>) => call(`${svc.url}/token`, { json: { ...EXCHANGE, subject_token: parent.token, ...params } });

    it('derives a narrower child token, as JSON or as a form', async () => {
      const r = await exchange({ audience: 'search', agent_instance_id: 'child-1' });
      expect(r.status).toBe(200);
      expect(r.headers.get('cache-control')).toBe('no-store');
      expect(r.body).toMatchObject({
        issued_token_type: 'urn:ietf:params:oauth:token-type:jwt', token_type: 'Bearer', scope: 'search',
      });
      expect(r.body.access_token).toBe(r.body.token);
      expect(r.body.expires_in).toBeLessThanOrEqual(300);
      expect(r.body.claims).toMatchObject({
        sponsor_id: 'alice', agent_instance_id: 'child-1', sub: 'child-1', parent_agent_id: 'parent-1', aud: 'search', tool: 'search',
        tools: ['search'], role: 'support', depth: 1, act: { sub: 'parent-1', tools: ['billing', 'search'], role: 'support', exp: parent.claims.exp },
      });
      expect(r.body.claims.exp).toBeLessThanOrEqual(parent.claims.exp);

      const f = await call(`${svc.url}/token`, { form: { ...EXCHANGE, subject_token: parent.token, audience: 'billing', scope: 'billing' } });
      expect(f.status).toBe(200);
      expect(f.body.claims).toMatchObject({ tool: 'billing', tools: ['billing'], parent_agent_id: 'parent-1' });
      expect(f.body.claims.agent_instance_id).not.toBe('parent-1');
      const scoped = await exchange({ scope: 'billing search' });
      expect(scoped.body.claims).toMatchObject({ tool: 'billing', tools: ['billing', 'search'] });
      const lower = await exchange({ audience: 'search', role: 'user', ttl: 30 });
      expect(lower.body.claims).toMatchObject({ role: 'user', ttl_seconds: 30 });
    });

    it('refuses with RFC-style codes', async () => {
      await refusal(exchange({ grant_type: 'client_credentials' }), 400, 'unsupported_grant_type');
      await refusal(exchange({ grant_type: undefined }), 400, 'invalid_request');
      await refusal(exchange({ subject_token: undefined }), 400, 'invalid_request');
      await refusal(exchange({ subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }), 400, 'invalid_request');
      await refusal(exchange({ subject_token: 'garbage' }), 400, 'invalid_grant');
      await refusal(exchange({ audience: 'file-store' }), 400, 'invalid_target');
      await refusal(exchange({ scope: 'billing file-store' }), 400, 'invalid_target');
      await refusal(exchange({ audience: 'billing', scope: 'search' }), 400, 'invalid_target');
      await refusal(exchange({ role: 'admin' }), 400, 'invalid_scope');
      await refusal(exchange({ ttl: 301 }), 400, 'ttl_too_long');
      await refusal(exchange({ agent_instance_id: 'parent-1' }), 400, 'invalid_request');
      await refusal(call(`${svc.url}/token`, { raw: 'not json' }), 400, 'invalid_request');
    });

    it('refuses a child TTL the parent cannot cover, and expired, tampered or foreign subject tokens', async () => {
      const now = Math.floor(Date.now() / 1000);
      const short = (await issue({ tool: 'billing', sponsor_id: 'alice', role: 'support', ttl: 20 })).body;
      expect(await refusal(call(`${svc.url}/token`, { json: { ...EXCHANGE, subject_token: short.token, ttl: 200 } }), 400, 'ttl_too_long')).toMatch(/outlive/);
      const base = { ...parent.claims, jti: 'x' };
      const expired = await svc.forge({ ...base, iat: now - 400, nbf: now - 400, exp: now - 100, ttl_seconds: 300 });
      expect(await refusal(exchange({ subject_token: expired }), 400, 'invalid_grant')).toMatch(/ERR_TOKEN_EXPIRED/);
      const [h, , s] = parent.token.split('.');
      const widened = Buffer.from(JSON.stringify({ ...parent.claims, tools: ['billing', 'search', 'file-store'] })).toString('base64url');
      expect(await refusal(exchange({ subject_token: `${h}.${widened}.${s}` }), 400, 'invalid_grant')).toMatch(/ERR_TOKEN_SIGNATURE/);
      const otherIssuer = await svc.forge({ ...base, iss: 'someone-else' });
      expect(await refusal(exchange({ subject_token: otherIssuer }), 400, 'invalid_grant')).toMatch(/ERR_TOKEN_ISSUER/);
      const unknownKid = await svc.forge(base, 'another-kid');
      expect(await refusal(exchange({ subject_token: unknownKid }), 400, 'invalid_grant')).toMatch(/ERR_TOKEN_UNKNOWN_KID/);
    });

    it('stops at the delegation depth limit', async () => {
      let token = parent.token;
      for (let depth = 1; depth <= 3; depth++) {
        const r = await call(`${svc.url}/token`, { json: { ...EXCHANGE, subject_token: token } });
        expect(r.status).toBe(200);
        expect(r.body.claims.depth).toBe(depth);
        token = r.body.token;
      }
      const deepest = createTokenVerifier({ issuer: 'agent-token-svc', jwks: new URL(`${svc.url}/.well-known/jwks.json`) });
      const claims = await deepest.verify(token);
      expect(claims.act?.act?.act?.sub).toBe('parent-1');
      await refusal(call(`${svc.url}/token`, { json: { ...EXCHANGE, subject_token: token } }), 400, 'delegation_depth_exceeded');
    });

    it('client helpers speak both endpoints and turn refusals into TokenRequestError', async () => {
      const p = await issueToken(svc.url, { tool: 'billing', tools: ['billing', 'search'], sponsor_id: 'dana', role: 'support' });
      expect(p.expiresAt).toBe(p.claims.exp * 1000);
      const c = await exchangeToken(svc.url, { subject_token: p.token, audience: 'search', agent_instance_id: 'sub-1', scope: ['search'] });
      expect(c.claims).toMatchObject({ parent_agent_id: p.claims.agent_instance_id, agent_instance_id: 'sub-1', tools: ['search'] });
      const err = await issueToken(svc.url, { tool: 'billing', sponsor_id: 'dana', ttl: 10_000 }).catch((e) => e);
      expect(err).toBeInstanceOf(TokenRequestError);
      expect(err).toMatchObject({ code: 'ERR_TOKEN_REFUSED', status: 400, refusal: 'ttl_too_long' });
      const down = await issueToken('http://127.0.0.1:9', { tool: 'billing', sponsor_id: 'dana' }, { timeoutMs: 500 }).catch((e) => e);
      expect(down).toMatchObject({ code: 'ERR_TOKEN_SERVICE_UNAVAILABLE', status: 0 });
    });
  });
});

describe('token service over HTTP, registered mode', () => {
  let svc: TokenRoleUnderTest;
  const ADMIN = 'admin-secret-for-tests';
  const admin = `Bearer ${ADMIN}`;
  beforeAll(async () => {
    process.env.CUSTODY_ADMIN_TOKEN = ADMIN;
    svc = await startTokenRole({ mode: 'registered' });
    delete process.env.CUSTODY_ADMIN_TOKEN;
  });
  afterAll(() => svc.close());

  const register = (json: unknown, auth = admin) => call(`${svc.url}/v1/agents`, { json, auth });
  const issueAs = (credential: string, json: unknown) => call(`${svc.url}/issue`, { json, auth: `Bearer ${credential}` });

  it('needs an agent credential for /issue', async () => {
    const r = await call(`${svc.url}/issue`, { json: { tool: 'billing', sponsor_id: 'alice' } });
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe('credential_required');
    expect(r.headers.get('www-authenticate')).toBe('Bearer realm="custody"');
    const bad = await issueAs('cag.agt_nobody.secret', { tool: 'billing' });
    expect([bad.status, bad.body.error.code]).toEqual([401, 'invalid_credential']);
    const basic = await call(`${svc.url}/issue`, { json: { tool: 'billing' }, auth: 'Basic YTpi' });
    expect([basic.status, basic.body.error.code]).toEqual([401, 'invalid_credential']);
    expect((await svc.events()).at(-1)).toMatchObject({ [ATTR.TOKEN_RESULT]: 'refused', [ATTR.TOKEN_REFUSAL_CODE]: 'invalid_credential' });
  });

  it('registers agents through the admin API only', async () => {
    expect((await register({ sponsor_id: 'alice', role: 'support', tools: ['billing'] }, '')).status).toBe(401);
    expect((await register({ sponsor_id: 'alice', role: 'support', tools: ['billing'] }, 'Bearer wrong')).status).toBe(401);
    const bad = [
      [{ role: 'support', tools: ['billing'] }, 'sponsor_required'],
      [{ sponsor_id: 'alice', tools: ['billing'] }, 'invalid_request'],
      [{ sponsor_id: 'alice', role: 'root', tools: ['billing'] }, 'role_not_supported'],
      [{ sponsor_id: 'alice', role: 'support', tools: ['payroll'] }, 'tool_not_supported'],
      [{ sponsor_id: 'alice', role: 'support' }, 'invalid_request'],
      [{ sponsor_id: 'alice', role: 'user', tools: ['search'], max_ttl_seconds: 61 }, 'ttl_too_long'],
    ] as const;
    for (const [body, code] of bad) {
      const r = await register(body);
      expect([r.status, r.body.error.code], JSON.stringify(body)).toEqual([400, code]);
    }
  });

  it('takes sponsor, role, tools and maximum TTL from the registration', async () => {
    const reg = await register({ sponsor_id: 'alice', role: 'support', tools: ['billing', 'search'], max_ttl_seconds: 120, name: 'support-bot' });
    expect(reg.status).toBe(201);
    const { agent, credential } = reg.body;
    expect(agent).toMatchObject({ sponsor_id: 'alice', role: 'support', tools: ['billing', 'search'], max_ttl_seconds: 120, name: 'support-bot', status: 'active' });
    expect(agent).not.toHaveProperty('credential_hash');
    expect(credential).toMatch(new RegExp(`^cag\\.${agent.agent_id}\\.[A-Za-z0-9_-]{43}$`));

    const ok = await issueAs(credential, { tool: 'billing', agent_instance_id: `${agent.agent_id}:run-1` });
    expect(ok.status).toBe(201);
    expect(ok.body.claims).toMatchObject({
      sponsor_id: 'alice', role: 'support', agent_id: agent.agent_id, credential_id: agent.credential_id,
      agent_instance_id: `${agent.agent_id}:run-1`, parent_agent_id: null, ttl_seconds: 120,
    });
    // an instance the body does not name is issued in the agent's namespace
    expect((await issueAs(credential, { tool: 'billing' })).body.claims.agent_instance_id).toMatch(new RegExp(`^${agent.agent_id}:.+`));
    expect((await issueAs(credential, { tool: 'billing', sponsor_id: 'alice' })).status).toBe(201);
    expect((await issueAs(credential, { tool: 'billing', role: 'user', ttl: 60 })).body.claims.role).toBe('user');

    const refusals = [
      [{ tool: 'billing', sponsor_id: 'mallory' }, 403, 'sponsor_mismatch'],
      [{ tool: 'billing', role: 'admin' }, 403, 'role_not_allowed'],
      [{ tool: 'file-store' }, 403, 'tool_not_allowed'],
      [{ tool: 'billing', tools: ['billing', 'file-store'] }, 403, 'tool_not_allowed'],
      [{ tool: 'billing', ttl: 121 }, 400, 'ttl_too_long'],
      [{ tool: 'payroll' }, 400, 'tool_not_supported'],
      // identity is issued, not claimed
      [{ tool: 'billing', agent_instance_id: 'run-1' }, 403, 'instance_not_bound'],
      [{ tool: 'billing', agent_instance_id: 'agt_someoneelse:run-1' }, 403, 'instance_not_bound'],
      [{ tool: 'billing', parent_agent_id: 'alice-root-0' }, 400, 'parent_requires_exchange'],
    ] as const;
    for (const [body, status, code] of refusals) {
      const r = await issueAs(credential, body);
      expect([r.status, r.body.error.code], JSON.stringify(body)).toEqual([status, code]);
    }
  });

  it('rotates and revokes credentials; a revoked agent cannot have its tokens exchanged', async () => {
    const { agent, credential } = (await register({ sponsor_id: 'bob', role: 'user', tools: ['search'] })).body;
    const token = (await issueAs(credential, { tool: 'search' })).body.token;
    const rotated = await call(`${svc.url}/v1/agents/${agent.agent_id}/rotate`, { method: 'POST', auth: admin });
    expect(rotated.status).toBe(200);
    expect(rotated.body.credential).not.toBe(credential);
    expect((await issueAs(credential, { tool: 'search' })).body.error.code).toBe('invalid_credential');
    expect((await issueAs(rotated.body.credential, { tool: 'search' })).status).toBe(201);

    const revoked = await call(`${svc.url}/v1/agents/${agent.agent_id}/revoke`, { json: { reason: 'compromised' }, auth: admin });
    expect(revoked.body.agent).toMatchObject({ status: 'revoked', revoked_reason: 'compromised' });
    const after = await issueAs(rotated.body.credential, { tool: 'search' });
    expect([after.status, after.body.error.code]).toEqual([401, 'invalid_credential']);
    const ex = await call(`${svc.url}/token`, { json: { ...EXCHANGE, subject_token: token } });
    expect([ex.status, ex.body.error.code]).toEqual([400, 'invalid_grant']);
    expect((await call(`${svc.url}/v1/agents/${agent.agent_id}/rotate`, { method: 'POST', auth: admin })).status).toBe(409);
    expect((await call(`${svc.url}/v1/agents/agt_missing/revoke`, { method: 'POST', auth: admin })).status).toBe(404);
  });

  it('offboarding a sponsor revokes all their agents and refuses new ones', async () => {
    const a = (await register({ sponsor_id: 'erin', role: 'support', tools: ['billing'] })).body;
    const b = (await register({ sponsor_id: 'erin', role: 'user', tools: ['search'] })).body;
    const other = (await register({ sponsor_id: 'frank', role: 'user', tools: ['search'] })).body;
    const off = await call(`${svc.url}/v1/sponsors/erin/offboard`, { json: { reason: 'left the company' }, auth: admin });
    expect(off.status).toBe(200);
    expect(off.body.revoked.map((x: { agent_id: string }) => x.agent_id).sort()).toEqual([a.agent.agent_id, b.agent.agent_id].sort());
    for (const cred of [a.credential, b.credential]) expect((await issueAs(cred, { tool: 'billing' })).status).toBe(401);
    expect((await issueAs(other.credential, { tool: 'search' })).status).toBe(201);
    const again = await register({ sponsor_id: 'erin', role: 'user', tools: ['search'] });
    expect([again.status, again.body.error.code]).toEqual([409, 'sponsor_offboarded']);
    const listed = await call(`${svc.url}/v1/agents?sponsor_id=erin`, { auth: admin });
    expect(listed.body.agents.every((x: { status: string }) => x.status === 'revoked')).toBe(true);
    expect((await call(`${svc.url}/v1/sponsors/erin/reinstate`, { method: 'POST', auth: admin })).status).toBe(200);
    expect((await register({ sponsor_id: 'erin', role: 'user', tools: ['search'] })).status).toBe(201);
    // a sponsor id is data, not a property name
    expect((await call(`${svc.url}/v1/sponsors/__proto__/offboard`, { method: 'POST', auth: admin })).status).toBe(200);
    expect((await register({ sponsor_id: '__proto__', role: 'user', tools: ['search'] })).body.error.code).toBe('sponsor_offboarded');
    expect((await register({ sponsor_id: 'constructor', role: 'user', tools: ['search'] })).status).toBe(201);
  });

  it('keeps only credential hashes, in a file that survives a restart', async () => {
    const file = path.join(svc.dataDir, 'tokens', 'agents.json');
    const { credential } = (await register({ sponsor_id: 'gina', role: 'user', tools: ['search'] })).body;
    const text = fs.readFileSync(file, 'utf8');
    expect(text).not.toContain(credential.split('.')[2]);
    expect(JSON.parse(text).agents.at(-1)).toMatchObject({ sponsor_id: 'gina', credential_hash: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const { openAgentRegistry } = await import('../../identity/registry');
    const { loadTokenConfig } = await import('../../identity/config');
    const reopened = openAgentRegistry({ config: loadTokenConfig(path.join(svc.dataDir, 'token-service-config.yml')), file });
    expect(reopened.authenticate(credential)).toMatchObject({ sponsor_id: 'gina' });
    expect(reopened.isSponsorOffboarded('erin')).toBe(false);
    expect(reopened.isSponsorOffboarded('__proto__')).toBe(true);
  });

  it('rotates the signing key through the admin API; old tokens keep verifying', async () => {
    const { credential } = (await register({ sponsor_id: 'hal', role: 'support', tools: ['billing'] })).body;
    const old = (await issueAs(credential, { tool: 'billing' })).body.token;
    // the key file still holds the current key: nothing to rotate to
    const same = await call(`${svc.url}/v1/tokens/keys/rotate`, { method: 'POST', auth: admin });
    expect([same.status, same.body.error.code]).toEqual([409, 'key_unchanged']);
    const crypto = await import('node:crypto');
    fs.writeFileSync(path.join(svc.dataDir, 'signing-key.pem'), crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const r = await call(`${svc.url}/v1/tokens/keys/rotate`, { method: 'POST', auth: admin });
    expect(r.status).toBe(200);
    expect(r.body.retired).toBe(svc.kid);
    const jwks = (await call(`${svc.url}/.well-known/jwks.json`)).body;
    expect(jwks.keys.map((k: { kid: string }) => k.kid)).toEqual([r.body.kid, svc.kid]);
    const fresh = (await issueAs(credential, { tool: 'billing' })).body.token;
    const verifier = createTokenVerifier({ issuer: 'agent-token-svc', jwks });
    await verifier.verify(old, { audience: 'billing' });
    await verifier.verify(fresh, { audience: 'billing' });
    const listed = await call(`${svc.url}/v1/tokens/keys`, { auth: admin });
    expect(listed.body.keys.map((k: { status: string }) => k.status)).toEqual(['current', 'retired']);
  });
});

describe('registered mode without CUSTODY_ADMIN_TOKEN', () => {
  it('keeps the admin API closed', async () => {
    const svc = await startTokenRole({ mode: 'registered' });
    try {
      const r = await call(`${svc.url}/v1/agents`, { json: { sponsor_id: 'alice', role: 'user', tools: ['search'] } });
      expect([r.status, r.body.error.code]).toEqual([403, 'admin_disabled']);
      expect(svc.role.banner!.join('\n')).toMatch(/admin API is disabled until CUSTODY_ADMIN_TOKEN is set/);
    } finally {
      await svc.close();
    }
  });
});
