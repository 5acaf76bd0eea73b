/**
 * Attribute names and values the instrumentation emits beyond custody's own (common/names.ts ATTR):
 * GenAI and MCP semantic-convention names, as `as const` strings, in one place.
 */
export const SEMCONV = {
  GEN_AI_TOOL_TYPE: 'gen_ai.tool.type',
  GEN_AI_TOOL_DESCRIPTION: 'gen_ai.tool.description',
  GEN_AI_SYSTEM: 'gen_ai.system',
  MCP_METHOD_NAME: 'mcp.method.name',
  MCP_SESSION_ID: 'mcp.session.id',
  JSONRPC_REQUEST_ID: 'jsonrpc.request.id',
  EXCEPTION_TYPE: 'exception.type',
} as const;

/** gen_ai.tool.type: every tool custody gates runs client-side as a function. */
export const TOOL_TYPE_FUNCTION = 'function';

/** MCP method names. */
export const MCP_METHOD = { TOOLS_CALL: 'tools/call' } as const;

/** Values of audit_events.status, as the collector derives them from the span status. */
export const AUDIT_STATUS = { OK: 'ok', ERROR: 'error' } as const;

/** error.type of the two policy failures: custody's public names, kept in common/names.ts. */
export { POLICY_ERROR_TYPE } from '../common/names';

/** Instrumentation scope of the spans custody creates itself (tool calls, sub-agents). */
export const SCOPE_NAME = 'custody';
