import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export type AiSdkInstrumentationConfig = InstrumentationConfig;
