import { toolPolicy, type CompiledApproval, type CompiledRule, type Policy } from './compile';
import { argsMatch } from './args';
import { BUILTIN_RULE } from './schema';

export { BUILTIN_RULE };

/** Who is asking: taken from a verified token, never from what a caller asserts. */
export interface DecisionIdentity {
  sponsorId?: string | undefined;
  agentInstanceId?: string | undefined;
  parentAgentId?: string | undefined;
  role?: string | undefined;
  /** How many exchanges away from an issued token (0 = issued directly). */
  delegationDepth?: number | undefined;
}

export interface DecisionRequest {
  identity: DecisionIdentity;
  tool: string;
  action: string;
  purpose?: string | undefined;
  /** The call's disclosed argument fields (the tool's disclose_args), for argument conditions. */
  args?: Readonly<Record<string, unknown>> | undefined;
}

export interface Decision {
  /** `pending`: a require_approval rule matched; the call runs only once a human approves it. */
  decision: 'allow' | 'deny' | 'pending';
  /** The rule that decided: a policy rule's id, or a built-in one such as `default-deny`. */
  rule_id: string;
  reason: string;
  /** pending: who may approve and how long to wait. */
  approval?: CompiledApproval;
}

/**
 * The policy decision: a pure function of the verified identity, the tool, the action, the
 * purpose, the policy and the clock. Explicit deny rules win over allow rules; what no rule allows
 * is denied. Built-in checks come first: a sponsor and an agent instance are required, a declared
 * tools table limits tools and actions, and a tool can require a purpose.
 */
export function decide(request: DecisionRequest, policy: Policy, options: { now: number | Date }): Decision {
  const { identity, tool, action } = request;
  const purpose = request.purpose || undefined;
  const now = typeof options.now === 'number' ? options.now : options.now.getTime();

  if (!identity.sponsorId) {
    return deny(BUILTIN_RULE.SPONSOR_REQUIRED, 'no sponsor: every call needs a named human sponsor');
  }
  if (!identity.agentInstanceId) {
    return deny(BUILTIN_RULE.INSTANCE_REQUIRED, 'no agent instance id');
  }
  const settings = toolPolicy(policy, tool);
  if (policy.declaresTools && !policy.tools.has(tool)) {
    return deny(BUILTIN_RULE.UNKNOWN_TOOL, `tool '${tool}' is not declared in the policy`);
  }
  if (settings.actions && !settings.actions.has(action)) {
    return deny(BUILTIN_RULE.UNKNOWN_ACTION, `'${action}' is not an action of tool '${tool}'`);
  }
  if (settings.requirePurpose && !purpose) {
    return deny(BUILTIN_RULE.PURPOSE_REQUIRED, `tool '${tool}' requires a stated purpose`);
  }

  const rules = policy.rulesFor(tool);
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    if (matches(rule, identity, action, purpose, now) && (rule.args === null || argsMatch(rule.args, request.args, rule.effect !== 'allow'))) {
      const who = identity.role ? `role '${identity.role}'` : 'a caller without a role';
      if (rule.effect === 'deny') return deny(rule.id, `rule '${rule.id}' denies ${who} ${action} on ${tool}`);
      if (rule.effect === 'require_approval' && rule.approval) {
        return { decision: 'pending', rule_id: rule.id, reason: `rule '${rule.id}' lets ${who} ${action} on ${tool} once a human approves`, approval: rule.approval };
      }
      return { decision: 'allow', rule_id: rule.id, reason: `rule '${rule.id}' allows ${who} ${action} on ${tool}` };
    }
  }
  const who = identity.role ? `role '${identity.role}'` : 'a caller without a role';
  return deny(BUILTIN_RULE.DEFAULT_DENY, `no rule allows ${who} ${action} on ${tool}`);
}

function matches(rule: CompiledRule, identity: DecisionIdentity, action: string, purpose: string | undefined, now: number): boolean {
  if (rule.roles && (identity.role === undefined || !rule.roles.has(identity.role))) return false;
  if (rule.actions && !rule.actions.has(action)) return false;
  if (rule.sponsors && !rule.sponsors.has(identity.sponsorId!)) return false;
  if (rule.from !== null && now < rule.from) return false;
  if (rule.until !== null && now >= rule.until) return false;
  if (rule.minDelegationDepth !== null && (identity.delegationDepth ?? 0) < rule.minDelegationDepth) return false;
  if (rule.maxDelegationDepth !== null && (identity.delegationDepth ?? 0) > rule.maxDelegationDepth) return false;
  if (rule.purposeRequired) {
    if (purpose === undefined) return false;
    if (rule.purposeIn && !rule.purposeIn.has(purpose)) return false;
    if (rule.purposeMatches && !rule.purposeMatches.test(purpose)) return false;
  }
  return true;
}

function deny(ruleId: string, reason: string): Decision {
  return { decision: 'deny', rule_id: ruleId, reason };
}
