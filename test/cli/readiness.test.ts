import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen } from '../../common/http';
import { ROOT, eventually, runCli, startCustody, tempDir, type RunningCustody } from '../helpers/custody';

// `custody readiness` (the seed's checklist against a live setup) and `custody export`, against a
// real custody up fed by a real support-assistant agent process.

const EXAMPLES = path.join(ROOT, 'examples/support-assistant');
let custody: RunningCustody;
let adminToken: string;

async function agent(script: string, env: Record<string, string>): Promise<void> {
  await promisify(execFile)(process.execPath, ['--require', 'custody/register', path.join(EXAMPLES, script)], {
    cwd: ROOT,
    // a generous decision budget: on a loaded machine a process's first call alone can take longer than 200 ms
    env: { PATH: process.env.PATH, CUSTODY_URL: custody.url, OTEL_EXPORTER_OTLP_ENDPOINT: custody.otlpUrl, CUSTODY_LOG_LEVEL: 'error', CUSTODY_POLICY_TIMEOUT_MS: '5000', ...env },
  });
}

const row = (out: string, item: string) => out.split('\n').find((l) => l.includes(`| ${item} |`)) ?? '';
const healthEvents = async () => ((await (await fetch(`${custody.url}/v1/audit/health?window=1h`)).json()) as { events: number }).events;

/** An OTLP/JSON request with `n` tool-call spans. */
function otlpSpans(n: number, attrs: Record<string, string>, startMs = Date.now(), firstId = 1): unknown {
  const hex = (len: number, i: number) => (i + 1).toString(16).padStart(len, '0');
  const spans = Array.from({ length: n }, (_, i) => ({
    traceId: hex(32, i + firstId),
    spanId: hex(16, i + firstId),
    name: 'execute_tool search',
    kind: 1,
    startTimeUnixNano: String(BigInt(startMs + i) * 1_000_000n),
    endTimeUnixNano: String(BigInt(startMs + i + 1) * 1_000_000n),
    attributes: Object.entries({ 'gen_ai.operation.name': 'execute_tool', 'custody.tool_id': 'search', 'custody.action': 'call', ...attrs }).map(
      ([key, value]) => ({ key, value: { stringValue: value } }),
    ),
    status: {},
  }));
  return { resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'readiness-test' } }] }, scopeSpans: [{ scope: { name: 't' }, spans }] }] };
}

async function postSpans(body: unknown): Promise<void> {
  const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(res.status).toBe(200);
}

