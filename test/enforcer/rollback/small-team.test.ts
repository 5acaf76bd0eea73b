import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAgent } from '../../helpers/agents';
import { eventually, runCli, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, getRollout, putRollout } from '../../helpers/rollback';

/**
 * A 5-person team's canary: one agent instance, the gate at 100 %, 20 calls of which 6 fail closed
 * because the policy plane never answers them (a loopback proxy in front of a real `custody up`
 * holds every third /v1/check). Twenty calls are far below any fixed minimum; the rules must still
 * see, from the agent's own spans, that the plane failed too often, and the rollback job must act.
 */

const CALLS = 20;
/** Which /v1/check requests (1-based, in arrival order) the proxy never answers. */
const hung = (n: number) => n % 3 === 0;

/** Forwards /v1/check to the plane except the hung ones, which are held until the proxy closes. */
async function flakyPlane(target: string): Promise<{ url: string; checks(): number; close(): Promise<void> }> {
  let checks = 0;
  const held = new Set<http.ServerResponse>();
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.url === '/v1/check' && hung(++checks)) {
      held.add(res);
      return;
    }
    const upstream = await fetch(`${target}${req.url}`, {
      method: req.method,
      headers: Object.fromEntries(Object.entries(req.headers).filter(([k]) => !['host', 'connection', 'content-length'].includes(k))) as Record<string, string>,
      ...(chunks.length ? { body: Buffer.concat(chunks) } : {}),
    });
    res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/json' });
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    checks: () => checks,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of held) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

let custody: RunningCustody;
let plane: Awaited<ReturnType<typeof flakyPlane>>;
const dataDir = tempDir('custody-small-team-');

beforeAll(async () => {
  custody = await startCustody({ dataDir, env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_ROLLBACK_WATCH: 'off' } });
  plane = await flakyPlane(custody.url);
}, 300_000);
afterAll(async () => {
  await plane?.close();
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe("a small team's canary", () => {
  it('20 calls, 6 failed closed on a plane that did not answer: the rules say roll back, and the job does', async () => {
    expect((await putRollout(custody.url, 100, 'test: the whole team enforced')).status).toBe(200);
    const run = await runAgent('sequential-calls.cjs', {
      custody,
      timeoutMs: 300_000,
      env: {
        CALLS: String(CALLS),
        CUSTODY_POLICY_URL: plane.url,
        // long enough that only the held requests time out, however loaded the machine
        CUSTODY_POLICY_TIMEOUT_MS: '2000',
        CUSTODY_DECISION_CACHE_TTL_S: '0',
        CUSTODY_SPONSOR_ID: 'alice',
        CUSTODY_ROLE: 'support',
        CUSTODY_AGENT_INSTANCE_ID: 'small-team-agent-1',
      },
    });
    expect(run.code, run.stderr).toBe(0);
    const results = run.report.results as { ok: boolean; code?: string }[];
    const failed = results.filter((r) => !r.ok);
    expect(plane.checks()).toBe(CALLS);
    expect(failed).toHaveLength(6);
    expect(new Set(failed.map((r) => r.code))).toEqual(new Set(['ERR_POLICY_UNAVAILABLE']));

    // the agent's spans reach the collector; the error rule is then decided on all 20 calls
    // (it may breach before the last spans are in: wait for the rate over all of them)
    const status = await eventually(async () => {
      const body = (await (await fetch(`${custody.url}/v1/rollback/status`)).json()) as any;
      const rule = body.rules.find((r: { rule: string }) => r.rule === 'policy_error_rate');
      return rule?.breached && Math.abs(rule.value - 6 / CALLS) < 1e-9 ? body : undefined;
    }, 120_000, 500);
    expect(status.action).toBe('rollback');
    const rule = status.rules.find((r: { rule: string }) => r.rule === 'policy_error_rate');
    expect(rule).toMatchObject({ verdict: 'breached' });
    expect(rule.value).toBeCloseTo(6 / CALLS, 5);

    const check = await runCli(['rollback', 'check', '--url', custody.url]);
    expect(check.code, check.stdout + check.stderr).toBe(1);
    expect(check.stdout).toMatch(/policy_error_rate/);

    const watch = await runCli(['rollback', 'watch', '--once', '--url', custody.url], { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_LOG_LEVEL: 'warn' });
    expect(watch.code, watch.stdout + watch.stderr).toBe(0);
    expect(watch.stdout).toMatch(/rolled back 100% → 0%: rollback: policy_error_rate/);
    expect((await getRollout(custody.url)).percent).toBe(0);
  }, 600_000);
});
