import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from './helpers/custody';

// The main job end to end: `custody up` with the seed scenario, real agent processes loaded with
// --require custody/register, a real MCP tool server, the rollback job acting on its own.

interface Call { tool: string; ok: boolean; code?: string }
interface Report { agent: { agentInstanceId: string; parentAgentId?: string; sponsorId?: string }; calls: Call[]; refunds?: Report[]; ticket?: string }

let custody: RunningCustody | undefined;
afterAll(async () => {
  await custody?.stop();
});

const all = (r: Report): Call[] => [...r.calls, ...(r.refunds ?? []).flatMap(all)];

describe('npm start: the seed scenario', () => {
  it('plays from a fresh data dir to a rollback and prints the chain of custody of a refund', async () => {
    custody = await startCustody({ demo: true });
    await eventually(async () => custody!.output().includes('custody keeps serving'), 240_000, 500);
    const out = custody.output();
    const result = JSON.parse(fs.readFileSync(path.join(custody.dataDir, 'demo-result.json'), 'utf8'));
    const assistant: Report = result.assistant[0];

    // the support assistant: 60 tickets, two searches each, a charge every 7th, file-store every 10th (denied), refunds every 6th by sub-agents
    const calls = all(assistant);
    expect(calls.filter((c) => c.tool === 'search' && c.ok)).toHaveLength(120);
    expect(calls.filter((c) => c.tool === 'billing.charge' && c.ok)).toHaveLength(8);
    expect(calls.filter((c) => c.tool === 'file-store.write')).toEqual(Array(6).fill({ tool: 'file-store.write', ok: false, code: 'ERR_POLICY_DENIED' }));
    expect(assistant.refunds).toHaveLength(10);
    for (const refund of assistant.refunds!) {
      expect(refund.agent.parentAgentId).toBe(assistant.agent.agentInstanceId);
      expect(refund.agent.sponsorId).toBe('alice');
      expect(refund.calls).toEqual([{ tool: 'billing.refund', ok: true }]);
    }

    // the customer agent may search, not touch billing
    expect(result.customer.calls).toEqual([
      { tool: 'search', ok: true },
      { tool: 'billing.refund', ok: false, code: 'ERR_POLICY_DENIED' },
      { tool: 'billing.charge', ok: false, code: 'ERR_POLICY_DENIED' },
    ]);
    // no sponsor: refused, whatever the tool
    expect(result.unsponsored.calls.map((c: Call) => c.code)).toEqual(['ERR_POLICY_DENIED', 'ERR_POLICY_DENIED']);
    // the outage: failed closed while the plane was cut off, allowed again once it was back, same process
    const outage: Call[] = all(result.duringOutage);
    const firstOk = outage.findIndex((c) => c.ok);
    expect(outage.slice(0, Math.max(firstOk, 0)).length).toBeGreaterThan(0);
    expect(outage.slice(0, firstOk).every((c) => c.code === 'ERR_POLICY_UNAVAILABLE')).toBe(true);
    expect(outage.filter((c) => c.ok).length).toBeGreaterThan(0);
    // the fleet in shadow: nothing blocked, not even what the policy would deny
    for (const f of result.fleet as Report[]) expect(f.calls.every((c) => c.ok)).toBe(true);

    // every call that ran reached the tool server, and nothing else did
    const ran = [assistant, result.customer, result.unsponsored, result.duringOutage, ...result.fleet].flatMap(all).filter((c: Call) => c.ok);
    expect(result.toolServerSaw).toHaveLength(ran.length);
    expect(result.toolServerSaw.filter((t: { tool: string }) => t.tool === 'file-store.write')).toHaveLength(result.fleet.length);

    // the rollback job moved the gate to 0 on the policy error rate
    expect(result.rolledBack).toBe(true);
    const rollout = await (await fetch(`${custody.url}/v1/rollout`)).json();
    expect(rollout.percent).toBe(0);
    const errorRule = result.final.rules.find((r: { rule: string }) => r.rule === 'policy_error_rate');
    expect(errorRule.breached).toBe(true);
    expect(result.final.failClosed).toBeGreaterThanOrEqual(outage.filter((c) => !c.ok).length);

    // the printed chain of custody: alice → assistant → refund sub-agent → billing.refund with its decision id
    const trail = result.refundTrail;
    expect(trail.trail.sponsor_id).toBe('alice');
    expect(trail.trail.ancestors.map((a: { agent_instance_id: string }) => a.agent_instance_id)).toEqual([assistant.agent.agentInstanceId]);
    const [refundCall] = trail.trail.agent.calls;
    expect(refundCall).toMatchObject({ tool_id: 'billing', action: 'refund', decision: 'allow' });
    expect(refundCall.policy_decision_id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    const printed = out.slice(out.indexOf('chain of custody of refund'));
    expect(printed).toContain('sponsor alice');
    expect(printed).toContain(`└─ ${assistant.agent.agentInstanceId}`);
    expect(printed).toContain(`name refund-agent`);
    expect(printed).toContain(`billing.refund  allow  decision_id=${refundCall.policy_decision_id}`);
    expect(out).toContain('rolled back by the rollback job');

    // and custody keeps serving
    expect((await fetch(`${custody.url}/readyz`)).status).toBe(200);
  }, 300_000);
});
