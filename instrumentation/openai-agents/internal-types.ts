/** The shapes of @openai/agents-core 0.x function tools this instrumentation touches. */
export interface FunctionToolDetails {
  toolCall?: { callId?: string; name?: string };
  [key: string]: unknown;
}

export type Execute = (input: unknown, runContext?: unknown, details?: FunctionToolDetails) => unknown;

/** `tool(options)`: what matters here of its options. */
export interface ToolOptions {
  name?: string;
  description?: string;
  execute: Execute;
  [key: string]: unknown;
}

/** dist/tool.{js,mjs} */
export interface ToolModule {
  tool: (options: ToolOptions) => unknown;
}
