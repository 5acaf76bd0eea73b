import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CLI } from '../helpers/custody';
import { EXAMPLE_POLICY, policyFile } from '../helpers/policy';

const custody = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CUSTODY_LOG_LEVEL: 'error' } });

describe('custody policy check / eval', () => {
  it('check: a valid file exits 0 with a summary', () => {
    const r = custody('policy', 'check', EXAMPLE_POLICY);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('valid (version starter-1, 6 rules');
    const json = JSON.parse(custody('policy', 'check', EXAMPLE_POLICY, '--json').stdout);
    expect(json).toMatchObject({ valid: true, version: 'starter-1', rules: 6, tools: ['billing', 'file-store', 'search'], tool_map: 5 });
  });

  it('check: a bad file exits 1 naming file, line and field', () => {
    const file = policyFile('rules:\n  - id: a\n    role: support\n    tool: search\n    effect: sometimes\n');
    const r = custody('policy', 'check', file);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${file}:5: field 'rules.0.effect'`);
  });

  it('eval: prints the decision; exit 0 allow, 1 deny, 2 bad file', () => {
    const allow = custody('policy', 'eval', EXAMPLE_POLICY, '--role', 'support', '--tool', 'refund_customer');
    expect(allow.status).toBe(0);
    expect(allow.stdout).toMatch(/^allow billing\.refund \(rule allow-support-billing\)/);
    const deny = custody('policy', 'eval', EXAMPLE_POLICY, '--role', 'user', '--tool', 'billing.charge', '--json');
    expect(deny.status).toBe(1);
    expect(JSON.parse(deny.stdout)).toMatchObject({ decision: 'deny', rule_id: 'default-deny', tool: 'billing', action: 'charge' });
    const deep = custody('policy', 'eval', EXAMPLE_POLICY, '--role', 'support', '--tool', 'billing', '--action', 'refund', '--depth', '3');
    expect(deep.stdout).toContain('deny-deep-delegation-billing');
    expect(custody('policy', 'eval', '/nonexistent.yaml', '--tool', 'x').status).toBe(2);
  });
});
