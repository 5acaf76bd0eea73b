import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../collector/store';
import { DATABASE, TABLE } from '../../common/names';
import { eventually, startCustody, type RunningCustody } from '../helpers/custody';
import { call, EXCHANGE } from '../helpers/tokens';

/**
 * Through a real `custody up`: the token service's issuances and refusals travel as OTLP spans to
 * the collector, land in token_events, and feed the token issuance failure ratio.
 */
describe('token events in custody up', () => {
  let custody: RunningCustody;
  beforeAll(async () => {
    // a small minimum sample, so that seven requests are enough for the alert to judge
    custody = await startCustody({ env: { CUSTODY_RULE_MIN_SAMPLE: '5' } });
  });
  afterAll(() => custody.stop());

  it('stores every issuance and refusal in token_events', async () => {
    const issued = [];
    for (const sponsor of ['alice', 'bob', 'carol']) {
      const r = await call(`${custody.url}/issue`, { json: { tool: 'billing', tools: ['billing', 'search'], sponsor_id: sponsor, role: 'support', ttl: 300 } });
      expect(r.status).toBe(201);
      issued.push(r.body.claims);
    }
    const child = await call(`${custody.url}/token`, { json: { ...EXCHANGE, subject_token: (await call(`${custody.url}/issue`, { json: { tool: 'search', tools: ['search'], sponsor_id: 'dana' } })).body.token, audience: 'search' } });
    expect(child.status).toBe(200);
    expect((await call(`${custody.url}/issue`, { json: { tool: 'billing', ttl: 300 } })).body.error.code).toBe('sponsor_required');
    expect((await call(`${custody.url}/issue`, { json: { tool: 'billing', sponsor_id: 'erin', ttl: 5000 } })).body.error.code).toBe('ttl_too_long');

    // 5 issued, 2 refused: the ratio the alert (> 0.5 %) reads is computed from the store
    const status = await eventually(async () => {
      const r = await call(`${custody.url}/v1/rollback/status?window=15m`);
      const alert = r.body?.alerts?.find((a: { alert: string }) => a.alert === 'token_issue_failure_ratio');
      return alert && alert.value !== null && Math.abs(alert.value - 2 / 7) < 1e-9 ? alert : undefined;
    }, 30_000, 250);
    expect(status).toMatchObject({ threshold: 0.005, firing: true });
    const metrics = await (await fetch(`${custody.url}/metrics`)).text();
    expect(metrics).toMatch(/custody_tokens_issued_total\{result="issued"\} 5/);
    expect(metrics).toMatch(/custody_tokens_issued_total\{result="refused"\} 2/);

    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, migrate: false });
    try {
      const raw = (await (
        await store.client.query({
          query: `SELECT result, kind, code, jti, sponsor_id, agent_instance_id, parent_agent_id, tool_id, role, ttl_seconds,
                         toUnixTimestamp64Milli(expires_at) AS expires_ms
                  FROM ${DATABASE}.${TABLE.TOKEN_EVENTS} ORDER BY timestamp`,
          format: 'JSONEachRow',
        })
      ).json()) as Record<string, unknown>[];
      // 64-bit integers may come quoted or not, depending on the server's JSON settings
      const rows = raw.map((r) => ({ ...r, expires_ms: Number(r.expires_ms) }));
      expect(rows).toHaveLength(7);
      expect(rows.filter((r) => r.result === 'issued')).toHaveLength(5);
      for (const c of issued) {
        expect(rows).toContainEqual(expect.objectContaining({
          result: 'issued', kind: 'issue', code: '', jti: c.jti, sponsor_id: c.sponsor_id, agent_instance_id: c.agent_instance_id,
          tool_id: 'billing', role: 'support', ttl_seconds: 300, expires_ms: c.exp * 1000,
        }));
      }
      expect(rows).toContainEqual(expect.objectContaining({
        result: 'issued', kind: 'exchange', jti: child.body.claims.jti, parent_agent_id: child.body.claims.parent_agent_id, sponsor_id: 'dana',
      }));
      expect(rows).toContainEqual(expect.objectContaining({ result: 'refused', kind: 'issue', code: 'sponsor_required', sponsor_id: '' }));
      expect(rows).toContainEqual(expect.objectContaining({ result: 'refused', kind: 'issue', code: 'ttl_too_long', sponsor_id: 'erin', ttl_seconds: 5000 }));
    } finally {
      await store.close();
    }
  });
});
