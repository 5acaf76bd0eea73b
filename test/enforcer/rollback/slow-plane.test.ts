import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, getRollout, putRollout } from '../../helpers/rollback';

/**
 * A really slow policy plane: a real `custody up` whose plane receives each request's headers at
 * once and its body 450 ms later (a loopback proxy holding the bytes back), so the plane's own
 * clock, started at the request's arrival, sees every decision take 450 ms or more. A real agent
 * process, waiting up to 5 s, makes 25 calls through it. The p95 rule and the 200 ms alert must
 * both fire from the plane's decision log, and the rollback job must act on it.
 */

const DELAY_MS = 450;

/** Forwards everything up to the end of each request's headers at once, the rest DELAY_MS later, in order. */
async function slowBodyProxy(target: { host: string; port: number }): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    let queue: Promise<void> = Promise.resolve();
    const later = (chunk: Buffer) => {
      queue = queue.then(() => new Promise<void>((resolve) => setTimeout(() => (upstream.write(chunk), resolve()), DELAY_MS)));
    };
    client.on('data', (chunk: Buffer) => {
      const end = chunk.indexOf('\r\n\r\n');
      if (end < 0) return later(chunk);
      const head = chunk.subarray(0, end + 4);
      const rest = chunk.subarray(end + 4);
      queue = queue.then(() => void upstream.write(head));
      if (rest.length) later(rest);
    });
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

let custody: RunningCustody;
let proxy: Awaited<ReturnType<typeof slowBodyProxy>>;
const dataDir = tempDir('custody-slow-plane-');

beforeAll(async () => {
  custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' } });
  const u = new URL(custody.url);
  proxy = await slowBodyProxy({ host: u.hostname, port: Number(u.port) });
}, 300_000);
afterAll(async () => {
  await proxy?.close();
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('a really slow policy plane', () => {
  it("fires the p95 rollback rule and the 200 ms alert from the plane's own clock, and the rollback job acts", async () => {
    // every agent in the canary, so each call is enforced and waits for the plane
    expect((await putRollout(custody.url, 100, 'test: everyone enforced')).status).toBe(200);
    const run = await runAgent('sequential-calls.cjs', {
      custody,
      timeoutMs: 400_000,
      env: {
        CALLS: '25',
        CUSTODY_POLICY_URL: proxy.url,
        CUSTODY_POLICY_TIMEOUT_MS: '5000',
        CUSTODY_DECISION_CACHE_TTL_S: '0',
        CUSTODY_SPONSOR_ID: 'alice',
        CUSTODY_ROLE: 'support',
        CUSTODY_AGENT_INSTANCE_ID: 'slow-plane-agent-1',
      },
    });
    expect(run.code, run.stderr).toBe(0);
    const results = run.report.results as { ok: boolean; ms: number }[];
    expect(results.filter((r) => r.ok)).toHaveLength(25);
    expect(Math.min(...results.map((r) => r.ms))).toBeGreaterThanOrEqual(DELAY_MS);

    const status = await eventually(async () => {
      const res = await fetch(`${custody.url}/v1/rollback/status`);
      const body = (await res.json()) as any;
      return body.inputs.plane_decisions >= 25 ? body : undefined;
    }, 120_000, 500);
    const p95 = status.rules.find((r: { rule: string }) => r.rule === 'policy_latency_p95_ms');
    expect(p95.value).toBeGreaterThanOrEqual(DELAY_MS);
    expect(p95).toMatchObject({ verdict: 'breached', breached: true });
    expect(status.alerts.find((a: { alert: string }) => a.alert === 'policy_latency_p95_ms')).toMatchObject({ firing: true });
    expect(status.action).toBe('rollback');

    // what the alert rules in alerts/custody.rules.yml compare: the p95 gauge over 0.2 s and 0.3 s
    const metrics = await (await fetch(`${custody.url}/metrics`)).text();
    const gauge = Number(/^custody_policy_latency_p95_seconds\{cohort="canary"\} (\S+)$/m.exec(metrics)?.[1]);
    expect(gauge).toBeGreaterThan(0.3);

    // the rollback job, once: it rolls the gate back on the p95
    const r = spawnSync(process.execPath, [CLI, 'rollback', 'watch', '--once', '--url', custody.url], {
      cwd: ROOT,
      env: { ...process.env, CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_LOG_LEVEL: 'warn' },
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rolled back 100% → 0%: rollback: policy_latency_p95_ms/);
    expect((await getRollout(custody.url)).percent).toBe(0);
  }, 900_000);
});
