import childProcess from 'node:child_process';
import { syncBuiltinESMExports } from 'node:module';
import { promisify } from 'node:util';
import { diag } from '@opentelemetry/api';
import { InstrumentationBase, isWrapped } from '@opentelemetry/instrumentation';
import { childEnv } from '../subagent';
import { VERSION } from '../version';
import { PATCHED_FUNCTIONS, type ChildProcessFunction, type ChildProcessModule } from './internal-types';
import type { ChildProcessInstrumentationConfig } from './types';
import { withChildEnv } from './utils';

/**
 * Child processes are sub-agents: every spawn/fork/exec/execFile (and their Sync forms) gets the
 * environment of subagent.ts `childEnv` — parent instance, sponsor, delegation token,
 * TRACEPARENT/BAGGAGE, custody's endpoints and custody/register preloaded for node children —
 * without the caller's code changing. Whatever goes wrong here, the process is still started as
 * asked (telemetry fails open; the child's own calls are enforced by the child).
 */
export class ChildProcessInstrumentation extends InstrumentationBase<ChildProcessInstrumentationConfig> {
  constructor(config: ChildProcessInstrumentationConfig = {}) {
    super('custody-instrumentation-child-process', VERSION, config);
  }

  /**
   * No module hook: the builtin this module imported when it loaded is patched in enable(). A
   * builtin goes through the shared require hook once; had another SDK's preload required it
   * before custody's instrumentation registered, a hook would never offer it to custody (and the
   * reverse), so builtins are patched where they are.
   */
  protected init() {
    return [];
  }

  override enable(): void {
    super.enable();
    this.patch(childProcess as unknown as ChildProcessModule);
  }

  override disable(): void {
    super.disable();
    this.unpatch(childProcess as unknown as ChildProcessModule);
  }

  private patch(m: ChildProcessModule): ChildProcessModule {
    for (const name of PATCHED_FUNCTIONS) {
      if (typeof m[name] !== 'function') continue;
      if (isWrapped(m[name])) this._unwrap(m, name);
      const custom = m[name][promisify.custom] as ChildProcessFunction | undefined;
      this._wrap(m, name, (original) => {
        const wrapped = function (this: unknown, ...args: unknown[]) {
          return (original as ChildProcessFunction).apply(this, withEnv(args));
        } as ChildProcessFunction;
        // exec/execFile promisify to {stdout, stderr} through their own custom form: keep it, patched
        if (custom) wrapped[promisify.custom] = (...args: unknown[]) => custom(...withEnv(args));
        return wrapped;
      });
    }
    // `import { spawn } from 'node:child_process'` reads the ESM view of the builtin
    syncBuiltinESMExports();
    return m;
  }

  private unpatch(m: ChildProcessModule): void {
    for (const name of PATCHED_FUNCTIONS) if (isWrapped(m[name])) this._unwrap(m, name);
    syncBuiltinESMExports();
  }
}

function withEnv(args: unknown[]): unknown[] {
  try {
    return withChildEnv(args, (env) => childEnv(env) as Record<string, string | undefined>);
  } catch (err) {
    diag.warn(`custody: could not hand the agent chain to a child process: ${(err as Error).message}`);
    return args;
  }
}