beforeAll(async () => {
  custody = await startCustody();
  adminToken = fs.readFileSync(path.join(custody.dataDir, 'admin-token'), 'utf8').trim();
  // six tickets: twelve searches, a charge-free run with one refund by a sub-agent process
  await agent('assistant.cjs', { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', TICKETS: '1-6' });
  await eventually(async () => (await healthEvents()) >= 13, 30_000, 250);
}, 120_000);

afterAll(async () => {
  await custody?.stop();
});

describe('custody readiness', () => {
  it('passes every item on a healthy setup, printed as Markdown, exit 0', async () => {
    const r = await runCli(['readiness', '--url', custody.url]);
    expect(r.stdout).toContain(`# custody readiness: ${custody.url}`);
    expect(r.stdout).toContain('| result | item | expected | found |');
    expect(r.stdout).toContain('10 of 10 items pass.');
    expect(row(r.stdout, 'Audit events carry parent_agent_id')).toMatch(/100\.00 % of 1 sub-agent calls/);
    expect(row(r.stdout, 'Fail-closed verified by a probe')).toMatch(/forged token: deny; unreachable plane: error \(ERR_POLICY_UNAVAILABLE\).*hung plane: error/);
    expect(r.code).toBe(0);
  }, 180_000);

  it('fails the alert-rules item when a threshold drifts or the file is missing', async () => {
    const dir = tempDir();
    const drifted = path.join(dir, 'rules.yml');
    fs.writeFileSync(drifted, fs.readFileSync(path.join(ROOT, 'alerts/custody.rules.yml'), 'utf8').replace('custody_missing_sponsor_ratio) > 0.001', 'custody_missing_sponsor_ratio) > 0.01'));
    const r = await runCli(['readiness', '--url', custody.url, '--rules', drifted]);
    expect(row(r.stdout, 'Alert rules present and valid')).toMatch(/^\| \*\*FAIL\*\* .*missing: missing sponsor > 0\.1 %/);
    // the one item failing is the alert rules (the fail-closed probe measures time: on a loaded
    // machine it may fail too, which this test is not about)
    const failing = r.stdout.split('\n').filter((l) => l.startsWith('| **FAIL** |')).map((l) => l.split('|')[2]!.trim());
    expect(failing.filter((item) => item !== 'Fail-closed verified by a probe')).toEqual(['Alert rules present and valid']);
    expect(r.code).toBe(1);
    const gone = await runCli(['readiness', '--url', custody.url, '--rules', path.join(dir, 'none.yml')]);
    expect(row(gone.stdout, 'Alert rules present and valid')).toMatch(/\*\*FAIL\*\*.*not found/);
    expect(gone.code).toBe(1);
  }, 180_000);

  it('fails the parent item when a sub-agent call does not name its parent', async () => {
    // a real delegated token, then a call under it whose span lost its parent
    const issued = await (await fetch(`${custody.url}/issue`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'search', sponsor_id: 'alice', role: 'support' }) })).json();
    const child = await (
      await fetch(`${custody.url}/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: issued.token, subject_token_type: 'urn:ietf:params:oauth:token-type:jwt', agent_instance_id: 'orphan-sub-agent' }),
      })
    ).json();
    expect(child.claims.parent_agent_id).toBeTruthy();
    await postSpans(otlpSpans(1, { 'custody.sponsor_id': 'alice', 'custody.agent_instance_id': 'orphan-sub-agent', 'custody.token.jti': child.claims.jti }));
    const r = await eventually(async () => {
      const run = await runCli(['readiness', '--url', custody.url]);
      return row(run.stdout, 'Audit events carry parent_agent_id').includes('FAIL') ? run : undefined;
    }, 30_000, 500);
    expect(row(r.stdout, 'Audit events carry parent_agent_id')).toMatch(/50\.00 % of 2 sub-agent calls/);
    expect(r.code).toBe(1);
  }, 180_000);

  it('fails the rollout item once the gate is rolled back to 0', async () => {
    const put = await fetch(`${custody.url}/v1/rollout`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${adminToken}` },
      body: JSON.stringify({ percent: 0, reason: 'readiness test' }),
    });
    expect(put.status).toBe(200);
    const r = await runCli(['readiness', '--url', custody.url]);
    expect(row(r.stdout, 'Rollout at a canary stage')).toMatch(/\*\*FAIL\*\*.*0 % \(rolled back or not started\)/);
    expect(r.code).toBe(1);
  }, 180_000);

  it('fails the sponsor item when an agent runs without a sponsor', async () => {
    await agent('anonymous-agent.cjs', {});
    const r = await eventually(async () => {
      const run = await runCli(['readiness', '--url', custody.url]);
      return row(run.stdout, 'Audit events carry sponsor_id').includes('FAIL') ? run : undefined;
    }, 30_000, 500);
    expect(row(r.stdout, 'Audit events carry sponsor_id')).toMatch(/\*\*FAIL\*\* .*% of \d+ \|$/);
    expect(r.code).toBe(1);
  }, 180_000);

  it('fails the fail-closed item against a plane that allows what it cannot verify', async () => {
    const app = express();
    app.get('/healthz', (_req, res) => void res.json({ status: 'ok' }));
    app.post('/v1/check', (_req, res) => void res.json({ decision: 'allow', policy_decision_id: 'x', rule_id: 'x', reason: 'x', cohort: 'canary', enforced: true }));
    const lenient = await listen(app, '127.0.0.1', 0);
    try {
      const r = await runCli(['readiness', '--url', lenient.url]);
      expect(row(r.stdout, 'Fail-closed verified by a probe')).toMatch(/\*\*FAIL\*\* .*forged token: 200 allow/);
      expect(r.code).toBe(1);
    } finally {
      await lenient.close();
    }
  }, 180_000);

  it('exits 2 when custody cannot be reached', async () => {
    const r = await runCli(['readiness', '--url', 'http://127.0.0.1:9']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot reach http:\/\/127\.0\.0\.1:9/);
  }, 180_000);

  it('fails the token and retention items on a setup that does not meet them', async () => {
    const dir = tempDir();
    const config = path.join(dir, 'token-service-config.yml');
    fs.writeFileSync(config, 'issuer: lax\ndefault_ttl_seconds: 600\nmax_ttl_seconds: 3600\nrequire_sponsor: false\nsupported_tools: [search]\nroles: { user: { max_ttl_seconds: 3600 } }\n');
    const lax = await startCustody({ args: ['--token-config', config], env: { CUSTODY_AUDIT_RETENTION_DAYS: '30' } });
    try {
      const r = await runCli(['readiness', '--url', lax.url]);
      expect(row(r.stdout, 'Token service: default TTL')).toMatch(/\*\*FAIL\*\* .*\| 600 s \|$/);
      expect(row(r.stdout, 'Token service: maximum TTL')).toMatch(/\*\*FAIL\*\* .*\| 3600 s \|$/);
      expect(row(r.stdout, 'Token service: sponsor required')).toMatch(/\*\*FAIL\*\*/);
      expect(row(r.stdout, 'Audit retention')).toMatch(/\*\*FAIL\*\* .*\| 30 days \|$/);
      expect(row(r.stdout, 'Audit events carry sponsor_id')).toMatch(/\*\*FAIL\*\* .*no audit events/);
      expect(r.code).toBe(1);
    } finally {
      await lax.stop();
    }
  }, 120_000);
});

