import { describe, expect, it } from 'vitest';
import { INBOX_PAGE_SIZE, inboxPage, loginPage } from '../../enforcer/plane/approval-page';
import type { ApprovalRecord } from '../../enforcer/plane/approvals';

const request = (i: number, over: Partial<ApprovalRecord> = {}): ApprovalRecord => ({
  id: `apr_${i}`,
  status: 'pending',
  created_at: 1_000 + i,
  expires_at: 900_000 + i,
  sponsor_id: 'alice',
  agent_instance_id: `agent-${i}`,
  parent_agent_id: 'parent-1',
  chain: ['parent-1', 'root-1'],
  role: 'support',
  tool: 'billing',
  action: 'refund',
  purpose: `ticket-${i}`,
  args: { amount: 500 + i },
  rule_id: 'large-refunds',
  reason: '',
  approvers: { sponsor: false, people: [], roles: ['finance'] },
  timeout_ms: 900_000,
  request_decision_id: `pd_${i}`,
  cohort: 'canary',
  enforced: true,
  token_jti: `jti-${i}`,
  token_exp: 0,
  policy_version: 'v1',
  rollout_percent: 100,
  risk: 'high',
  ...over,
});

describe('the approval inbox page', () => {
  const all = Array.from({ length: 250 }, (_, i) => request(i));
  const render = (page: number) => inboxPage({ person: 'carol', via: 'credential', csrf: 'tok', requests: all, page, can: () => ({ ok: true }) });
  const rows = (html: string) => [...html.matchAll(/<tr id="(apr_\d+)"/g)].map((m) => m[1]);

  it('counts every pending request and shows them a hundred at a time, oldest first', () => {
    expect(INBOX_PAGE_SIZE).toBe(100);
    const first = render(1);
    expect(first).toContain('<p id="count">250 pending</p>');
    expect(rows(first)).toEqual(all.slice(0, 100).map((r) => r.id));
    expect(first).toContain('showing 1–100');
    expect(first).toContain('href="/approvals?page=2">next');
    const last = render(3);
    expect(rows(last)).toEqual(all.slice(200).map((r) => r.id));
    expect(last).toContain('href="/approvals?page=2">previous');
    expect(last).not.toContain('next</a>');
    expect(rows(render(99))).toEqual(rows(last));
  });

  it('shows sponsor, agent chain, tool, action, purpose and the disclosed arguments, with one form per request carrying the CSRF token', () => {
    const html = render(1);
    const row = /<tr id="apr_7"[\s\S]*?<\/tr>/.exec(html)![0];
    for (const text of ['alice', 'agent-7 ← parent-1 ← root-1', 'billing', 'refund', 'ticket-7', 'amount=507', 'large-refunds']) expect(row).toContain(text);
    expect(row).toContain('action="/approvals/apr_7/approve"');
    expect(row).toContain('formaction="/approvals/apr_7/deny"');
    expect(row).toContain('name="csrf" value="tok"');
  });

  it('a request the signed-in person may not answer says why instead of offering buttons', () => {
    const html = inboxPage({ person: 'alice', via: 'credential', csrf: 'tok', requests: [request(1)], page: 1, can: () => ({ ok: false, why: 'alice sponsors the requesting agent' }) });
    expect(html).toContain('alice sponsors the requesting agent');
    expect(html).not.toContain('/approvals/apr_1/approve');
  });

  it('escapes everything that came from an agent', () => {
    const html = inboxPage({ person: 'carol', via: 'admin', csrf: 'tok', requests: [request(1, { purpose: '"><img src=x onerror=alert(1)>', args: { note: '<script>' } })], page: 1, can: () => ({ ok: true }) });
    expect(html).not.toContain('<img');
    expect(html).not.toContain('<script>');
    expect(html).toContain('&quot;&gt;&lt;img src=x onerror=alert(1)&gt;');
    expect(html).toContain('(admin acting for them)');
    expect(loginPage({ error: '<b>no</b>' })).toContain('&lt;b&gt;no&lt;/b&gt;');
  });
});
