import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../collector/audit/queries';
import { auditEventsOf, runAgent, type AgentRun } from '../helpers/agents';
import { hasChromium, launchChromium } from '../helpers/chromium';
import { eventually, runCli, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN } from '../helpers/policy';

/**
 * Human approval end to end, with real processes: `custody up`, agents started with
 * `node --require custody/register`, the `custody` CLI, a webhook receiver, and the inbox page in
 * a real headless Chromium. Refunds over 100 wait for someone in the finance role; the agents'
 * sponsor alice holds that role too, and may still not approve her own agent's request.
 */

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const CAROL = 'cap.carol-approver-credential';
const ALICE = 'cap.alice-approver-credential';

const POLICY = `
version: approvals-e2e
tools:
  billing:
    risk: high
    actions: [charge, refund, read]
    disclose_args: [amount]
rules:
  - id: allow-support-refunds
    role: support
    tool: billing
    allowed_actions: [refund]
  - id: quick-expiry
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [refund]
    conditions:
      purpose: { in: [expire-me] }
      args: { amount: { gt: 100 } }
    approvers: { roles: [finance] }
    approval_timeout: 3s
  - id: large-refunds
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [refund]
    conditions:
      args: { amount: { gt: 100 } }
    approvers: { roles: [finance] }
    approval_timeout: 5m
approvals:
  people:
    carol: { roles: [finance], credential_sha256: ${sha(CAROL)} }
    alice: { roles: [finance], credential_sha256: ${sha(ALICE)} }
rollout:
  percent: 100
`;

