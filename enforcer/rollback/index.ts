export * from './decide';
export * from './plane';
export * from './config';
export { createRollbackWatcher, defaultActor, sinceChangeWindowS, WATCH_DEFAULTS, type RollbackWatcher, type TickResult, type WatcherOptions } from './watch';
export { rollbackRole, startRollbackRole, type RollbackRoleOptions } from './role';
