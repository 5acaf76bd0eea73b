import fs from 'node:fs';
import { sha256Hex } from '../../common/canonical';
import { parseDuration } from '../../common/duration';
import { ConfigError } from '../../common/errors';
import { DEFAULT_ROLLOUT, WILDCARD, parsePolicyText, type PolicyConfig, type Risk } from './schema';
import { defaultTimeoutS, type ArgCondition } from './approval-schema';
import { DEFAULT_ACTION } from './tool-map';

/** A rule made ready for evaluation: sets and compiled patterns, `null` for "any". */
export interface CompiledRule {
  readonly id: string;
  readonly effect: 'allow' | 'deny' | 'require_approval';
  /** Position in the file, for reasons and tests. */
  readonly index: number;
  readonly roles: ReadonlySet<string> | null;
  readonly actions: ReadonlySet<string> | null;
  readonly purposeRequired: boolean;
  readonly purposeIn: ReadonlySet<string> | null;
  readonly purposeMatches: RegExp | null;
  readonly sponsors: ReadonlySet<string> | null;
  readonly minDelegationDepth: number | null;
  readonly maxDelegationDepth: number | null;
  /** Epoch ms, or null. */
  readonly from: number | null;
  readonly until: number | null;
  /** The rule has conditions (purpose, sponsors, depth, times, …): it may or may not apply to a call. */
  readonly conditional: boolean;
  /** conditions.args: each disclosed field's test, or null. */
  readonly args: ReadonlyArray<readonly [string, ArgCondition]> | null;
  /** require_approval: who may approve and how long the call waits; null for other effects. */
  readonly approval: CompiledApproval | null;
}

export interface CompiledApproval {
  readonly sponsor: boolean;
  readonly people: ReadonlySet<string>;
  readonly roles: ReadonlySet<string>;
  readonly timeoutMs: number;
}

/** The approvers' directory and the webhook (policy `approvals`). */
export interface ApprovalSettings {
  readonly webhook: string | undefined;
  readonly people: ReadonlyMap<string, { readonly roles: readonly string[]; readonly credentialSha256: string | undefined }>;
}

export interface ToolPolicy {
  readonly risk: Risk;
  readonly singleUseTokens: boolean;
  readonly requirePurpose: boolean;
  readonly actions: ReadonlySet<string> | null;
  /** Argument fields the enforcer sends in clear (disclose_args); null: none. */
  readonly discloseArgs: readonly string[] | null;
  /** Share of allowed, successful calls whose full audit record is kept (1: all). */
  readonly auditSample: number;
}

export interface RolloutConfig {
  readonly percent: number;
  readonly increment?: number | undefined;
  readonly stages: readonly number[];
  /** Tier-scoped canary: only calls with these attribute values can be canary. */
  readonly scope?: RolloutScope | undefined;
}

/** Attribute name → the values that put a call in the canary's scope. */
export type RolloutScope = Readonly<Record<string, readonly string[]>>;

/** A validated, indexed policy. Immutable: a reload makes a new one and swaps the reference. */
export interface Policy {
  readonly config: Readonly<PolicyConfig>;
  /** The policy's `version`, else the first 12 hex digits of its hash. */
  readonly version: string;
  /** SHA-256 of the file's text. */
  readonly hash: string;
  /** Where it was read from. */
  readonly source: string;
  readonly loadedAt: number;
  /** True when the policy has a `tools` table: tools outside it are denied. */
  readonly declaresTools: boolean;
  readonly tools: ReadonlyMap<string, ToolPolicy>;
  readonly toolMap: ReadonlyMap<string, { readonly tool: string; readonly action: string }>;
  readonly rollout: RolloutConfig;
  readonly ruleCount: number;
  /** The settings of a tool the `tools` table does not list (low risk, the policy's low-risk sampling). */
  readonly defaultTool: ToolPolicy;
  /** Every tool the policy names: in `tools`, in a rule or in `tool_map`. */
  readonly knownTools: ReadonlySet<string>;
  readonly approvals: ApprovalSettings;
  /** The rules that can apply to a tool, explicit denies first, each group in file order. */
  rulesFor(tool: string): readonly CompiledRule[];
}

const DEFAULT_TOOL: ToolPolicy = Object.freeze({ risk: 'low', singleUseTokens: false, requirePurpose: false, actions: null, discloseArgs: null, auditSample: 1 });

