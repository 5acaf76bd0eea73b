import { trace, type Context, type Tracer } from '@opentelemetry/api';
import { createEnforcer } from '../enforcer/client/enforcer';
import { readSettings, type AgentSettings } from './identity';
import { loadToolMap, type ToolMap } from './mapping';
import { SCOPE_NAME } from './semconv';
import type { EnforcerLike } from './types';
import { VERSION } from './version';

/**
 * What every tool call in the process shares: the tracer its spans go to, the enforcer it asks,
 * the tool map and the capture switch. register.ts configures it at start; a process that only
 * imports the manual API gets the defaults from the environment on first use.
 */
export interface Runtime {
  tracer: Tracer;
  /** null: enforcement off (spans only); undefined: the default enforcer, created on first call. */
  enforcer: EnforcerLike | null | undefined;
  toolMap: ToolMap | undefined;
  captureContent: boolean;
  /** The context handed down by a parent process (TRACEPARENT/BAGGAGE): parent of calls made outside any span. */
  rootContext: Context | undefined;
  settings: AgentSettings;
  /** Tool names resolved through the plane's tool_map, reused briefly (tool-call.ts). */
  resolved: Map<string, { ref: { tool: string; action: string }; until: number }>;
}

const KEY = Symbol.for('custody.instrumentation.runtime');
type Holder = { runtime?: Runtime };
const holder: Holder = ((globalThis as Record<symbol, unknown>)[KEY] as Holder | undefined) ??
  ((globalThis as Record<symbol, unknown>)[KEY] = {});

/** The manual API used without custody/register: the environment is read here, once. */
function fromEnvironment(): Runtime {
  const settings = readSettings(process.env);
  let toolMap: ToolMap | undefined;
  if (settings.toolMap) toolMap = loadToolMap(settings.toolMap);
  return {
    tracer: trace.getTracer(SCOPE_NAME, VERSION),
    enforcer: undefined,
    toolMap,
    captureContent: settings.captureContent,
    rootContext: undefined,
    settings,
    resolved: new Map(),
  };
}

export function getRuntime(): Runtime {
  return (holder.runtime ??= fromEnvironment());
}

/** Changes parts of the shared runtime (register.ts, tests, benchmarks). */
export function configureRuntime(changes: Partial<Runtime>): Runtime {
  const runtime = getRuntime();
  Object.assign(runtime, changes);
  return runtime;
}

/**
 * The enforcer to ask, or null when enforcement is off. By default the real one
 * (enforcer/client/enforcer.ts, options from the CUSTODY_* environment), made on the first call.
 * The lifecycle records the decision on the tool-call span itself (with the shadow decision of
 * baseline calls), so the enforcer need not touch the active span.
 */
export function enforcerOf(runtime: Runtime): EnforcerLike | null {
  if (runtime.enforcer === undefined) runtime.enforcer = createEnforcer({ recordOnActiveSpan: false });
  return runtime.enforcer;
}
