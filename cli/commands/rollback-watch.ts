import os from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseDuration } from '../../common/duration';
import { safeText as t } from '../../common/terminal';
import { CustodyError } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';
import { createLogger } from '../../common/log';
import { ENV } from '../../common/names';
import { parseMinSample } from '../../enforcer/rollback/config';
import { nextAction, nextPercent, stageAgeS, statusCohort, systemClock } from '../../enforcer/rollback/decide';
import { httpPlane, RolloutConflictError } from '../../enforcer/rollback/plane';
import { createRollbackWatcher, defaultActor, sinceChangeWindowS, WATCH_DEFAULTS, type TickResult } from '../../enforcer/rollback/watch';
import { cliEnv, withClientOptions } from '../options';

/**
 * `custody rollback watch` (the auto-rollback job alone, against a control API) and
 * `custody rollback approve` (a person's gate between two stages), added to the `rollback` group.
 */

function durationOption(flag: string, description: string, fallback: string): Option {
  return new Option(flag, description).default(parseDuration(fallback), fallback).argParser((v) => {
    try {
      return parseDuration(v, flag.split(' ')[0]);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  });
}

function policyUrlOption(): Option {
  return new Option('--policy-url <url>', `the policy plane's control API for /v1/rollout, when not at --url (default $${ENV.POLICY_URL})`).default(
    cliEnv(ENV.POLICY_URL)[ENV.POLICY_URL] || undefined,
  );
}

function planeFor(flags: { url: string; policyUrl?: string; adminToken?: string; timeout: number }) {
  return httpPlane({
    url: flags.url,
    ...(flags.policyUrl ? { policyUrl: flags.policyUrl } : {}),
    ...(flags.adminToken ? { adminToken: flags.adminToken } : {}),
    timeoutMs: flags.timeout * 1000,
  });
}

function adminTokenOption(): Option {
  const env = cliEnv(ENV.ROLLOUT_TOKEN, ENV.ADMIN_TOKEN);
  return new Option('--admin-token <token>', `bearer token for PUT /v1/rollout (default $${ENV.ROLLOUT_TOKEN}, else $${ENV.ADMIN_TOKEN})`).default(
    env[ENV.ROLLOUT_TOKEN] ?? env[ENV.ADMIN_TOKEN],
    `$${ENV.ROLLOUT_TOKEN} or $${ENV.ADMIN_TOKEN}`,
  );
}

/** The `rollback` group if another module registered it, else a new one. */
export function rollbackGroup(program: Command): Command {
  return (
    program.commands.find((c) => c.name() === 'rollback') ??
    program.command('rollback').description('rollback rules and the auto-rollback job')
  );
}

interface WatchFlags {
  url: string;
  policyUrl?: string;
  adminToken?: string;
  interval: number;
  window: number;
  healthyPeriod: number;
  minSample: number;
  manualGates?: boolean;
  autoAdvance?: boolean;
  dryRun?: boolean;
  once?: boolean;
  timeout: number;
}

function describe(result: TickResult): string {
  if (result.error) return `error: ${result.error.message}`;
  const a = result.action;
  if (!a) return 'no decision';
  switch (a.kind) {
    case 'rollback':
    case 'advance':
      if (result.applied) return `${a.kind === 'rollback' ? 'rolled back' : 'advanced'} ${a.from}% → ${a.to}%: ${a.reason}`;
      return `${result.skipped === 'dry run' ? 'would' : 'did not'} ${a.kind === 'rollback' ? 'roll back' : 'advance'} ${a.from}% → ${a.to}%${result.skipped && result.skipped !== 'dry run' ? ` (${result.skipped})` : ''}: ${a.reason}`;
    case 'await_approval':
      return `waiting for approval ${a.from}% → ${a.to}% (custody rollback approve): ${a.reason}`;
    case 'hold':
      return `hold at ${a.percent}%: ${a.reason}`;
  }
}

async function watch(flags: WatchFlags): Promise<void> {
  if (flags.manualGates && flags.autoAdvance) throw new CustodyError('ERR_USAGE', '--manual-gates and --auto-advance contradict each other: choose one');
  const log = createLogger('custody-rollback-watch');
  const watcher = createRollbackWatcher({
    plane: planeFor(flags),
    intervalS: flags.interval,
    windowS: flags.window,
    healthyPeriodS: flags.healthyPeriod,
    minSample: flags.minSample,
    manualGates: !flags.autoAdvance,
    dryRun: Boolean(flags.dryRun),
    actor: defaultActor(),
    log,
  });
  if (flags.once) {
    const result = await watcher.tick();
    process.stdout.write(t(describe(result)) + '\n');
    process.exitCode = result.error ? 2 : 0;
    return;
  }
  process.stdout.write(
    `custody rollback watch: ${flags.url} every ${flags.interval}s, window ${flags.window}s, healthy period ${flags.healthyPeriod}s, ` +
      `min sample ${flags.minSample}${flags.autoAdvance ? ', advancing alone' : ', advances wait for approval'}${flags.dryRun ? ', dry run' : ''}\n`,
  );
  // Print what changes (or would); routine holds go to the debug log only.
  let last = '';
  const loop = async (): Promise<void> => {
    while (!stopping) {
      const result = await watcher.tick();
      const line = describe(result);
      const notable = result.error || result.applied || result.action?.kind !== 'hold';
      if (notable && line !== last) process.stdout.write(`${new Date().toISOString()} ${t(line)}\n`);
      last = notable ? line : '';
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, flags.interval * 1000);
      });
    }
  };
  let stopping = false;
  let wake: () => void = () => undefined;
  const stop = () => {
    stopping = true;
    wake();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await loop();
  await watcher.stop();
}

