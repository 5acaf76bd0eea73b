import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../common/errors';
import { compilePolicyText, type Policy } from '../../../enforcer/policy/compile';
import { decide } from '../../../enforcer/policy/decide';
import { argsMatch, discloseArgs } from '../../../enforcer/policy/args';
import { authenticateApprover, mayApprove } from '../../../enforcer/plane/approvers';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

const POLICY = `
version: approvals-unit
tools:
  billing:
    actions: [charge, refund]
    disclose_args: [amount, currency]
rules:
  - id: allow-support-refunds
    role: support
    tool: billing
    allowed_actions: [refund]
  - id: big-refunds-need-finance
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [refund]
    conditions:
      args: { amount: { gt: 100 } }
    approvers: { roles: [finance], people: [erin] }
  - id: eur-refunds-sponsor-may-approve
    effect: require_approval
    role: support
    tool: billing
    allowed_actions: [charge]
    conditions:
      args: { currency: { in: [EUR] } }
    approvers: { sponsor: true }
    approval_timeout: 2m
  - id: small-charges
    role: support
    tool: billing
    allowed_actions: [charge]
    conditions:
      args: { amount: { lte: 10 } }
approvals:
  default_timeout: 20m
  people:
    carol: { roles: [finance], credential_sha256: ${sha('cap.carol')} }
    alice: { roles: [finance], credential_sha256: ${sha('cap.alice')} }
`;

