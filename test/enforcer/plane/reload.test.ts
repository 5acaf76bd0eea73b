import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { startOtlpSink, type OtlpSink } from '../../helpers/policy-otlp-sink';
import { check, issue, metric, policyFile, putRollout, replaceFile } from '../../helpers/policy';

const base = (extraRules: string) => `
version: v-${extraRules ? 'b' : 'a'}
rules:
  - id: support-search
    role: support
    tool: search
${extraRules}
rollout:
  percent: 10
`;
const V1 = base('');
const V2 = base(`  - id: user-search
    role: user
    tool: search
`);

// `custody policy-plane` alone, verifying tokens with the JWKS of a separate `custody up`.
describe('custody policy-plane: hot reload', () => {
  let sink: OtlpSink;
  let tokens: RunningCustody;
  let plane: RunningCustody;
  let file: string;
  let userToken: string;

  beforeAll(async () => {
    sink = await startOtlpSink();
    tokens = await startCustody({ args: ['--otlp-url', sink.url] });
    file = policyFile(V1);
    plane = await startCustody({ command: 'policy-plane', args: ['--token-url', tokens.url, '--policy', file, '--otlp-url', sink.url] });
    userToken = (await issue(tokens.url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 'reload-1', role: 'user' })).token;
  });
  afterAll(async () => {
    await plane?.stop();
    await tokens?.stop();
    await sink?.close();
  });

  const decisionForUser = async () => (await check(plane.url, { token: userToken, tool: 'search', action: 'call' })).body;

  it('verifies tokens with the token service\'s JWKS over HTTP', async () => {
    expect(plane.output()).toContain(`${tokens.url}/.well-known/jwks.json`);
    const support = await issue(tokens.url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: 'reload-0', role: 'support' });
    expect((await check(plane.url, { token: support.token, tool: 'search', action: 'call' })).body).toMatchObject({
      decision: 'allow',
      rule_id: 'support-search',
      policy_version: 'v-a',
    });
  });

  it('takes a changed file into force without a restart', async () => {
    expect(await decisionForUser()).toMatchObject({ decision: 'deny', rule_id: 'default-deny' });
    replaceFile(file, V2);
    await eventually(async () => (await decisionForUser()).decision === 'allow', 5000);
    expect(await decisionForUser()).toMatchObject({ rule_id: 'user-search', policy_version: 'v-b' });
    expect(await metric(plane.url, 'custody_policy_version', { version: 'v-b' })).toBe(2);
  });

  it('drops no request while the file changes under load', async () => {
    let stop = false;
    const results: { status: number; decision: string; version: string }[] = [];
    const workers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const r = await check(plane.url, { token: userToken, tool: 'search', action: 'call' });
        results.push({ status: r.status, decision: r.body.decision, version: r.body.policy_version });
      }
    });
    // at least six changes, and on until the requests made meanwhile are enough to judge (a loaded machine answers fewer)
    let changes = 0;
    for (; changes < 6 || (results.length <= 50 && changes < 400) || changes % 2 === 1; changes++) {
      replaceFile(file, changes % 2 === 0 ? V1 : V2);
      await new Promise((r) => setTimeout(r, 150));
    }
    stop = true;
    await Promise.all(workers);
    expect(results.length).toBeGreaterThan(50);
    expect(results.every((r) => r.status === 200)).toBe(true);
    // every answer is exactly one policy's answer, never a mix
    for (const r of results) expect(r.version === 'v-a' ? 'deny' : 'allow').toBe(r.decision);
    await eventually(async () => (await decisionForUser()).policy_version === 'v-b', 5000);
  });

  it('refuses a bad file loudly and keeps the last good policy', async () => {
    const errorsBefore = (await metric(plane.url, 'custody_policy_reload_errors_total')) ?? 0;
    const generation = await metric(plane.url, 'custody_policy_version', { version: 'v-b' });
    fs.writeFileSync(file, V2.replace('role: user', 'role: [user\n'));
    await eventually(async () => ((await metric(plane.url, 'custody_policy_reload_errors_total')) ?? 0) > errorsBefore, 5000);
    expect(plane.output()).toMatch(/policy file refused; the last good policy \(version v-b\) stays in force/);
    expect(await decisionForUser()).toMatchObject({ decision: 'allow', policy_version: 'v-b' });
    expect(await metric(plane.url, 'custody_policy_version', { version: 'v-b' })).toBe(generation);

    // a schema error: named with file and line in the log
    replaceFile(file, V2.replace('tool: search\n', 'tool: search\n    effect: maybe\n'));
    await eventually(async () => ((await metric(plane.url, 'custody_policy_reload_errors_total')) ?? 0) > errorsBefore + 1, 5000);
    expect(plane.output()).toContain(`${file}:`);
    expect(plane.output()).toContain("field 'rules.0.effect'");
    // the same bad content is refused once, not at every poll
    await new Promise((r) => setTimeout(r, 1500));
    expect(await metric(plane.url, 'custody_policy_reload_errors_total')).toBe(errorsBefore + 2);

    replaceFile(file, V1);
    await eventually(async () => (await decisionForUser()).decision === 'deny', 5000);
  });

  it('refuses every rollout change when no admin token is configured', async () => {
    const r = await putRollout(plane.url, { percent: 100, reason: 'x' });
    expect(r.status).toBe(403);
    expect(r.body.error.message).toContain('CUSTODY_ADMIN_TOKEN');
    expect(((await (await fetch(`${plane.url}/v1/rollout`)).json()) as any).percent).toBe(10);
  });
});

describe('custody policy-plane: keys that cannot be fetched', () => {
  it('answers 503 (nothing was decided) and logs the decision as error', async () => {
    const sink = await startOtlpSink();
    // a port nothing listens on
    const closed = await new Promise<number>((resolve) => {
      const s = require('node:net').createServer().listen(0, '127.0.0.1', () => {
        const port = s.address().port;
        s.close(() => resolve(port));
      });
    });
    const plane = await startCustody({ command: 'policy-plane', args: ['--token-url', `http://127.0.0.1:${closed}`, '--otlp-url', sink.url] });
    try {
      const token = [
        Buffer.from(JSON.stringify({ alg: 'EdDSA', kid: 'k1' })).toString('base64url'),
        Buffer.from(JSON.stringify({ sub: 'x' })).toString('base64url'),
        'c2ln',
      ].join('.');
      const r = await check(plane.url, { token, tool: 'search', action: 'call' });
      expect(r.status).toBe(503);
      expect(r.body.error.code).toBe('token_keys_unavailable');
      const span = await eventually(async () => sink.spans.find((s) => s.name === 'custody.policy.decision'));
      expect(span.attributes['custody.policy.decision']).toBe('error');
      expect(await metric(plane.url, 'custody_policy_decisions_total', { decision: 'error', tool: 'search' })).toBe(1);
    } finally {
      await plane.stop();
      await sink.close();
    }
  });
});
