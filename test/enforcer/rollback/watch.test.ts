import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry } from '../../../common/metrics';
import { METRIC } from '../../../common/names';
import { httpPlane } from '../../../enforcer/rollback/plane';
import { createRollbackWatcher, type TickResult } from '../../../enforcer/rollback/watch';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, calls, decisions, getRollout, putRollout, queryStore, seedStore } from '../../helpers/rollback';

/**
 * The auto-rollback job against a real `custody up` (collector rules + policy plane), fed with
 * known audit rows: a breach rolls the rollout back to 0 and holds it there; a healthy canary is
 * promoted 10 → 30 → 60 → 100 one healthy period at a time (durations in seconds; the pure step is tested on an injected clock); two watchers
 * never double a change; a plane that cannot be reached changes nothing, loudly.
 */

const DAY_S = 86_400;

function logSink() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      done();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function watcher(url: string, over: Partial<Parameters<typeof createRollbackWatcher>[0]> = {}) {
  const { log, lines } = logSink();
  const w = createRollbackWatcher({
    plane: httpPlane({ url, adminToken: ADMIN_TOKEN }),
    intervalS: 60,
    windowS: 900,
    healthyPeriodS: DAY_S,
    minSample: 100,
    manualGates: false,
    dryRun: false,
    actor: 'test-watcher',
    log,
    ...over,
  });
  return { w, lines };
}

function cli(url: string, ...args: string[]) {
  return spawnSync(process.execPath, [CLI, 'rollback', ...args, '--url', url], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_LOG_LEVEL: 'warn' },
    timeout: 120_000,
  });
}

const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' };
const breachRows = () => ({ audit_events: calls(300, Date.now(), (i) => (i % 20 === 0 ? { sponsor_id: '' } : {})) });
// enough calls for every rule to be settled healthy at 95 % confidence (missing sponsors: 2703)
const healthyRows = () => ({ audit_events: calls(3000, Date.now()), policy_decisions: decisions(3000, Date.now()) });

