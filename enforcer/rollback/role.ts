import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { RoleStarter } from '../../common/role';
import { SERVER_ENV, readEnv, type EnvSource } from '../../common/env';
import { ENV } from '../../common/names';
import type { RoleContext, RunningRole } from '../../common/role';
import { watchSettingsFromEnv } from './config';
import type { Clock } from './decide';
import { httpPlane } from './plane';
import { createRollbackWatcher, defaultActor } from './watch';

/**
 * The rollback role `custody up` hosts last: the auto-rollback watch against the roles in the same
 * process. It reaches them through the host's own control app, served on a private loopback
 * listener of its own, so that each rollback goes through PUT /v1/rollout exactly as a person's
 * would: the rollout credential, the compare-and-set on the revision, the rollout-change audit span and
 * the plane's metrics. (The public control port may be 0 and is bound only after the roles
 * start, so the role cannot simply call it.) Settings come from CUSTODY_ROLLBACK_* variables.
 */
export interface RollbackRoleOptions {
  /** Variables to read instead of the host's (tests). */
  env?: EnvSource;
  clock?: Clock;
}

export function rollbackRole(roleOptions: RollbackRoleOptions = {}): RoleStarter {
  return async function startRollbackRole(ctx: RoleContext): Promise<RunningRole> {
    const env = roleOptions.env ? readEnv(roleOptions.env, SERVER_ENV) : ctx.env;
    const settings = watchSettingsFromEnv(env);
    if (!settings.enabled) {
      return { name: 'rollback', banner: [`rollback watch off (${ENV.ROLLBACK_WATCH}=off)`], close: async () => undefined };
    }
    const server = http.createServer(ctx.control as unknown as http.RequestListener);
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // the rollout credential: the job can move the rollout and nothing else
    const adminToken = env[ENV.ROLLOUT_TOKEN] ?? env[ENV.ADMIN_TOKEN];
    const watcher = createRollbackWatcher({
      plane: httpPlane({ url, ...(adminToken ? { adminToken } : {}) }),
      intervalS: settings.intervalS,
      windowS: settings.windowS,
      healthyPeriodS: settings.healthyPeriodS,
      minSample: settings.minSample,
      manualGates: settings.manualGates,
      dryRun: settings.dryRun,
      actor: defaultActor(),
      log: ctx.log.child({ role: 'rollback' }),
      ...(roleOptions.clock ? { clock: roleOptions.clock } : {}),
    });
    // First tick once the host has finished starting (the routes' 404 and error boundary come last).
    const startTimer = setTimeout(() => watcher.start(), 0);

    const mode = settings.dryRun ? ' (dry run)' : '';
    const advance = settings.manualGates
      ? `a stage earned after ${settings.healthyPeriodS}s healthy waits for \`custody rollback approve\` (${ENV.ROLLBACK_AUTO_ADVANCE}=on advances alone)`
      : `advance after ${settings.healthyPeriodS}s healthy with ${settings.minSample} calls`;
    const banner = [`rollback watch every ${settings.intervalS}s: roll back on a breach (window ${settings.windowS}s); ${advance}${mode}`];
    if (!adminToken && !settings.dryRun) banner.push(`  rollback watch cannot change the rollout until ${ENV.ROLLOUT_TOKEN} is set`);
    return {
      name: 'rollback',
      banner,
      close: async () => {
        clearTimeout(startTimer);
        await watcher.stop();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections?.();
        });
      },
    };
  };
}

export const startRollbackRole: RoleStarter = (ctx) => rollbackRole()(ctx);
