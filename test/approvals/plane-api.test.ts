import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCustody, eventually, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, check, issue, metric, policyFile } from '../helpers/policy';

/**
 * The approvals API and the inbox page over real HTTP, through `custody policy-plane --workers 2`:
 * the workers are replicas, so every request is opened at and answered by the primary's plane,
 * whichever worker took it. Then the webhook's failures, counted and never in the way.
 */

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const CAROL = 'cap.carol-plane-api';

const POLICY = `
version: approvals-api
tools:
  billing:
    actions: [charge, refund]
    disclose_args: [amount]
rules:
  - id: allow-support-refunds
    role: support
    tool: billing
    allowed_actions: [refund]
  - id: large-refunds
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [refund]
    conditions:
      args: { amount: { gt: 100 } }
    approvers: { people: [carol] }
    approval_timeout: 10m
approvals:
  people:
    carol: { credential_sha256: ${sha(CAROL)} }
rollout:
  percent: 100
`;

const close = { connection: 'close' };

async function pendingCheck(url: string, tokensUrl: string, agent: string, purpose = 'ticket-9') {
  const { token } = await issue(tokensUrl, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: agent });
  const r = await check(url, { token, tool: 'billing', action: 'refund', purpose, args: { amount: 900, card: '4242' } }, close);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body as { decision: string; approval_id: string; approval_expires_at: string; receipt: string; args_disclosed: string[] };
}

const payload = (jws: string) => JSON.parse(Buffer.from(jws.split('.')[1]!, 'base64url').toString('utf8'));

