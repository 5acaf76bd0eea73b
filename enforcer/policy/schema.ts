import { z } from 'zod';
import { loadConfigFile, parseConfigText } from '../../common/config';
import { DEFAULTS } from '../../common/names';
import { APPROVAL_DEFAULTS, approvalsConfig, approvers, argConditions, argName, checkApprovalRule, checkArgConditions, type ApprovalsConfig } from './approval-schema';

/** Matches any role, tool or action. */
export const WILDCARD = '*';

/** Rule ids the decision function itself uses; a policy's own rules cannot take them. */
export const BUILTIN_RULE = {
  DEFAULT_DENY: 'default-deny',
  SPONSOR_REQUIRED: 'sponsor-required',
  INSTANCE_REQUIRED: 'instance-required',
  UNKNOWN_TOOL: 'unknown-tool',
  UNKNOWN_ACTION: 'unknown-action',
  PURPOSE_REQUIRED: 'purpose-required',
  PURPOSE_MISMATCH: 'purpose-mismatch',
  TOKEN_INVALID: 'token-invalid',
} as const;
const BUILTIN_IDS = new Set<string>(Object.values(BUILTIN_RULE));

export const RISKS = ['low', 'medium', 'high', 'critical'] as const;
export type Risk = (typeof RISKS)[number];

// A tool name never holds '.': in a framework tool name `billing.refund`, the dot separates tool and action.
const TOOL_NAME = /^[A-Za-z0-9_][A-Za-z0-9_:/-]*$/;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:/@-]*$/;
const RULE_ID = /^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/;

const toolName = z
  .string()
  .regex(TOOL_NAME, `expected a tool name: letters, digits, '_', '-', ':' or '/' (no '.', which separates tool and action)`);
const toolOrWildcard = z
  .string()
  .refine((v) => v === WILDCARD || TOOL_NAME.test(v), `expected a tool name (letters, digits, '_', '-', ':', '/'; no '.') or '*'`);
const nameOrWildcard = (what: string) =>
  z.string().refine((v) => v === WILDCARD || NAME.test(v), `expected ${what} (letters, digits, '_', '-', '.', ':', '/', '@') or '*'`);
const actionName = z.string().regex(NAME, `expected an action name: letters, digits, '_', '-', '.', ':', '/' or '@'`);

/** A name or a list of names; one name is a list of one. */
const oneOrMany = <T extends z.ZodType<string>>(item: T) =>
  z.preprocess(
    (v) => (typeof v === 'string' ? [v] : v),
    z
      .array(item, { error: (issue) => (issue.input === undefined ? 'required: a name or a list of names' : 'expected a name or a list of names') })
      .min(1, 'expected at least one name'),
  );

