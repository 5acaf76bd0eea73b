import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { callableTools, mayEverCall } from '../../../enforcer/policy/callable';
import { compilePolicyText, readPolicyFile } from '../../../enforcer/policy/compile';
import { decide } from '../../../enforcer/policy/decide';
import { ROOT } from '../../helpers/custody';

const starter = readPolicyFile(path.join(ROOT, 'policy-config.yaml'));
const NOW = Date.parse('2026-06-01T12:00:00Z');

describe('callableTools: what a role may ever call', () => {
  it('gives each role of the starter policy the tools and actions its rules can allow', () => {
    expect(callableTools(starter, 'support', NOW).tools).toEqual({
      billing: { actions: ['charge', 'refund'], except: [] },
      search: { actions: '*', except: [] },
    });
    expect(callableTools(starter, 'user', NOW).tools).toEqual({ search: { actions: '*', except: [] } });
    expect(Object.keys(callableTools(starter, 'admin', NOW).tools)).toEqual(['billing', 'file-store']);
    // no role: no rule names it, and the starter has no rule for every role that allows
    expect(callableTools(starter, null, NOW).tools).toEqual({});
    // the tools table is declared: a tool outside it is never callable
    expect(callableTools(starter, 'admin', NOW).any).toBeNull();
    expect(mayEverCall(callableTools(starter, 'support', NOW), 'billing', 'read')).toBe(false);
    expect(mayEverCall(callableTools(starter, 'support', NOW), 'file-store', 'delete')).toBe(false);
    expect(mayEverCall(callableTools(starter, 'support', NOW), 'search', 'call')).toBe(true);
  });

  it('takes out only what an unconditional deny always refuses, and keeps rules that may apply later', () => {
    const policy = compilePolicyText(
      JSON.stringify({
        default: 'deny',
        rules: [
          { id: 'ops-any', role: 'ops', tool: '*' },
          { id: 'no-delete', effect: 'deny', role: '*', tool: 'files', actions: ['delete'] },
          { id: 'no-deep-pay', effect: 'deny', role: '*', tool: 'pay', conditions: { min_delegation_depth: 1 } },
          { id: 'expired', role: 'temp', tool: 'pay', conditions: { until: '2026-01-01T00:00:00Z' } },
          { id: 'later', role: 'temp', tool: 'files', actions: ['read'], conditions: { from: '2027-01-01T00:00:00Z' } },
        ],
      }),
      'inline',
    );
    const ops = callableTools(policy, 'ops', NOW);
    expect(ops.tools.files).toEqual({ actions: '*', except: ['delete'] });
    expect(ops.tools.pay).toEqual({ actions: '*', except: [] }); // the deny applies only to some calls
    expect(ops.any).toEqual({ actions: '*', except: [] }); // no tools table: tools the policy does not name
    expect(mayEverCall(ops, 'files', 'delete')).toBe(false);
    expect(mayEverCall(ops, 'crm', 'export')).toBe(true);
    const temp = callableTools(policy, 'temp', NOW);
    expect(temp.tools.pay).toBeUndefined(); // its only rule has expired
    expect(temp.tools.files).toEqual({ actions: ['read'], except: [] });
    expect(temp.any).toBeNull();
  });

  it('never leaves out a tool that decide() would allow (random policies and calls)', () => {
    const roles = ['support', 'user', 'ops'];
    const tools = ['billing', 'search', 'files'];
    const actions = ['read', 'write', 'refund', 'call'];
    const rule = fc.record({
      effect: fc.constantFrom('allow', 'deny'),
      role: fc.constantFrom(...roles, '*'),
      tool: fc.constantFrom(...tools, '*'),
      actions: fc.option(fc.subarray(actions, { minLength: 1 }), { nil: undefined, freq: 2 }),
      sponsors: fc.option(fc.constant(['alice']), { nil: undefined, freq: 2 }),
      depth: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined, freq: 2 }),
      until: fc.option(fc.constantFrom('2026-01-01T00:00:00Z', '2027-01-01T00:00:00Z'), { nil: undefined, freq: 2 }),
    });
    const call = fc.record({
      role: fc.option(fc.constantFrom(...roles), { nil: undefined, freq: 2 }),
      sponsor: fc.constantFrom('alice', 'bob'),
      depth: fc.integer({ min: 0, max: 3 }),
      tool: fc.constantFrom(...tools, 'crm'),
      action: fc.constantFrom(...actions),
    });
    const declared = fc.boolean();
    fc.assert(
      fc.property(fc.array(rule, { maxLength: 6 }), declared, fc.array(call, { minLength: 1, maxLength: 8 }), (rs, withTable, calls) => {
        const config = {
          default: 'deny',
          ...(withTable ? { tools: { billing: { actions: ['read', 'refund'] }, search: {}, files: { actions: ['read', 'write'] } } } : {}),
          rules: rs
            .filter((r) => !withTable || r.tool !== 'billing' || !r.actions || r.actions.every((a) => ['read', 'refund'].includes(a)))
            .filter((r) => !withTable || r.tool !== 'files' || !r.actions || r.actions.every((a) => ['read', 'write'].includes(a)))
            .map((r, i) => {
              const conditions = {
                ...(r.sponsors ? { sponsors: r.sponsors } : {}),
                ...(r.depth !== undefined ? { min_delegation_depth: r.depth } : {}),
                ...(r.until ? { until: r.until } : {}),
              };
              return { id: `r${i}`, effect: r.effect, role: r.role, tool: r.tool, ...(r.actions ? { actions: r.actions } : {}), ...(Object.keys(conditions).length ? { conditions } : {}) };
            }),
        };
        const policy = compilePolicyText(JSON.stringify(config), 'random');
        for (const c of calls) {
          const d = decide({ identity: { sponsorId: c.sponsor, agentInstanceId: 'a', role: c.role, delegationDepth: c.depth }, tool: c.tool, action: c.action }, policy, { now: NOW });
          if (d.decision === 'allow') expect(mayEverCall(callableTools(policy, c.role ?? null, NOW), c.tool, c.action)).toBe(true);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