interface ApproveFlags {
  url: string;
  policyUrl?: string;
  adminToken?: string;
  to?: number;
  reason?: string;
  as?: string;
  force?: boolean;
  window: number;
  healthyPeriod: number;
  minSample: number;
  timeout: number;
}

async function approve(flags: ApproveFlags): Promise<void> {
  const plane = planeFor(flags);
  const state = await plane.getRollout();
  const to = flags.to ?? nextPercent(state);
  if (to === undefined) {
    process.stdout.write(`nothing to approve: the rollout is at ${t(state.percent)}%, its last stage\n`);
    process.exitCode = 1;
    return;
  }
  if (to <= state.percent) {
    throw new CustodyError('ERR_USAGE', `--to ${to} is not above the current ${state.percent}%; use PUT /v1/rollout to go down`);
  }
  const cohort = statusCohort(state.percent);
  const recent = await plane.status({ windowS: flags.window, cohort });
  const age = stageAgeS(state, systemClock);
  const sinceChange = age !== undefined ? await plane.status({ windowS: sinceChangeWindowS(state, systemClock, { healthyPeriodS: flags.healthyPeriod, windowS: flags.window }), cohort }) : undefined;
  const view = nextAction(state, { recent, ...(sinceChange ? { sinceChange } : {}) }, systemClock, {
    healthyPeriodS: flags.healthyPeriod,
    minSample: flags.minSample,
    manualGates: true,
  });
  if (view.kind !== 'await_approval' && !flags.force) {
    process.stdout.write(`not approved: ${t(view.reason)}\n(--force approves anyway)\n`);
    process.exitCode = 1;
    return;
  }
  const actor = flags.as ?? `${os.userInfo().username}@${os.hostname()}`;
  const reason = `approved ${state.percent}% → ${to}% by ${actor}${flags.force && view.kind !== 'await_approval' ? ' (forced)' : ''}${flags.reason ? `: ${flags.reason}` : ''}`;
  try {
    const next = await plane.setRollout({ percent: to, reason, actor, expected: state });
    process.stdout.write(`rollout ${t(state.percent)}% → ${t(next.percent)}%: ${t(reason)}\n`);
  } catch (err) {
    if (err instanceof RolloutConflictError) {
      process.stdout.write(`not approved: the rollout changed meanwhile (${t(err.message)}); look again\n`);
      process.exitCode = 1;
      return;
    }
    throw err;
  }
}