const regex = z.string().superRefine((v, ctx) => {
  try {
    new RegExp(v, 'u');
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a valid regular expression: ${(err as Error).message}` });
  }
});

const isoTime = z.iso.datetime({ offset: true, message: 'expected an ISO 8601 time with a zone, e.g. 2026-01-31T18:00:00Z' });

const purposeCondition = z.strictObject({
  /** The call must state a purpose. */
  required: z.boolean().optional(),
  /** The purpose must be one of these. */
  in: z.array(z.string().min(1)).min(1).optional(),
  /** The purpose must match this regular expression (unanchored unless anchored, as in JSON Schema). */
  matches: regex.optional(),
});

const conditions = z.strictObject({
  purpose: purposeCondition.optional(),
  /** Only these sponsors. */
  sponsors: z.array(z.string().min(1)).min(1).optional(),
  /** Only tokens at least / at most this deep in a delegation chain (0 = issued, not exchanged). */
  min_delegation_depth: z.int().min(0).optional(),
  max_delegation_depth: z.int().min(0).optional(),
  /** The rule applies from / until these times (a temporary grant). */
  from: isoTime.optional(),
  until: isoTime.optional(),
  /** Named argument fields of the call (human approval and argument conditions, see approval-schema.ts). */
  args: argConditions.optional(),
});

const rule = z
  .strictObject({
    id: z.string().regex(RULE_ID, `expected a rule id: letters, digits, '_', '-', '.', ':'`),
    description: z.string().optional(),
    effect: z.enum(['allow', 'deny', 'require_approval']).default('allow'),
    role: oneOrMany(nameOrWildcard('a role name')),
    tool: oneOrMany(toolOrWildcard),
    /** The seed's name for the actions a rule covers; `actions` is the same thing. Absent: every action. */
    allowed_actions: oneOrMany(nameOrWildcard('an action name')).optional(),
    actions: oneOrMany(nameOrWildcard('an action name')).optional(),
    conditions: conditions.optional(),
    /** require_approval: who may approve, and how long the call waits. */
    approvers: approvers.optional(),
    approval_timeout: z.string().optional(),
  })
  .superRefine((r, ctx) => {
    if (r.allowed_actions && r.actions) {
      ctx.addIssue({ code: 'custom', path: ['actions'], message: `give either 'allowed_actions' or 'actions', not both` });
    }
    if (BUILTIN_IDS.has(r.id)) {
      ctx.addIssue({ code: 'custom', path: ['id'], message: `'${r.id}' is a built-in rule id; choose another` });
    }
    const { from, until, min_delegation_depth: min, max_delegation_depth: max } = r.conditions ?? {};
    if (min !== undefined && max !== undefined && min > max) {
      ctx.addIssue({ code: 'custom', path: ['conditions', 'max_delegation_depth'], message: `'max_delegation_depth' is below 'min_delegation_depth'` });
    }
    if (from && until && Date.parse(from) >= Date.parse(until)) {
      ctx.addIssue({ code: 'custom', path: ['conditions', 'until'], message: `'until' must be later than 'from'` });
    }
  });

const toolSettings = z.strictObject({
  description: z.string().optional(),
  /** Recorded on every decision; what the team reviews first. */
  risk: z.enum(RISKS).default('low'),
  /** Every call needs a fresh token (a replayed one is refused) and its allow is never cached. */
  single_use_tokens: z.boolean().default(false),
  /** Calls must state a purpose. */
  require_purpose: z.boolean().default(false),
  /** The tool's actions; when given, any other action is denied and rules may only name these. */
  actions: z.array(actionName).min(1).optional(),
  /** Argument fields the enforcer sends to the plane (in clear); every other argument stays a hash. */
  disclose_args: z.array(argName).min(1).optional(),
  /** Audit sampling (see auditSettings). */
  audit: z.lazy(() => auditSettings).optional(),
});

// --- audit sampling -------------------------------------------------------------------------
/**
 * `audit: { sample: 0.01 }`: keep the full record of this share of the tool's allowed, successful
 * calls; the others are stored as counted stubs that still carry the chain (common/audit-sample.ts).
 * Denies, errors and calls without a sponsor are never sampled; nor are high- or critical-risk tools.
 */
const sampleRate = z.number().gt(0, 'expected a rate above 0 (1 keeps every call)').max(1, 'expected a rate of at most 1');
const auditSettings = z.strictObject({ sample: sampleRate });
/** The policy-wide default per risk, e.g. `audit: { sample: { low: 0.01 } }`; a tool's own `audit.sample` wins. */
const auditDefaults = z.strictObject({
  sample: z.strictObject({ low: sampleRate.optional(), medium: sampleRate.optional(), high: sampleRate.optional(), critical: sampleRate.optional() }),
});
// --- tier-scoped canary ------------------------------------------------------------------------
/**
 * `scope: { "customer.tier": [free] }`: only calls whose reported attribute (a resource attribute
 * of the agent, a call attribute, or one the token carries) has one of these values can be in the
 * canary, and `percent` is taken of those; everything else is baseline. Several attributes must
 * all match.
 */
const SCOPE_ATTRIBUTE = /^[A-Za-z_][A-Za-z0-9_.:/-]*$/;
const rolloutScope = z
  .record(
    z.string().regex(SCOPE_ATTRIBUTE, `expected an attribute name such as 'customer.tier'`),
    z.preprocess((v) => (typeof v === 'string' ? [v] : v), z.array(z.string().min(1).max(256)).min(1, 'expected at least one value')),
  )
  .refine((s) => Object.keys(s).length > 0 && Object.keys(s).length <= 8, 'expected one to eight attributes');

const UNSAMPLED_RISKS: ReadonlySet<string> = new Set(['high', 'critical']);

const toolMapEntry = z.strictObject({
  tool: toolName,
  /** Absent: the default action. */
  action: actionName.optional(),
});

const rollout = z
  .strictObject({
    /** Percent of agent instances in the canary cohort (enforced) until the rollout is moved. */
    percent: z.number().min(0).max(100),
    /** Percent points to advance at a time, when no stages are given (the seed's `increment`). */
    increment: z.number().gt(0).max(100).optional(),
    /** The stages the rollout advances through, e.g. [10, 30, 60, 100]. */
    stages: z.array(z.number().gt(0).max(100)).min(1).optional(),
    /** Tier-scoped canary (see rolloutScope). */
    scope: z.lazy(() => rolloutScope).optional(),
  })
  .superRefine((r, ctx) => {
    if (r.stages?.some((s, i) => i > 0 && s <= r.stages![i - 1]!)) {
      ctx.addIssue({ code: 'custom', path: ['stages'], message: 'stages must increase strictly' });
    }
  });

export const policyConfigSchema = z
  .strictObject({
    /** A label for this policy, recorded on every decision; the file's hash when absent. */
    version: z.union([z.string().min(1), z.number()]).optional(),
    /** Documentation only: what no rule allows is denied, always. */
    default: z.literal('deny', { message: `expected 'deny': the policy denies whatever no rule allows, and that cannot be changed` }).optional(),
    tools: z.record(toolName, toolSettings).optional(),
    /** Framework tool names (what the agent's code calls a tool) → policy tool and action. */
    tool_map: z.record(z.string().min(1).max(256), toolMapEntry).optional(),
    rules: z.array(rule),
    rollout: rollout.optional(),
    /** Human approval: timeouts, the webhook, the approvers' directory. */
    approvals: approvalsConfig.optional(),
    /** `staging`: a call without a sponsor is a validation error everywhere, shadow included (as CUSTODY_ENV=staging). */
    mode: z.enum(['production', 'staging']).optional(),
    /** Audit sampling per risk (see auditDefaults). */
    audit: z.lazy(() => auditDefaults).optional(),
  })
  .superRefine((p, ctx) => {
    const seen = new Map<string, number>();
    const tools = p.tools;
    const declared = tools ? Object.keys(tools) : [];
    p.rules.forEach((r, i) => {
      const first = seen.get(r.id);
      if (first !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['rules', i, 'id'], message: `duplicate rule id '${r.id}' (also rules[${first}])` });
      } else seen.set(r.id, i);
      checkApprovalRule(r, i, p.approvals, ctx);
      checkArgConditions(r, i, tools, ctx);
      if (!tools) return;
      const actionsKey = r.allowed_actions ? 'allowed_actions' : 'actions';
      for (const t of r.tool) {
        if (t === WILDCARD) continue;
        const settings = tools[t];
        if (!settings) {
          ctx.addIssue({
            code: 'custom',
            path: ['rules', i, 'tool'],
            message: `tool '${t}' is not declared under 'tools' (declared: ${declared.join(', ') || 'none'})`,
          });
          continue;
        }
        const known = settings.actions;
        for (const a of r.allowed_actions ?? r.actions ?? []) {
          if (known && a !== WILDCARD && !known.includes(a)) {
            ctx.addIssue({
              code: 'custom',
              path: ['rules', i, actionsKey],
              message: `action '${a}' is not one of tool '${t}''s actions (${known.join(', ')})`,
            });
          }
        }
      }
    });
    for (const risk of UNSAMPLED_RISKS) {
      const rate = p.audit?.sample[risk as Risk];
      if (rate !== undefined && rate < 1) {
        ctx.addIssue({ code: 'custom', path: ['audit', 'sample', risk], message: `${risk}-risk tools' calls are never sampled` });
      }
    }
    for (const [name, t] of Object.entries(tools ?? {})) {
      if (t.audit && t.audit.sample < 1 && UNSAMPLED_RISKS.has(t.risk)) {
        ctx.addIssue({ code: 'custom', path: ['tools', name, 'audit', 'sample'], message: `a ${t.risk}-risk tool's calls are never sampled: remove 'audit.sample' or lower its risk` });
      }
    }
    for (const [name, entry] of Object.entries(p.tool_map ?? {})) {
      if (!tools) break;
      const settings = tools[entry.tool];
      if (!settings) {
        ctx.addIssue({ code: 'custom', path: ['tool_map', name, 'tool'], message: `tool '${entry.tool}' is not declared under 'tools'` });
      } else if (entry.action && settings.actions && !settings.actions.includes(entry.action)) {
        ctx.addIssue({
          code: 'custom',
          path: ['tool_map', name, 'action'],
          message: `action '${entry.action}' is not one of tool '${entry.tool}''s actions (${settings.actions.join(', ')})`,
        });
      }
    }
  });

export type PolicyConfig = z.infer<typeof policyConfigSchema>;
export type PolicyRuleConfig = PolicyConfig['rules'][number];
export type ToolSettings = z.infer<typeof toolSettings>;
export type { ApprovalsConfig };
export { APPROVAL_DEFAULTS };

/** Rollout defaults when the policy has no `rollout` block: the contract's 10 → 30 → 60 → 100. */
export const DEFAULT_ROLLOUT = Object.freeze({ percent: DEFAULTS.ROLLOUT_STAGES[0]!, stages: DEFAULTS.ROLLOUT_STAGES });

/** Reads and validates a policy file; a bad file is a ConfigError naming file, line, field and what was expected. */
export function loadPolicyFile(file: string): Readonly<PolicyConfig> {
  return loadConfigFile(file, policyConfigSchema);
}

export function parsePolicyText(text: string, file: string): Readonly<PolicyConfig> {
  return parseConfigText(text, file, policyConfigSchema);
}
