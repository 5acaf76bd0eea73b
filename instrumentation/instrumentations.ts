import type { Instrumentation } from '@opentelemetry/instrumentation';
import { AiSdkInstrumentation } from './ai-sdk/instrumentation';
import { ChildProcessInstrumentation } from './child-process/instrumentation';
import { HttpClientInstrumentation } from './http-client/instrumentation';
import { LangChainInstrumentation } from './langchain/instrumentation';
import { McpInstrumentation } from './mcp/instrumentation';
import { OpenAIAgentsInstrumentation } from './openai-agents/instrumentation';

/** Every patch custody/register enables, one per framework, plus child processes and outgoing HTTP. */
export function custodyInstrumentations(): Instrumentation[] {
  return [
    new McpInstrumentation(),
    new LangChainInstrumentation(),
    new AiSdkInstrumentation(),
    new OpenAIAgentsInstrumentation(),
    new ChildProcessInstrumentation(),
    new HttpClientInstrumentation(),
  ];
}
