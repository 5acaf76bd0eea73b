import type { Command } from 'commander';
import { createLogger } from '../../common/log';
import { ENV } from '../../common/names';
import { playDemo } from '../demo/play';
import { closeOnSignals, startHost } from '../host';
import { bootstrapCredentials, commonOptions, serverEnv, withServerOptions, type ServerFlags } from '../options';
import { ROLES } from '../roles';

async function serve(roleNames: string[], flags: ServerFlags & { demo?: boolean }): Promise<void> {
  const given = serverEnv();
  const log = createLogger('custody', given[ENV.LOG_LEVEL]);
  const options = commonOptions(flags, given);
  const isUp = roleNames.length === Object.keys(ROLES).length;
  const demo = isUp && flags.demo !== false && given[ENV.DEMO] !== 'off';
  const generated = isUp ? bootstrapCredentials(options) : {};
  // while the scenario plays, the rollback job looks every few seconds so its reaction shows
  if (demo) process.env[ENV.ROLLBACK_INTERVAL] ??= '5s';
  // read again, once: the credentials and the demo's interval may have been filled in just now
  const env = serverEnv();
  const starters = roleNames.map((name) => {
    const starter = ROLES[name];
    if (!starter) throw new Error(`role '${name}' is not available`);
    return starter;
  });
  const host = await startHost(options, starters, log, env);
  closeOnSignals(host);
  const lines = [`custody ${roleNames.join(' + ')} listening`, `  control API   ${host.control.url}`];
  for (const role of host.roles) for (const line of role.banner ?? []) lines.push(`  ${line}`);
  if (generated.admin) lines.push(`  admin token   ${generated.admin} (generated; set ${ENV.ADMIN_TOKEN} to choose your own)`);
  if (generated.rollout) lines.push(`  rollout token ${generated.rollout} (generated, moves the rollout only; set ${ENV.ROLLOUT_TOKEN} to choose your own)`);
  process.stdout.write(lines.join('\n') + '\n');
  if (demo) await playDemo(host, options, log);
}

export function registerServerCommands(program: Command): void {
  withServerOptions(
    program
      .command('up')
      .description('everything in one process: collector, token service, policy plane, rollback job; plays the seed scenario')
      .option('--no-demo', `serve only, without playing the seed scenario (or ${ENV.DEMO}=off)`),
  ).action((flags: ServerFlags & { demo?: boolean }) => serve(Object.keys(ROLES), flags));

  withServerOptions(program.command('collector').description('the collector alone: OTLP receiver, storage, rules, audit queries')).action(
    (flags: ServerFlags) => serve(['collector'], flags),
  );
}