describe('custody export', () => {
  it('round-trips every audit event in the range, across pages, as NDJSON and ECS', async () => {
    // enough rows for two pages of 1000
    await postSpans(otlpSpans(1500, { 'custody.sponsor_id': 'bulk', 'custody.agent_instance_id': 'bulk-agent' }, Date.now() - 60_000, 10_000));
    await eventually(async () => (await healthEvents()) >= 1500 + 15, 30_000, 250);
    const total = await healthEvents();
    const dir = tempDir();
    const file = path.join(dir, 'audit.ndjson');
    const r = await runCli(['export', '--since', '1h', '--url', custody.url, '--out', file]);
    expect(r.code).toBe(0);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(total);
    expect(r.stderr).toContain(`exported ${total} audit events`);
    expect(new Set(lines.map((l) => l.span_id)).size).toBe(total);
    for (const field of ['timestamp', 'trace_id', 'span_id', 'sponsor_id', 'agent_instance_id', 'parent_agent_id', 'tool_id', 'action', 'purpose', 'request_hash', 'response_hash', 'policy_decision_id', 'decision', 'enforced', 'cohort', 'status']) {
      expect(lines[0]).toHaveProperty(field);
    }
    expect(lines.filter((l) => l.sponsor_id === 'bulk')).toHaveLength(1500);
    const refund = lines.find((l) => l.tool_id === 'billing' && l.action === 'refund' && l.sponsor_id === 'alice');
    expect(refund).toMatchObject({ sponsor_id: 'alice', decision: 'allow' });

    const ecs = await runCli(['export', '--since', '1h', '--format', 'ecs', '--url', custody.url]);
    const docs = ecs.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(docs).toHaveLength(total);
    const ecsRefund = docs.find((d) => d.custody.span_id === refund.span_id);
    expect(ecsRefund).toMatchObject({
      '@timestamp': refund.timestamp,
      event: { action: 'billing.refund', outcome: 'success', type: ['allowed'] },
      user: { id: 'alice' },
      trace: { id: refund.trace_id },
      span: { id: refund.span_id },
    });
  }, 180_000);

  it('writes nothing and says so for an empty range; refuses a bad one', async () => {
    const r = await runCli(['export', '--since', '2020-01-01T00:00:00Z', '--until', '2020-01-02T00:00:00Z', '--url', custody.url]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('exported 0 audit events');
    const bad = await runCli(['export', '--since', 'yesterday-ish', '--url', custody.url]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--since 'yesterday-ish'");
    const format = await runCli(['export', '--format', 'xml', '--url', custody.url]);
    expect(format.code).toBe(2);
  }, 180_000);
});
