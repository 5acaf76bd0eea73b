import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { revocationsUrl, jwksUrl } from '../../identity/client';
import { TOKEN_ERROR, TokenError } from '../../identity/errors';
import { createTokenVerifier } from '../../identity/verify';
import { AGENTS, auditEventsOf, auditTrailOf, runAgent } from '../helpers/agents';
import { eventually, ROOT, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { startOtlpSink, type OtlpSink } from '../helpers/policy-otlp-sink';
import { call, EXCHANGE, SEED } from '../helpers/tokens';

/**
 * Identity is issued, not claimed, and revocation is live — attacked through a real `custody up`
 * in registered mode (agents hold credentials), with real agent processes.
 */
const ADMIN = 'trust-test-admin-secret';
const admin = `Bearer ${ADMIN}`;

interface Registered {
  agent: { agent_id: string; sponsor_id: string; credential_id: string };
  credential: string;
}

describe('identity and revocation against custody up (registered mode)', () => {
  let custody: RunningCustody;
  const register = async (sponsor: string, role: string, tools: string[]): Promise<Registered> => {
    const r = await call(`${custody.url}/v1/agents`, { json: { sponsor_id: sponsor, role, tools }, auth: admin });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body;
  };
  const issueAs = (credential: string, body: object) => call(`${custody.url}/issue`, { json: body, auth: `Bearer ${credential}` });
  const check = (token: string, tool = 'search', action = 'query') => call(`${custody.url}/v1/check`, { json: { token, tool, action } });

  beforeAll(async () => {
    const dir = tempDir('custody-trust-');
    const tokenConfig = path.join(dir, 'token-service-config.yml');
    fs.writeFileSync(tokenConfig, stringify({ ...SEED, mode: 'registered' }));
    custody = await startCustody({ args: ['--token-config', tokenConfig], env: { CUSTODY_ADMIN_TOKEN: ADMIN } });
    // every instance enforced: the canary is everyone
    const r = await call(`${custody.url}/v1/rollout`, { method: 'PUT', json: { percent: 100, reason: 'trust test' }, auth: admin });
    expect(r.status).toBe(200);
  }, 90_000);
  afterAll(() => custody?.stop());

  it("bob's credential cannot graft bob's agent into alice's chain, and alice's trail does not list it", async () => {
    const alice = await register('alice', 'support', ['search', 'billing']);
    const bob = await register('bob', 'support', ['search']);
    const aliceRoot = `${alice.agent.agent_id}:root-0`;

    const root = await issueAs(alice.credential, { tool: 'search', tools: ['search'], agent_instance_id: aliceRoot });
    expect(root.status).toBe(201);
    // a root token carries every seed claim, parent_agent_id null
    const payload = JSON.parse(Buffer.from(root.body.token.split('.')[1], 'base64url').toString());
    expect(payload).toMatchObject({ sponsor_id: 'alice', agent_instance_id: aliceRoot, parent_agent_id: null, depth: 0 });
    expect(payload.ttl_seconds).toBe(payload.exp - payload.iat);

    // the grafts of the report, and their variants
    const grafts: [object, number, string][] = [
      [{ tool: 'search', parent_agent_id: 'alice-root-0' }, 400, 'parent_requires_exchange'],
      [{ tool: 'search', parent_agent_id: aliceRoot }, 400, 'parent_requires_exchange'],
      [{ tool: 'search', agent_instance_id: aliceRoot }, 403, 'instance_not_bound'],
      [{ tool: 'search', agent_instance_id: `${alice.agent.agent_id}:bob-sub` }, 403, 'instance_not_bound'],
      [{ tool: 'search', agent_instance_id: 'alice-root-0' }, 403, 'instance_not_bound'],
    ];
    for (const [body, status, code] of grafts) {
      const r = await issueAs(bob.credential, body);
      expect([r.status, r.body.error?.code], JSON.stringify(body)).toEqual([status, code]);
    }
    // through exchange, bob's delegate stays bob's
    const own = await issueAs(bob.credential, { tool: 'search' });
    expect(own.body.claims.agent_instance_id.startsWith(`${bob.agent.agent_id}:`)).toBe(true);
    const ex = await call(`${custody.url}/token`, { json: { ...EXCHANGE, subject_token: own.body.token, agent_instance_id: `${alice.agent.agent_id}:bob-sub` } });
    expect([ex.status, ex.body.error?.code]).toEqual([403, 'instance_not_bound']);
    // in open-mode style, without a credential: refused outright in registered mode
    expect((await call(`${custody.url}/issue`, { json: { tool: 'search', sponsor_id: 'alice', parent_agent_id: aliceRoot } })).status).toBe(401);

    // alice's root agent really runs; bob's agent process is told it is alice's sub-agent
    const agentEnv = (credential: string, extra: NodeJS.ProcessEnv) => ({ CUSTODY_AGENT_CREDENTIAL: credential, CALL_FOR_MS: '1', CUSTODY_POLICY_TIMEOUT_MS: '3000', ...extra });
    const aliceRun = await runAgent('revocation.cjs', { custody, env: agentEnv(alice.credential, { CUSTODY_AGENT_INSTANCE_ID: aliceRoot }) });
    expect(aliceRun.report?.calls?.[0], aliceRun.stderr).toMatchObject({ ok: true });
    const bobRun = await runAgent('revocation.cjs', {
      custody,
      env: agentEnv(bob.credential, { CUSTODY_PARENT_AGENT_ID: aliceRoot, CUSTODY_AGENT_INSTANCE_ID: `${alice.agent.agent_id}:bob-graft` }),
    });
    const bobInstance: string = bobRun.report?.instance;
    expect(bobInstance, bobRun.stderr).toBe(`${bob.agent.agent_id}:${alice.agent.agent_id}:bob-graft`);
    expect(bobRun.report.calls[0]).toMatchObject({ ok: true });

    await auditEventsOf(custody, aliceRoot, 1);
    const bobRows = await auditEventsOf(custody, bobInstance, 1);
    expect(bobRows.every((e) => e.sponsor_id === 'bob' && !e.parent_agent_id)).toBe(true);
    const trail = await auditTrailOf(custody, aliceRoot);
    const listed = JSON.stringify(trail);
    expect(trail.agent.children).toEqual([]);
    expect(listed).not.toContain(bob.agent.agent_id);
    expect(listed).not.toContain('"bob"');
  }, 120_000);

  it("after offboarding dave, his agent's live token is denied at /v1/check and his running agent's cached allow is refused, within 5 s", async () => {
    const dave = await register('dave', 'user', ['search']);
    const live = await issueAs(dave.credential, { tool: 'search', ttl: 60 });
    expect((await check(live.body.token)).body.decision).toBe('allow');

    // a real agent process calling every 200 ms: after its first call the allow is cached
    const child = spawn(process.execPath, ['--require', 'custody/register', path.join(AGENTS, 'revocation.cjs')], {
      cwd: ROOT,
      env: { ...process.env, NODE_OPTIONS: '', CUSTODY_LOG_LEVEL: 'warn', CUSTODY_URL: custody.url, OTEL_EXPORTER_OTLP_ENDPOINT: custody.otlpUrl, CUSTODY_AGENT_CREDENTIAL: dave.credential, CALL_FOR_MS: '60000', CUSTODY_POLICY_TIMEOUT_MS: '3000' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { at?: number; ok?: boolean; code?: string; message?: string; instance?: string });
    try {
      // warm: several allowed calls, the later ones from the cache
      await eventually(async () => (lines().filter((l) => l.ok).length >= 5 ? true : undefined), 30_000, 100).catch(() => {
        throw new Error(`the agent did not make 5 allowed calls:\n${out}\n${err}`);
      });

      const off = await call(`${custody.url}/v1/sponsors/dave/offboard`, { json: { reason: 'left' }, auth: admin });
      expect(off.status).toBe(200);
      const offboardedAt = Date.now();

      const denied = await eventually(async () => {
        const r = await check(live.body.token);
        return r.body.decision === 'deny' ? r.body : undefined;
      }, 10_000, 100);
      expect(Date.now() - offboardedAt).toBeLessThan(5000);
      expect(denied.reason).toMatch(/ERR_TOKEN_REVOKED\): sponsor 'dave' was offboarded/);

      const refused = await eventually(async () => lines().find((l) => l.ok === false), 10_000, 100).catch(() => {
        throw new Error(`dave's agent was never refused:\n${out}\n${err}`);
      });
      expect(refused.at! - offboardedAt).toBeLessThan(5000);
      expect(refused.code).toBe('ERR_POLICY_DENIED');
      await exited;
      const report = lines().pop()!;
      // the calls before the offboarding were allowed, and at least one of them from the cache
      const rows = await auditEventsOf(custody, report.instance!, lines().filter((l) => l.ok).length);
      expect(rows.some((r) => r.decision === 'allow' && r.policy_cached)).toBe(true);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);

  it('revoking an agent or rotating its credential denies the tokens that went with it; a verifier with the feed agrees', async () => {
    const erin = await register('erin', 'support', ['search']);
    const frank = await register('frank', 'support', ['search']);
    const erinToken = (await issueAs(erin.credential, { tool: 'search' })).body.token;
    const frankOld = (await issueAs(frank.credential, { tool: 'search' })).body.token;
    const verifier = createTokenVerifier({ issuer: SEED.issuer, jwks: jwksUrl(custody.url), revocations: revocationsUrl(custody.url), revocationRefreshMs: 500 });
    const refusedCode = async (token: string) => verifier.verify(token, { audience: 'search' }).then(() => 'accepted', (e: TokenError) => e.code);
    expect(await refusedCode(erinToken)).toBe('accepted');
    expect(await refusedCode(frankOld)).toBe('accepted');

    expect((await call(`${custody.url}/v1/agents/${erin.agent.agent_id}/revoke`, { json: { reason: 'compromised' }, auth: admin })).status).toBe(200);
    const rotated = await call(`${custody.url}/v1/agents/${frank.agent.agent_id}/rotate`, { method: 'POST', auth: admin });
    expect(rotated.status).toBe(200);
    const frankNew = (await issueAs(rotated.body.credential, { tool: 'search' })).body.token;

    await eventually(async () => ((await check(erinToken)).body.decision === 'deny' ? true : undefined), 5000, 100);
    expect((await check(frankOld)).body.reason).toMatch(/ERR_TOKEN_REVOKED/);
    expect((await check(frankNew)).body.decision).toBe('allow');

    await eventually(async () => ((await refusedCode(erinToken)) === TOKEN_ERROR.REVOKED ? true : undefined), 5000, 100);
    expect(await refusedCode(frankOld)).toBe(TOKEN_ERROR.REVOKED);
    expect(await refusedCode(frankNew)).toBe('accepted');

    // the feed names what was revoked, never a credential or a reason
    const feed = await call(`${custody.url}/v1/tokens/revocations`);
    expect(feed.status).toBe(200);
    expect(feed.body.revocations).toEqual(expect.arrayContaining([
      expect.objectContaining({ kind: 'agent', agent_id: erin.agent.agent_id }),
      expect.objectContaining({ kind: 'credential', agent_id: frank.agent.agent_id, credential_id: frank.agent.credential_id }),
    ]));
    expect(JSON.stringify(feed.body)).not.toMatch(/compromised|cag\./);
  }, 60_000);
});

describe('revocations reach standalone policy-plane replicas through the feed', () => {
  let sink: OtlpSink;
  let tokens: RunningCustody;
  const planes: RunningCustody[] = [];
  beforeAll(async () => {
    sink = await startOtlpSink();
    tokens = await startCustody({ args: ['--otlp-url', sink.url], env: { CUSTODY_ADMIN_TOKEN: ADMIN } });
    for (let i = 0; i < 2; i++) {
      planes.push(await startCustody({ command: 'policy-plane', args: ['--token-url', tokens.url, '--otlp-url', sink.url], env: { CUSTODY_ADMIN_TOKEN: ADMIN } }));
    }
  }, 120_000);
  afterAll(async () => {
    for (const p of planes) await p.stop();
    await tokens?.stop();
    await sink?.close();
  });

  it('both replicas deny an offboarded sponsor\'s live token within 5 s and announce the change with the rollout', async () => {
    const issued = await call(`${tokens.url}/issue`, { json: { tool: 'search', sponsor_id: 'dave', role: 'support', agent_instance_id: 'dave-replica-0' } });
    expect(issued.status).toBe(201);
    const other = await call(`${tokens.url}/issue`, { json: { tool: 'search', sponsor_id: 'erin', role: 'support', agent_instance_id: 'erin-replica-0' } });
    const versions: string[] = [];
    for (const plane of planes) {
      expect(plane.output()).toContain(`${tokens.url}/v1/tokens/revocations`);
      expect((await call(`${plane.url}/v1/check`, { json: { token: issued.body.token, tool: 'search', action: 'call' } })).body.decision).toBe('allow');
      versions.push((await call(`${plane.url}/v1/rollout`)).body.revocations.version);
    }

    expect((await call(`${tokens.url}/v1/sponsors/dave/offboard`, { method: 'POST', auth: `Bearer ${ADMIN}` })).status).toBe(200);
    const offboardedAt = Date.now();
    for (const [i, plane] of planes.entries()) {
      await eventually(async () => {
        const r = await call(`${plane.url}/v1/check`, { json: { token: issued.body.token, tool: 'search', action: 'call' } });
        return r.body.decision === 'deny' ? r.body : undefined;
      }, 10_000, 100);
      expect(Date.now() - offboardedAt).toBeLessThan(5000);
      expect((await call(`${plane.url}/v1/rollout`)).body.revocations.version).not.toBe(versions[i]);
      // another sponsor's token is untouched
      expect((await call(`${plane.url}/v1/check`, { json: { token: other.body.token, tool: 'search', action: 'call' } })).body.decision).toBe('allow');
    }
  }, 60_000);
});
