import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTS, runAgent } from '../helpers/agents';
import { eventually, ROOT, startCustody, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';
import { startOtlpSink, type OtlpSink } from '../helpers/policy-otlp-sink';

/**
 * How custody/register's telemetry behaves at the edges, with a real custody up deciding and an
 * OTLP sink standing in for the collector: exits of every kind flush, signals keep their meaning,
 * a collector that is down costs spans but never calls, audit spans are never sampled away, and
 * an SDK the app started itself is not started twice.
 */
describe('custody/register telemetry', () => {
  let custody: RunningCustody;
  let sink: OtlpSink;
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    CUSTODY_URL: custody.url,
    OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
    CUSTODY_SPONSOR_ID: 'alice',
    CUSTODY_ROLE: 'support',
    // a long batch delay: only the exit paths can have sent the spans in time
    OTEL_BSP_SCHEDULE_DELAY: '60000',
    // generous: on a loaded machine the first call alone can take longer than the 200 ms default
    CUSTODY_POLICY_TIMEOUT_MS: '5000',
    ...extra,
  });
  const toolSpans = (instance: string) => sink.spans.filter((s) => s.name === 'execute_tool search.query' && s.attributes['custody.agent_instance_id'] === instance);

  beforeAll(async () => {
    sink = await startOtlpSink();
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    expect((await putRollout(custody.url, { percent: 100, reason: 'instrumentation test' })).status).toBe(200);
  });
  afterAll(async () => {
    await custody?.stop();
    await sink?.close();
  });

  it.each(['natural', 'exit'])('flushes the tool-call span when the agent ends (%s)', async (mode) => {
    const instance = `tele-${mode}`;
    const run = await runAgent('telemetry.cjs', { args: [mode], env: env({ CUSTODY_AGENT_INSTANCE_ID: instance }) });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report).toMatchObject({ ready: true, call: `ok:${mode}`, ran: true });
    const [span] = await eventually(async () => (toolSpans(instance).length ? toolSpans(instance) : undefined), 30_000);
    expect(span!.attributes).toMatchObject({ 'custody.sponsor_id': 'alice', 'custody.policy.decision': 'allow', 'custody.audit.seq': 1 });
  });

  /** Starts the agent, waits for `ready`, sends SIGTERM, resolves with how it ended. */
  function terminate(mode: string, instance: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    const child = spawn(process.execPath, ['--require', 'custody/register', path.join(AGENTS, 'telemetry.cjs'), mode], {
      cwd: ROOT,
      env: { ...process.env, NODE_OPTIONS: '', ...env({ CUSTODY_AGENT_INSTANCE_ID: instance }) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.on('data', (d) => {
      if (String(d).includes('"ready":true')) child.kill('SIGTERM');
    });
    return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
  }

  it('on SIGTERM with no handler of the app’s: flushes, then dies of the signal as it would have', async () => {
    const ended = await terminate('sigterm', 'tele-sigterm');
    expect(ended.signal, ended.stderr).toBe('SIGTERM');
    expect(ended.code).toBeNull();
    await eventually(async () => toolSpans('tele-sigterm').length === 1, 30_000);
  });

  it('on SIGTERM with a handler of the app’s: the app decides how to end, and the span is still sent', async () => {
    const ended = await terminate('sigterm-handler', 'tele-sigterm-handler');
    expect(ended.code, ended.stderr).toBe(7);
    expect(ended.signal).toBeNull();
    await eventually(async () => toolSpans('tele-sigterm-handler').length === 1, 30_000);
  });

  it('records and exports a tool call even when its parent trace is not sampled', async () => {
    const run = await runAgent('telemetry.cjs', { args: ['unsampled'], env: env({ CUSTODY_AGENT_INSTANCE_ID: 'tele-unsampled' }) });
    expect(run.code, run.stderr).toBe(0);
    const [span] = await eventually(async () => (toolSpans('tele-unsampled').length ? toolSpans('tele-unsampled') : undefined), 10_000);
    expect(span!.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    expect(span!.parentSpanId).toBe('00f067aa0ba902b7');
  });

  it('telemetry fails open: with the collector down the call still runs, and a diag warning says spans were dropped', async () => {
    const run = await runAgent('telemetry.cjs', {
      args: ['natural'],
      // a short exporter timeout: the exit does not wait out the default 10 s of retries
      env: env({ CUSTODY_AGENT_INSTANCE_ID: 'tele-down', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_EXPORTER_OTLP_TIMEOUT: '2000' }),
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report).toMatchObject({ call: 'ok:natural', ran: true });
    expect(run.stderr).toMatch(/custody: could not export 1 span\(s\) to http:\/\/127\.0\.0\.1:9\/v1\/traces; the agent goes on/);
  });

  it('enforcement fails closed: with the policy plane down the call is refused and the body never runs', async () => {
    const run = await runAgent('telemetry.cjs', { args: ['natural'], env: env({ CUSTODY_AGENT_INSTANCE_ID: 'tele-closed', CUSTODY_URL: 'http://127.0.0.1:9' }) });
    expect(run.code).not.toBe(0); // the unhandled refusal ends the script
    expect(run.stderr).toMatch(/ERR_POLICY_UNAVAILABLE/);
    expect(run.stdout).not.toMatch(/"ran":true/);
    const [span] = await eventually(async () => (toolSpans('tele-closed').length ? toolSpans('tele-closed') : undefined), 10_000);
    expect(span!.attributes).toMatchObject({ 'custody.policy.decision': 'error', 'error.type': 'policy_unavailable' });
    expect(span!.status).toBe(2);
  });

  it('a registered agent started with only its credential is attributed to its registration’s sponsor and role', async () => {
    const res = await fetch(`${custody.url}/v1/agents`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ sponsor_id: 'bob', name: 'registered-bot', role: 'support', tools: ['search'] }),
    });
    expect(res.status).toBe(201);
    const { credential, agent } = (await res.json()) as { credential: string; agent: { agent_id: string } };
    const run = await runAgent('telemetry.cjs', {
      args: ['natural'],
      env: {
        ...env({ CUSTODY_AGENT_INSTANCE_ID: 'tele-registered', CUSTODY_AGENT_CREDENTIAL: credential, CUSTODY_PARENT_AGENT_ID: 'someone-else', CUSTODY_POLICY_TIMEOUT_MS: '3000' }),
        CUSTODY_SPONSOR_ID: '',
        CUSTODY_ROLE: '',
      },
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.report).toMatchObject({ call: 'ok:natural', ran: true });
    // its instance is bound to its registration, and a parent it was not delegated by is not claimed
    const instance = `${agent.agent_id}:tele-registered`;
    const [span] = await eventually(async () => (toolSpans(instance).length ? toolSpans(instance) : undefined), 10_000);
    expect(span!.attributes).toMatchObject({ 'custody.sponsor_id': 'bob', 'custody.role': 'support', 'custody.policy.decision': 'allow' });
    expect(span!.attributes['custody.parent_agent_id']).toBeUndefined();
  });

  it('beside an SDK the app registered first: no second SDK; custody’s spans join the app’s trace and still reach custody', async () => {
    const app = await startOtlpSink();
    try {
      const run = await runAgent('with-app-span.cjs', {
        flag: null,
        env: { ...env({ CUSTODY_AGENT_INSTANCE_ID: 'tele-other-sdk', APP_OTLP: app.url }), NODE_OPTIONS: `--require ${path.join(AGENTS, 'other-sdk.cjs')} --require custody/register` },
      });
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).not.toMatch(/duplicate registration/i);
      expect(run.report.mode).toBe('own-provider');
      const [tool] = await eventually(async () => (toolSpans('tele-other-sdk').length ? toolSpans('tele-other-sdk') : undefined), 10_000);
      const appSpan = await eventually(async () => app.spans.find((s) => s.name === 'handle-ticket'), 10_000);
      expect(tool!.traceId).toBe(appSpan.traceId);
      expect(tool!.parentSpanId).toBe(appSpan.spanId);
      expect(app.spans.some((s) => s.name.startsWith('execute_tool'))).toBe(false);
    } finally {
      await app.close();
    }
  });
  it.each([
    ['custody/register first', ['custody/register', '@opentelemetry/auto-instrumentations-node/register']],
    ['auto-instrumentations-node first', ['@opentelemetry/auto-instrumentations-node/register', 'custody/register']],
  ])('with auto-instrumentations-node (%s): no duplicate registration, and neither side loses its spans', async (_order, preloads) => {
    const instance = `tele-auto-${preloads[0]!.startsWith('custody') ? 'custody' : 'auto'}`;
    const run = await runAgent('auto-instrumented.cjs', {
      flag: null,
      env: {
        ...env({ CUSTODY_AGENT_INSTANCE_ID: instance, PING_URL: `${sink.url}/ping`, OTEL_BSP_SCHEDULE_DELAY: '200' }),
        NODE_OPTIONS: preloads.map((p) => `--require ${p}`).join(' '),
        // the app's SDK as a user runs it: diagnostics on, only loopback (no cloud resource detectors), traces only
        OTEL_LOG_LEVEL: 'info',
        OTEL_NODE_RESOURCE_DETECTORS: 'env,host,os,process',
        OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http,undici',
        OTEL_METRICS_EXPORTER: 'none',
        OTEL_LOGS_EXPORTER: 'none',
        OTEL_SERVICE_NAME: 'app-auto',
      },
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).not.toMatch(/duplicate registration/i);
    expect(run.report.mode).toBe('own-provider');
    const [tool] = await eventually(async () => (toolSpans(instance).length ? toolSpans(instance) : undefined), 15_000);
    // the app's http instrumentation recorded the tool's request, in the tool call's trace, through the app's SDK
    const client = await eventually(async () => sink.spans.find((s) => s.traceId === tool!.traceId && s.name === 'GET' && s.service === 'app-auto'), 15_000);
    expect(client.parentSpanId).toBe(tool!.spanId);
  });
});
