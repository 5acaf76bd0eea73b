import fs from 'node:fs';
import * as nodeModule from 'node:module';
import path from 'node:path';
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
  const instrumentations: Instrumentation[] = [];
  let unregister: (() => void) | undefined;
  const enable = () => {
    if (unregister) return;
    instrumentations.push(...custodyInstrumentations());
    unregister = registerInstrumentations({ instrumentations });
  };
  if (otherPreloads(env) && cjsMainFile()) enableAtMain(enable);
  else enable();
  return {
    telemetry,
    instrumentations,
    async shutdown() {
      unregister?.();
      await telemetry.shutdown();
    },
  };
}

/**
 * Other modules preloaded beside custody/register (`--require`/`--import`, NODE_OPTIONS or the
 * command line): e.g. @opentelemetry/auto-instrumentations-node/register.
 */
function otherPreloads(env: Readonly<Record<string, string | undefined>>): boolean {
  const values: string[] = [];
  const scan = (args: readonly string[]) => {
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if (a === '-r' || a === '--require' || a === '--import') values.push(args[++i] ?? '');
      else {
        const m = /^(?:-r|--require|--import)=(.*)$/.exec(a);
        if (m) values.push(m[1]!);
      }
    }
  };
  scan((env.NODE_OPTIONS ?? '').split(/\s+/).filter(Boolean));
  scan(process.execArgv);
  return values.some((v) => !/custody([\\/]dist[\\/]instrumentation)?[\\/]register(\.js)?$/.test(v.replace(/^["']|["']$/g, '')));
}

/** The main entry is a CommonJS file (Module._load will load it), not ESM, `-e` or the REPL. */
function cjsMainFile(): boolean {
  const main = process.argv[1];
  if (!main || process.execArgv.some((a) => a === '-e' || a === '--eval' || a === '-p' || a === '--print')) return false;
  if (/\.(mjs|mts)$/.test(main)) return false;
  if (/\.(cjs|cts)$/.test(main)) return true;
  try {
    // a .js (or extensionless) file is ESM under "type": "module"
    for (let dir = path.dirname(path.resolve(main)); ; dir = path.dirname(dir)) {
      const file = path.join(dir, 'package.json');
      if (fs.existsSync(file)) return (JSON.parse(fs.readFileSync(file, 'utf8')) as { type?: string }).type !== 'module';
      if (path.dirname(dir) === dir) return true;
    }
  } catch {
    return false;
  }
}

/**
 * Runs `fn` when the main module starts to load, after every preload. custody's patches are made
 * there when other preloads come beside custody/register: the OpenTelemetry require hook is shared,
 * and a builtin required through it before an instrumentation registers is never offered to that
 * instrumentation again — made at preload, custody's hook would take `http` away from an SDK
 * preloaded after it (auto-instrumentations-node's HTTP spans).
 */
function enableAtMain(fn: () => void): void {
  // the module system's own object (a namespace import would be a copy)
  const Module = require('node:module') as { _load: (request: string, parent: unknown, isMain?: boolean) => unknown };
  const original = Module._load;
  let done = false;
  const load = function (this: unknown, request: string, parent: unknown, isMain?: boolean) {
    if (isMain && !done) {
      done = true;
      // take the wrapper out unless something wrapped it since (then it stays, a pass-through)
      if (Module._load === load) Module._load = original;
      try {
        fn();
      } catch (err) {
        diag.error(`custody: could not enable its instrumentations: ${(err as Error).message}`);
      }
    }
    return original.apply(this, [request, parent, isMain]);
  };
  Module._load = load;
}