describe('approvals API and inbox page through plane workers', () => {
  let tokens: RunningCustody;
  let plane: RunningCustody;

  beforeAll(async () => {
    tokens = await startCustody();
    plane = await startCustody({
      command: 'policy-plane',
      args: ['--workers', '2', '--token-url', tokens.url, '--policy', policyFile(POLICY)],
      env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN },
    });
  });
  afterAll(async () => {
    await plane?.stop();
    await tokens?.stop();
  });

  it('a check that needs approval answers pending with a signed receipt; only the disclosed field is kept; a small one is allowed', async () => {
    const p = await pendingCheck(plane.url, tokens.url, 'api-1');
    expect(p).toMatchObject({ decision: 'pending', args_disclosed: ['amount'] });
    expect(p.approval_id).toMatch(/^apr_[A-Za-z0-9_-]{22}$/);
    expect(payload(p.receipt)).toMatchObject({ decision: 'pending', approval: { id: p.approval_id, status: 'pending' }, args_disclosed: ['amount'] });
    const view = (await (await fetch(`${plane.url}/v1/approvals/${p.approval_id}`, { headers: close })).json()) as any;
    expect(view).toMatchObject({ id: p.approval_id, status: 'pending', sponsor: 'alice', agent: 'api-1', args: { amount: 900 } });
    expect(view.args).not.toHaveProperty('card');

    const { token } = await issue(tokens.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'api-2' });
    const small = await check(plane.url, { token, tool: 'billing', action: 'refund', args: { amount: 5 } }, close);
    expect(small.body).toMatchObject({ decision: 'allow', rule_id: 'allow-support-refunds' });
    expect(small.body).not.toHaveProperty('approval_id');
  });

  it('answering needs an approver: none 401, a stranger 401, the admin without --as 400; carol approves once, with a signed allow naming her', async () => {
    const p = await pendingCheck(plane.url, tokens.url, 'api-3');
    const post = (headers: Record<string, string>, body: unknown = {}) =>
      fetch(`${plane.url}/v1/approvals/${p.approval_id}/approve`, { method: 'POST', headers: { 'content-type': 'application/json', ...close, ...headers }, body: JSON.stringify(body) });
    expect((await post({})).status).toBe(401);
    expect((await post({ authorization: 'Bearer cap.nobody' })).status).toBe(401);
    expect((await post({ authorization: `Bearer ${ADMIN_TOKEN}` })).status).toBe(400);
    // long-polled by the enforcer: held until the answer
    const waiting = fetch(`${plane.url}/v1/approvals/${p.approval_id}?wait=20`, { headers: close }).then((r) => r.json() as Promise<any>);
    const approved = await post({ authorization: `Bearer ${CAROL}` }, { reason: 'ok by me' });
    expect(approved.status).toBe(200);
    const answered = await waiting;
    expect(answered).toMatchObject({ status: 'approved', decided_by: 'carol', decided_via: 'credential', decision_reason: 'ok by me', final: { decision: 'allow' } });
    expect(payload(answered.final.receipt)).toMatchObject({
      id: answered.final.policy_decision_id,
      decision: 'allow',
      agent_instance_id: 'api-3',
      tool_id: 'billing',
      action: 'refund',
      approval: { id: p.approval_id, status: 'approved', by: 'carol', via: 'credential', reason: 'ok by me' },
    });
    const again = await post({ authorization: `Bearer ${CAROL}` });
    expect(again.status).toBe(409);
    expect(((await again.json()) as any).error.code).toBe('approval_resolved');
    expect((await fetch(`${plane.url}/v1/approvals/apr_unknown`, { headers: close })).status).toBe(404);
  });

  it('the inbox page: a sign-in form, a same-site session cookie, forms that need the session’s CSRF token, and escaped content', async () => {
    const p = await pendingCheck(plane.url, tokens.url, 'api-<b>4</b>', '<script>alert(1)</script>');
    const first = await fetch(`${plane.url}/approvals`, { headers: close });
    expect(first.headers.get('content-type')).toMatch(/text\/html/);
    expect(first.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    expect(await first.text()).toMatch(/name="credential"/);

    const bad = await fetch(`${plane.url}/approvals/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...close }, body: 'credential=wrong', redirect: 'manual' });
    expect(bad.status).toBe(401);
    const login = await fetch(`${plane.url}/approvals/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...close }, body: `credential=${encodeURIComponent(CAROL)}`, redirect: 'manual' });
    expect(login.status).toBe(303);
    const setCookie = login.headers.get('set-cookie')!;
    expect(setCookie).toMatch(/custody_approver=[^;]+;.*HttpOnly/i);
    expect(setCookie).toMatch(/SameSite=Strict/i);
    const cookie = setCookie.split(';')[0]!;

    const page = await (await fetch(`${plane.url}/approvals`, { headers: { cookie, ...close } })).text();
    expect(page).toContain(`data-id="${p.approval_id}"`);
    expect(page).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(page).not.toContain('<script>');
    expect(page).toContain('api-&lt;b&gt;4&lt;/b&gt;');
    const csrf = /name="csrf" value="([^"]+)"/.exec(page)![1]!;

    const form = (body: string, headers: Record<string, string> = { cookie }) =>
      fetch(`${plane.url}/approvals/${p.approval_id}/deny`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...close, ...headers }, body, redirect: 'manual' });
    // a cross-site form has no cookie (SameSite) and no token: both refused, nothing answered
    expect((await form(`csrf=${encodeURIComponent(csrf)}&reason=x`, {})).status).toBe(401);
    expect((await form('csrf=forged&reason=x')).status).toBe(403);
    expect(((await (await fetch(`${plane.url}/v1/approvals/${p.approval_id}`, { headers: close })).json()) as any).status).toBe('pending');
    const denied = await form(`csrf=${encodeURIComponent(csrf)}&reason=${encodeURIComponent('not today')}`);
    expect(denied.status).toBe(303);
    expect(decodeURIComponent(denied.headers.get('location')!)).toContain(`${p.approval_id} denied by carol`);
    expect(await (await fetch(`${plane.url}/v1/approvals/${p.approval_id}`, { headers: close })).json()).toMatchObject({ status: 'denied', decision_reason: 'not today', final: { decision: 'deny' } });
  });
});

describe('the approval webhook', () => {
  let custody: RunningCustody;
  beforeAll(async () => {
    // nothing listens on port 9 (discard) here: every delivery fails
    custody = await startCustody({ args: ['--policy', policyFile(POLICY)], env: { CUSTODY_APPROVAL_WEBHOOK_URL: 'http://127.0.0.1:9/hook' } });
  });
  afterAll(async () => {
    await custody?.stop();
  });

  it('a failing webhook is counted, and the request stands', async () => {
    const before = (await metric(custody.url, 'custody_approval_webhook_failures_total')) ?? 0;
    const p = await pendingCheck(custody.url, custody.url, 'hook-1');
    expect(p.decision).toBe('pending');
    await eventually(async () => ((await metric(custody.url, 'custody_approval_webhook_failures_total')) ?? 0) > before, 30_000);
    expect(await metric(custody.url, 'custody_approvals_pending')).toBeGreaterThanOrEqual(1);
    expect(((await (await fetch(`${custody.url}/v1/approvals/${p.approval_id}`)).json()) as any).status).toBe('pending');
  });
});
