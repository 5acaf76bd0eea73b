/** The shapes of @modelcontextprotocol/sdk 1.x this instrumentation touches. */
export interface CallToolParams {
  name: string;
  arguments?: Record<string, unknown>;
  _meta?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface McpClient {
  callTool(params: CallToolParams, resultSchema?: unknown, options?: unknown): Promise<unknown>;
  listTools?(params?: unknown, options?: unknown): Promise<{ tools: unknown[]; [key: string]: unknown }>;
  /** Protocol.transport: the connected transport (StdioClientTransport, StreamableHTTPClientTransport, …). */
  readonly transport?: unknown;
}

export interface McpRequest {
  method: string;
  params?: { name?: string; _meta?: Record<string, unknown>; [key: string]: unknown };
}

export interface McpRequestExtra {
  requestId?: string | number;
  sessionId?: string;
  [key: string]: unknown;
}

export type McpRequestHandler = (request: McpRequest, extra: McpRequestExtra) => unknown;

export interface McpServer {
  setRequestHandler(schema: unknown, handler: McpRequestHandler): void;
}

/** dist/{cjs,esm}/client/index.js */
export interface ClientModule {
  Client: { prototype: McpClient };
}

/** dist/{cjs,esm}/server/index.js */
export interface ServerModule {
  Server: { prototype: McpServer };
}
