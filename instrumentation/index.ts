// The agent-side API: what `custody/register` patches automatically, for everything else.
export { toolCall, wrapTool } from './tool-call';
export { startSubAgent, currentAgent, childEnv, propagationHeaders, runAsRemoteCallee } from './subagent';
export type { AgentInfo, SubAgentOptions } from './subagent';
export type { ToolCallOptions } from './types';
export { custodyInstrumentations } from './instrumentations';
export { McpInstrumentation } from './mcp/instrumentation';
export { LangChainInstrumentation } from './langchain/instrumentation';
export { AiSdkInstrumentation } from './ai-sdk/instrumentation';
export { OpenAIAgentsInstrumentation } from './openai-agents/instrumentation';
export { ChildProcessInstrumentation } from './child-process/instrumentation';
export { HttpClientInstrumentation } from './http-client/instrumentation';