describe('rollback watch on a breach', () => {
  let custody: RunningCustody;
  const dataDir = tempDir('custody-rollback-breach-');

  beforeAll(async () => {
    seedStore(dataDir, breachRows());
    custody = await startCustody({ dataDir, env });
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('the collector sees the breach in the canary', async () => {
    const status = (await (await fetch(`${custody.url}/v1/rollback/status?cohort=canary`)).json()) as { action: string; sample_size: number };
    expect(status).toMatchObject({ action: 'rollback', sample_size: 300 });
    expect((await getRollout(custody.url)).percent).toBe(10);
  });

  it('--dry-run says what it would do and changes nothing', async () => {
    const before = await getRollout(custody.url);
    const r = cli(custody.url, 'watch', '--once', '--dry-run');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/would roll back 10% → 0%: rollback: missing_sponsor_ratio 0\.05000 > 0\.001/);
    expect(await getRollout(custody.url)).toEqual(before);
  });

  it('rolls the rollout back to 0 with the reason, and holds it there (no flapping)', async () => {
    const { w } = watcher(custody.url, { healthyPeriodS: 0.5 });
    const first = await w.tick();
    expect(first).toMatchObject({ applied: true, action: { kind: 'rollback', from: 10, to: 0, breached: ['missing_sponsor_ratio'] } });
    const after = await getRollout(custody.url);
    expect(after).toMatchObject({ percent: 0, actor: 'test-watcher' });
    expect(after.reason).toMatch(/^rollback: missing_sponsor_ratio 0\.05000 > 0\.001 over 900s \(300 calls\)/);

    // Healthy periods pass; at 0 the baseline (shadow) cohort has no calls, so nothing moves.
    for (let i = 0; i < 3; i++) {
      await sleep(700);
      const again = await w.tick();
      expect(again.applied).toBe(false);
      expect(again.action).toMatchObject({ kind: 'hold', percent: 0 });
    }
    const later = await getRollout(custody.url);
    expect(later.revision).toBe(after.revision);
    expect(later.percent).toBe(0);

    // a restarted watcher (a new instance, no memory) decides the same
    const { w: restarted } = watcher(custody.url, { healthyPeriodS: 0.5 });
    expect((await restarted.tick()).applied).toBe(false);
    expect((await getRollout(custody.url)).revision).toBe(after.revision);
  });

  it('two watchers at once make one change, never two', async () => {
    expect((await putRollout(custody.url, 30, 'test: back to 30')).status).toBe(200);
    const start = await getRollout(custody.url);
    const a = watcher(custody.url);
    const b = watcher(custody.url);
    const results: TickResult[] = [];
    for (let round = 0; round < 4; round++) results.push(...(await Promise.all([a.w.tick(), b.w.tick()])));
    expect(results.filter((r) => r.applied)).toHaveLength(1);
    expect(results.every((r) => !r.error)).toBe(true);
    const end = await getRollout(custody.url);
    expect(end.percent).toBe(0);
    expect(end.revision).toBe(start.revision + 1);
  });

  it('`custody rollback watch` keeps watching: it rolls back, says so, and stops on SIGTERM', async () => {
    expect((await putRollout(custody.url, 60, 'test: to 60')).status).toBe(200);
    const child = spawn(process.execPath, [CLI, 'rollback', 'watch', '--interval', '300ms', '--url', custody.url], {
      cwd: ROOT,
      env: { ...process.env, CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_LOG_LEVEL: 'error' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      await eventually(async () => (await getRollout(custody.url)).percent === 0);
      await eventually(async () => /rolled back 60% → 0%: rollback: missing_sponsor_ratio/.test(out));
      expect(out).toMatch(/^custody rollback watch: http:\/\/127\.0\.0\.1:\d+ every 0\.3s, window 900s, healthy period 86400s, min sample 100, advances wait for approval\n/);
    } finally {
      const code = await new Promise<number | null>((resolve) => {
        child.once('exit', (c) => resolve(c));
        child.kill('SIGTERM');
      });
      expect(code).toBe(0);
    }
  });

  it('the plane unreachable: no change, a loud error and a metric; the stored rollout survives', async () => {
    expect((await putRollout(custody.url, 10, 'test: back to 10')).status).toBe(200);
    const before = await getRollout(custody.url);
    const { w, lines } = watcher(custody.url);
    const errorsBefore = await errorCount('ERR_PLANE_UNREACHABLE');
    await custody.stop();

    const result = await w.tick();
    expect(result.applied).toBe(false);
    expect(result.error?.code).toBe('ERR_PLANE_UNREACHABLE');
    expect(result.error?.message).toMatch(/GET http:\/\/127\.0\.0\.1:\d+\/v1\/rollout: ECONNREFUSED/);
    expect(lines.some((l) => l.level === 50 && /no change made/.test(String(l.msg)) && l.code === 'ERR_PLANE_UNREACHABLE')).toBe(true);
    expect(await errorCount('ERR_PLANE_UNREACHABLE')).toBe(errorsBefore + 1);

    const r = cli(custody.url, 'watch', '--once');
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/error: GET .*\/v1\/rollout: ECONNREFUSED/);

    custody = await startCustody({ dataDir, env });
    const after = await getRollout(custody.url);
    expect(after).toMatchObject({ percent: 10, revision: before.revision });
  });
});

async function errorCount(reason: string): Promise<number> {
  const m = await registry.getSingleMetric(METRIC.ROLLBACK_WATCH_ERRORS_TOTAL)?.get();
  return m?.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

describe('rollback watch on a healthy canary', () => {
  let custody: RunningCustody;
  const dataDir = tempDir('custody-rollback-healthy-');

  beforeAll(async () => {
    seedStore(dataDir, healthyRows());
    custody = await startCustody({ dataDir, env });
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('advances 10 → 30 → 60 → 100, one stage per healthy period (durations in seconds)', async () => {
    expect((await putRollout(custody.url, 10, 'test: start the stage now')).status).toBe(200);
    const { w } = watcher(custody.url, { healthyPeriodS: 3 });
    const seen: number[] = [];
    for (let stage = 1; stage <= 4; stage++) {
      // a third of the period: not yet
      await sleep(1000);
      expect((await w.tick()).applied, `stage ${stage} early`).toBe(false);
      await sleep(2100);
      const r = await w.tick();
      if (stage <= 3) {
        expect(r, `stage ${stage}`).toMatchObject({ applied: true, action: { kind: 'advance' } });
        expect(r.action!.kind === 'advance' && r.action.reason).toMatch(/healthy for \d+s \(≥ 3s\) over 3000 calls/);
      } else {
        expect(r.action).toMatchObject({ kind: 'hold', reason: 'fully rolled out at 100%' });
      }
      // the same moment again: idempotent
      expect((await w.tick()).applied).toBe(false);
      seen.push((await getRollout(custody.url)).percent);
    }
    expect(seen).toEqual([30, 60, 100, 100]);
  });

  it('two watchers promoting at once advance each stage exactly once', async () => {
    expect((await putRollout(custody.url, 10, 'test: restart the rollout')).status).toBe(200);
    const start = await getRollout(custody.url);
    const a = watcher(custody.url, { healthyPeriodS: 2 });
    const b = watcher(custody.url, { healthyPeriodS: 2 });
    for (let stage = 1; stage <= 3; stage++) {
      await sleep(2100);
      const results = [...(await Promise.all([a.w.tick(), b.w.tick()])), ...(await Promise.all([a.w.tick(), b.w.tick()]))];
      expect(results.filter((r) => r.applied), `stage ${stage}`).toHaveLength(1);
      expect(results.some((r) => r.error)).toBe(false);
    }
    const end = await getRollout(custody.url);
    expect(end).toMatchObject({ percent: 100, revision: start.revision + 3 });
  });

  it('by default waits for `custody rollback approve`, which moves one stage and records who approved', async () => {
    expect((await putRollout(custody.url, 10, 'test: restart the rollout')).status).toBe(200);
    let r = cli(custody.url, 'approve', '--healthy-period', '1h');
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/not approved: stage 10% healthy for \d+s of 3600s/);

    await sleep(1100);
    for (const flags of [[], ['--manual-gates']]) {
      r = cli(custody.url, 'watch', '--once', ...flags, '--healthy-period', '1s');
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/waiting for approval 10% → 30%/);
      expect((await getRollout(custody.url)).percent).toBe(10);
    }
    r = cli(custody.url, 'watch', '--once', '--manual-gates', '--auto-advance');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--manual-gates and --auto-advance contradict/);
    r = cli(custody.url, 'approve', '--as', '');
    expect(r.status).toBe(2);

    r = cli(custody.url, 'approve', '--healthy-period', '1s', '--reason', 'canary reviewed', '--as', 'dana');
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rollout 10% → 30%: approved 10% → 30% by dana: canary reviewed/);
    const now = await getRollout(custody.url);
    expect(now).toMatchObject({ percent: 30, actor: 'dana' });
    expect(now.reason).toMatch(/canary reviewed/);
  });
});

describe('the rollback role inside custody up', () => {
  it('rolls back a breached canary by itself and counts it on /metrics', async () => {
    const dataDir = tempDir('custody-rollback-role-');
    seedStore(dataDir, breachRows());
    const custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_INTERVAL: '500ms' } });
    try {
      expect(custody.output()).toMatch(/rollback watch every 0\.5s/);
      const rolled = await eventually(async () => {
        const r = await getRollout(custody.url);
        return r.percent === 0 ? r : undefined;
      });
      expect(rolled.actor).toMatch(/^custody-rollback-watch@/);
      expect(rolled.reason).toMatch(/missing_sponsor_ratio/);
      const metrics = await (await fetch(`${custody.url}/metrics`)).text();
      expect(metrics).toMatch(/custody_rollback_watch_changes_total\{action="rollback"\} 1/);
      expect(metrics).toMatch(/custody_rollout_percent 0/);
    } finally {
      await custody.stop();
    }
    // the plane wrote the change to the store in process (its own record), delivered by the graceful stop
    const events = queryStore<{ from_percent: number; to_percent: number; reason: string; actor: string }>(
      dataDir,
      `SELECT from_percent, to_percent, reason, actor FROM custody.rollout_events WHERE actor != 'policy-plane' ORDER BY timestamp`,
    );
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ from_percent: 10, to_percent: 0, actor: expect.stringMatching(/^custody-rollback-watch@/) });
    expect(events[0]!.reason).toMatch(/^rollback: missing_sponsor_ratio/);
  });

  it('promotes a healthy canary through every stage after short healthy periods', async () => {
    const dataDir = tempDir('custody-rollback-role-');
    seedStore(dataDir, healthyRows());
    const custody = await startCustody({
      dataDir,
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_INTERVAL: '200ms', CUSTODY_ROLLBACK_HEALTHY_PERIOD: '1s', CUSTODY_ROLLBACK_AUTO_ADVANCE: 'on' },
    });
    try {
      const times: number[] = [];
      let last = 10;
      await eventually(
        async () => {
          const r = await getRollout(custody.url);
          if (r.percent !== last) {
            times.push(Date.parse(r.updated_at));
            last = r.percent;
          }
          return r.percent === 100;
        },
        20_000,
        50,
      );
      const r = await getRollout(custody.url);
      expect(r.revision).toBe(3);
      // each stage lasted at least the healthy period
      for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(1000);
    } finally {
      await custody.stop();
    }
  });
});

