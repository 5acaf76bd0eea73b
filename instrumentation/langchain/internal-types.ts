/** The shapes of @langchain/core 1.x tools this instrumentation touches. */
export interface ToolCallConfig {
  toolCall?: { id?: string; name?: string };
  [key: string]: unknown;
}

/** StructuredTool and everything that extends it (Tool, DynamicTool, DynamicStructuredTool, tool()). */
export interface StructuredToolLike {
  name: string;
  description?: string;
  call(arg: unknown, configArg?: unknown, tags?: unknown): Promise<unknown>;
  _call(arg: unknown, runManager?: unknown, parentConfig?: ToolCallConfig): unknown;
}

export type ToolClass = { prototype: StructuredToolLike };

/** dist/tools/index.{cjs,js} */
export interface ToolsModule {
  StructuredTool: ToolClass;
  DynamicTool?: ToolClass;
  DynamicStructuredTool?: ToolClass;
}
