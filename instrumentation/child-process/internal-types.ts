/** node:child_process, as far as this instrumentation touches it. */
export type ChildProcessFunction = ((...args: unknown[]) => unknown) & { [key: symbol]: unknown };

export const PATCHED_FUNCTIONS = ['spawn', 'spawnSync', 'fork', 'exec', 'execSync', 'execFile', 'execFileSync'] as const;
export type PatchedFunction = (typeof PATCHED_FUNCTIONS)[number];

export type ChildProcessModule = Record<PatchedFunction, ChildProcessFunction>;
