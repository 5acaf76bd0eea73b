import * as nodeModule from 'node:module';
import { pathToFileURL } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { diag } from '@opentelemetry/api';
import { registerInstrumentations, type Instrumentation } from '@opentelemetry/instrumentation';
import { readSettings } from './identity';
import { custodyInstrumentations } from './instrumentations';
import { loadToolMap } from './mapping';
import { configureRuntime } from './runtime';
import { rootScope } from './scope';
import { startTelemetry, type Telemetry } from './sdk';
import { contextFromEnv } from './subagent';

/**
 * `node --require custody/register app.js` / `node --import custody/register app.mjs`: every tool
 * call the agent makes from then on is enforced and becomes a sponsor-attributed span.
 *
 * Order matters: the ESM loader hook first (so the app's own imports are seen), then the agent's
 * identity and settings, the telemetry pipeline, the enforcer, and last the patches.
 */
export interface Registration {
  /** undefined in a worker thread, where custody/register does nothing. */
  readonly telemetry: Telemetry | undefined;
  readonly instrumentations: readonly Instrumentation[];
  /** Flushes and stops telemetry and removes the patches. */
  shutdown(): Promise<void>;
}

const KEY = Symbol.for('custody.register');

function registerEsmHook(): void {
  // Node >= 20.6: import-in-the-middle's loader hook, so ESM imports of the frameworks are patched too.
  const register = (nodeModule as { register?: (specifier: string, parentURL: string | URL) => void }).register;
  if (typeof register !== 'function') {
    diag.warn('custody: this Node.js has no module.register(); ESM imports are not instrumented (CommonJS still is)');
    return;
  }
  try {
    register('@opentelemetry/instrumentation/hook.mjs', pathToFileURL(__filename));
  } catch (err) {
    diag.warn(`custody: could not register the ESM loader hook: ${(err as Error).message}`);
  }
}

function start(): Registration {
  registerEsmHook();
  const settings = readSettings();
  const root = rootScope();
  configureRuntime({
    settings,
    captureContent: settings.captureContent,
    toolMap: settings.toolMap ? loadToolMap(settings.toolMap) : undefined,
    rootContext: contextFromEnv(),
  });
  const telemetry = startTelemetry({ serviceName: root.identity.agentName });
  configureRuntime({ tracer: telemetry.tracer });
  const instrumentations = custodyInstrumentations();
  const unregister = registerInstrumentations({ instrumentations });
  // child_process is a builtin the app may already hold: require it now so its patch applies at once.
  require('node:child_process');
  return {
    telemetry,
    instrumentations,
    async shutdown() {
      unregister();
      await telemetry.shutdown();
    },
  };
}

/** In a worker thread — above all the ESM loader's own, which inherits --require/--import — nothing. */
function inactive(): Registration {
  return { telemetry: undefined, instrumentations: [], shutdown: async () => {} };
}

const globals = globalThis as Record<symbol, Registration | undefined>;
/** Loading the module twice (CJS and ESM, two flags) registers once. */
export const registration: Registration = (globals[KEY] ??= isMainThread ? start() : inactive());
