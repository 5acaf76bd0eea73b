import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, seedStore, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';

/**
 * GET /v1/rollback/status, /metrics and `custody rollback check` against a real `custody up`
 * child whose store was filled beforehand with crafted rows (by another child: chDB allows one
 * process per data directory).
 */

const dataDir = tempDir('custody-rules-http-');
let custody: RunningCustody | undefined;

const hex = (n: number) => randomBytes(n).toString('hex');
const iso = (ms: number) => new Date(ms).toISOString();


function calls(n: number, now: number, make: (i: number) => Record<string, unknown>): object[] {
  // spread over [now-10m, now-3m]: inside the default 15-minute window, outside a 1-minute one
  return Array.from({ length: n }, (_, i) => ({
    timestamp: iso(now - 10 * 60_000 + Math.floor((i * 7 * 60_000) / n)),
    trace_id: hex(16),
    span_id: hex(8),
    sponsor_id: 'alice',
    agent_instance_id: `agent-${i % 7}`,
    tool_id: i % 3 ? 'billing' : 'crm',
    action: 'read',
    decision: 'allow',
    policy_latency_ms: 20,
    enforced: true,
    status: 'ok',
    ...make(i),
  }));
}

const cli = (args: string[]) => runCli(args, { CUSTODY_URL: '' });

async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

const get = async (url: string) => {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as any };
};

beforeAll(async () => {
  const now = Date.now();
  seedStore(dataDir, {
    audit_events: [
      // canary: 1000 calls, 1 without sponsor (0.1 %), 10 plane errors (1 %), p95 180 ms: advance
      ...calls(1000, now, (i) => ({
        cohort: 'canary',
        sponsor_id: i === 17 ? '' : 'alice',
        decision: i % 100 === 3 ? 'error' : 'allow',
        policy_latency_ms: i % 100 < 95 ? 40 : 180,
      })),
      // baseline: 200 calls, 2 without sponsor (1 %): rollback
      ...calls(200, now, (i) => ({ cohort: 'baseline', sponsor_id: i < 2 ? '' : 'bob' })),
    ],
    token_events: [
      ...Array.from({ length: 1000 }, () => ({ timestamp: iso(now - 5 * 60_000), result: 'issued', kind: 'issue', jti: hex(8) })),
      ...Array.from({ length: 4 }, () => ({ timestamp: iso(now - 5 * 60_000), result: 'refused', kind: 'issue', code: 'sponsor_required' })),
    ],
  });
  custody = await startCustody({ dataDir });
});

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('GET /v1/rollback/status', () => {
  it('answers the contract shape with hand-computed values and the rollout percent from the policy plane', async () => {
    const { status, body } = await get(`${custody!.url}/v1/rollback/status`);
    expect(status).toBe(200);
    expect(Object.keys(body).slice(0, 5)).toEqual(['action', 'window_s', 'sample_size', 'rules', 'rollout']);
    expect(body).toMatchObject({ action: 'advance', window_s: 900, sample_size: 1000, cohort: 'canary' });
    expect(body.rules).toEqual([
      { rule: 'missing_sponsor_ratio', value: 0.001, threshold: 0.001, breached: false },
      { rule: 'policy_error_rate', value: 0.01, threshold: 0.01, breached: false },
      { rule: 'policy_latency_p95_ms', value: 180, threshold: 300, breached: false },
    ]);
    const rollout = await get(`${custody!.url}/v1/rollout`);
    expect(typeof rollout.body.percent).toBe('number');
    expect(body.rollout).toEqual({ percent: rollout.body.percent });
  });

  it('evaluates the cohort and window asked for', async () => {
    const baseline = await get(`${custody!.url}/v1/rollback/status?cohort=baseline&window=1h`);
    expect(baseline.body).toMatchObject({ action: 'rollback', window_s: 3600, sample_size: 200, cohort: 'baseline' });
    expect(baseline.body.rules[0]).toEqual({ rule: 'missing_sponsor_ratio', value: 0.01, threshold: 0.001, breached: true });
    const recent = await get(`${custody!.url}/v1/rollback/status?window=60s`);
    expect(recent.body).toMatchObject({ action: 'insufficient_data', window_s: 60, sample_size: 0 });
    const lowBar = await get(`${custody!.url}/v1/rollback/status?cohort=baseline&min_sample=500`);
    expect(lowBar.body.action).toBe('insufficient_data');
  });

  it('answers 400 naming the bad parameter', async () => {
    for (const [query, name] of [
      ['window=soon', 'window'],
      ['window=100d', 'window'],
      ['cohort=everyone', 'cohort'],
      ['min_sample=0', 'min_sample'],
      ['window=1m&window=2m', 'window'],
      ['windows=15m', 'windows'],
      ['min_sample=99999999999999999999', 'min_sample'],
      ['window=99999999999999999999d', 'window'],
      ['window=-5m', 'window'],
      ['cohort=canary%1B%5B2J', 'cohort'],
    ] as const) {
      const { status, body } = await get(`${custody!.url}/v1/rollback/status?${query}`);
      expect(status, query).toBe(400);
      expect(body.error.code).toBe('invalid_parameter');
      expect(body.error.message).toContain(`'${name}'`);
    }
  });
});

