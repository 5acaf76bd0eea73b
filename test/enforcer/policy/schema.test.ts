import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../common/errors';
import { compilePolicyText, readPolicyFile, toolPolicy } from '../../../enforcer/policy/compile';
import { resolveToolName } from '../../../enforcer/policy/tool-map';
import { ROOT, tempDir } from '../../helpers/custody';

const EXAMPLE = path.join(ROOT, 'policy-config.yaml');

function refusal(text: string): string {
  try {
    compilePolicyText(text, '/etc/custody/policy.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe('ERR_CONFIG');
    return (err as Error).message;
  }
  throw new Error('the policy was accepted');
}

describe('policy-config.yaml schema', () => {
  it('loads the example policy: the seed starter table, tools, tool_map and rollout', () => {
    const p = readPolicyFile(EXAMPLE);
    expect(p.version).toBe('starter-1');
    expect(p.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(p.declaresTools).toBe(true);
    expect(p.tools.get('billing')).toMatchObject({ risk: 'high', singleUseTokens: true });
    expect(p.toolMap.get('refund_customer')).toEqual({ tool: 'billing', action: 'refund' });
    expect(p.rollout).toEqual({ percent: 10, increment: 2, stages: [10, 30, 60, 100] });
    expect(p.rulesFor('billing').map((r) => r.id)).toEqual([
      'deny-deep-delegation-billing',
      'allow-support-billing',
      'allow-admin-billing',
    ]);
  });

  it('accepts the seed\'s minimal form as is', () => {
    const p = compilePolicyText(
      ['rules:', '  - id: allow-support-billing', '    role: support', '    tool: billing', '    allowed_actions: [charge, refund]', 'rollout:', '  percent: 10', '  increment: 2'].join('\n'),
      'seed.yaml',
    );
    expect(p.ruleCount).toBe(1);
    expect(p.declaresTools).toBe(false);
    expect(p.rollout).toEqual({ percent: 10, increment: 2, stages: [] });
    expect(p.version).toBe(p.hash.slice(0, 12));
  });

  it('names file, line and field of a wrong value', () => {
    const msg = refusal(['rules:', '  - id: a', '    role: support', '    tool: search', '    effect: maybe'].join('\n'));
    expect(msg).toContain('/etc/custody/policy.yaml:5');
    expect(msg).toContain("field 'rules.0.effect'");
    expect(msg).toMatch(/allow.*deny/);
  });

  it('refuses a misspelt field instead of ignoring it', () => {
    const msg = refusal(['rules:', '  - id: a', '    role: support', '    tool: search', '    allowed_action: [call]'].join('\n'));
    expect(msg).toContain(':2');
    expect(msg).toContain('allowed_action');
  });

  it('refuses a missing required field, pointing at its parent', () => {
    const msg = refusal(['rules:', '  - id: a', '    tool: search'].join('\n'));
    expect(msg).toContain("field 'rules.0.role'");
    expect(msg).toContain('/etc/custody/policy.yaml:2');
  });

  it('refuses a rollout percent out of range and stages that do not increase', () => {
    expect(refusal(['rules: []', 'rollout:', '  percent: 150'].join('\n'))).toMatch(/:3: field 'rollout.percent'.*100/);
    expect(refusal(['rules: []', 'rollout:', '  percent: 10', '  stages: [10, 60, 30]'].join('\n'))).toContain("field 'rollout.stages'");
  });

  it('refuses duplicate rule ids and built-in rule ids', () => {
    const dup = refusal(['rules:', '  - {id: a, role: user, tool: search}', '  - {id: a, role: admin, tool: search}'].join('\n'));
    expect(dup).toMatch(/:3: field 'rules.1.id': duplicate rule id 'a'/);
    expect(refusal(['rules:', '  - {id: default-deny, role: user, tool: search}'].join('\n'))).toContain('built-in');
  });

  it('refuses rules naming undeclared tools or actions when a tools table exists', () => {
    const tools = ['tools:', '  billing: {actions: [charge, refund]}'];
    expect(refusal([...tools, 'rules:', '  - {id: a, role: support, tool: biling}'].join('\n'))).toMatch(
      /:4: field 'rules.0.tool': tool 'biling' is not declared under 'tools' \(declared: billing\)/,
    );
    expect(refusal([...tools, 'rules:', '  - {id: a, role: support, tool: billing, allowed_actions: [refnd]}'].join('\n'))).toMatch(
      /field 'rules.0.allowed_actions': action 'refnd' is not one of tool 'billing''s actions/,
    );
    expect(refusal([...tools, 'tool_map:', '  pay: {tool: billing, action: pay}', 'rules: []'].join('\n'))).toContain("field 'tool_map.pay.action'");
  });

  it('refuses a bad regular expression, a dot in a tool name, both action keys, and default allow', () => {
    expect(refusal(['rules:', '  - {id: a, role: u, tool: t, conditions: {purpose: {matches: "(unclosed"}}}'].join('\n'))).toContain(
      'not a valid regular expression',
    );
    expect(refusal(['rules:', '  - {id: a, role: u, tool: billing.refund}'].join('\n'))).toContain("no '.'");
    expect(refusal(['rules:', '  - {id: a, role: u, tool: t, actions: [x], allowed_actions: [y]}'].join('\n'))).toContain('not both');
    expect(refusal(['default: allow', 'rules: []'].join('\n'))).toContain("expected 'deny'");
  });

  it('refuses text that is not YAML, with its line', () => {
    expect(refusal('rules:\n  - id: a\n   role: [x\n')).toMatch(/policy.yaml:\d+:\d+: not valid YAML/);
  });

  it('refuses an unreadable file naming it', () => {
    const missing = path.join(tempDir(), 'nope.yaml');
    expect(() => readPolicyFile(missing)).toThrow(new RegExp(`${missing}: cannot read`));
  });

  it('the loaded policy is immutable', () => {
    const dir = tempDir();
    const file = path.join(dir, 'p.yaml');
    fs.copyFileSync(EXAMPLE, file);
    const p = readPolicyFile(file);
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p.config.rules[0])).toBe(true);
  });
});

