import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isDecisionId } from '../../../enforcer/policy/ids';
import { cohortOf } from '../../../enforcer/policy/rollout';
import { openStore } from '../../../collector/store';
import { createLogger } from '../../../common/log';
import { startCustody, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, check, issue, metric, policyFile, putRollout } from '../../helpers/policy';

// The policy plane inside a real `custody up`, tokens from its real token service; at the end the
// decision log is read back from the collector's store.
describe('policy plane in custody up', () => {
  let custody: RunningCustody;
  let url: string;

  beforeAll(async () => {
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    url = custody.url;
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('decides from the verified token, never from fields the caller adds', async () => {
    const user = await issue(url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: 'u-1', role: 'user' });
    // The caller claims to be an admin of another sponsor: ignored.
    const r = await check(url, { token: user.token, tool: 'billing', action: 'charge', role: 'admin', sponsor_id: 'mallory', agent_instance_id: 'x' });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ decision: 'deny', rule_id: 'default-deny' });
    expect(r.body.reason).toContain("role 'user'");

    const support = await issue(url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: 's-1', role: 'support' });
    const ok = await check(url, { token: support.token, tool: 'billing', action: 'refund' });
    expect(ok.status).toBe(200);
    const cohort = cohortOf('s-1', 10);
    expect(ok.body).toMatchObject({
      decision: 'allow',
      rule_id: 'allow-support-billing',
      cohort,
      enforced: cohort === 'canary',
      policy_version: 'starter-1',
      risk: 'high',
      single_use_token: true,
      rollout_percent: 10,
      token_jti: support.claims.jti,
    });
    expect(isDecisionId(ok.body.policy_decision_id)).toBe(true);
  });

  it('gives every decision its own time-sortable id', async () => {
    const t = await issue(url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 's-2', role: 'support' });
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) ids.push((await check(url, { token: t.token, tool: 'search', action: 'call' })).body.policy_decision_id);
    expect(new Set(ids).size).toBe(20);
    expect([...ids].sort()).toEqual(ids);
  });

  it('denies bad tokens with a reason, and refuses malformed requests with 400', async () => {
    const search = await issue(url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 's-3', role: 'support' });
    const [h, p, s] = search.token.split('.') as [string, string, string];
    const tampered = `${h}.${p}.${s.slice(0, -4)}${s.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`;
    // Another payload under the same signature: the role raised to admin.
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, role: 'admin' })).toString('base64url')}.${s}`;
    const cases: [unknown, RegExp][] = [
      [{ tool: 'search', action: 'call' }, /no token/],
      [{ token: 'not-a-jwt', tool: 'search', action: 'call' }, /ERR_TOKEN_MALFORMED/],
      [{ token: tampered, tool: 'search', action: 'call' }, /ERR_TOKEN_SIGNATURE/],
      [{ token: forged, tool: 'search', action: 'call' }, /ERR_TOKEN_SIGNATURE/],
      [{ token: search.token, tool: 'billing', action: 'refund' }, /ERR_TOKEN_AUDIENCE/],
    ];
    for (const [body, reason] of cases) {
      const r = await check(url, body);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ decision: 'deny', rule_id: 'token-invalid', cohort: 'canary', enforced: true });
      expect(r.body.reason).toMatch(reason);
      expect(isDecisionId(r.body.policy_decision_id)).toBe(true);
    }
    // billing takes each token once
    const billing = await issue(url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: 's-3', role: 'support' });
    expect((await check(url, { token: billing.token, tool: 'billing', action: 'refund' })).body.decision).toBe('allow');
    const replay = await check(url, { token: billing.token, tool: 'billing', action: 'refund' });
    expect(replay.body).toMatchObject({ decision: 'deny', rule_id: 'token-invalid' });
    expect(replay.body.reason).toContain('ERR_TOKEN_REPLAY');

    for (const body of [{ token: search.token, action: 'call' }, { token: search.token, tool: 'search' }, { token: 5, tool: 'search', action: 'call' }, '[1]', '{"tool":']) {
      const r = await check(url, body);
      expect(r.status).toBe(400);
      expect(r.body.error.code).toMatch(/invalid_request/);
    }
  });

  it('a token that names a purpose decides with that purpose', async () => {
    const t = await issue(url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 's-4', role: 'support', purpose: 'ticket:1' });
    expect((await check(url, { token: t.token, tool: 'search', action: 'call', purpose: 'ticket:1' })).body.decision).toBe('allow');
    const other = await check(url, { token: t.token, tool: 'search', action: 'call', purpose: 'marketing' });
    expect(other.body).toMatchObject({ decision: 'deny', rule_id: 'purpose-mismatch' });
  });

  it('exposes decision metrics with bounded tool labels', async () => {
    const t = await issue(url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 'm-1', role: 'user' });
    const before = (await metric(url, 'custody_policy_decisions_total', { decision: 'allow', tool: 'search' })) ?? 0;
    await check(url, { token: t.token, tool: 'search', action: 'call' });
    await check(url, { token: t.token, tool: 'made-up-tool-1234', action: 'call' });
    expect(await metric(url, 'custody_policy_decisions_total', { decision: 'allow', tool: 'search' })).toBe(before + 1);
    expect(await metric(url, 'custody_policy_decisions_total', { decision: 'deny', tool: 'other' })).toBeGreaterThanOrEqual(1);
    expect(await metric(url, 'custody_policy_decision_duration_seconds_count')).toBeGreaterThan(0);
    expect(await metric(url, 'custody_policy_version', { version: 'starter-1' })).toBe(1);
    expect(await metric(url, 'custody_policy_reload_errors_total')).toBe(0);
  });

  it('serves the policy summary with its tool_map', async () => {
    const body = (await (await fetch(`${url}/v1/policy`)).json()) as any;
    expect(body).toMatchObject({ version: 'starter-1', rules: 6, tool_map: { refund_customer: { tool: 'billing', action: 'refund' } } });
    expect(body.tools.billing).toMatchObject({ risk: 'high', single_use_tokens: true });
  });

  it('moves the rollout only with the admin token, refuses stale writes, and reports each change', async () => {
    const first = (await (await fetch(`${url}/v1/rollout`)).json()) as any;
    expect(first).toMatchObject({ percent: 10, stage: 1, stages: [10, 30, 60, 100], next_percent: 30, increment: 2, revision: 0, incident: null });

    expect((await putRollout(url, { percent: 30, reason: 'x' }, {})).status).toBe(401);
    expect((await putRollout(url, { percent: 30, reason: 'x' }, { authorization: 'Bearer wrong' })).status).toBe(401);
    const bad = await putRollout(url, { percent: 150, reason: 'x' });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('percent');
    expect((await putRollout(url, { percent: 30 })).body.error.message).toContain('reason');
    expect((await (await fetch(`${url}/v1/rollout`)).json()) as any).toMatchObject({ percent: 10, revision: 0 });

    const moved = await putRollout(url, { percent: 30, reason: 'healthy for 24h', actor: 'ops-alice' }, { authorization: `Bearer ${ADMIN_TOKEN}`, 'if-match': '"0"' });
    expect(moved.status).toBe(200);
    expect(moved.body).toMatchObject({ percent: 30, stage: 2, next_percent: 60, revision: 1, reason: 'healthy for 24h', actor: 'ops-alice' });
    expect(moved.etag).toBe('"1"');
    // decided on a stale read: refused, nothing changes
    expect((await putRollout(url, { percent: 60, reason: 'r' }, { authorization: `Bearer ${ADMIN_TOKEN}`, 'if-match': '"0"' })).status).toBe(412);
    expect((await putRollout(url, { percent: 60, reason: 'r', expected_percent: 10 })).status).toBe(409);
    expect(await metric(url, 'custody_rollout_percent')).toBe(30);

    // the plane's cohort follows the new percent
    const t = await issue(url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 'r-1', role: 'user' });
    expect((await check(url, { token: t.token, tool: 'search', action: 'call' })).body).toMatchObject({ cohort: cohortOf('r-1', 30), rollout_percent: 30 });
  });

  it('the incident switch is an admin change that agents read with the rollout', async () => {
    expect((await putRollout(url, { cache_ttl_s: 600, reason: 'x' }, {}, '/v1/rollout/incident')).status).toBe(401);
    expect((await putRollout(url, { cache_ttl_s: 99_999, reason: 'x' }, undefined, '/v1/rollout/incident')).status).toBe(400);
    const on = await putRollout(url, { cache_ttl_s: 600, reason: 'plane degraded' }, undefined, '/v1/rollout/incident');
    expect(on.status).toBe(200);
    expect(on.body).toMatchObject({ percent: 30, incident: { cache_ttl_s: 600, reason: 'plane degraded', actor: 'admin' } });
    const off = await putRollout(url, { cache_ttl_s: 0, reason: 'resolved' }, undefined, '/v1/rollout/incident');
    expect(off.body.incident).toBeNull();
  });

  it('keeps the rollout across a restart', async () => {
    expect((await putRollout(url, { percent: 60, reason: 'before restart' })).status).toBe(200);
    // stopped right after the change: the plane delivers its last events before the collector stops
    expect(await custody.stop()).toBe(0);
    custody = await startCustody({ dataDir: custody.dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    url = custody.url;
    const after = (await (await fetch(`${url}/v1/rollout`)).json()) as any;
    expect(after).toMatchObject({ percent: 60, reason: 'before restart', stage: 3 });
    expect(await metric(url, 'custody_rollout_percent')).toBe(60);
  });
  it('every decision and rollout change reaches the collector\'s store, joined to the caller\'s trace', async () => {
    const t = await issue(url, { tool: 'search', sponsor_id: 'bob', agent_instance_id: 'store-1', role: 'support', purpose: 'ticket:42' });
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const r = await check(url, { token: t.token, tool: 'search', action: 'call' }, { traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
    const bad = await check(url, { token: 'x.y.z', tool: 'billing', action: 'refund' });
    expect((await putRollout(url, { percent: 100, reason: 'all in', actor: 'ops-bob' })).status).toBe(200);
    expect(await custody.stop()).toBe(0);

    const store = await openStore({ dataDir: custody.dataDir, log: createLogger('test', 'error') });
    try {
      const rows = (await (
        await store.client.query({
          query: `SELECT policy_decision_id, decision, rule_id, reason, sponsor_id, agent_instance_id, role, tool_id, action, purpose,
                         cohort, enforced, token_jti, latency_ms, trace_id FROM custody.policy_decisions
                  WHERE policy_decision_id IN {ids:Array(String)} ORDER BY policy_decision_id`,
          query_params: { ids: [r.body.policy_decision_id, bad.body.policy_decision_id] },
          format: 'JSONEachRow',
        })
      ).json()) as any[];
      expect(rows).toHaveLength(2);
      expect(rows[0]).toMatchObject({
        policy_decision_id: r.body.policy_decision_id,
        decision: 'allow',
        rule_id: 'allow-support-search',
        reason: r.body.reason,
        sponsor_id: 'bob',
        agent_instance_id: 'store-1',
        role: 'support',
        tool_id: 'search',
        action: 'call',
        purpose: 'ticket:42',
        cohort: r.body.cohort,
        enforced: r.body.enforced,
        token_jti: t.claims.jti,
        trace_id: traceId,
      });
      expect(rows[0].latency_ms).toBeGreaterThan(0);
      expect(rows[1]).toMatchObject({ decision: 'deny', rule_id: 'token-invalid', sponsor_id: '', tool_id: 'billing' });

      const changes = (await (
        await store.client.query({ query: 'SELECT from_percent, to_percent, reason, actor FROM custody.rollout_events ORDER BY timestamp', format: 'JSONEachRow' })
      ).json()) as any[];
      expect(changes).toContainEqual({ from_percent: 10, to_percent: 30, reason: 'healthy for 24h', actor: 'ops-alice' });
      expect(changes).toContainEqual({ from_percent: 30, to_percent: 60, reason: 'before restart', actor: 'admin' });
      expect(changes.at(-1)).toEqual({ from_percent: 60, to_percent: 100, reason: 'all in', actor: 'ops-bob' });
      expect(changes.some((c) => c.reason.startsWith('incident switch on'))).toBe(true);
    } finally {
      await store.close();
    }
  });
});
