import type { CompiledRule, Policy } from './compile';
import { toolPolicy } from './compile';
import { WILDCARD } from './schema';

/** Where the plane answers what a role may ever call. */
export const CALLABLE_PATH = '/v1/policy/callable';

/**
 * What a role may ever call: per tool, the actions some rule could allow (`'*'`: any action the
 * tool has), minus those an unconditional deny always refuses. `any` covers tools the policy does
 * not name, when it declares no tools table and a rule for every tool could allow them.
 * A tool missing here can never be allowed for the role, whoever asks and whatever the call says;
 * a tool present may still be denied per call (conditions, sponsors, purpose, arguments).
 */
export interface CallableTools {
  readonly role: string | null;
  readonly policy_version: string;
  readonly tools: Readonly<Record<string, CallableActions>>;
  readonly any: CallableActions | null;
}

export interface CallableActions {
  /** The actions, or `'*'` for every action but those in `except`. */
  readonly actions: readonly string[] | '*';
  readonly except: readonly string[];
}

/**
 * The tools and actions `role` may ever call under `policy` at `now` (a rule that has expired
 * never applies again; one that starts later may). Pure. Used to leave tools out of the lists an
 * agent is offered; it is never a substitute for the decision on each call.
 */
export function callableTools(policy: Policy, role: string | null, now: number): CallableTools {
  const tools: Record<string, CallableActions> = {};
  for (const tool of [...policy.knownTools].sort()) {
    const c = callableActionsOf(policy, policy.rulesFor(tool), tool, role, now);
    if (c) tools[tool] = c;
  }
  const any = policy.declaresTools ? null : callableActionsOf(policy, policy.rulesFor(`${WILDCARD}unnamed`), undefined, role, now);
  return { role, policy_version: policy.version, tools, any };
}

function callableActionsOf(policy: Policy, rules: readonly CompiledRule[], tool: string | undefined, role: string | null, now: number): CallableActions | null {
  const declared = tool !== undefined ? toolPolicy(policy, tool).actions : null;
  if (tool !== undefined && policy.declaresTools && !policy.tools.has(tool)) return null;
  const applies = (r: CompiledRule) => (r.roles === null || (role !== null && r.roles.has(role))) && (r.until === null || r.until > now);
  let anyAction = false;
  const allowed = new Set<string>();
  const denied = new Set<string>();
  let deniedAll = false;
  for (const r of rules) {
    if (!applies(r)) continue;
    if (r.effect === 'deny') {
      // only a deny that applies to every call of the role takes an action out
      if (r.conditional || r.from !== null) continue;
      if (r.actions === null) deniedAll = true;
      else for (const a of r.actions) denied.add(a);
    } else if (r.actions === null) {
      anyAction = true;
    } else {
      for (const a of r.actions) allowed.add(a);
    }
  }
  if (deniedAll) return null;
  if (declared) {
    const actions = [...declared].filter((a) => (anyAction || allowed.has(a)) && !denied.has(a)).sort();
    return actions.length ? { actions, except: [] } : null;
  }
  if (anyAction) return { actions: '*', except: [...denied].sort() };
  const actions = [...allowed].filter((a) => !denied.has(a)).sort();
  return actions.length ? { actions, except: [] } : null;
}

/** May `role` ever call `tool`'s `action`, by a CallableTools answer? */
export function mayEverCall(callable: CallableTools, tool: string, action: string): boolean {
  const c = Object.hasOwn(callable.tools, tool) ? callable.tools[tool] : callable.any;
  if (!c) return false;
  return c.actions === '*' ? !c.except.includes(action) : c.actions.includes(action);
}
