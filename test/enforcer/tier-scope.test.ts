import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditEventsOf, runAgent } from '../helpers/agents';
import { startCustody, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, EXAMPLE_POLICY, metric, policyFile, putRollout } from '../helpers/policy';

/**
 * A tier-scoped canary (`rollout: { scope: { "customer.tier": [free] } }`) at 100 %: the free
 * tier's calls are enforced (a denied call is refused), every other tier's, and calls that report
 * no tier, run in shadow (a denied call runs, and is recorded as the plane's deny). The tier comes
 * from a call attribute or from the agent's resource attributes (OTEL_RESOURCE_ATTRIBUTES).
 * GET /v1/rollout, /v1/rollback/status, `custody rollback check` and /metrics show the scope.
 */
const policy = policyFile(
  fs.readFileSync(EXAMPLE_POLICY, 'utf8').replace(/rollout:\n  percent: 10 .*\n/, `rollout:\n  percent: 100\n  scope: { "customer.tier": [free] }\n`),
);
let custody: RunningCustody;

beforeAll(async () => {
  expect(fs.readFileSync(policy, 'utf8')).toContain('scope: { "customer.tier": [free] }');
  custody = await startCustody({ args: ['--policy', policy], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
  expect((await putRollout(custody.url, { percent: 100, reason: 'the free tier only' })).status).toBe(200);
}, 120_000);

afterAll(async () => {
  await custody?.stop();
});

describe('a tier-scoped canary', () => {
  it('GET /v1/rollout shows the scope', async () => {
    const body = await (await fetch(`${custody.url}/v1/rollout`)).json();
    expect(body).toMatchObject({ percent: 100, scope: { 'customer.tier': ['free'] } });
  });

  it('enforces the free tier only, by call attribute; the rest runs in shadow', async () => {
    const instance = `tiers-${randomUUID()}`;
    const run = await runAgent('tier-calls.cjs', {
      custody,
      env: { TIERS: 'free,paid,-', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: instance },
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report.ended).toEqual({
      free: ['ran', 'ERR_POLICY_DENIED'],
      paid: ['ran', 'ran'],
      '-': ['ran', 'ran'],
    });
    // free first, waited for (so in call order); then paid and no tier, each a search and a
    // file-store delete, run in shadow: their records end when their shadow decisions arrive,
    // in whatever order a loaded machine gives
    const events = await auditEventsOf(custody, instance, 6);
    const rows = events.map((e) => [e.tool_id, e.cohort, e.enforced, e.decision]);
    expect(rows.slice(0, 2)).toEqual([
      ['search', 'canary', true, 'allow'],
      ['file-store', 'canary', true, 'deny'],
    ]);
    expect(rows.slice(2).map((r) => JSON.stringify(r)).sort()).toEqual(
      [
        ['file-store', 'baseline', false, 'deny'],
        ['file-store', 'baseline', false, 'deny'],
        ['search', 'baseline', false, 'allow'],
        ['search', 'baseline', false, 'allow'],
      ].map((r) => JSON.stringify(r)),
    );
  }, 120_000);

  it("enforces an agent whose resource attributes put it in the free tier", async () => {
    const free = await runAgent('tier-calls.cjs', {
      custody,
      env: { TIERS: '-', OTEL_RESOURCE_ATTRIBUTES: 'customer.tier=free,deployment.environment=test', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support' },
    });
    expect(free.code, free.stderr).toBe(0);
    expect(free.report.ended).toEqual({ '-': ['ran', 'ERR_POLICY_DENIED'] });
    // a call attribute wins over the resource's
    const paidCall = await runAgent('tier-calls.cjs', {
      custody,
      env: { TIERS: 'paid', OTEL_RESOURCE_ATTRIBUTES: 'customer.tier=free', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support' },
    });
    expect(paidCall.report.ended).toEqual({ paid: ['ran', 'ran'] });
  }, 120_000);

  it('the rollback status, the CLI and /metrics show the scope', async () => {
    const status = await (await fetch(`${custody.url}/v1/rollback/status`)).json();
    expect(status.rollout).toEqual({ percent: 100, scope: { 'customer.tier': ['free'] } });
    expect(await metric(custody.url, 'custody_rollout_scope_info', { attribute: 'customer.tier', values: 'free' })).toBe(1);
    const { runCli } = await import('../helpers/custody');
    const cli = await runCli(['rollback', 'check', '--url', custody.url]);
    expect(cli.stdout).toMatch(/rollout 100% of customer\.tier=free/);
  });
});
