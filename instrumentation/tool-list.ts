import { diag } from '@opentelemetry/api';
import { mapTool } from './mapping';
import { enforcerOf, getRuntime } from './runtime';
import { currentScope } from './scope';

/** How long a tool list waits for the plane's answer before it is offered whole. */
const LIST_BUDGET_MS = 2_000;

/**
 * The items of a tool list the calling agent's role may ever call, in their order: tools no rule
 * could allow for the role are left out, so the model is not offered them. When that cannot be
 * known (no plane, no answer in time, no role to ask for), the list is returned whole: leaving
 * tools out is a courtesy to the model, never the control — every call is still decided.
 */
export async function callableOnly<T>(items: readonly T[], nameOf: (item: T) => unknown): Promise<T[]> {
  const all = [...items];
  try {
    const runtime = getRuntime();
    const enforcer = enforcerOf(runtime);
    if (!enforcer?.mayEverCall || all.length === 0) return all;
    const named = all.map((item) => nameOf(item));
    const names = named.filter((n): n is string => typeof n === 'string');
    if (names.length === 0) return all;
    // a name the local tool map knows is asked for as the tool.action it maps to
    const asked = names.map((n) => (runtime.toolMap && Object.hasOwn(runtime.toolMap, n) ? qualified(mapTool(n, runtime.toolMap)) : n));
    const budget = Math.max(LIST_BUDGET_MS, enforcer.settings?.timeoutMs ?? 0);
    const may = await enforcer.mayEverCall(asked, currentScope().identity, { timeoutMs: budget });
    if (!may) return all;
    const allowed = new Set(names.filter((_, i) => may[i]));
    return all.filter((_, i) => typeof named[i] !== 'string' || allowed.has(named[i] as string));
  } catch (err) {
    diag.debug(`custody: tool list offered whole: ${(err as Error)?.message ?? String(err)}`);
    return all;
  }
}

const qualified = (t: { tool: string; action: string }) => `${t.tool}.${t.action}`;