function stageOption(): Option {
  return new Option('--to <percent>', 'the stage to approve (default: the next one)').argParser((v) => {
    const n = Number(v);
    if (!/^\d+(\.\d+)?$/.test(v) || n <= 0 || n > 100) throw new InvalidArgumentError(`'${v}' is not a percent from 1 to 100`);
    return n;
  });
}

function minSampleOption(): Option {
  return new Option('--min-sample <calls>', 'canary calls needed since the stage began before it may advance')
    .default(WATCH_DEFAULTS.minSample)
    .argParser((v) => {
      try {
        return parseMinSample(v);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
    });
}

/** PUT a JSON body to the policy plane's control API with the admin token; prints nothing, returns the rollout view. */
async function putJson(flags: { url: string; policyUrl?: string; adminToken?: string; timeout: number }, path: string, body: unknown): Promise<Record<string, unknown>> {
  if (!flags.adminToken) throw new CustodyError('ERR_USAGE', `changing the rollout needs the admin token: --admin-token or $${ENV.ADMIN_TOKEN}`);
  const base = (flags.policyUrl ?? flags.url).replace(/\/+$/, '');
  try {
    const { body: answer } = await fetchJson<Record<string, unknown>>(`${base}${path}`, {
      method: 'PUT',
      body,
      headers: { authorization: `Bearer ${flags.adminToken}` },
      timeoutMs: flags.timeout * 1000,
    });
    return answer;
  } catch (err) {
    if (!(err instanceof JsonRequestError)) throw err;
    if (err.kind === 'timeout' || err.kind === 'aborted' || err.kind === 'unreachable') {
      const cause = err.cause as { cause?: { code?: string }; message?: string } | undefined;
      throw new CustodyError('ERR_CONNECTION', `cannot reach ${base}: ${cause?.cause?.code ?? cause?.message ?? err.reason}`);
    }
    // a 2xx the body of which is not JSON: the change was made, there is just no view to show
    if (err.kind === 'malformed') return {};
    const code = err.status === 401 || err.status === 403 ? 'ERR_UNAUTHORIZED' : 'ERR_RESPONSE';
    throw new CustodyError(code, `PUT ${path} answered ${err.status}: ${err.apiError?.message ?? err.text.slice(0, 200)}`);
  }
}

function percentArgument(v: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v.trim()) || !(n >= 0 && n <= 100)) throw new InvalidArgumentError(`'${v}' is not a percent from 0 to 100`);
  return n;
}

function reasonOption(): Option {
  return new Option('--reason <text>', 'why, for the audit trail (required)').makeOptionMandatory().argParser((v) => {
    const t = v.trim();
    if (!t || t.length > 500) throw new InvalidArgumentError('the reason must be 1 to 500 characters');
    return t;
  });
}

function actorOption(): Option {
  return new Option('--as <person>', 'who makes the change, recorded as its actor (default: user@host)').argParser((v) => {
    const t = v.trim();
    if (!t || t.length > 128) throw new InvalidArgumentError(`'${v}' must be a name of 1 to 128 characters`);
    return t;
  });
}

