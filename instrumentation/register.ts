import { isMainThread } from 'node:worker_threads';
import type { Registration } from './start';

/**
 * `node --require custody/register app.js` / `node --import custody/register app.mjs`: every tool
 * call the agent makes from then on is enforced and becomes a sponsor-attributed span.
 *
 * This file requires nothing but `node:` builtins at load. Node hands `--require`/`--import` to the
 * off-thread ESM loader's worker too (where `module.register()` is in use), and on Node 22.15+ and
 * 24.0–24.11 a `require()` of an ES module in that worker kills the loader thread — and with it the
 * agent, before its first line. So the worker gets nothing, and the main thread loads the rest.
 *
 * When custody cannot start, the agent does not run unenforced: one line on stderr says why, and the
 * process exits 1.
 */
export type { Registration } from './start';

const KEY = Symbol.for('custody.register');
const globals = globalThis as Record<symbol, Registration | undefined>;

function inactive(): Registration {
  return { telemetry: undefined, instrumentations: [], shutdown: async () => {} };
}

function startOrExit(): Registration {
  try {
    return (require('./start') as typeof import('./start')).start();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`custody: could not start, so the agent does not run unenforced: ${message.replace(/\s+/g, ' ')}\n`);
    process.exit(1);
  }
}

/** Loading the module twice (CJS and ESM, two flags) registers once. */
export const registration: Registration = (globals[KEY] ??= isMainThread ? startOrExit() : inactive());
