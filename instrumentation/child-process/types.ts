import type { InstrumentationConfig } from '@opentelemetry/instrumentation';

export type ChildProcessInstrumentationConfig = InstrumentationConfig;
