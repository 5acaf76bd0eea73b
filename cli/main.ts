#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { CustodyError } from '../common/errors';
import { safeLines } from '../common/terminal';
import { registerPolicyCommands } from './commands/policy';
import { registerServerCommands } from './commands/servers';
import { registerRollbackCommands } from './commands/rollback';
import { registerRollbackWatchCommands } from './commands/rollback-watch';
import { registerAuditCommands } from './commands/audit';
import { registerTokenCommands } from './commands/token';
import { registerCertCommands } from './commands/cert';
import { registerReadinessCommand } from './commands/readiness';
import { registerExportCommand } from './commands/export';
import { registerApprovalsCommands } from './commands/approvals';

// Each command module registers its own subcommands on the program.
const program = new Command('custody')
  .description('OpenTelemetry-native audit and enforcement for AI agents\' tool calls')
  .showHelpAfterError()
  .exitOverride();

registerServerCommands(program);
registerRollbackCommands(program);
registerRollbackWatchCommands(program);
registerAuditCommands(program);
registerPolicyCommands(program);
registerTokenCommands(program);
registerCertCommands(program);
registerReadinessCommand(program);
registerExportCommand(program);
registerApprovalsCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
  if (err instanceof CustodyError) {
    // messages may quote what a server or an agent sent
    process.stderr.write(safeLines(`custody: ${err.message}\n`));
    process.exit(2);
  }
  process.stderr.write(safeLines(`custody: ${(err as Error)?.stack ?? String(err)}\n`));
  process.exit(2);
});
