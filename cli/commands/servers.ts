import type { Command } from 'commander';
import { createLogger } from '../../common/log';
import { closeOnSignals, startHost } from '../host';
import { commonOptions, withServerOptions, type ServerFlags } from '../options';
import { ROLES } from '../roles';

async function serve(roleNames: string[], flags: ServerFlags): Promise<void> {
  const log = createLogger('custody');
  const options = commonOptions(flags);
  const starters = roleNames.map((name) => {
    const starter = ROLES[name];
    if (!starter) throw new Error(`role '${name}' is not available`);
    return starter;
  });
  const host = await startHost(options, starters, log);
  closeOnSignals(host);
  const lines = [`custody ${roleNames.join(' + ')} listening`, `  control API   ${host.control.url}`];
  for (const role of host.roles) for (const line of role.banner ?? []) lines.push(`  ${line}`);
  process.stdout.write(lines.join('\n') + '\n');
}

export function registerServerCommands(program: Command): void {
  withServerOptions(
    program.command('up').description('everything in one process: collector, token service, policy plane, rollback job'),
  ).action((flags: ServerFlags) => serve(Object.keys(ROLES), flags));

  withServerOptions(program.command('collector').description('the collector alone: OTLP receiver, storage, rules, audit queries')).action(
    (flags: ServerFlags) => serve(['collector'], flags),
  );
}