describe('tool_map', () => {
  const p = readPolicyFile(EXAMPLE);
  it('maps framework names through the table', () => {
    expect(resolveToolName('refund_customer', p.toolMap)).toEqual({ tool: 'billing', action: 'refund', mapped: true });
    expect(resolveToolName('web_search', p.config.tool_map)).toEqual({ tool: 'search', action: 'call', mapped: true });
  });
  it('splits tool.action names without the table and defaults the action to call', () => {
    expect(resolveToolName('billing.refund', p.toolMap)).toEqual({ tool: 'billing', action: 'refund', mapped: false });
    expect(resolveToolName('file-store.read.v2')).toEqual({ tool: 'file-store', action: 'read.v2', mapped: false });
    expect(resolveToolName('search')).toEqual({ tool: 'search', action: 'call', mapped: false });
    expect(resolveToolName('.hidden')).toEqual({ tool: '.hidden', action: 'call', mapped: false });
    expect(resolveToolName('constructor', p.config.tool_map)).toEqual({ tool: 'constructor', action: 'call', mapped: false });
  });
});

describe('audit sampling in the policy', () => {
  const withTools = (tools: string[]) =>
    ['tools:', ...tools, 'rules:', '  - id: a', '    role: support', '    tool: search'].join('\n');

  it('takes a per-tool rate on a low- or medium-risk tool; every other tool keeps all its calls', () => {
    const p = compilePolicyText(withTools(['  search:', '    risk: low', '    audit: { sample: 0.01 }', '  notes:', '    risk: medium']), 'p.yaml');
    expect(p.tools.get('search')!.auditSample).toBe(0.01);
    expect(p.tools.get('notes')!.auditSample).toBe(1);
  });

  it.each(['high', 'critical'])('refuses a rate below 1 on a %s-risk tool', (risk) => {
    const msg = refusal(withTools(['  search:', `    risk: ${risk}`, '    audit: { sample: 0.5 }']));
    expect(msg).toContain("field 'tools.search.audit.sample'");
    expect(msg).toContain(`${risk}-risk tool's calls are never sampled`);
  });

  it.each(['0', '1.5', '-0.1'])('refuses a rate of %s', (rate) => {
    const msg = refusal(withTools(['  search:', '    risk: low', `    audit: { sample: ${rate} }`]));
    expect(msg).toContain("field 'tools.search.audit.sample'");
  });

  it('refuses an unknown audit field', () => {
    expect(refusal(withTools(['  search:', '    audit: { rate: 0.5 }']))).toContain('rate');
  });
});

describe('rollout.scope in the policy', () => {
  const withRollout = (rollout: string[]) => ['rules:', '  - id: a', '    role: support', '    tool: search', 'rollout:', '  percent: 10', ...rollout].join('\n');

  it('takes attribute names and the values that put a call in the canary (one value is a list of one)', () => {
    const p = compilePolicyText(withRollout(['  scope:', '    customer.tier: [free, trial]', '    region: eu']), 'p.yaml');
    expect(p.rollout.scope).toEqual({ 'customer.tier': ['free', 'trial'], region: ['eu'] });
  });

  it('refuses an empty scope, an empty value list and a bad attribute name', () => {
    expect(refusal(withRollout(['  scope: {}']))).toContain("field 'rollout.scope'");
    expect(refusal(withRollout(['  scope: { customer.tier: [] }']))).toContain('expected at least one value');
    expect(refusal(withRollout(['  scope: { "customer tier": [free] }']))).toContain("field 'rollout.scope.customer tier'");
  });
});

describe('audit sampling per risk', () => {
  it("sets a default per risk; a tool's own rate wins; a tool outside the table is low risk", () => {
    const p = compilePolicyText(
      [
        'audit: { sample: { low: 0.01, medium: 0.5 } }',
        'tools:', '  search: { risk: low }', '  notes: { risk: medium }', '  kb: { risk: low, audit: { sample: 0.2 } }', '  billing: { risk: high }',
        'rules:', '  - id: a', '    role: support', '    tool: search',
      ].join('\n'),
      'p.yaml',
    );
    expect(['search', 'notes', 'kb', 'billing'].map((t) => p.tools.get(t)!.auditSample)).toEqual([0.01, 0.5, 0.2, 1]);
    const open = compilePolicyText(['audit: { sample: { low: 0.05 } }', 'rules:', '  - id: a', '    role: support', '    tool: search'].join('\n'), 'p.yaml');
    expect(toolPolicy(open, 'anything').auditSample).toBe(0.05);
  });

  it.each(['high', 'critical'])('refuses a %s-risk default below 1', (risk) => {
    const msg = refusal([`audit: { sample: { ${risk}: 0.5 } }`, 'rules:', '  - id: a', '    role: support', '    tool: search'].join('\n'));
    expect(msg).toContain(`field 'audit.sample.${risk}'`);
    expect(msg).toContain("calls are never sampled");
  });
});
