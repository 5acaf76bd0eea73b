import { runToolCall } from '../tool-call';
import type { AiTool, CallOptions, ToolSet } from './internal-types';

/** Marks an `execute` custody already wraps. */
const WRAPPED = Symbol.for('custody.ai-sdk.execute');

// Each tool object is wrapped once per name it is registered under, not once per call.
const cache = new WeakMap<AiTool, Map<string, AiTool>>();

/** `tool` with its `execute` run as an enforced, audited tool call named `name`. */
export function wrapAiTool(name: string, tool: AiTool): AiTool {
  const execute = tool?.execute;
  if (typeof execute !== 'function' || (execute as { [WRAPPED]?: true })[WRAPPED]) return tool;
  let byName = cache.get(tool);
  const hit = byName?.get(name);
  if (hit) return hit;
  const wrapped: AiTool['execute'] = function (this: unknown, input, options) {
    const request = {
      name,
      args: input,
      ...(typeof options?.toolCallId === 'string' ? { toolCallId: options.toolCallId } : {}),
      ...(typeof tool.description === 'string' ? { description: tool.description } : {}),
    };
    return runToolCall(request, () => execute.call(this ?? tool, input, options));
  };
  Object.defineProperty(wrapped, WRAPPED, { value: true });
  const copy: AiTool = { ...tool, execute: wrapped };
  if (!byName) cache.set(tool, (byName = new Map()));
  byName.set(name, copy);
  return copy;
}

/** A copy of `tools` whose executable tools are wrapped; the caller's object is left as it is. */
export function wrapToolSet(tools: ToolSet): ToolSet {
  const out: ToolSet = {};
  for (const [name, tool] of Object.entries(tools)) out[name] = wrapAiTool(name, tool);
  return out;
}

/** Call options with their tools wrapped. */
export function withWrappedTools<T extends CallOptions>(options: T): T {
  if (!options || typeof options !== 'object' || !options.tools || typeof options.tools !== 'object') return options;
  return { ...options, tools: wrapToolSet(options.tools) };
}
