import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePolicyText, readPolicyFile } from '../../../enforcer/policy/compile';
import { BUILTIN_RULE, decide, type DecisionIdentity } from '../../../enforcer/policy/decide';
import { ROOT } from '../../helpers/custody';

const starter = readPolicyFile(path.join(ROOT, 'policy-config.yaml'));
const NOW = Date.parse('2026-06-01T12:00:00Z');
const who = (role: string | undefined, extra: Partial<DecisionIdentity> = {}): DecisionIdentity => ({
  sponsorId: 'alice',
  agentInstanceId: 'agent-1',
  role,
  ...extra,
});

describe('decide: the starter table', () => {
  const table: [string, string, string, 'allow' | 'deny', string][] = [
    ['support', 'billing', 'charge', 'allow', 'allow-support-billing'],
    ['support', 'billing', 'refund', 'allow', 'allow-support-billing'],
    ['support', 'billing', 'read', 'deny', 'default-deny'],
    ['support', 'search', 'call', 'allow', 'allow-support-search'],
    ['support', 'file-store', 'read', 'deny', 'default-deny'],
    ['admin', 'billing', 'refund', 'allow', 'allow-admin-billing'],
    ['admin', 'billing', 'read', 'allow', 'allow-admin-billing'],
    ['admin', 'file-store', 'delete', 'allow', 'allow-admin-file-store'],
    ['admin', 'search', 'call', 'deny', 'default-deny'],
    ['user', 'search', 'call', 'allow', 'allow-user-search'],
    ['user', 'billing', 'charge', 'deny', 'default-deny'],
    ['user', 'file-store', 'read', 'deny', 'default-deny'],
  ];
  it.each(table)('%s → %s.%s: %s by %s', (role, tool, action, decision, rule) => {
    const d = decide({ identity: who(role), tool, action }, starter, { now: NOW });
    expect(d).toMatchObject({ decision, rule_id: rule });
    expect(d.reason).toContain(tool);
  });

  it('denies tools and actions the tools table does not know', () => {
    expect(decide({ identity: who('admin'), tool: 'shell', action: 'exec' }, starter, { now: NOW })).toMatchObject({
      decision: 'deny',
      rule_id: BUILTIN_RULE.UNKNOWN_TOOL,
    });
    expect(decide({ identity: who('admin'), tool: 'billing', action: 'wire' }, starter, { now: NOW })).toMatchObject({
      decision: 'deny',
      rule_id: BUILTIN_RULE.UNKNOWN_ACTION,
    });
  });

  it('requires a sponsor and an agent instance whatever the rules say', () => {
    expect(decide({ identity: who('admin', { sponsorId: '' }), tool: 'billing', action: 'refund' }, starter, { now: NOW })).toMatchObject({
      decision: 'deny',
      rule_id: 'sponsor-required',
    });
    expect(decide({ identity: who('admin', { agentInstanceId: undefined }), tool: 'billing', action: 'refund' }, starter, { now: NOW }).rule_id).toBe(
      'instance-required',
    );
  });

  it('an explicit deny wins: deep delegation never moves money', () => {
    expect(decide({ identity: who('support', { delegationDepth: 2 }), tool: 'billing', action: 'refund' }, starter, { now: NOW }).decision).toBe('allow');
    expect(decide({ identity: who('support', { delegationDepth: 3 }), tool: 'billing', action: 'refund' }, starter, { now: NOW })).toMatchObject({
      decision: 'deny',
      rule_id: 'deny-deep-delegation-billing',
    });
    // the deny covers charge and refund only
    expect(decide({ identity: who('admin', { delegationDepth: 5 }), tool: 'billing', action: 'read' }, starter, { now: NOW }).decision).toBe('allow');
  });

  it('a caller without a role matches no role-specific rule', () => {
    expect(decide({ identity: who(undefined), tool: 'search', action: 'call' }, starter, { now: NOW })).toMatchObject({
      decision: 'deny',
      rule_id: 'default-deny',
    });
  });
});

