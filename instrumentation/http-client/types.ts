import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export interface HttpClientInstrumentationConfig extends InstrumentationConfig {
  /**
   * Origins that get baggage and the call's token (`x-custody-token`), normalized as URL.origin.
   * Default: CUSTODY_TOOL_ORIGINS, as the agent's settings read it at start.
   */
  toolOrigins?: readonly string[];
}
