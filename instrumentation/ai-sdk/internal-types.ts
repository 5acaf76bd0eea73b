/** The shapes of the Vercel AI SDK (`ai` 6.x) this instrumentation touches. */
export interface ToolExecutionOptions {
  toolCallId?: string;
  [key: string]: unknown;
}

export interface AiTool {
  description?: string;
  execute?: (input: unknown, options: ToolExecutionOptions) => unknown;
  [key: string]: unknown;
}

export type ToolSet = Record<string, AiTool>;

export interface CallOptions {
  tools?: ToolSet;
  [key: string]: unknown;
}

export type GenerateFn = (options: CallOptions) => unknown;

export interface ToolLoopAgentLike {
  prepareCall(options: unknown): Promise<CallOptions>;
}

/** The package's main module. */
export interface AiModule {
  generateText?: GenerateFn;
  streamText?: GenerateFn;
  ToolLoopAgent?: { prototype: ToolLoopAgentLike };
  [key: string]: unknown;
}
