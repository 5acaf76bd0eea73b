import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export type LangChainInstrumentationConfig = InstrumentationConfig;