describe('/metrics rule gauges', () => {
  it('exposes the rule values per cohort, the token failure ratio and the breaches', async () => {
    const text = await (await fetch(`${custody!.url}/metrics`)).text();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    expect(value('custody_missing_sponsor_ratio{cohort="canary"}')).toBe(0.001);
    expect(value('custody_missing_sponsor_ratio{cohort="baseline"}')).toBe(0.01);
    expect(value('custody_policy_error_rate{cohort="canary"}')).toBe(0.01);
    expect(value('custody_policy_error_rate{cohort="baseline"}')).toBe(0);
    expect(value('custody_policy_latency_p95_seconds{cohort="canary"}')).toBe(0.18);
    expect(value('custody_policy_latency_p95_seconds{cohort="baseline"}')).toBe(0.02);
    expect(value('custody_token_issue_failure_ratio')).toBeCloseTo(4 / 1004, 12);
    expect(value('custody_rollback_rule_breached{rule="missing_sponsor_ratio",cohort="baseline"}')).toBe(1);
    expect(value('custody_rollback_rule_breached{rule="missing_sponsor_ratio",cohort="canary"}')).toBe(0);
    expect(value('custody_rollback_rule_breached{rule="policy_latency_p95_ms",cohort="canary"}')).toBe(0);
    expect(text).toMatch(/# TYPE custody_rollback_rule_breached gauge/);
  });
});

describe('custody rollback check', () => {
  it('exits 0 when healthy, printing the rules', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ADVANCE {2}\(cohort canary, last 15m, 1000 calls, rollout \d+(\.\d+)?%\)/);
    expect(r.stdout).toMatch(/missing_sponsor_ratio\s+0\.1%\s+> 0\.1%\s+ok/);
    expect(r.stdout).toMatch(/policy_latency_p95_ms\s+180 ms\s+> 300 ms\s+ok/);
  });

  it('exits 1 on a breach and prints JSON with --json', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url, '--cohort', 'baseline', '--json']);
    expect(r.code, r.stderr).toBe(1);
    const body = JSON.parse(r.stdout);
    expect(body).toMatchObject({ action: 'rollback', sample_size: 200, window_s: 900 });
    expect(body.rules.find((x: { rule: string }) => x.rule === 'missing_sponsor_ratio').breached).toBe(true);
  });

  it('exits 3 without enough data', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url, '--window', '1m']);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stdout).toMatch(/^INSUFFICIENT DATA/);
  });

  it('exits 2 on usage and connection errors', async () => {
    const bad = await cli(['rollback', 'check', '--url', custody!.url, '--window', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--window/);
    const cohort = await cli(['rollback', 'check', '--url', custody!.url, '--cohort', 'everyone']);
    expect(cohort.code).toBe(2);
    const port = await closedPort();
    const down = await cli(['rollback', 'check', '--url', `http://127.0.0.1:${port}`]);
    expect(down.code).toBe(2);
    expect(down.stderr).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
  });
});

describe('a collector alone', () => {
  it('asks CUSTODY_POLICY_URL (or --policy-url) for the rollout percent', async () => {
    await custody!.stop();
    custody = undefined;
    const plane = http.createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(req.url === '/v1/rollout' ? JSON.stringify({ percent: 30 }) : '{}');
    });
    await new Promise<void>((r) => plane.listen(0, '127.0.0.1', r));
    try {
      const { port } = plane.address() as AddressInfo;
      custody = await startCustody({ command: 'collector', dataDir, env: { CUSTODY_POLICY_URL: `http://127.0.0.1:${port}` } });
      const { body } = await get(`${custody.url}/v1/rollback/status`);
      expect(body).toMatchObject({ action: 'advance', sample_size: 1000, rollout: { percent: 30 } });
      // the same through --policy-url
      await custody.stop();
      custody = await startCustody({ command: 'collector', dataDir, args: ['--policy-url', `http://127.0.0.1:${port}`] });
      expect((await get(`${custody.url}/v1/rollback/status`)).body).toMatchObject({ rollout: { percent: 30 } });
    } finally {
      await new Promise((r) => plane.close(r));
    }
  });
});