describe("the seed's rollout: an increment and no stages", () => {
  it('advances by the increment, each step only once approved; rollback needs nobody', async () => {
    const dataDir = tempDir('custody-rollback-increment-');
    const policy = path.join(dataDir, 'policy-config.yaml');
    const text = fs.readFileSync(path.join(ROOT, 'policy-config.yaml'), 'utf8').replace(/\n {2}stages: \[10, 30, 60, 100\]\n/, '\n');
    expect(text).toMatch(/increment: 2/);
    expect(text).not.toMatch(/stages:/);
    fs.writeFileSync(policy, text);
    seedStore(dataDir, healthyRows());
    const custody = await startCustody({
      dataDir,
      args: ['--policy', policy],
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_INTERVAL: '200ms', CUSTODY_ROLLBACK_HEALTHY_PERIOD: '1s' },
    });
    try {
      expect(custody.output()).toMatch(/waits for `custody rollback approve`/);
      const start = await getRollout(custody.url);
      expect(start).toMatchObject({ percent: 10, stages: [], next_percent: 12 });
      // the watch in custody up earns the step but does not take it
      await eventually(async () => /^custody_rollback_watch_awaiting_approval 1$/m.test(await (await fetch(`${custody.url}/metrics`)).text()), 30_000);
      expect((await getRollout(custody.url)).percent).toBe(10);
      const r = cli(custody.url, 'approve', '--healthy-period', '1s', '--as', 'erin', '--reason', 'day 1 checks done');
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/rollout 10% → 12%: approved 10% → 12% by erin/);
      const after = await getRollout(custody.url);
      expect(after).toMatchObject({ percent: 12, actor: 'erin', next_percent: 14 });
      // an outside watcher in auto-advance mode (opt-in) takes the next step itself
      await sleep(1100);
      const { w } = watcher(custody.url, { healthyPeriodS: 1 });
      const step = await w.tick();
      expect(step).toMatchObject({ applied: true, action: { kind: 'advance', from: 12, to: 14 } });
    } finally {
      await custody.stop();
    }
    const events = queryStore<{ to_percent: number; actor: string }>(dataDir, "SELECT to_percent, actor FROM custody.rollout_events WHERE actor != 'policy-plane' ORDER BY timestamp");
    expect(events.map((e) => [e.to_percent, e.actor])).toEqual([[12, 'erin'], [14, 'test-watcher']]);
  }, 600_000);
});
