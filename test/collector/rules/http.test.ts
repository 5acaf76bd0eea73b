import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, runCli, seedStore, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';

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
    policy_decision_id: `pd-${hex(8)}`,
    policy_latency_ms: 20,
    enforced: true,
    status: 'ok',
    ...make(i),
  }));
}

/** The plane's own decision log rows. */
function decisions(n: number, now: number, make: (i: number) => Record<string, unknown>): object[] {
  return Array.from({ length: n }, (_, i) => ({
    timestamp: iso(now - 10 * 60_000 + Math.floor((i * 7 * 60_000) / n)),
    policy_decision_id: `pd-${hex(8)}`,
    decision: 'allow',
    sponsor_id: 'alice',
    agent_instance_id: `agent-${i % 7}`,
    tool_id: 'billing',
    action: 'read',
    latency_ms: 20,
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
      ...calls(3000, now, () => ({ cohort: 'canary' })),
      ...calls(2000, now, () => ({ cohort: 'baseline' })),
    ],
    policy_decisions: [
      // canary: no errors, 10 % of answers at 180 ms: p95 180 ms, every rule settled healthy
      ...decisions(3000, now, (i) => ({ cohort: 'canary', enforced: true, latency_ms: i % 100 < 90 ? 40 : 180 })),
      // baseline: 5 % errors: rollback
      ...decisions(2000, now, (i) => ({ cohort: 'baseline', enforced: false, decision: i % 20 === 0 ? 'error' : 'allow' })),
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

const rule = (body: any, name: string) => body.rules.find((r: { rule: string }) => r.rule === name);

describe('GET /v1/rollback/status', () => {
  it('answers the contract shape with hand-computed values and the rollout percent from the policy plane', async () => {
    const { status, body } = await get(`${custody!.url}/v1/rollback/status`);
    expect(status).toBe(200);
    expect(Object.keys(body).slice(0, 5)).toEqual(['action', 'window_s', 'sample_size', 'rules', 'rollout']);
    expect(body).toMatchObject({ action: 'advance', window_s: 900, sample_size: 3000, cohort: 'canary', more_calls: 0 });
    expect(body.rules.map((r: any) => [r.rule, r.value, r.threshold, r.breached, r.verdict])).toEqual([
      ['missing_sponsor_ratio', 0, 0.001, false, 'healthy'],
      ['policy_error_rate', 0, 0.01, false, 'healthy'],
      ['policy_latency_p95_ms', 180, 300, false, 'healthy'],
    ]);
    expect(rule(body, 'missing_sponsor_ratio')).toMatchObject({ scope: 'fleet', sample: 5000 });
    expect(body.by_cohort).toEqual({ canary: { calls: 3000, missing_sponsor: 0 }, baseline: { calls: 2000, missing_sponsor: 0 }, unmanaged: { calls: 0, missing_sponsor: 0 } });
    expect(body.inputs).toMatchObject({ plane_decisions: 3000, plane_errors: 0, agent_failures: 0, instances: 7 });
    const rollout = await get(`${custody!.url}/v1/rollout`);
    expect(typeof rollout.body.percent).toBe('number');
    expect(body.rollout).toEqual({ percent: rollout.body.percent, scope: null });
  });

  it('evaluates the cohort, window and thresholds asked for', async () => {
    const baseline = await get(`${custody!.url}/v1/rollback/status?cohort=baseline&window=1h`);
    expect(baseline.body).toMatchObject({ action: 'rollback', window_s: 3600, sample_size: 2000, cohort: 'baseline' });
    expect(rule(baseline.body, 'policy_error_rate')).toMatchObject({ value: 0.05, threshold: 0.01, breached: true });
    const recent = await get(`${custody!.url}/v1/rollback/status?window=60s`);
    expect(recent.body).toMatchObject({ action: 'insufficient_data', window_s: 60, sample_size: 0 });
    const strict = await get(`${custody!.url}/v1/rollback/status?policy_latency_p95_ms=150`);
    expect(strict.body.action).toBe('rollback');
    expect(rule(strict.body, 'policy_latency_p95_ms')).toMatchObject({ threshold: 150, breached: true });
    const lenient = await get(`${custody!.url}/v1/rollback/status?cohort=baseline&policy_error_rate=0.1`);
    expect(lenient.body.action).toBe('advance');
  });

  it('answers 400 naming the bad parameter', async () => {
    for (const [query, name] of [
      ['window=soon', 'window'],
      ['window=100d', 'window'],
      ['cohort=everyone', 'cohort'],
      ['min_sample=100', 'min_sample'],
      ['policy_error_rate=2', 'policy_error_rate'],
      ['policy_error_rate=', 'policy_error_rate'],
      ['missing_sponsor_ratio=0.1%25', 'missing_sponsor_ratio'],
      ['policy_latency_p95_ms=fast', 'policy_latency_p95_ms'],
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
    expect(value('custody_missing_sponsor_ratio{cohort="canary"}')).toBe(0);
    expect(value('custody_missing_sponsor_ratio{cohort="fleet"}')).toBe(0);
    expect(value('custody_policy_error_rate{cohort="canary"}')).toBe(0);
    expect(value('custody_policy_error_rate{cohort="baseline"}')).toBe(0.05);
    expect(value('custody_policy_latency_p95_seconds{cohort="canary"}')).toBe(0.18);
    expect(value('custody_policy_latency_p95_seconds{cohort="baseline"}')).toBe(0.02);
    expect(value('custody_token_issue_failure_ratio')).toBeCloseTo(4 / 1004, 12);
    expect(value('custody_rollback_rule_breached{rule="policy_error_rate",cohort="baseline"}')).toBe(1);
    expect(value('custody_rollback_rule_breached{rule="policy_error_rate",cohort="canary"}')).toBe(0);
    expect(value('custody_rollback_rule_breached{rule="policy_latency_p95_ms",cohort="canary"}')).toBe(0);
    expect(text).toMatch(/# TYPE custody_rollback_rule_breached gauge/);
  });
});

describe('custody rollback check', () => {
  it('exits 0 when healthy, printing the rules with their bounds', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ADVANCE {2}\(cohort canary, last 15m, 3000 calls, rollout \d+(\.\d+)?%\)/);
    expect(r.stdout).toMatch(/missing_sponsor_ratio\s+0%\s+> 0\.1%\s+ok {2}95% \[0%, 0\.05\d*%\] of 5000 \(fleet\)/);
    expect(r.stdout).toMatch(/policy_latency_p95_ms\s+180 ms\s+> 300 ms\s+ok/);
    expect(r.stdout).toMatch(/calls by cohort: canary 3000 \(0 without sponsor\), baseline 2000 \(0 without sponsor\), unmanaged 0/);
  });

  it('exits 1 on a breach and prints JSON with --json', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url, '--cohort', 'baseline', '--json']);
    expect(r.code, r.stderr).toBe(1);
    const body = JSON.parse(r.stdout);
    expect(body).toMatchObject({ action: 'rollback', sample_size: 2000, window_s: 900 });
    expect(rule(body, 'policy_error_rate').breached).toBe(true);
    const strict = await cli(['rollback', 'check', '--url', custody!.url, '--threshold', 'policy_latency_p95_ms=150']);
    expect(strict.code, strict.stderr).toBe(1);
  });

  it('exits 3 without enough data, saying how many calls would settle it', async () => {
    const r = await cli(['rollback', 'check', '--url', custody!.url, '--window', '1m']);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stdout).toMatch(/^INSUFFICIENT DATA/);
    expect(r.stdout).toMatch(/about 2703 more calls at the rates seen would settle it/);
  });

  it('exits 2 on usage and connection errors', async () => {
    const bad = await cli(['rollback', 'check', '--url', custody!.url, '--window', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--window/);
    const cohort = await cli(['rollback', 'check', '--url', custody!.url, '--cohort', 'everyone']);
    expect(cohort.code).toBe(2);
    for (const t of ['policy_error_rate=1.5', 'policy_latency_p95_ms=-3', 'nonsense', 'min_sample=5']) {
      const r = await cli(['rollback', 'check', '--url', custody!.url, '--threshold', t]);
      expect(r.code, t).toBe(2);
      expect(r.stderr, t).toMatch(/--threshold/);
    }
    const port = await closedPort();
    const down = await cli(['rollback', 'check', '--url', `http://127.0.0.1:${port}`]);
    expect(down.code).toBe(2);
    expect(down.stderr).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
  });
});

/** OTLP/JSON as a Python agent on the stock OpenTelemetry SDK sends it: GenAI tool spans, no custody attributes. */
function stockSdkSpans(n: number): object {
  const now = BigInt(Date.now()) * 1_000_000n;
  return {
    resourceSpans: [
      {
        resource: {
          attributes: [
            { key: 'service.name', value: { stringValue: 'py-support-agent' } },
            { key: 'telemetry.sdk.language', value: { stringValue: 'python' } },
            { key: 'telemetry.sdk.name', value: { stringValue: 'opentelemetry' } },
          ],
        },
        scopeSpans: [
          {
            scope: { name: 'opentelemetry.instrumentation.openai_agents', version: '0.1.0' },
            spans: Array.from({ length: n }, (_, i) => ({
              traceId: hex(16),
              spanId: hex(8),
              name: 'execute_tool lookup_order',
              kind: 1,
              startTimeUnixNano: String(now - BigInt(i) * 1_000_000n),
              endTimeUnixNano: String(now - BigInt(i) * 1_000_000n + 2_000_000n),
              attributes: [
                { key: 'gen_ai.operation.name', value: { stringValue: 'execute_tool' } },
                { key: 'gen_ai.tool.name', value: { stringValue: 'lookup_order' } },
                { key: 'gen_ai.tool.call.id', value: { stringValue: `call_${i}` } },
                { key: 'gen_ai.agent.name', value: { stringValue: 'support' } },
              ],
              status: {},
            })),
          },
        ],
      },
    ],
  };
}

describe('the whole fleet', () => {
  it("an unmanaged agent's tool calls without sponsor count in missing_sponsor_ratio, in a cohort of their own", async () => {
    const res = await fetch(`${custody!.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(stockSdkSpans(156)),
    });
    expect(res.status).toBe(200);
    const body = await eventually(async () => {
      const b = (await get(`${custody!.url}/v1/rollback/status`)).body;
      return b.by_cohort.unmanaged.calls === 156 ? b : undefined;
    }, 30_000);
    expect(body.by_cohort.unmanaged).toEqual({ calls: 156, missing_sponsor: 156 });
    expect(rule(body, 'missing_sponsor_ratio')).toMatchObject({ value: 156 / 5156, breached: true, scope: 'fleet' });
    expect(body.action).toBe('rollback');
    const unmanaged = await get(`${custody!.url}/v1/rollback/status?cohort=unmanaged`);
    expect(unmanaged.body).toMatchObject({ cohort: 'unmanaged', sample_size: 156, action: 'rollback' });
    const text = await (await fetch(`${custody!.url}/metrics`)).text();
    expect(text).toMatch(/^custody_missing_sponsor_ratio\{cohort="unmanaged"\} 1$/m);
    const r = await cli(['rollback', 'check', '--url', custody!.url, '--cohort', 'unmanaged']);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toMatch(/unmanaged 156 \(156 without sponsor\)/);
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
      expect(body).toMatchObject({ sample_size: 3000, rollout: { percent: 30 } });
      // the same through --policy-url
      await custody.stop();
      custody = await startCustody({ command: 'collector', dataDir, args: ['--policy-url', `http://127.0.0.1:${port}`] });
      expect((await get(`${custody.url}/v1/rollback/status`)).body).toMatchObject({ rollout: { percent: 30 } });
    } finally {
      await new Promise((r) => plane.close(r));
    }
  });
});
