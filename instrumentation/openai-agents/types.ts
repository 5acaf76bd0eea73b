import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export type OpenAIAgentsInstrumentationConfig = InstrumentationConfig;
