/**
 * What Grafana and grafana-clickhouse-datasource do to a panel's SQL before ClickHouse sees it, in
 * their order:
 * 1. the plugin's frontend replaces `$__conditionalAll(condition, $var)` with `1=1` when the
 *    variable selects All (its current value is `$__all`) or nothing, else with the condition;
 * 2. Grafana interpolates template variables: `${var:singlequote}` → `'a','b'` (each value quoted,
 *    `'` escaped as `\'`); a plain `$var` / `${var}` of a single value → the value as is;
 * 3. the plugin's backend expands its macros from the query's time range and interval:
 *    $__timeFilter(c) → `c >= toDateTime(from) AND c <= toDateTime(to)` (Unix seconds),
 *    $__fromTime / $__toTime → `toDateTime(s)`, $__timeInterval(c) →
 *    `toStartOfInterval(toDateTime(c), INTERVAL n second)` with n = max(interval, 1 s),
 *    $__interval_s → n.
 */

export type VariableValue = string[] | 'All';

export interface GrafanaContext {
  from: number; // epoch ms
  to: number;
  intervalS: number;
  variables: Record<string, VariableValue>;
}

/** The arguments of the macro whose `(` is at `open`: split on top-level commas, with the index after `)`. */
function macroArgs(text: string, open: number): { args: string[]; end: number } {
  let depth = 0;
  let quote: string | undefined;
  const args: string[] = [];
  let start = open + 1;
  for (let i = open; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === quote && text[i - 1] !== '\\') quote = undefined;
      continue;
    }
    if (c === "'" || c === '"') quote = c;
    else if (c === '(') depth++;
    else if (c === ')') {
      depth--;
      if (depth === 0) {
        args.push(text.slice(start, i));
        return { args, end: i + 1 };
      }
    } else if (c === ',' && depth === 1) {
      args.push(text.slice(start, i));
      start = i + 1;
    }
  }
  throw new Error(`unbalanced macro at ${open}: ${text.slice(open, open + 60)}`);
}

export function applyConditionalAll(sql: string, variables: Record<string, VariableValue>): string {
  const macro = '$__conditionalAll(';
  let out = sql;
  for (let at = out.lastIndexOf(macro); at !== -1; at = out.lastIndexOf(macro)) {
    const { args, end } = macroArgs(out, at + macro.length - 1);
    if (args.length !== 2) throw new Error(`$__conditionalAll takes 2 arguments, got ${args.length}`);
    const name = args[1]!.trim().replace(/^\$\{?|\}$/g, '');
    const value = variables[name];
    if (value === undefined) throw new Error(`unknown variable ${name}`);
    const phrase = value === 'All' || value.length === 0 ? '1=1' : args[0]!;
    out = out.slice(0, at) + phrase + out.slice(end);
  }
  return out;
}

export function interpolateVariables(sql: string, variables: Record<string, VariableValue>): string {
  return sql.replace(/\$\{(\w+)(?::(\w+))?\}|\$(\w+)\b/g, (whole, braced: string | undefined, format: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare!;
    if (name.startsWith('__')) return whole; // the plugin's macros
    const value = variables[name];
    if (value === undefined) throw new Error(`unknown variable ${name} in ${whole}`);
    if (value === 'All') throw new Error(`${whole}: All must be handled by $__conditionalAll`);
    if (format === 'singlequote') return value.map((v) => `'${v.replace(/'/g, "\\'")}'`).join(',');
    if (format) throw new Error(`format ${format} not used by the dashboards`);
    if (value.length !== 1) throw new Error(`${whole}: a plain variable with ${value.length} values`);
    return value[0]!;
  });
}

export function expandBackendMacros(sql: string, ctx: GrafanaContext): string {
  const from = Math.floor(ctx.from / 1000);
  const to = Math.floor(ctx.to / 1000);
  const n = Math.max(1, Math.floor(ctx.intervalS));
  return sql
    .replace(/\$__timeFilter\(([^)]*)\)/g, (_m, c: string) => `${c.trim()} >= toDateTime(${from}) AND ${c.trim()} <= toDateTime(${to})`)
    .replace(/\$__timeInterval\(([^)]*)\)/g, (_m, c: string) => `toStartOfInterval(toDateTime(${c.trim()}), INTERVAL ${n} second)`)
    .replace(/\$__fromTime\b/g, `toDateTime(${from})`)
    .replace(/\$__toTime\b/g, `toDateTime(${to})`)
    .replace(/\$__interval_s\b/g, String(n));
}

export function expandPanelSql(sql: string, ctx: GrafanaContext): string {
  const out = expandBackendMacros(interpolateVariables(applyConditionalAll(sql, ctx.variables), ctx.variables), ctx);
  const left = /\$__\w+|\$\{?\w+/.exec(out);
  if (left) throw new Error(`unexpanded ${left[0]} in:\n${out}`);
  return out;
}
