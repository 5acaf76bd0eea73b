import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAgent } from '../helpers/agents';
import { startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, putRollout } from '../helpers/rollback';

/**
 * A sub-agent whose parent could not obtain a delegation token for it (the token service was out
 * when it was started) cannot prove its place in the chain. It must not act on a token of its
 * own, which would be wider than its parent's delegation: its enforced calls fail closed.
 */
let custody: RunningCustody;
const dataDir = tempDir('custody-delegation-unavailable-');

beforeAll(async () => {
  custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' } });
  expect((await putRollout(custody.url, 100, 'test: everyone enforced')).status).toBe(200);
}, 300_000);
afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('a sub-agent its parent could not delegate to', () => {
  const env = { CALLS: '2', CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_PARENT_AGENT_ID: 'parent-agent-1' };

  it('fails closed instead of issuing a token of its own', async () => {
    const run = await runAgent('sequential-calls.cjs', { custody, env: { ...env, CUSTODY_DELEGATION_UNAVAILABLE: 'the parent could not obtain a delegation token' } });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report.results).toEqual([expect.objectContaining({ ok: false, code: 'ERR_POLICY_UNAVAILABLE' }), expect.objectContaining({ ok: false, code: 'ERR_POLICY_UNAVAILABLE' })]);
  });

  it('the same agent without the mark (an open-mode setup naming its parent by hand) still runs', async () => {
    const run = await runAgent('sequential-calls.cjs', { custody, env });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report.results.map((r: { ok: boolean }) => r.ok)).toEqual([true, true]);
  });
});
