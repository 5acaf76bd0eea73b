import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../helpers/custody';

// The main job end to end: `custody up` with the seed scenario, real agent processes loaded with
// --require custody/register, a real MCP tool server, the rollback job acting on its own.

interface Call { tool: string; ok: boolean; at: number; code?: string; message?: string }
interface Report { agent: { agentInstanceId: string; parentAgentId?: string; sponsorId?: string }; calls: Call[]; refunds?: Report[]; ticket?: string }

let custody: RunningCustody | undefined;
afterAll(async () => {
  await custody?.stop();
});

const all = (r: Report): Call[] => [...r.calls, ...(r.refunds ?? []).flatMap(all)];

describe('npm start: the seed scenario', () => {
  it('plays from a fresh data dir to a rollback and prints the chain of custody of a refund', async () => {
    custody = await startCustody({ demo: true });
    // the scenario plays for minutes; on a loaded machine several times longer
    await eventually(async () => custody!.output().includes('custody keeps serving'), 540_000, 500);
    const out = custody.output();
    const result = JSON.parse(fs.readFileSync(path.join(custody.dataDir, 'demo-result.json'), 'utf8'));
    const assistant: Report = result.assistant[0];

    // The rollback job acts on what it sees: the outage (and, on a loaded machine, any real
    // timeout before it) breaches the error rate. Before the rollback the canary agents are
    // enforced; after it they run in shadow. Every assertion below holds whenever it happened.
    expect(result.rolledBack).toBe(true);
    const rolledBackAt: number = result.rolledBackAt;
    expect(rolledBackAt).toBeGreaterThan(0);
    const enforced = (c: Call) => c.at < rolledBackAt - 50;
    // the billing API's guard: a call that reached it without a token (a shadow call whose token came
    // too late on a loaded machine) or while it could not check one is refused there, never run
    const guardRefused = (c: Call) => !c.ok && c.tool.startsWith('billing') && c.code === 'tool_error' && /custody: (token_required|guard_unavailable)/.test(c.message ?? '');
    const refused = (c: Call) => !c.ok && (c.code === 'ERR_POLICY_DENIED' || c.code === 'ERR_POLICY_UNAVAILABLE' || guardRefused(c));
    const canary: Report[] = [assistant, result.customer, result.duringOutage, result.unsponsored];
    // a call that did not run was refused by custody, never broken some other way
    for (const c of canary.flatMap(all)) if (!c.ok) expect(refused(c)).toBe(true);

    // the support assistant: 60 tickets, two searches each, a charge every 7th, file-store every 10th, refunds every 6th by sub-agents
    const calls = all(assistant);
    expect(calls.filter((c) => c.tool === 'search')).toHaveLength(120);
    expect(calls.filter((c) => c.tool === 'billing.charge')).toHaveLength(8);
    const fileStore = calls.filter((c) => c.tool === 'file-store.write');
    expect(fileStore).toHaveLength(6);
    // support may not write to the file store: while enforced it never ran (denied, or on a loaded
    // machine unavailable); how many came before the rollback depends on when it happened
    for (const c of fileStore.filter(enforced)) expect(refused(c)).toBe(true);
    for (const c of fileStore.filter((c) => c.ok)) expect(enforced(c)).toBe(false);
    expect(assistant.refunds).toHaveLength(10);
    for (const refund of assistant.refunds!) {
      expect(refund.agent.parentAgentId).toBe(assistant.agent.agentInstanceId);
      expect(refund.agent.sponsorId).toBe('alice');
      expect(refund.calls.map((c) => c.tool)).toEqual(['billing.refund']);
    }
    // refunds are allowed: one that did not run was refused for want of a decision, never denied
    for (const c of assistant.refunds!.flatMap(all)) if (!c.ok) expect(c.code === 'ERR_POLICY_UNAVAILABLE' || guardRefused(c)).toBe(true);
    // every refund that ran was checked by the billing API's guard, which saw alice's token
    for (const saw of result.toolServerSaw.filter((t: { tool: string }) => t.tool === 'billing.refund')) expect(saw.args.for).toBe('alice');

    // a script without custody/register asked the billing API for a refund: the guard refused it
    expect(result.rogue.calls).toEqual([expect.objectContaining({ tool: 'billing.refund', ok: false, code: 'tool_error', message: expect.stringMatching(/token_required/) })]);
    expect(result.toolServerSaw.some((t: { args?: { customer?: string } }) => t.args?.customer === 'c-666')).toBe(false);

    // the customer agent (role user) may search, never touch billing while enforced
    const customer = all(result.customer);
    expect(customer.map((c) => c.tool)).toEqual(['search', 'billing.refund', 'billing.charge']);
    // (denied; on a loaded machine a timeout refuses it as unavailable: either way it never ran)
    for (const c of customer.slice(1).filter(enforced)) expect(refused(c)).toBe(true);
    for (const c of customer.slice(1)) if (c.ok) expect(enforced(c)).toBe(false);
    for (const c of customer) if (c.code) expect(c.code === 'ERR_POLICY_DENIED' ? c.tool.startsWith('billing') : true).toBe(true);
    // no sponsor: refused whatever the cohort
    expect(result.unsponsored.calls.map((c: Call) => c.code)).toEqual(['ERR_POLICY_DENIED', 'ERR_POLICY_DENIED']);

    // the outage: while the plane was cut off, an enforced call never ran (failed closed); the same
    // process's calls run again once it is back
    const outage: Call[] = all(result.duringOutage);
    const during = outage.filter((c) => c.at >= result.outage.from && c.at < result.outage.to - 250);
    expect(during.length).toBeGreaterThan(0);
    for (const c of during.filter(enforced)) expect(c.code).toBe('ERR_POLICY_UNAVAILABLE');
    // (a shadow call during the outage runs only if its agent had read the rollout before the cut;
    // these agents start just before it, so either can happen: test/enforcer/client/enforcer.test.ts
    // checks both cases)
    // once the plane is back a search runs, unless on a loaded machine it timed out and failed
    // closed: an agent enforces while it does not know the rollout, so also after a rollback
    for (const c of outage.filter((c) => c.at >= result.outage.to + 500 && c.tool === 'search')) {
      if (!c.ok) expect(c.code).toBe('ERR_POLICY_UNAVAILABLE');
    }
    expect(result.final.failClosed).toBeGreaterThanOrEqual(canary.flatMap(all).filter((c) => c.code === 'ERR_POLICY_UNAVAILABLE').length);

    // the fleet in shadow: nothing blocked, not even what the policy would deny
    for (const f of result.fleet as Report[]) expect(f.calls.every((c) => c.ok)).toBe(true);

    // every call that ran reached the tool server, and nothing else did
    const ran = [assistant, result.customer, result.unsponsored, result.duringOutage, ...result.fleet].flatMap(all).filter((c: Call) => c.ok);
    expect(result.toolServerSaw).toHaveLength(ran.length);
    expect(result.toolServerSaw.filter((t: { tool: string }) => t.tool === 'file-store.write')).toHaveLength(ran.filter((c) => c.tool === 'file-store.write').length);

    // the rollback job moved the gate to 0 on a breached rule and it stays there
    const rollout = await (await fetch(`${custody.url}/v1/rollout`)).json();
    expect(rollout.percent).toBe(0);
    expect(result.final.rules.some((r: { breached: boolean }) => r.breached)).toBe(true);

    // the printed chain of custody: alice → assistant → refund sub-agent → billing.refund with its decision id
    const trail = result.refundTrail;
    expect(trail.trail.sponsor_id).toBe('alice');
    expect(trail.trail.ancestors.map((a: { agent_instance_id: string }) => a.agent_instance_id)).toEqual([assistant.agent.agentInstanceId]);
    const [refundCall] = trail.trail.agent.calls;
    expect(refundCall).toMatchObject({ tool_id: 'billing', action: 'refund' });
    // allowed by the plane; or, if no refund was (a loaded machine), run in shadow on a plane error
    if (refundCall.decision === 'allow') expect(refundCall.policy_decision_id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    else expect([refundCall.decision, refundCall.enforced]).toEqual(['error', false]);
    const printed = out.slice(out.indexOf('chain of custody of refund'));
    expect(printed).toContain('sponsor alice');
    expect(printed).toContain(`└─ ${assistant.agent.agentInstanceId}`);
    expect(printed).toContain(`name refund-agent`);
    expect(printed).toContain(refundCall.decision === 'allow' ? `billing.refund  allow  decision_id=${refundCall.policy_decision_id}` : 'billing.refund  error');
    // and the billing API's side of the same call: its guard accepted the call's token
    expect(refundCall.tool_side).toEqual([expect.objectContaining({ decision: 'allow', error_type: null })]);
    expect(printed).toMatch(/↳ tool side: acme-support-tools custody\.guard allow/);
    expect(out).toContain('rolled back by the rollback job');
    expect(out).toContain('scenario done');

    // and custody keeps serving
    expect((await fetch(`${custody.url}/readyz`)).status).toBe(200);
  }, 600_000);
});
