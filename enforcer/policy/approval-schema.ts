import { z } from 'zod';
import { parseDuration } from '../../common/duration';

/**
 * The policy's human-approval and argument-condition parts (issue #20): a rule's
 * `effect: require_approval` with `approvers` and `approval_timeout`, `conditions.args`, a tool's
 * `disclose_args`, and the top-level `approvals` block. Kept apart from schema.ts so that each
 * reads on its own.
 */

export const APPROVAL_DEFAULTS = Object.freeze({
  /** How long a call waits for a human when the rule does not say. */
  TIMEOUT_S: 15 * 60,
  /** The longest `approval_timeout` a rule may ask for, unless `approvals.max_timeout` says otherwise. */
  MAX_TIMEOUT_S: 60 * 60,
});

const ARG_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const argName = z.string().regex(ARG_NAME, `expected an argument field name: letters, digits and '_'`);
const PERSON = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$/;
const person = z.string().regex(PERSON, `expected a person's id: letters, digits, '_', '-', '.', ':' or '@'`);

const durationText = z.string().superRefine((v, ctx) => {
  try {
    parseDuration(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

const scalar = z.union([z.string(), z.number(), z.boolean()]);
/** One field's test: every operator given must hold. */
export const argCondition = z
  .strictObject({
    eq: scalar.optional(),
    ne: scalar.optional(),
    gt: z.number().optional(),
    gte: z.number().optional(),
    lt: z.number().optional(),
    lte: z.number().optional(),
    in: z.array(scalar).min(1).optional(),
  })
  .refine((c) => Object.values(c).some((v) => v !== undefined), 'expected at least one of eq, ne, gt, gte, lt, lte, in');
export type ArgCondition = z.infer<typeof argCondition>;

export const argConditions = z.record(argName, argCondition).refine((r) => Object.keys(r).length > 0, 'expected at least one argument field');

export const approvers = z
  .strictObject({
    /** The requesting agent's sponsor may approve (this is what allows a sponsor to approve their own agent). */
    sponsor: z.boolean().optional(),
    /** These people may approve. */
    people: z.array(person).min(1).optional(),
    /** Anyone holding one of these roles (approvals.people.<id>.roles) may approve. */
    roles: z.array(z.string().min(1)).min(1).optional(),
  })
  .refine((a) => a.sponsor === true || (a.people?.length ?? 0) > 0 || (a.roles?.length ?? 0) > 0, 'name at least one approver: sponsor: true, people or roles');
export type ApproversConfig = z.infer<typeof approvers>;

const personEntry = z.strictObject({
  /** Approver roles this person holds. */
  roles: z.array(z.string().min(1)).default([]),
  /** SHA-256 (hex) of the person's approver credential; the credential itself is never written here. */
  credential_sha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/, 'expected the SHA-256 of the approver credential, 64 lowercase hex digits (custody approvals credential PERSON prints both)')
    .optional(),
});

export const approvalsConfig = z.strictObject({
  /** Default wait for rules without `approval_timeout` (15m). */
  default_timeout: durationText.optional(),
  /** The longest wait a rule may ask for (1h). */
  max_timeout: durationText.optional(),
  /** Each new request is POSTed here as JSON (fire and forget); CUSTODY_APPROVAL_WEBHOOK_URL overrides it. */
  webhook: z.url({ protocol: /^https?$/, message: 'expected an http(s) URL' }).optional(),
  /** The approvers' directory: who they are, their roles, their credential's hash. */
  people: z.record(person, personEntry).optional(),
});
export type ApprovalsConfig = z.infer<typeof approvalsConfig>;

interface RuleLike {
  effect: 'allow' | 'deny' | 'require_approval';
  tool: string[];
  approvers?: ApproversConfig | undefined;
  approval_timeout?: string | undefined;
  conditions?: { args?: Record<string, ArgCondition> | undefined } | undefined;
}

type Ctx = z.RefinementCtx;

/** approvers and approval_timeout belong to require_approval rules, which must name approvers, within the maximum wait. */
export function checkApprovalRule(r: RuleLike, i: number, approvals: ApprovalsConfig | undefined, ctx: Ctx): void {
  if (r.effect !== 'require_approval') {
    if (r.approvers) ctx.addIssue({ code: 'custom', path: ['rules', i, 'approvers'], message: `'approvers' belongs to rules with effect: require_approval` });
    if (r.approval_timeout) ctx.addIssue({ code: 'custom', path: ['rules', i, 'approval_timeout'], message: `'approval_timeout' belongs to rules with effect: require_approval` });
    return;
  }
  if (!r.approvers) ctx.addIssue({ code: 'custom', path: ['rules', i, 'approvers'], message: `required for effect: require_approval: who may approve ({ sponsor: true, people: [..], roles: [..] })` });
  if (r.approval_timeout === undefined) return;
  let seconds: number;
  try {
    seconds = parseDuration(r.approval_timeout, 'approval_timeout');
  } catch (err) {
    return void ctx.addIssue({ code: 'custom', path: ['rules', i, 'approval_timeout'], message: (err as Error).message });
  }
  const max = maxTimeoutS(approvals);
  if (seconds > max) {
    ctx.addIssue({ code: 'custom', path: ['rules', i, 'approval_timeout'], message: `'${r.approval_timeout}' is longer than the maximum wait (${max} s, approvals.max_timeout)` });
  }
}

/**
 * A rule may test only argument fields every tool it names discloses (`tools.<t>.disclose_args`):
 * the plane never sees the others, so such a rule could not be decided.
 */
export function checkArgConditions(r: RuleLike, i: number, tools: Record<string, { disclose_args?: string[] | undefined }> | undefined, ctx: Ctx): void {
  const args = r.conditions?.args;
  if (!args) return;
  const path = ['rules', i, 'conditions', 'args'];
  if (!tools) return void ctx.addIssue({ code: 'custom', path, message: `argument conditions need a 'tools' table whose tools list the fields in 'disclose_args'` });
  for (const t of r.tool) {
    if (t === '*') {
      ctx.addIssue({ code: 'custom', path: ['rules', i, 'tool'], message: `a rule with argument conditions must name its tools ('*' cannot say which fields are disclosed)` });
      continue;
    }
    const disclosed = new Set(tools[t]?.disclose_args ?? []);
    for (const field of Object.keys(args)) {
      if (!disclosed.has(field)) {
        ctx.addIssue({ code: 'custom', path: [...path, field], message: `argument '${field}' is not disclosed by tool '${t}' (add it to tools.${t}.disclose_args; disclosed: ${[...disclosed].join(', ') || 'none'})` });
      }
    }
  }
}

export function maxTimeoutS(approvals: ApprovalsConfig | undefined): number {
  return approvals?.max_timeout ? parseDuration(approvals.max_timeout) : APPROVAL_DEFAULTS.MAX_TIMEOUT_S;
}

export function defaultTimeoutS(approvals: ApprovalsConfig | undefined): number {
  return Math.min(approvals?.default_timeout ? parseDuration(approvals.default_timeout) : APPROVAL_DEFAULTS.TIMEOUT_S, maxTimeoutS(approvals));
}