function refusal(text: string): string {
  try {
    compilePolicyText(text, '/etc/custody/policy.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('the policy was accepted');
}

const policy: Policy = compilePolicyText(POLICY, 'unit.yaml');
const who = { sponsorId: 'alice', agentInstanceId: 'agent-1', role: 'support' };
const at = { now: Date.parse('2026-06-01T00:00:00Z') };

describe('require_approval and argument conditions: the policy', () => {
  it('compiles approvers and timeouts: the rule’s own, else approvals.default_timeout', () => {
    const rules = policy.rulesFor('billing');
    const big = rules.find((r) => r.id === 'big-refunds-need-finance')!;
    expect(big.effect).toBe('require_approval');
    expect(big.approval).toMatchObject({ sponsor: false, timeoutMs: 20 * 60_000 });
    expect([...big.approval!.roles]).toEqual(['finance']);
    expect([...big.approval!.people]).toEqual(['erin']);
    expect(rules.find((r) => r.id === 'eur-refunds-sponsor-may-approve')!.approval).toMatchObject({ sponsor: true, timeoutMs: 120_000 });
    // deny, then require_approval, then allow
    expect(rules.map((r) => r.effect)).toEqual(['require_approval', 'require_approval', 'allow', 'allow']);
    expect(policy.tools.get('billing')!.discloseArgs).toEqual(['amount', 'currency']);
    expect(policy.approvals.people.get('carol')).toEqual({ roles: ['finance'], credentialSha256: sha('cap.carol') });
  });

  it('refuses a rule on an argument field the tool does not disclose, naming the field and the tool', () => {
    const text = POLICY.replace('args: { amount: { gt: 100 } }', 'args: { card_number: { eq: "4111" } }');
    const msg = refusal(text);
    expect(msg).toMatch(/argument 'card_number' is not disclosed by tool 'billing'/);
    expect(msg).toMatch(/rules\.1\.conditions\.args\.card_number/);
  });

  it('refuses argument conditions on a wildcard tool, and without a tools table', () => {
    expect(refusal(POLICY.replace(/tool: billing\n    allowed_actions: \[refund\]\n    conditions/, "tool: '*'\n    conditions"))).toMatch(/must name its tools/);
    expect(refusal(`rules:\n  - id: r\n    role: support\n    tool: billing\n    conditions: { args: { amount: { gt: 1 } } }\n`)).toMatch(/need a 'tools' table/);
  });

  it('refuses require_approval without approvers, a timeout above the maximum, and approvers on other effects', () => {
    expect(refusal(POLICY.replace('    approvers: { roles: [finance], people: [erin] }\n', ''))).toMatch(/approvers.*required for effect: require_approval/s);
    expect(refusal(POLICY.replace('approval_timeout: 2m', 'approval_timeout: 2h'))).toMatch(/longer than the maximum wait \(3600 s/);
    expect(refusal(POLICY.replace('approvers: { roles: [finance], people: [erin] }', 'approvers: {}'))).toMatch(/name at least one approver/);
    expect(refusal(POLICY.replace("    allowed_actions: [refund]\n  - id: big", "    allowed_actions: [refund]\n    approvers: { sponsor: true }\n  - id: big"))).toMatch(/'approvers' belongs to rules with effect: require_approval/);
    expect(refusal(POLICY.replace('credential_sha256: ' + sha('cap.carol'), 'credential_sha256: cap.carol'))).toMatch(/SHA-256 of the approver credential/);
  });
});

describe('require_approval and argument conditions: decide', () => {
  const refund = (args?: Record<string, unknown>) => decide({ identity: who, tool: 'billing', action: 'refund', args }, policy, at);

  it('a refund over the limit is pending with its approvers; one under it is allowed', () => {
    const big = refund({ amount: 500 });
    expect(big).toMatchObject({ decision: 'pending', rule_id: 'big-refunds-need-finance' });
    expect(big.approval!.timeoutMs).toBe(20 * 60_000);
    expect(refund({ amount: 50 })).toMatchObject({ decision: 'allow', rule_id: 'allow-support-refunds' });
  });

  it('fails closed on a field the call did not disclose: a require_approval rule applies, an allow rule does not', () => {
    expect(refund()).toMatchObject({ decision: 'pending' });
    expect(refund({ amount: 'lots' })).toMatchObject({ decision: 'pending' });
    const charge = (args?: Record<string, unknown>) => decide({ identity: who, tool: 'billing', action: 'charge', args }, policy, at);
    // no currency: the EUR approval rule applies (it might be EUR)
    expect(charge({ amount: 5 })).toMatchObject({ decision: 'pending', rule_id: 'eur-refunds-sponsor-may-approve' });
    expect(charge({ amount: 5, currency: 'USD' })).toMatchObject({ decision: 'allow', rule_id: 'small-charges' });
    expect(charge({ amount: 50, currency: 'USD' })).toMatchObject({ decision: 'deny', rule_id: 'default-deny' });
    expect(charge({ currency: 'USD' })).toMatchObject({ decision: 'deny', rule_id: 'default-deny' });
  });

  it('operators: eq, ne, gt, gte, lt, lte, in', () => {
    const c = (x: object) => [['amount', x]] as const;
    expect(argsMatch(c({ gte: 10, lt: 20 }), { amount: 10 }, false)).toBe(true);
    expect(argsMatch(c({ gte: 10, lt: 20 }), { amount: 20 }, false)).toBe(false);
    expect(argsMatch(c({ lte: 5 }), { amount: 5 }, false)).toBe(true);
    expect(argsMatch(c({ eq: 'x' }), { amount: 'x' }, false)).toBe(true);
    expect(argsMatch(c({ ne: 'x' }), { amount: 'x' }, false)).toBe(false);
    expect(argsMatch(c({ in: [1, 2] }), { amount: 2 }, false)).toBe(true);
    expect(argsMatch(c({ in: [1, 2] }), { amount: 3 }, true)).toBe(false);
    expect(argsMatch(c({ gt: 1 }), {}, true)).toBe(true);
    expect(argsMatch(c({ gt: 1 }), {}, false)).toBe(false);
  });

  it('discloses only the listed fields, and only scalars', () => {
    expect(discloseArgs({ amount: 5, currency: 'EUR', card: '4111 1111', nested: { a: 1 } }, ['amount', 'currency', 'nested'])).toEqual({ amount: 5, currency: 'EUR' });
    expect(discloseArgs({ amount: 5 }, null)).toBeUndefined();
    expect(discloseArgs('text', ['amount'])).toBeUndefined();
  });
});

describe('who may approve', () => {
  const settings = policy.approvals;
  const request = { sponsor_id: 'alice', approvers: { sponsor: false, people: ['erin'], roles: ['finance'] } };

  it('an approver role or a listed person may; anyone else may not', () => {
    expect(mayApprove(request, 'carol', settings)).toEqual({ ok: true });
    expect(mayApprove(request, 'erin', settings)).toEqual({ ok: true });
    const bob = mayApprove(request, 'bob', settings);
    expect(bob.ok).toBe(false);
    expect(!bob.ok && bob.why).toMatch(/bob is not an approver of this request/);
  });

  it('the sponsor never approves their own agent’s request, even holding the role, unless the rule says sponsor: true', () => {
    const self = mayApprove(request, 'alice', settings);
    expect(self.ok).toBe(false);
    expect(!self.ok && self.why).toMatch(/alice sponsors the requesting agent/);
    expect(mayApprove({ ...request, approvers: { ...request.approvers, sponsor: true } }, 'alice', settings)).toEqual({ ok: true });
    // sponsor: true lets the sponsor approve, nobody else by that alone
    expect(mayApprove({ sponsor_id: 'alice', approvers: { sponsor: true, people: [], roles: [] } }, 'carol', settings).ok).toBe(false);
  });

  it('authenticates an approver by their credential, or the admin credential acting for a named person', () => {
    const creds = { admin: 'admin-secret' };
    expect(authenticateApprover('cap.carol', undefined, settings, creds)).toEqual({ person: 'carol', via: 'credential' });
    expect(() => authenticateApprover('cap.carol', 'alice', settings, creds)).toThrow(/carol's: it cannot act for alice/);
    expect(authenticateApprover('admin-secret', 'dana', settings, creds)).toEqual({ person: 'dana', via: 'admin' });
    expect(() => authenticateApprover('admin-secret', undefined, settings, creds)).toThrow(/--as PERSON/);
    expect(() => authenticateApprover('cap.nobody', undefined, settings, creds)).toThrow(/neither an approver credential/);
    expect(() => authenticateApprover(undefined, undefined, settings, creds)).toThrow(/needs an approver credential/);
  });
});
