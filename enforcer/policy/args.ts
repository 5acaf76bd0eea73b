import type { ArgCondition } from './approval-schema';

/**
 * Argument conditions, pure. A field the call did not disclose (absent, or of the wrong type for a
 * numeric test) can be anything, so the answer fails closed: a deny or require_approval rule
 * (`absentMatches`) applies, an allow rule does not.
 */
export function argsMatch(conditions: ReadonlyArray<readonly [string, ArgCondition]>, args: Readonly<Record<string, unknown>> | undefined, absentMatches: boolean): boolean {
  for (const [field, c] of conditions) {
    const value = args && Object.hasOwn(args, field) ? args[field] : undefined;
    const r = test(c, value);
    if (r === undefined) {
      if (!absentMatches) return false;
    } else if (!r) return false;
  }
  return true;
}

/** true / false, or undefined when the value cannot be tested (absent, not a finite number for a numeric test). */
function test(c: ArgCondition, value: unknown): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  const numeric = c.gt !== undefined || c.gte !== undefined || c.lt !== undefined || c.lte !== undefined;
  if (numeric) {
    if (typeof value !== 'number' || !Number.isFinite(value)) return undefined;
    if (c.gt !== undefined && !(value > c.gt)) return false;
    if (c.gte !== undefined && !(value >= c.gte)) return false;
    if (c.lt !== undefined && !(value < c.lt)) return false;
    if (c.lte !== undefined && !(value <= c.lte)) return false;
  }
  if (c.eq !== undefined && value !== c.eq) return false;
  if (c.ne !== undefined && value === c.ne) return false;
  if (c.in !== undefined && !c.in.includes(value as string | number | boolean)) return false;
  return true;
}

/** Only the fields a tool discloses, and only plain JSON scalars: nothing else of the arguments leaves the agent. */
export function discloseArgs(args: unknown, fields: readonly string[] | null | undefined): Record<string, string | number | boolean | null> | undefined {
  if (!fields?.length || typeof args !== 'object' || args === null || Array.isArray(args)) return undefined;
  const out: Record<string, string | number | boolean | null> = {};
  for (const f of fields) {
    if (!Object.hasOwn(args, f)) continue;
    const v = (args as Record<string, unknown>)[f];
    if (v === null || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v))) out[f] = v;
    else if (typeof v === 'string') out[f] = v.length > 256 ? v.slice(0, 256) : v;
  }
  return out;
}
