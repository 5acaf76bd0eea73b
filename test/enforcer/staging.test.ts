import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runAgent } from '../helpers/agents';
import { ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, EXAMPLE_POLICY, check, issue, policyFile, putRollout, replaceFile } from '../helpers/policy';

/**
 * Staging: a call without a sponsor fails with a validation error (ERR_SPONSOR_MISSING)
 * everywhere, shadow included, whether the agent's CUSTODY_ENV says staging or the plane's policy
 * does (`mode: staging`, which agents read from GET /v1/rollout); and a token service in staging
 * requires a sponsor whatever its config. Every agent here is outside the canary (rollout 0 %):
 * in production only the enforcer's own refusal stops an unsponsored call; in staging that
 * refusal is the validation error.
 */
const example = fs.readFileSync(EXAMPLE_POLICY, 'utf8');
const tokenConfig = path.join(tempDir('custody-staging-token-'), 'token-service-config.yml');
fs.writeFileSync(tokenConfig, fs.readFileSync(path.join(ROOT, 'token-service-config.yml'), 'utf8').replace('require_sponsor: true', 'require_sponsor: false'));
const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN };
const running: RunningCustody[] = [];

afterAll(async () => {
  await Promise.all(running.map((c) => c.stop()));
});

async function start(policy: string, extra: NodeJS.ProcessEnv = {}): Promise<RunningCustody> {
  const c = await startCustody({ args: ['--policy', policy, '--token-config', tokenConfig], env: { ...env, ...extra } });
  running.push(c);
  expect((await putRollout(c.url, { percent: 0, reason: 'everyone in shadow' })).status).toBe(200);
  return c;
}

async function unsponsored(custody: RunningCustody, agentEnv: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const run = await runAgent('calls.cjs', { custody, env: { CALLS: '4', CUSTODY_SPONSOR_ID: '', CUSTODY_ROLE: 'support', ...agentEnv } });
  expect(run.code, run.stderr).toBe(0);
  return run.report.ended;
}

const issueWithoutSponsor = (url: string) =>
  fetch(`${url}/issue`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'search', role: 'support' }) });

describe('staging', () => {
  it('production: an unsponsored call is denied (ERR_POLICY_DENIED); with CUSTODY_ENV=staging in the agent, a validation error', async () => {
    const c = await start(policyFile(example));
    const rollout = await (await fetch(`${c.url}/v1/rollout`)).json();
    expect(rollout.percent).toBe(0);
    expect(rollout.environment).toBeUndefined();
    expect(await unsponsored(c)).toEqual(Array(4).fill('ERR_POLICY_DENIED'));
    expect(await unsponsored(c, { CUSTODY_ENV: 'staging' })).toEqual(Array(4).fill('ERR_SPONSOR_MISSING'));
    // a sponsored agent in shadow is not touched by staging: its denied calls still run
    const sponsored = await runAgent('calls.cjs', { custody: c, env: { CALLS: '4', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_ENV: 'staging' } });
    expect(sponsored.report.ended).toEqual(['ran', 'ran', 'ran', 'ran']);
    // this token config does not require a sponsor, and production leaves it so
    expect((await issueWithoutSponsor(c.url)).status).toBe(201);
  }, 180_000);

  it("the policy's mode: staging reaches agents through GET /v1/rollout, on a hot reload", async () => {
    const file = policyFile(example);
    const c = await start(file);
    replaceFile(file, example.replace('version: starter-1', 'version: starter-1-staging\nmode: staging'));
    await eventually(async () => (await (await fetch(`${c.url}/v1/rollout`)).json()).environment === 'staging', 30_000, 200);
    // an agent that does not know it is in staging learns it from the plane
    expect(await unsponsored(c)).toEqual(Array(4).fill('ERR_SPONSOR_MISSING'));
  }, 180_000);

  it('CUSTODY_ENV=staging on the servers: the plane says so and the token service requires a sponsor', async () => {
    const c = await start(policyFile(example), { CUSTODY_ENV: 'staging' });
    expect((await (await fetch(`${c.url}/v1/rollout`)).json()).environment).toBe('staging');
    const refused = await issueWithoutSponsor(c.url);
    expect(refused.status).toBe(400);
    expect((await refused.json()).error.code).toBe('sponsor_required');
    const { token } = await issue(c.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'staging-check' });
    const answer = await check(c.url, { token, tool: 'search', action: 'query' });
    expect(answer.body).toMatchObject({ decision: 'allow', environment: 'staging', cohort: 'baseline', enforced: false });
    expect(await unsponsored(c)).toEqual(Array(4).fill('ERR_SPONSOR_MISSING'));
  }, 180_000);

  it('refuses a CUSTODY_ENV it does not know', async () => {
    await expect(startCustody({ env: { CUSTODY_ENV: 'stagign' }, readyTimeoutMs: 20_000 })).rejects.toThrow(/CUSTODY_ENV must be 'staging' or 'production', got 'stagign'/);
  }, 120_000);
});