describe('decide: conditions', () => {
  const policy = compilePolicyText(
    `
tools:
  billing: { risk: high, require_purpose: false }
  wire: { risk: critical, require_purpose: true }
  search: {}
rules:
  - id: refunds-for-tickets
    role: support
    tool: billing
    actions: [refund]
    conditions: { purpose: { matches: '^ticket:[0-9]+$' } }
  - id: charges-listed
    role: support
    tool: billing
    actions: [charge]
    conditions: { purpose: { in: [renewal, upgrade] } }
  - id: wire-alice-only
    role: '*'
    tool: wire
    conditions: { sponsors: [alice] }
  - id: temporary-search
    role: contractor
    tool: search
    conditions: { from: '2026-06-01T00:00:00Z', until: '2026-06-02T00:00:00Z' }
  - id: no-marketing
    effect: deny
    role: '*'
    tool: '*'
    conditions: { purpose: { in: [marketing] } }
  - id: everyone-search
    role: '*'
    tool: search
`,
    'conditions.yaml',
  );
  const d = (identity: DecisionIdentity, tool: string, action: string, purpose?: string, now = NOW) =>
    decide({ identity, tool, action, purpose }, policy, { now });

  it('purpose regex', () => {
    expect(d(who('support'), 'billing', 'refund', 'ticket:123').decision).toBe('allow');
    expect(d(who('support'), 'billing', 'refund', 'ticket:12a').decision).toBe('deny');
    expect(d(who('support'), 'billing', 'refund').rule_id).toBe('default-deny');
  });
  it('purpose list', () => {
    expect(d(who('support'), 'billing', 'charge', 'renewal').rule_id).toBe('charges-listed');
    expect(d(who('support'), 'billing', 'charge', 'refund').decision).toBe('deny');
  });
  it('a tool that requires a purpose', () => {
    expect(d(who('x'), 'wire', 'call').rule_id).toBe('purpose-required');
    expect(d(who('x'), 'wire', 'call', 'payroll').rule_id).toBe('wire-alice-only');
    expect(d(who('x', { sponsorId: 'bob' }), 'wire', 'call', 'payroll').rule_id).toBe('default-deny');
  });
  it('rules that expire', () => {
    expect(d(who('contractor'), 'search', 'call', undefined, Date.parse('2026-06-01T23:59:59Z')).rule_id).toBe('temporary-search');
    expect(d(who('contractor'), 'search', 'call', undefined, Date.parse('2026-06-02T00:00:00Z')).rule_id).toBe('everyone-search');
    expect(d(who('contractor'), 'search', 'call', undefined, new Date('2026-05-31T00:00:00Z')).rule_id).toBe('everyone-search');
  });
  it('a wildcard deny wins over every allow', () => {
    expect(d(who('support'), 'search', 'call', 'marketing')).toMatchObject({ decision: 'deny', rule_id: 'no-marketing' });
    expect(d(who('support'), 'wire', 'call', 'marketing').rule_id).toBe('no-marketing');
  });
});

describe('decide: properties', () => {
  const name = fc.constantFrom('support', 'admin', 'user', 'auditor', 'ops');
  const tool = fc.constantFrom('billing', 'search', 'file-store', 'crm');
  const action = fc.constantFrom('charge', 'refund', 'read', 'write', 'call');
  const rule = fc.record({
    effect: fc.constantFrom('allow', 'deny'),
    role: fc.oneof(name, fc.constant('*')),
    tool: fc.oneof(tool, fc.constant('*')),
    actions: fc.oneof(fc.uniqueArray(action, { minLength: 1, maxLength: 3 }), fc.constant(['*'])),
  });
  const toYaml = (rules: { effect: string; role: string; tool: string; actions: string[] }[]) =>
    'rules:\n' +
    rules.map((r, i) => `  - { id: r${i}, effect: ${r.effect}, role: '${r.role}', tool: '${r.tool}', actions: [${r.actions.map((a) => `'${a}'`).join(', ')}] }`).join('\n') +
    (rules.length ? '' : ' []');

  it('matches a naive reference: allowed iff some allow rule matches and no deny rule does', () => {
    fc.assert(
      fc.property(fc.array(rule, { maxLength: 12 }), name, tool, action, (rules, role, t, a) => {
        const policy = compilePolicyText(toYaml(rules), 'prop.yaml');
        const hit = (r: (typeof rules)[number]) =>
          (r.role === '*' || r.role === role) && (r.tool === '*' || r.tool === t) && (r.actions.includes('*') || r.actions.includes(a));
        const expected = !rules.some((r) => r.effect === 'deny' && hit(r)) && rules.some((r) => r.effect === 'allow' && hit(r));
        const got = decide({ identity: who(role), tool: t, action: a }, policy, { now: NOW });
        expect(got.decision === 'allow').toBe(expected);
        // the rule named is one that matched, or the default
        if (got.rule_id !== 'default-deny') {
          const r = rules[Number(got.rule_id.slice(1))]!;
          expect(hit(r)).toBe(true);
          expect(r.effect).toBe(got.decision);
        } else expect(expected).toBe(false);
      }),
      { numRuns: 400 },
    );
  });

  it('is deterministic: same inputs, same decision', () => {
    fc.assert(
      fc.property(name, tool, action, (role, t, a) => {
        const req = { identity: who(role), tool: t, action: a };
        expect(decide(req, starter, { now: NOW })).toEqual(decide(req, starter, { now: NOW }));
      }),
    );
  });
});
