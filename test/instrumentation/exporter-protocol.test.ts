import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditEventsOf, runAgent } from '../helpers/agents';
import { startCustody, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';

/**
 * The agent's exporter follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: http/json goes through the
 * stock @opentelemetry/exporter-trace-otlp-http, on the batch path and on the process.exit() path
 * alike, and custody's collector stores both as audit rows.
 */
describe('custody/register exporter protocol', () => {
  let custody: RunningCustody;
  beforeAll(async () => {
    custody = await startCustody({ args: ['--policy', policyFile()], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    expect((await putRollout(custody.url, { percent: 100, reason: 'exporter protocol test' })).status).toBe(200);
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it.each(['natural', 'exit'])('http/json: the tool call is stored (%s)', async (mode) => {
    const instance = `json-${mode}`;
    const run = await runAgent('telemetry.cjs', {
      args: [mode],
      custody,
      env: { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: instance, CUSTODY_POLICY_TIMEOUT_MS: '5000', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '60000' },
    });
    expect(run.code, run.stderr).toBe(0);
    const [event] = await auditEventsOf(custody, instance, 1);
    expect(event).toMatchObject({ sponsor_id: 'alice', tool_id: 'search', decision: 'allow' });
  });

  it('a protocol custody/register does not speak is said on stderr, and the spans still arrive over http/protobuf', async () => {
    const run = await runAgent('telemetry.cjs', {
      args: ['natural'],
      custody,
      env: { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_AGENT_INSTANCE_ID: 'grpc-asked', CUSTODY_POLICY_TIMEOUT_MS: '5000', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', CUSTODY_LOG_LEVEL: 'warn' },
    });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain("OTLP protocol 'grpc' is not one custody/register exports with");
    await auditEventsOf(custody, 'grpc-asked', 1);
  });
});