const AGENT_ENV = { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support' };

interface Pending {
  id: string;
  status: string;
  sponsor: string;
  agent: string;
  tool: string;
  action: string;
  purpose: string | null;
  args: Record<string, unknown>;
  final?: { policy_decision_id: string; decision: string };
}

describe('human approval, end to end', () => {
  let custody: RunningCustody;
  let policyFile: string;
  const hooks: any[] = [];
  let hookServer: http.Server;

  beforeAll(async () => {
    hookServer = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        try {
          hooks.push(JSON.parse(body));
        } catch {
          hooks.push({ unparsable: body });
        }
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', r));
    const hookUrl = `http://127.0.0.1:${(hookServer.address() as import('node:net').AddressInfo).port}/hook`;
    policyFile = path.join(tempDir('custody-approvals-'), 'policy.yaml');
    fs.writeFileSync(policyFile, POLICY);
    custody = await startCustody({ args: ['--policy', policyFile], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_APPROVAL_WEBHOOK_URL: hookUrl } });
  });

  afterAll(async () => {
    await custody?.stop();
    await new Promise((r) => hookServer?.close(r));
  });

  const refund = (amount: number, purpose: string, timeoutMs = 120_000): Promise<AgentRun> =>
    runAgent('approval-refund.cjs', { custody, env: { ...AGENT_ENV, AMOUNT: String(amount), PURPOSE: purpose }, timeoutMs });

  const pending = async (credential = CAROL): Promise<Pending[]> => {
    const res = await fetch(`${custody.url}/v1/approvals`, { headers: { authorization: `Bearer ${credential}` } });
    expect(res.status).toBe(200);
    return ((await res.json()) as { approvals: Pending[] }).approvals;
  };
  const waitingFor = (purpose: string) => eventually(async () => (await pending()).find((p) => p.purpose === purpose), 60_000);
  const stored = async (agent: string): Promise<AuditEvent> => (await auditEventsOf(custody, agent, 1))[0]!;

  it('a refund under the limit runs at once, the plane seeing its amount and nothing else of its arguments', async () => {
    const run = await refund(50, 'ticket-small');
    expect(run.report?.outcome).toEqual({ ok: true, value: { refunded: 50 } });
    const row = await stored(run.report.agent.agentInstanceId);
    expect(row).toMatchObject({ decision: 'allow', rule_id: 'allow-support-refunds', args_disclosed: 'amount', approval_status: '' });
  });

  it.skipIf(!hasChromium)('a refund over the limit waits, its sponsor may not approve it, carol approves it in the inbox page in Chromium, and it runs, recorded with her as approver', async () => {
    const agent = refund(500, 'ticket-approve');
    const request = await waitingFor('ticket-approve');
    expect(request).toMatchObject({ status: 'pending', sponsor: 'alice', tool: 'billing', action: 'refund' });
    // the order number and card digits the agent passed stayed in the agent: only the disclosed field travelled
    expect(request.args).toEqual({ amount: 500 });
    // the announcement went out, with the request in it
    const hook = await eventually(async () => hooks.find((h) => h.approval?.id === request.id), 30_000);
    expect(hook).toMatchObject({ type: 'custody.approval.requested', approval: { sponsor: 'alice', tool: 'billing', args: { amount: 500 } } });
    expect(hook.text).toContain(request.id);

    // alice sponsors the agent: her own credential is refused, though she holds the finance role
    const self = await runCli(['approvals', 'approve', request.id, '--reason', 'mine', '--url', custody.url], { CUSTODY_APPROVER_TOKEN: ALICE });
    expect(self.code).toBe(1);
    expect(self.stderr).toMatch(/alice sponsors the requesting agent/);

    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(`${custody.url}/approvals`, { waitUntil: 'load' });
      await page.type('input[name=credential]', CAROL);
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#login button[type=submit]')]);
      expect(await page.$eval('#who', (e) => e.textContent)).toBe('carol');
      const row = `tr[data-id="${request.id}"]`;
      expect(await page.$eval(row, (e) => e.textContent)).toContain('amount=500');
      await page.type(`${row} input[name=reason]`, 'ticket 4711 checked');
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`${row} button[value=approve]`)]);
      expect(await page.$eval('#note', (e) => e.textContent)).toContain(`${request.id} approved by carol`);
      expect(await page.$(row)).toBeNull();
    } finally {
      await browser.close();
    }

    const run = await agent;
    expect(run.report?.outcome).toEqual({ ok: true, value: { refunded: 500 } });
    const answered = (await (await fetch(`${custody.url}/v1/approvals/${request.id}`)).json()) as Pending & { decided_by: string };
    expect(answered).toMatchObject({ status: 'approved', decided_by: 'carol', final: { decision: 'allow' } });
    const row = await stored(run.report.agent.agentInstanceId);
    expect(row).toMatchObject({
      decision: 'allow',
      rule_id: 'large-refunds',
      status: 'ok',
      policy_decision_id: answered.final!.policy_decision_id,
      approval_id: request.id,
      approval_status: 'approved',
      approval_approver: 'carol',
      approval_reason: 'ticket 4711 checked',
      args_disclosed: 'amount',
    });
    const trail = await runCli(['audit', 'trail', run.report.agent.agentInstanceId, '--url', custody.url], { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN });
    expect(trail.code).toBe(0);
    expect(trail.stdout).toMatch(/billing\.refund .*allow .*rule=large-refunds .*approval approved by carol \(ticket 4711 checked\)/);
  });

  it('another is denied by the admin acting for carol: the agent gets ERR_POLICY_DENIED naming who and why, and the tool never runs', async () => {
    const agent = refund(300, 'ticket-deny');
    const request = await waitingFor('ticket-deny');
    const listed = await runCli(['approvals', 'list', '--json', '--url', custody.url], { CUSTODY_APPROVER_TOKEN: CAROL });
    expect(listed.code).toBe(0);
    const items = JSON.parse(listed.stdout) as Pending[];
    expect(items.find((i) => i.id === request.id)).toMatchObject({ id: request.id, sponsor: 'alice', agent: request.agent, tool: 'billing', action: 'refund', purpose: 'ticket-deny' });

    // the admin credential must say whom it acts for
    const anonymous = await runCli(['approvals', 'deny', request.id, '--url', custody.url], { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN });
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toMatch(/--as PERSON/);
    const denied = await runCli(['approvals', 'deny', request.id, '--reason', 'duplicate refund', '--as', 'carol', '--url', custody.url], { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN });
    expect(denied.code).toBe(0);
    expect(denied.stdout).toMatch(/denied by carol; decision deny/);

    const run = await agent;
    expect(run.report?.outcome).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED' });
    expect(run.report.outcome.message).toMatch(/denied by carol: duplicate refund/);
    const row = await stored(run.report.agent.agentInstanceId);
    expect(row).toMatchObject({ decision: 'deny', error_type: 'policy_denied', response_hash: '', approval_status: 'denied', approval_approver: 'carol', approval_reason: 'duplicate refund' });
    // answered once: a second answer is refused
    const again = await runCli(['approvals', 'approve', request.id, '--url', custody.url], { CUSTODY_APPROVER_TOKEN: CAROL });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already denied by carol/);
  });

  it('each held call is approved on its own: the same agent’s second large refund waits again, under a new request', async () => {
    const agent = runAgent('approval-refund.cjs', { custody, env: { ...AGENT_ENV, AMOUNT: '250', PURPOSE: 'ticket-twice', COUNT: '2' }, timeoutMs: 120_000 });
    const approve = async (id: string) => {
      const res = await fetch(`${custody.url}/v1/approvals/${id}/approve`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        body: JSON.stringify({ as: 'carol', reason: 'one of two' }),
      });
      expect(res.status).toBe(200);
    };
    const first = await waitingFor('ticket-twice');
    await approve(first.id);
    const second = await eventually(async () => (await pending()).find((p) => p.purpose === 'ticket-twice' && p.id !== first.id), 60_000);
    expect(second.agent).toBe(first.agent);
    await approve(second.id);
    const run = await agent;
    expect(run.report?.outcomes).toEqual([
      { ok: true, value: { refunded: 250 } },
      { ok: true, value: { refunded: 250 } },
    ]);
    const rows = await auditEventsOf(custody, run.report.agent.agentInstanceId, 2);
    expect(rows.map((r) => r.approval_id)).toEqual([first.id, second.id]);
    expect(rows.every((r) => r.approval_approver === 'carol' && r.decision === 'allow' && !r.policy_cached)).toBe(true);
  });

  it('another expires unanswered: refused with ERR_POLICY_DENIED saying so', async () => {
    const run = await refund(200, 'expire-me');
    expect(run.report?.outcome).toMatchObject({ ok: false, code: 'ERR_POLICY_DENIED' });
    expect(run.report.outcome.message).toMatch(/approval expired: nobody answered within 3 s/);
    expect(run.report.waited_ms).toBeGreaterThanOrEqual(2900);
    const row = await stored(run.report.agent.agentInstanceId);
    expect(row).toMatchObject({ decision: 'deny', rule_id: 'quick-expiry', approval_status: 'expired', approval_approver: '' });
  });

  it('a policy with a rule on an undisclosed argument field is refused at load, and the plane keeps the last good one', async () => {
    const bad = POLICY.replace('args: { amount: { gt: 100 } }\n    approvers: { roles: [finance] }\n    approval_timeout: 5m', 'args: { card_number: { eq: "4111" } }\n    approvers: { roles: [finance] }\n    approval_timeout: 5m');
    expect(bad).not.toBe(POLICY);
    const file = path.join(tempDir('custody-approvals-bad-'), 'policy.yaml');
    fs.writeFileSync(file, bad);
    const checked = await runCli(['policy', 'check', file]);
    expect(checked.code).not.toBe(0);
    expect(checked.stderr + checked.stdout).toMatch(/argument 'card_number' is not disclosed by tool 'billing'/);
    // what a policy decides for a given amount, before shipping it
    const pendingEval = await runCli(['policy', 'eval', policyFile, '--tool', 'billing.refund', '--role', 'support', '--args', '{"amount": 500, "card": "4242"}']);
    expect(pendingEval.code).toBe(3);
    expect(pendingEval.stdout).toMatch(/^pending billing\.refund \(rule large-refunds\).*approvers \{"sponsor":false,"people":\[\],"roles":\["finance"\]\}, waits up to 300 s/);
    expect((await runCli(['policy', 'eval', policyFile, '--tool', 'billing.refund', '--role', 'support', '--args', '{"amount": 5}'])).code).toBe(0);
    const version = (await (await fetch(`${custody.url}/v1/policy`)).json()) as { version: string; tools: Record<string, { disclose_args: string[] }> };
    expect(version).toMatchObject({ version: 'approvals-e2e', tools: { billing: { disclose_args: ['amount'] } } });
  });

  it('audit verify proves every call, the approved ones by their signed decisions naming carol', async () => {
    await custody.stop();
    const verify = await runCli(['audit', 'verify', '--data-dir', custody.dataDir]);
    expect(verify.stdout).toMatch(/result: CLEAN/);
    expect(verify.code).toBe(0);
    // the one approved in Chromium (when it is installed) and the two approved one by one
    const approved = hasChromium ? 3 : 2;
    expect(verify.stdout).toMatch(new RegExp(`approvals\\s+${approved} approved \\(carol ×${approved}\\), 1 denied, 1 expired`));
  });
});
