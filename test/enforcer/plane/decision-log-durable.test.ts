import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { startOtlpSink, type OtlpSink } from '../../helpers/policy-otlp-sink';
import { check, issue, policyFile } from '../../helpers/policy';

// No decision unrecorded: a plane whose collector does not acknowledge its decision log keeps the
// records (bounded), refuses to decide once the bound is reached, and delivers every record later.
const QUEUE_MAX = 30;

describe('the decision log when the collector is down', () => {
  let sink: OtlpSink;
  let tokens: RunningCustody;
  let plane: RunningCustody;

  beforeAll(async () => {
    sink = await startOtlpSink();
    tokens = await startCustody();
    plane = await startCustody({
      command: 'policy-plane',
      args: ['--token-url', tokens.url, '--policy', policyFile(), '--otlp-url', sink.url],
      env: { CUSTODY_REPORT_QUEUE_MAX: String(QUEUE_MAX) },
    });
    // the plane's start record has arrived: from here on, only decisions are reported
    await eventually(async () => sink.spans.some((s) => s.name === 'custody.rollout.change'));
  });
  afterAll(async () => {
    await plane?.stop();
    await tokens?.stop();
    await sink?.close();
  });

  it('decides while records fit, answers 503 once they do not, and loses none', async () => {
    const { token } = await issue(tokens.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'durable-1' });
    sink.failing = true;
    const decided: string[] = [];
    let refused: { status: number; body: any } | undefined;
    for (let i = 0; i < QUEUE_MAX * 2 && !refused; i++) {
      const r = await check(plane.url, { token, tool: 'search', action: 'call' });
      if (r.status === 200) decided.push(r.body.policy_decision_id);
      else refused = r;
    }
    expect(refused, 'a full decision log refuses the check').toBeDefined();
    expect(refused!.status).toBe(503);
    expect(refused!.body.error.code).toBe('decision_log_full');
    expect(decided.length).toBeGreaterThan(0);
    expect(decided.length).toBeLessThanOrEqual(QUEUE_MAX);
    const before = sink.spans.filter((s) => s.name === 'custody.policy.decision').length;
    expect(before).toBe(0);

    // the collector is back: every decision made meanwhile arrives, and checks are decided again
    sink.failing = false;
    await eventually(async () => {
      const got = new Set(sink.spans.map((s) => s.attributes['custody.policy_decision_id']));
      return decided.every((id) => got.has(id));
    }, 60_000, 200);
    const after = await eventually(async () => {
      const r = await check(plane.url, { token, tool: 'search', action: 'call' });
      return r.status === 200 ? r : undefined;
    }, 30_000, 200);
    expect(after.body.decision).toBe('allow');
  });
});
