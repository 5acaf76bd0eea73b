import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, check, issue, metric, policyFile, putRollout } from '../../helpers/policy';

// `custody policy-plane --workers 2`: two worker processes on one port, replicas of the primary's state.

const workersOf = (pid: number): number[] => {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

describe('custody policy-plane --workers', () => {
  let tokens: RunningCustody;
  let plane: RunningCustody;

  beforeAll(async () => {
    tokens = await startCustody();
    plane = await startCustody({
      command: 'policy-plane',
      args: ['--workers', '2', '--token-url', tokens.url, '--policy', policyFile()],
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN },
    });
  });
  afterAll(async () => {
    await plane?.stop();
    await tokens?.stop();
  });

  it('runs the workers it was asked for, on the one port it names', async () => {
    expect(plane.output()).toMatch(/workers\s+2, replicas of this process's plane at http:\/\/127\.0\.0\.1:\d+/);
    expect(workersOf(plane.proc.pid!)).toHaveLength(2);
  });

  it('every check is counted once on /metrics, whichever worker answered it', async () => {
    const before = (await metric(plane.url, 'custody_policy_decisions_total', { decision: 'allow', tool: 'search' })) ?? 0;
    const { token } = await issue(tokens.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'workers-1' });
    // new connections each time: the primary hands them to the workers in turn
    for (let i = 0; i < 20; i++) {
      const r = await check(plane.url, { token, tool: 'search', action: 'call' }, { connection: 'close' });
      expect(r.status).toBe(200);
      expect(r.body.decision).toBe('allow');
    }
    expect(await metric(plane.url, 'custody_policy_decisions_total', { decision: 'allow', tool: 'search' })).toBe(before + 20);
    // a gauge is the workers' common value, not their sum
    expect(await metric(plane.url, 'custody_rollout_percent')).toBe(10);
  });

  it('a rollout change through the port is in force on every worker, and compare-and-set holds', async () => {
    const { revision } = (await (await fetch(`${plane.url}/v1/rollout`)).json()) as { revision: number };
    const moved = await putRollout(plane.url, { percent: 40, reason: 'test: workers' }, { authorization: `Bearer ${ADMIN_TOKEN}`, 'if-match': `"${revision}"` });
    expect(moved.status).toBe(200);
    const stale = await putRollout(plane.url, { percent: 50, reason: 'test: stale' }, { authorization: `Bearer ${ADMIN_TOKEN}`, 'if-match': `"${revision}"`, connection: 'close' });
    expect(stale.status).toBe(412);
    await eventually(async () => {
      for (let i = 0; i < 6; i++) {
        const r = (await (await fetch(`${plane.url}/v1/rollout`, { headers: { connection: 'close' } })).json()) as { percent: number; revision: number };
        if (r.percent !== 40 || r.revision !== revision + 1) return false;
      }
      return true;
    }, 15_000, 100);
  });

  it('a single-use token is used once across the workers', async () => {
    const { token } = await issue(tokens.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'workers-2' });
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push((await check(plane.url, { token, tool: 'billing', action: 'refund' }, { connection: 'close' })).body);
    expect(answers.map((a) => a.decision)).toEqual(['allow', 'deny', 'deny', 'deny']);
    for (const a of answers.slice(1)) expect(a.reason).toMatch(/ERR_TOKEN_REPLAY/);
  });

  it('a worker that dies is replaced; SIGTERM stops them all', async () => {
    const pid = plane.proc.pid!;
    const [first] = workersOf(pid);
    process.kill(first!, 'SIGKILL');
    const replaced = await eventually(async () => {
      const now = workersOf(pid);
      return now.length === 2 && !now.includes(first!) ? now : undefined;
    }, 30_000);
    expect(plane.output()).toMatch(/policy-plane worker exited; starting another/);
    await eventually(async () => (await fetch(`${plane.url}/readyz`)).status === 200);
    expect(await plane.stop()).toBe(0);
    for (const w of replaced) expect(() => process.kill(w, 0)).toThrow();
  });
});
