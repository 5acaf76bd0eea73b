import { runToolCall } from '../tool-call';
import type { Execute, ToolOptions } from './internal-types';

/** `options` with `execute` run as an enforced, audited tool call; undefined when there is nothing to wrap. */
export function withWrappedExecute(options: ToolOptions): ToolOptions | undefined {
  const execute = options?.execute;
  if (typeof execute !== 'function') return undefined;
  // the SDK names a nameless tool after its function: keep that name
  const name = options.name ?? execute.name;
  if (!name) return undefined;
  const wrapped: Execute = function (this: unknown, input, runContext, details) {
    const request = {
      name,
      args: input,
      ...(typeof details?.toolCall?.callId === 'string' ? { toolCallId: details.toolCall.callId } : {}),
      ...(typeof options.description === 'string' ? { description: options.description } : {}),
    };
    return runToolCall(request, () => execute.call(this, input, runContext, details));
  };
  Object.defineProperty(wrapped, 'name', { value: execute.name });
  return { ...options, execute: wrapped };
}
