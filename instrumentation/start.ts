import * as nodeModule from 'node:module';
import { pathToFileURL } from 'node:url';
import { diag } from '@opentelemetry/api';
import { registerInstrumentations, type Instrumentation } from '@opentelemetry/instrumentation';
import { exportCredential } from './export-credential';
import { readSettings } from './identity';
import { custodyInstrumentations } from './instrumentations';
import { loadToolMap } from './mapping';
import { configureRuntime } from './runtime';
import { rootScope } from './scope';
import { startTelemetry, type Telemetry } from './sdk';
import { contextFromEnv } from './subagent';

/**
 * Starts custody in the agent's main thread (see register.ts for why this is a separate module).
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

/** `module.registerHooks` (Node 22.15+, 23.5+), which @types/node 20 does not declare. */
interface ResolveResult {
  url: string;
  format?: string | null | undefined;
}
interface SyncHooksModule {
  registerHooks(hooks: {
    resolve(specifier: string, context: object, nextResolve: (specifier: string, context: object) => ResolveResult): ResolveResult;
  }): void;
}

/**
 * import-in-the-middle's loader hook, so ESM imports of the frameworks are patched too. In-thread
 * (`module.registerHooks`) where the running Node supports it — no loader worker, and no
 * `module.register()` deprecation on Node 26 — else the off-thread `module.register()` hook.
 */
function registerEsmHook(): void {
  try {
    const { supportsSyncHooks } = require('import-in-the-middle/supports-sync-hooks.mjs') as { supportsSyncHooks(): boolean };
    if (supportsSyncHooks()) {
      (require('import-in-the-middle/register-hooks.mjs') as { register(): void }).register();
      // import-in-the-middle gives the entry point's builtins (e.g. `require('module')` in `node -e`)
      // the format 'commonjs', and Node then reads them as files: put 'builtin' back.
      (nodeModule as unknown as SyncHooksModule).registerHooks({
        resolve(specifier, context, nextResolve) {
          const result = nextResolve(specifier, context);
          return result.url.startsWith('node:') && result.format === 'commonjs' ? { ...result, format: 'builtin' } : result;
        },
      });
      return;
    }
    nodeModule.register('@opentelemetry/instrumentation/hook.mjs', pathToFileURL(__filename));
  } catch (err) {
    diag.warn(`custody: could not register the ESM loader hook, so ESM imports are not instrumented (CommonJS still is): ${(err as Error).message}`);
  }
}

export function start(): Registration {
  registerEsmHook();
  // the agent's environment, read here at its edge and handed down
  const env = process.env;
  const settings = readSettings(env);
  const root = rootScope();
  configureRuntime({
    settings,
    captureContent: settings.captureContent,
    toolMap: settings.toolMap ? loadToolMap(settings.toolMap) : undefined,
    rootContext: contextFromEnv(env),
  });
  const telemetry = startTelemetry({ env, serviceName: root.identity.agentName, credential: exportCredential(root.identity) });
  configureRuntime({ tracer: telemetry.tracer });
  const instrumentations = custodyInstrumentations();
  const unregister = registerInstrumentations({ instrumentations });
  // builtins the app (or custody itself) may already hold: require them now so their patches apply at once.
  require('node:child_process');
  require('node:http');
  require('node:https');
  return {
    telemetry,
    instrumentations,
    async shutdown() {
      unregister();
      await telemetry.shutdown();
    },
  };
}
