import { createContextKey, type Context } from '@opentelemetry/api';

/**
 * The tool call a context is inside of, as its body runs: what outgoing HTTP from the body
 * (http-client/) sends along. The token is the call's own, for the tool the call was allowed.
 */
export interface ActiveToolCall {
  readonly tool: string;
  readonly action: string;
  /** The token the decision was made on; absent when none was had (a baseline call let through first). */
  readonly token?: string;
}

const TOOL_CALL = createContextKey('custody.tool_call');

export function withToolCall(ctx: Context, call: ActiveToolCall): Context {
  return ctx.setValue(TOOL_CALL, call);
}

export function toolCallOf(ctx: Context): ActiveToolCall | undefined {
  return ctx.getValue(TOOL_CALL) as ActiveToolCall | undefined;
}