export function registerRollbackWatchCommands(program: Command): void {
  const group = rollbackGroup(program);

  withClientOptions(group.command('set').description('set the rollout percent now (0: enforcement off, every agent in shadow)').argument('<percent>', '0 to 100', percentArgument))
    .addOption(policyUrlOption())
    .addOption(adminTokenOption())
    .addOption(reasonOption())
    .addOption(actorOption())
    .addOption(durationOption('--timeout <duration>', 'per-request timeout', '5s'))
    .action(async (percent: number, flags: { url: string; policyUrl?: string; adminToken?: string; reason: string; as?: string; timeout: number }) => {
      const actor = flags.as ?? `${os.userInfo().username}@${os.hostname()}`;
      const view = await putJson(flags, '/v1/rollout', { percent, reason: flags.reason, actor });
      process.stdout.write(`rollout now ${String(view.percent)}% (${actor}: ${flags.reason})\n`);
    });

  withClientOptions(
    group
      .command('incident')
      .description('the incident switch: agents keep allows cached longer while the plane is in trouble (enforcement stays on)'),
  )
    .addOption(policyUrlOption())
    .addOption(adminTokenOption())
    .addOption(
      new Option('--cache-ttl <duration>', 'how long agents keep a cached allow (e.g. 10m, at most 1h)').argParser((v) => {
        try {
          const s = parseDuration(v, '--cache-ttl');
          if (s > 3600) throw new Error(`--cache-ttl '${v}' is longer than 1h`);
          return s;
        } catch (err) {
          throw new InvalidArgumentError((err as Error).message);
        }
      }),
    )
    .option('--off', 'end the incident: the normal cache TTL again')
    .addOption(reasonOption())
    .addOption(actorOption())
    .addOption(durationOption('--timeout <duration>', 'per-request timeout', '5s'))
    .action(async (flags: { url: string; policyUrl?: string; adminToken?: string; cacheTtl?: number; off?: boolean; reason: string; as?: string; timeout: number }) => {
      if ((flags.cacheTtl === undefined) === !flags.off) throw new CustodyError('ERR_USAGE', 'give either --cache-ttl <duration> or --off');
      const actor = flags.as ?? `${os.userInfo().username}@${os.hostname()}`;
      const view = await putJson(flags, '/v1/rollout/incident', { cache_ttl_s: flags.off ? null : flags.cacheTtl, reason: flags.reason, actor });
      const incident = view.incident as { cache_ttl_s?: number } | null;
      process.stdout.write(
        incident ? `incident switch on: agents keep allows cached for ${incident.cache_ttl_s} s (rollout ${String(view.percent)}%)\n` : `incident switch off (rollout ${String(view.percent)}%)\n`,
      );
    });

  withClientOptions(group.command('watch').description('the auto-rollback job: roll back on a breach, advance after a healthy period'))
    .addOption(policyUrlOption())
    .addOption(adminTokenOption())
    .addOption(durationOption('--interval <duration>', 'time between two evaluations', '60s'))
    .addOption(durationOption('--window <duration>', 'rule window for the breach check', '15m'))
    .addOption(durationOption('--healthy-period <duration>', 'how long a stage stays healthy before the next', '24h'))
    .addOption(minSampleOption())
    .option('--manual-gates', 'wait for `custody rollback approve` at each stage (the default)')
    .option('--auto-advance', 'advance an earned stage without waiting for approval (rollback is always automatic)')
    .option('--dry-run', 'say what would be done; change nothing')
    .option('--once', 'evaluate once and exit (0 evaluated, 2 the plane could not be read)')
    .addOption(durationOption('--timeout <duration>', 'per-request timeout', '5s'))
    .action((flags: WatchFlags) => watch(flags));

  withClientOptions(group.command('approve').description('approve the next rollout step (recorded with who approved)'))
    .addOption(policyUrlOption())
    .addOption(adminTokenOption())
    .addOption(stageOption())
    .option('--reason <text>', 'why, for the audit trail')
    .addOption(actorOption())
    .option('--force', 'approve even if the stage has not earned it (rules breached, period not over)')
    .addOption(durationOption('--window <duration>', 'rule window for the breach check', '15m'))
    .addOption(durationOption('--healthy-period <duration>', 'the healthy period the stage must have lasted', '24h'))
    .addOption(minSampleOption())
    .addOption(durationOption('--timeout <duration>', 'per-request timeout', '5s'))
    .action((flags: ApproveFlags) => approve(flags));
}