export function compilePolicy(config: Readonly<PolicyConfig>, meta: { source: string; hash: string; loadedAt?: number }): Policy {
  const compiled = config.rules.map((r, index): { rule: CompiledRule; tools: readonly string[] } => {
    const c = r.conditions;
    const actions = r.allowed_actions ?? r.actions ?? [WILDCARD];
    return {
      tools: r.tool,
      rule: Object.freeze({
        id: r.id,
        effect: r.effect,
        index,
        roles: anySet(r.role),
        actions: anySet(actions),
        purposeRequired: Boolean(c?.purpose?.required || c?.purpose?.in || c?.purpose?.matches),
        purposeIn: c?.purpose?.in ? new Set(c.purpose.in) : null,
        purposeMatches: c?.purpose?.matches ? new RegExp(c.purpose.matches, 'u') : null,
        sponsors: c?.sponsors ? new Set(c.sponsors) : null,
        minDelegationDepth: c?.min_delegation_depth ?? null,
        maxDelegationDepth: c?.max_delegation_depth ?? null,
        from: c?.from ? Date.parse(c.from) : null,
        until: c?.until ? Date.parse(c.until) : null,
        conditional: c !== undefined && Object.values(c).some((v) => v !== undefined),
        args: c?.args ? Object.freeze(Object.entries(c.args).map(([k, v]) => Object.freeze([k, v] as const))) : null,
        approval:
          r.effect === 'require_approval' && r.approvers
            ? Object.freeze({
                sponsor: r.approvers.sponsor === true,
                people: new Set(r.approvers.people ?? []),
                roles: new Set(r.approvers.roles ?? []),
                timeoutMs: (r.approval_timeout ? parseDuration(r.approval_timeout) : defaultTimeoutS(config.approvals)) * 1000,
              })
            : null,
      }),
    };
  });
  // explicit denies, then rules that need a human, then allows
  const ordered = [...compiled.filter((c) => c.rule.effect === 'deny'), ...compiled.filter((c) => c.rule.effect === 'require_approval'), ...compiled.filter((c) => c.rule.effect === 'allow')];
  const anyTool = Object.freeze(ordered.filter((c) => c.tools.includes(WILDCARD)).map((c) => c.rule));
  const byTool = new Map<string, readonly CompiledRule[]>();
  const named = new Set(compiled.flatMap((c) => c.tools.filter((t) => t !== WILDCARD)));
  for (const tool of named) {
    byTool.set(tool, Object.freeze(ordered.filter((c) => c.tools.includes(tool) || c.tools.includes(WILDCARD)).map((c) => c.rule)));
  }

  const tools = new Map<string, ToolPolicy>();
  for (const [name, t] of Object.entries(config.tools ?? {})) {
    tools.set(
      name,
      Object.freeze({
        risk: t.risk,
        singleUseTokens: t.single_use_tokens,
        requirePurpose: t.require_purpose,
        actions: t.actions ? new Set(t.actions) : null,
        discloseArgs: t.disclose_args ? Object.freeze([...t.disclose_args]) : null,
        auditSample: t.audit?.sample ?? config.audit?.sample[t.risk] ?? 1,
      }),
    );
  }
  const toolMap = new Map<string, { tool: string; action: string }>();
  for (const [name, e] of Object.entries(config.tool_map ?? {})) toolMap.set(name, Object.freeze({ tool: e.tool, action: e.action ?? DEFAULT_ACTION }));

  const r = config.rollout;
  const rollout: RolloutConfig = Object.freeze(
    r
      ? { percent: r.percent, increment: r.increment, stages: r.stages ?? (r.increment ? [] : DEFAULT_ROLLOUT.stages), ...(r.scope ? { scope: r.scope } : {}) }
      : { percent: DEFAULT_ROLLOUT.percent, stages: DEFAULT_ROLLOUT.stages },
  );

  return Object.freeze({
    config,
    version: config.version !== undefined ? String(config.version) : meta.hash.slice(0, 12),
    hash: meta.hash,
    source: meta.source,
    loadedAt: meta.loadedAt ?? Date.now(),
    declaresTools: config.tools !== undefined,
    tools,
    toolMap,
    rollout,
    defaultTool: config.audit?.sample.low !== undefined ? Object.freeze({ ...DEFAULT_TOOL, auditSample: config.audit.sample.low }) : DEFAULT_TOOL,
    ruleCount: config.rules.length,
    knownTools: new Set([...named, ...tools.keys(), ...[...toolMap.values()].map((e) => e.tool)]),
    approvals: Object.freeze({
      webhook: config.approvals?.webhook,
      people: new Map(Object.entries(config.approvals?.people ?? {}).map(([id, p]) => [id, Object.freeze({ roles: Object.freeze([...p.roles]), credentialSha256: p.credential_sha256 })])),
    }),
    rulesFor: (tool: string) => byTool.get(tool) ?? anyTool,
  });
}

/** The settings of a tool; tools without a `tools` entry get the defaults (low risk, reusable tokens). */
export function toolPolicy(policy: Policy, tool: string): ToolPolicy {
  return policy.tools.get(tool) ?? policy.defaultTool;
}

/** Parses and compiles policy text; a bad text is a ConfigError naming file, line and field. */
export function compilePolicyText(text: string, source: string, loadedAt?: number): Policy {
  const config = parsePolicyText(text, source);
  return compilePolicy(config, { source, hash: sha256Hex(text), ...(loadedAt !== undefined ? { loadedAt } : {}) });
}

/** Reads, validates and compiles a policy file. */
export function readPolicyFile(file: string): Policy {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  return compilePolicyText(text, file);
}

function anySet(names: readonly string[]): ReadonlySet<string> | null {
  return names.includes(WILDCARD) ? null : new Set(names);
}
