import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, calls, decisions, getRollout, queryStore, seedStore } from '../../helpers/rollback';

/**
 * docs/runbook.md, played: every `custody …` line of its ```sh blocks runs, in order, against a
 * real `custody up` whose canary is failing (plane errors in its log, calls without sponsor), with
 * the environment the runbook tells the reader to export. After each step the rollout is what the
 * runbook says it is.
 */

const RUNBOOK = path.join(ROOT, 'docs/runbook.md');

/** The runbook's commands: `custody` lines of ```sh blocks, as argv (double-quoted arguments kept whole). */
function runbookCommands(): string[][] {
  const text = fs.readFileSync(RUNBOOK, 'utf8');
  const out: string[][] = [];
  for (const block of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const line of block[1]!.split('\n')) {
      const l = line.trim();
      if (!l.startsWith('custody ')) continue;
      out.push([...l.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!).slice(1));
    }
  }
  return out;
}

let custody: RunningCustody;
const dataDir = tempDir('custody-runbook-');

beforeAll(async () => {
  const now = Date.now();
  seedStore(dataDir, {
    audit_events: calls(300, now, (i) => (i % 20 === 0 ? { sponsor_id: '' } : {})),
    policy_decisions: decisions(300, now, (i) => (i % 10 === 0 ? { decision: 'error' } : {})),
  });
  // the watch is off: here a person walks the path
  custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' } });
}, 300_000);
afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('docs/runbook.md', () => {
  it('every command runs, in order, and leaves the rollout where the runbook says', async () => {
    const commands = runbookCommands();
    expect(commands.map((c) => c.slice(0, 2).join(' '))).toEqual([
      'rollback check',
      'rollback check',
      'rollback set',
      'rollback incident',
      'rollback check',
      'rollback incident',
      'rollback set',
    ]);
    const env = { ...process.env, CUSTODY_URL: custody.url, CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_LOG_LEVEL: 'warn' };
    const states: { percent: number; incident: boolean }[] = [];
    for (const argv of commands) {
      const r = spawnSync(process.execPath, [CLI, ...argv], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
      const what = `custody ${argv.join(' ')}\n${r.stdout}${r.stderr}`;
      // a check answers with a verdict (0 healthy, 1 breached, 3 not enough data); anything else succeeds
      if (argv[1] === 'check') expect([0, 1, 3], what).toContain(r.status);
      else expect(r.status, what).toBe(0);
      // retried: a CLI run can outlast the server's keep-alive and leave a closed socket in the pool
      const state = await eventually(
        () => fetch(`${custody.url}/v1/rollout`).then((res) => res.json() as Promise<{ percent: number; incident: unknown }>).catch(() => undefined),
        30_000,
      );
      states.push({ percent: state.percent, incident: state.incident !== null });
    }
    expect(states).toEqual([
      { percent: 10, incident: false }, // the canary is failing
      { percent: 10, incident: false },
      { percent: 0, incident: false }, // enforcement off
      { percent: 0, incident: true }, // allows cached longer
      { percent: 0, incident: true },
      { percent: 0, incident: false }, // incident over
      { percent: 10, incident: false }, // back at the first stage
    ]);
    const rollout = await getRollout(custody.url);
    expect(rollout.reason).toMatch(/INC-42 resolved/);
    // the first check saw the breach the runbook is about
    const first = spawnSync(process.execPath, [CLI, 'rollback', 'check'], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
    expect(first.status, first.stdout).toBe(1);
    expect(first.stdout).toMatch(/policy_error_rate .* BREACHED/);

    // every change is on record with its actor and reason
    await custody.stop();
    const events = queryStore<{ to_percent: number; reason: string; actor: string }>(dataDir, "SELECT to_percent, reason, actor FROM custody.rollout_events WHERE actor != 'policy-plane' ORDER BY timestamp");
    expect(events.map((e) => e.to_percent)).toEqual([0, 0, 0, 10]);
    expect(events.every((e) => e.actor.length > 0 && /INC-42/.test(e.reason))).toBe(true);
    custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' } });
  }, 600_000);

  it('refuses bad input with exit 2 and changes nothing', async () => {
    const env = { ...process.env, CUSTODY_URL: custody.url, CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN };
    const before = await getRollout(custody.url);
    for (const argv of [
      ['rollback', 'set', '150', '--reason', 'too far'],
      ['rollback', 'set', '-5', '--reason', 'negative'],
      ['rollback', 'set', '0'],
      ['rollback', 'set', '0', '--reason', ' '],
      ['rollback', 'incident', '--reason', 'neither'],
      ['rollback', 'incident', '--cache-ttl', '2h', '--reason', 'too long'],
      ['rollback', 'incident', '--cache-ttl', '10m', '--off', '--reason', 'both'],
    ]) {
      const r = spawnSync(process.execPath, [CLI, ...argv], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
      expect(r.status, argv.join(' ')).toBe(2);
      expect(r.stderr.length, argv.join(' ')).toBeGreaterThan(0);
    }
    const wrongToken = spawnSync(process.execPath, [CLI, 'rollback', 'set', '0', '--reason', 'x'], {
      cwd: ROOT,
      env: { ...env, CUSTODY_ADMIN_TOKEN: 'not-the-token' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(wrongToken.status).toBe(2);
    expect(wrongToken.stderr).toMatch(/401/);
    expect(wrongToken.stderr).not.toContain('not-the-token');
    // a fresh connection: the CLI runs above can outlast the server's keep-alive
    const after = await eventually(() => getRollout(custody.url).catch(() => undefined), 30_000);
    expect(after).toMatchObject({ percent: before.percent, revision: before.revision });
  }, 600_000);
});
