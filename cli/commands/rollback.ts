import { Command, InvalidArgumentError, Option } from 'commander';
import { CustodyError } from '../../common/errors';
import { COHORT } from '../../common/names';
import { safeJson, safeLines, safeText as t } from '../../common/terminal';
import { COHORTS, parseThreshold, parseWindow, type AlertResult, type RollbackAction, type RuleResult } from '../../collector/rules/evaluate';
import { getJson } from '../control-client';
import { withClientOptions } from '../options';

/**
 * `custody rollback check`: the rollback rules once, from GET /v1/rollback/status.
 * Exit codes: 0 healthy (advance, or hold while an alert fires), 1 a rule is breached (roll back),
 * 3 not enough data, 2 usage or connection error.
 */

export const CHECK_EXIT: Record<RollbackAction, number> = { advance: 0, hold: 0, rollback: 1, insufficient_data: 3 };

interface StatusBody {
  action: RollbackAction;
  window_s: number;
  sample_size: number;
  rules: RuleResult[];
  rollout: { percent: number | null; scope?: Record<string, string[]> | null };
  cohort?: string;
  alerts?: AlertResult[];
  more_calls?: number | null;
  by_cohort?: Record<string, { calls: number; missing_sponsor: number }>;
  inputs?: { agent_failures: number; agent_failures_counted: number; excluded_instance: string | null };
}

interface CheckFlags {
  url: string;
  window: string;
  cohort: string;
  threshold?: Record<string, number>;
  json?: boolean;
}

function show(value: number | null, rule: string): string {
  if (value === null) return 'no data';
  if (rule.endsWith('_ms')) return `${t(value)} ms`;
  return `${+(value * 100).toPrecision(4)}%`;
}

function humanWindow(s: number): string {
  return s % 3600 === 0 ? `${s / 3600}h` : s % 60 === 0 ? `${s / 60}m` : `${s}s`;
}

/** A tier-scoped canary's scope, e.g. ` of customer.tier=free|trial`. */
function scopeText(scope: Record<string, string[]> | null | undefined): string {
  if (!scope) return '';
  return ` of ${Object.entries(scope).map(([k, v]) => `${t(k)}=${v.map((x) => t(x)).join('|')}`).join(', ')}`;
}

export function formatStatus(body: StatusBody): string {
  const percent = body.rollout?.percent;
  const head = [
    `${body.action.toUpperCase().replace('_', ' ')}`,
    `cohort ${t(body.cohort ?? '?')}, last ${t(humanWindow(body.window_s))}, ${t(body.sample_size)} calls`,
    percent === null || percent === undefined ? 'rollout unknown' : `rollout ${t(percent)}%${scopeText(body.rollout.scope)}`,
  ];
  const width = Math.max(...body.rules.map((r) => r.rule.length), ...(body.alerts ?? []).map((a) => a.alert.length + 6));
  const lines = [`${head[0]}  (${head.slice(1).join(', ')})`];
  for (const r of body.rules) {
    const verdict = r.verdict === undefined ? (r.breached ? 'BREACHED' : 'ok') : r.verdict === 'breached' ? 'BREACHED' : r.verdict === 'healthy' ? 'ok' : 'undecided';
    const bounds = r.lower !== undefined ? `  95% [${r.lower === null ? '?' : show(r.lower, r.rule)}, ${r.upper === null || r.upper === undefined ? '?' : show(r.upper, r.rule)}] of ${r.sample}` : '';
    const more = r.verdict === 'undecided' ? (r.more_calls === null ? ', cannot settle at this rate' : `, ~${r.more_calls} more calls to settle`) : '';
    const scope = r.scope === 'fleet' ? ' (fleet)' : '';
    lines.push(`  ${t(r.rule).padEnd(width)}  ${show(r.value, r.rule).padStart(10)}  > ${show(r.threshold, r.rule).padEnd(8)}  ${verdict}${bounds}${more}${scope}`);
  }
  for (const a of body.alerts ?? []) {
    lines.push(`  ${`alert ${t(a.alert)}`.padEnd(width)}  ${show(a.value, a.alert).padStart(10)}  > ${show(a.threshold, a.alert).padEnd(8)}  ${a.firing ? 'FIRING' : 'ok'}`);
  }
  if (body.by_cohort) {
    lines.push(`  calls by cohort: ${Object.entries(body.by_cohort).map(([c, v]) => `${c} ${v.calls} (${v.missing_sponsor} without sponsor)`).join(', ')}`);
  }
  if (body.inputs?.excluded_instance) {
    lines.push(`  left out: ${body.inputs.agent_failures - body.inputs.agent_failures_counted} failure reports of instance ${body.inputs.excluded_instance} (no single instance decides alone)`);
  }
  if (body.action === 'insufficient_data') {
    lines.push(body.more_calls === null || body.more_calls === undefined ? '  no number of calls at the rates seen would settle it' : `  about ${body.more_calls} more calls at the rates seen would settle it`);
  }
  return lines.join('\n') + '\n';
}

async function check(flags: CheckFlags): Promise<void> {
  const q = new URLSearchParams({ window: flags.window, cohort: flags.cohort });
  for (const [rule, value] of Object.entries(flags.threshold ?? {})) q.set(rule, String(value));
  const { body } = await getJson<StatusBody>(flags.url, `/v1/rollback/status?${q}`);
  const code = CHECK_EXIT[body.action];
  if (code === undefined) throw new CustodyError('ERR_RESPONSE', `/v1/rollback/status answered an unknown action '${String(body.action)}'`);
  process.stdout.write(flags.json ? `${safeJson(body, 2)}\n` : safeLines(formatStatus(body)));
  process.exitCode = code;
}

function argument<T>(parse: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

/**
 * The `rollback` command group on its own (for embedding); errors throw CommanderError like the
 * main program's.
 */
export function rollbackCommand(): Command {
  const group = new Command('rollback').description('rollback rules and the auto-rollback job').exitOverride().showHelpAfterError();
  addCheck(group);
  return group;
}

/** Adds `rollback check` to the program, joining a `rollback` group another module created first. */
export function registerRollbackCommands(program: Command): Command {
  const group = program.commands.find((c) => c.name() === 'rollback') ?? program.command('rollback').description('rollback rules and the auto-rollback job');
  addCheck(group);
  return group;
}

function addCheck(group: Command): void {
  withClientOptions(group.command('check').description('evaluate the rollback rules once; exit 0 healthy, 1 roll back, 3 not enough data, 2 error'))
    .addOption(
      new Option('--window <duration>', 'rolling window, in whole minutes (15m, 1h, 900s)').default('15m').argParser((v) => {
        argument(parseWindow)(v);
        return v;
      }),
    )
    .addOption(new Option('--cohort <cohort>', 'rollout cohort (unmanaged: agents custody does not manage)').choices([...COHORTS]).default(COHORT.CANARY))
    .addOption(
      new Option('--threshold <rule=value>', 'override a rule threshold, e.g. policy_error_rate=0.02 (repeatable)').argParser(
        (v: string, previous: Record<string, number> | undefined) => {
          const m = /^([a-z_0-9]+)=(.*)$/.exec(v);
          if (!m) throw new InvalidArgumentError(`'${v}' must be rule=value, e.g. policy_error_rate=0.02`);
          return { ...previous, [m[1]!]: argument((t) => parseThreshold(m[1]!, t))(m[2]!) };
        },
      ),
    )
    .option('--json', 'print the status as JSON')
    .action((flags: CheckFlags) => check(flags));
}
