import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export interface McpInstrumentationConfig extends InstrumentationConfig {
  /**
   * Gate and audit `Client.callTool` as a tool call of the calling agent (default true). The
   * trace context, baggage and delegation token are put into `params._meta` either way.
   */
  enforceClientCalls?: boolean;
  /**
   * Leave out of `Client.listTools` results the tools the agent's role may never call, by the
   * policy plane's cached answer (default true). Never a substitute for the check on each call.
   */
  filterToolLists?: boolean;
}
