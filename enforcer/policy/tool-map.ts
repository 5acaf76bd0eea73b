/** The action a tool call has when neither its name nor the policy's tool_map gives one. */
export const DEFAULT_ACTION = 'call';

export interface ToolMapEntry {
  tool: string;
  action?: string | undefined;
}

export interface ToolRef {
  tool: string;
  action: string;
  /** True when the policy's tool_map named it. */
  mapped: boolean;
}

/**
 * What policy tool and action a framework tool name means: the policy's `tool_map` entry when
 * there is one; otherwise `tool.action` splits at the first dot (`billing.refund` → billing,
 * refund); otherwise the name is the tool and the action is `call`. An unknown result is not an
 * error here: the plane denies tools no rule allows.
 */
export function resolveToolName(
  name: string,
  toolMap?: ReadonlyMap<string, ToolMapEntry> | Readonly<Record<string, ToolMapEntry>>,
): ToolRef {
  const entry = !toolMap
    ? undefined
    : toolMap instanceof Map
      ? toolMap.get(name)
      : Object.hasOwn(toolMap, name)
        ? (toolMap as Readonly<Record<string, ToolMapEntry>>)[name]
        : undefined;
  if (entry) {
    return { tool: entry.tool, action: entry.action ?? DEFAULT_ACTION, mapped: true };
  }
  const dot = name.indexOf('.');
  if (dot > 0 && dot < name.length - 1) return { tool: name.slice(0, dot), action: name.slice(dot + 1), mapped: false };
  return { tool: name, action: DEFAULT_ACTION, mapped: false };
}
