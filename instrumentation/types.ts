import type { AgentIdentity } from './identity';

/**
 * What the tool-call lifecycle needs from an enforcer: the shape of enforcer/client/enforcer.ts
 * `createEnforcer()`, kept structural so tests and benchmarks can pass their own.
 */
export interface EnforcerCheck {
  tool: string;
  action: string;
  purpose?: string;
  identity: AgentIdentity;
  /**
   * When the call began waiting (performance.now()): name resolution and sponsor lookup spent
   * part of the one budget already, and the decision's latency counts from here.
   */
  startedAt?: number;
  /** The body may call a guarded tool (CUSTODY_TOOL_ORIGINS set): a token is wanted even for a baseline call. */
  withToken?: boolean;
  /** The call's arguments: the enforcer sends the plane only the fields the tool discloses. */
  args?: unknown;
  /** The call's attributes (e.g. `customer.tier`): a tier-scoped canary matches its scope on them. */
  attributes?: Readonly<Record<string, string>>;
}

export interface EnforcerVerdict {
  decision: 'allow' | 'deny' | 'error';
  /** Run the tool? false: throw `error`. */
  allowed: boolean;
  policyDecisionId?: string;
  ruleId?: string;
  reason?: string;
  cohort?: string;
  enforced?: boolean;
  cached?: boolean;
  latencyMs?: number;
  tokenJti?: string;
  /** The token the decision was made on: sent as x-custody-token to the tool origins (CUSTODY_TOOL_ORIGINS) from the call's body. Never recorded. */
  token?: string;
  /** The policy plane's signed receipt of the decision (custody.policy.receipt). */
  receipt?: string;
  error?: Error;
  /** True while the incident switch lengthens the decision cache TTL. */
  incident?: boolean;
  /** The audit sampling rate the plane granted this allow (common/audit-sample.ts). */
  auditSample?: number;
  /** Baseline (shadow) cohort: the real decision, arriving after the call was let through. */
  shadow?: Promise<EnforcerVerdict>;
  /** The call waited for a human (require_approval). */
  approval?: { id: string; status: string; approver?: string; via?: string; reason?: string; decidedAt?: string; waitMs: number };
  /** The argument fields sent to the plane in clear. */
  argsDisclosed?: string[];
}

export interface EnforcerLike {
  check(request: EnforcerCheck): Promise<EnforcerVerdict>;
  /** A framework tool name → policy tool and action, with the policy plane's tool_map. */
  resolveTool?(name: string, options?: { timeoutMs?: number }): Promise<{ tool: string; action: string }>;
  /** Which of these tool names the agent's role may ever call; undefined when unknown. Never a decision. */
  mayEverCall?(names: readonly string[], identity: EnforcerCheck['identity'], options?: { timeoutMs?: number }): Promise<boolean[] | undefined>;
  /** The one budget from "tool called" to "tool runs" (CUSTODY_POLICY_TIMEOUT_MS). */
  readonly settings?: { readonly timeoutMs: number };
  close?(): Promise<void> | void;
}

/** Options of `toolCall` / `wrapTool`. */
export interface ToolCallOptions {
  /** The policy action; default from the name (`billing.refund`) or the tool map, else `call`. */
  action?: string;
  /** The policy tool, when the name alone does not say it. */
  tool?: string;
  /** Why the agent makes the call (custody.purpose; policies may require it). */
  purpose?: string;
  /** The framework's id for this call (gen_ai.tool.call.id). */
  toolCallId?: string;
  /** gen_ai.tool.description */
  description?: string;
  /**
   * Attributes of this call, e.g. `{ 'customer.tier': 'free' }`: recorded on the span, and what a
   * tier-scoped canary (the policy's `rollout.scope`) matches on, over the agent's resource attributes.
   */
  attributes?: Readonly<Record<string, string>>;
}

/** One tool call as a patch hands it to the lifecycle. */
export interface ToolCallRequest extends ToolCallOptions {
  /** The framework's tool name (gen_ai.tool.name). */
  name: string;
  args: unknown;
  /**
   * The body hands the call's token to a tool that checks it (an MCP server custody trusts): a
   * baseline call, let through before its decision, still gets its token first.
   */
  sendsToken?: boolean;
}
