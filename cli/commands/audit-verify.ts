import fs from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseDuration, parseSince } from '../../common/duration';
import { CustodyError } from '../../common/errors';
import { DEFAULTS, ENV, TABLE } from '../../common/names';
import { safeJson, safeLines, safeText as t } from '../../common/terminal';
import { openStore, type Store } from '../../collector/store';
import { readJwksFile } from '../../collector/evidence/keys';
import { verifyAudit, type VerifyProgress, type VerifyReport } from '../../collector/evidence/verify';
import { RECEIPT_KEYS_DIR } from '../../enforcer/plane/role';
import { cliEnv } from '../options';

/**
 * `custody audit verify`: verifies the stored audit offline (it opens the store itself; chDB lets
 * one process at a time use a directory, so stop custody first or point at a ClickHouse server).
 * Exit 0 clean, 1 findings (listed), 2 usage or connection error.
 */

interface VerifyFlags {
  dataDir?: string;
  clickhouseUrl?: string;
  since?: string;
  checkpoints?: string;
  jwks?: string;
  policyJwks?: string;
  expectHead?: string;
  expectSeq?: number;
  json?: boolean;
  clockSkew?: number;
  maxFindings?: number;
}

const usage = (message: string) => new CustodyError('ERR_USAGE', message);

async function open(flags: VerifyFlags): Promise<{ store: Store; dataDir?: string }> {
  const url = flags.clickhouseUrl ?? cliEnv(ENV.CLICKHOUSE_URL)[ENV.CLICKHOUSE_URL];
  const dataDir = path.resolve(flags.dataDir ?? DEFAULTS.DATA_DIR);
  let store: Store;
  if (url) {
    store = await openStore({ url, migrate: false });
    if (!(await store.ping())) {
      await store.close().catch(() => undefined);
      throw new CustodyError('ERR_CONNECTION', `cannot reach ClickHouse at ${store.location}`);
    }
  } else {
    if (!fs.existsSync(path.join(dataDir, 'clickhouse'))) throw usage(`no custody store at ${dataDir} (pass --data-dir DIR or --clickhouse-url URL)`);
    try {
      store = await openStore({ dataDir, migrate: false });
    } catch (err) {
      if (err instanceof CustodyError && err.code === 'ERR_STORE_OPEN') {
        throw new CustodyError(
          'ERR_STORE_BUSY',
          `the store at ${dataDir} is in use by another process, most likely a running custody: stop it first (the embedded store allows one process per directory), or verify through a ClickHouse server with --clickhouse-url`,
        );
      }
      throw err;
    }
  }
  const rs = await store.client.query({
    query: `SELECT name FROM system.tables WHERE database = {db:String} AND name IN ({names:Array(String)})`,
    query_params: { db: store.database, names: [TABLE.AUDIT_EVENTS, TABLE.AUDIT_CHECKPOINTS, TABLE.AUDIT_CHECKPOINT_LEAVES] },
    format: 'JSONEachRow',
  });
  if ((await rs.json()).length < 3) {
    await store.close().catch(() => undefined);
    throw new CustodyError('ERR_SCHEMA', `${store.location} has no audit checkpoint tables: start custody on it once so that it migrates`);
  }
  return { store, ...(url && !flags.dataDir ? {} : { dataDir }) };
}

function progressPrinter(): { onProgress: (p: VerifyProgress) => void; done(): void } {
  const started = Date.now();
  const tty = process.stderr.isTTY;
  let last = 0;
  let shown = false;
  return {
    onProgress(p) {
      const now = Date.now();
      if (now - started < 1000 || now - last < (tty ? 200 : 5000)) return;
      last = now;
      const line = `verifying ${t(p.phase)}: ${p.done.toLocaleString('en')}${p.total ? ` / ${p.total.toLocaleString('en')}` : ''} (${((now - started) / 1000).toFixed(1)} s)`;
      process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
      shown = true;
    },
    done() {
      if (shown && tty) process.stderr.write('\r\x1b[K');
    },
  };
}

export function formatReport(r: VerifyReport, location: string): string {
  // everything below but the labels comes from the store, that is from agents: escaped (common/terminal)
  const out: string[] = [`custody audit verify: ${t(location)}`];
  const c = r.checked;
  out.push(
    `checkpoints  ${c.checkpoints}${r.head ? ` (head #${t(r.head.seq)} ${t(r.head.checkpoint_hash)} through ${t(r.head.period_end)})` : ''}`,
    ...(r.anchor ? [`anchor       ${[r.anchor.expected_seq !== undefined ? `#${r.anchor.expected_seq}` : '', t(r.anchor.expected_head ?? '')].filter(Boolean).join(' ')}: ${r.anchor.found ? 'reached' : 'NOT reached'}`] : []),
    `periods      ${c.periods_verified} verified, ${c.rows_verified} rows${c.rows_unsealed_after_last ? `, ${c.rows_unsealed_after_last} written since the last checkpoint` : ''}${c.rows_pending ? `, ${c.rows_pending} pending` : ''}`,
    `chains       ${c.instances} agent instances, ${c.chained_calls} chained calls${c.unchained_calls ? `, ${c.unchained_calls} without custody.audit.seq` : ''}`,
    `calls        ${c.calls.calls}: ${c.calls.executed} executed (${c.calls.gated_executed} gated, ${c.calls.shadow} shadow), ${c.calls.blocked} blocked`,
    `policy       ${r.policy.loaded} loads (${r.policy.versions.map((v) => t(v)).join(', ') || 'none'}), ${r.policy.refused} refused reloads; ${r.policy.decisions_checked} decisions name a loaded version`,
    `keys         ${r.keys.map((k) => t(k.kid)).join(', ') || '(none)'}`,
    `receipts     ${r.receipts.checked ? `${r.receipts.verified} distinct verified with the policy plane's keys ${r.receipts.keys.map((k) => t(k)).join(', ') || '(none)'}; ${r.receipts.rollout_states} signed rollout states` : 'not checked (no policy-plane keys)'}`,
  );
  const a = r.approvals;
  if (a && a.approved + a.denied + a.expired > 0) {
    const by = Object.entries(a.by).map(([who, n]) => (n > 1 ? `${t(who)} ×${n}` : t(who))).join(', ');
    out.push(`approvals    ${a.approved} approved${by ? ` (${by})` : ''}, ${a.denied} denied, ${a.expired} expired`);
  }
  const total = Object.values(r.counts).reduce((a, b) => a + (b ?? 0), 0);
  if (total) {
    out.push('', `FINDINGS: ${total} (${Object.entries(r.counts).map(([k, n]) => `${t(k)} ${n}`).join(', ')})`);
    const order = { critical: 0, high: 1, medium: 2 } as const;
    for (const f of [...r.findings].sort((a, b) => order[a.severity] - order[b.severity])) {
      out.push(`  ${t(f.severity.toUpperCase()).padEnd(8)} ${t(f.kind).padEnd(26)} ${t(f.message)}`);
    }
    if (r.not_listed) out.push(`  … ${r.not_listed} more not listed (--max-findings, or --json)`);
  }
  const call = (s: { time: string; tool_id: string; action?: string; agent_instance_id: string; seq: unknown }) =>
    `  ${t(s.time)}  ${t(s.tool_id)}${s.action ? `.${t(s.action)}` : ''} by ${t(s.agent_instance_id)} #${t(s.seq)}`;
  if (r.shadow.calls) {
    out.push('', `shadow calls: ${r.shadow.calls} ran in the baseline cohort, not gated by design; the plane would have denied ${r.shadow.would_deny}`);
    for (const s of r.shadow.listed) out.push(`${call(s)}  decision ${t(s.policy_decision_id)}`);
  }
  if (r.blocked_without_sponsor.calls) {
    out.push('', `calls without a sponsor that custody refused: ${r.blocked_without_sponsor.calls}`);
    for (const s of r.blocked_without_sponsor.listed) out.push(call(s));
  }
  if (r.sampled_out.calls) {
    const tools = Object.entries(r.sampled_out.by_tool).map(([tool, n]) => `${t(tool)} ${n}`).join(', ');
    out.push('', `sampled out: ${r.sampled_out.calls} calls stored as chained stubs, each an allow the plane sampled (${tools})`);
  }
  if (r.notes.length) out.push('', 'notes:', ...r.notes.map((n) => `  - ${t(n)}`));
  out.push('', r.ok ? 'result: CLEAN — every period, chain and call verified' : `result: ${total} FINDINGS`);
  return out.join('\n') + '\n';
}

/** A period plus the lag, as the checkpointer is configured here ($CUSTODY_CHECKPOINT_PERIOD, $CUSTODY_CHECKPOINT_LAG). */
function pendingMs(): number {
  let env;
  try {
    env = cliEnv(ENV.CHECKPOINT_PERIOD, ENV.CHECKPOINT_LAG);
  } catch (err) {
    throw usage((err as Error).message);
  }
  return Math.round(((env[ENV.CHECKPOINT_PERIOD] ?? 60) + (env[ENV.CHECKPOINT_LAG] ?? 15)) * 1000);
}

async function verify(flags: VerifyFlags): Promise<void> {
  const sinceMs = flags.since ? parseSince(flags.since) : undefined;
  if (flags.checkpoints && !fs.existsSync(flags.checkpoints)) throw usage(`--checkpoints ${flags.checkpoints}: no such directory`);
  const jwks = flags.jwks ? readJwksFile(flags.jwks) : undefined;
  const policyJwks = flags.policyJwks ? readJwksFile(flags.policyJwks) : undefined;
  const { store, dataDir } = await open(flags);
  const progress = progressPrinter();
  const journalDir = flags.checkpoints ?? cliEnv(ENV.CHECKPOINTS_DIR)[ENV.CHECKPOINTS_DIR] ?? (dataDir ? path.join(dataDir, 'checkpoints') : undefined);
  let report: VerifyReport;
  try {
    report = await verifyAudit({
      store,
      ...(journalDir ? { journalDir: path.resolve(journalDir), journalRequired: true } : {}),
      ...(jwks ? { jwks } : {}),
      ...(dataDir ? { localJwksFile: path.join(dataDir, 'evidence', 'keys', 'jwks.json') } : {}),
      ...(policyJwks ? { policyJwks } : {}),
      ...(dataDir ? { localPolicyJwksFile: path.join(dataDir, RECEIPT_KEYS_DIR, 'jwks.json') } : {}),
      ...(sinceMs !== undefined ? { sinceMs } : {}),
      ...(flags.clockSkew !== undefined ? { clockSkewMs: flags.clockSkew } : {}),
      ...(flags.maxFindings !== undefined ? { maxListedPerKind: flags.maxFindings } : {}),
      ...(flags.expectHead !== undefined ? { expectHead: flags.expectHead } : {}),
      ...(flags.expectSeq !== undefined ? { expectSeq: flags.expectSeq } : {}),
      pendingMs: pendingMs(),
      onProgress: progress.onProgress,
    });
  } finally {
    progress.done();
    await store.close().catch(() => undefined);
  }
  if (!journalDir) report.notes.push('no checkpoint directory given: only the copies in the database were checked (pass --checkpoints DIR)');
  process.stdout.write(flags.json ? `${safeJson(report, 2)}\n` : safeLines(formatReport(report, store.location)));
  process.exitCode = report.ok ? 0 : 1;
}

/** Adds `audit verify` to the `audit` command group. */
export function addAuditVerify(group: Command): Command {
  return group
    .command('verify')
    .description('verify the stored audit offline: signed checkpoints, Merkle roots, agent chains, and that every executed call was authorized')
    .option('--data-dir <dir>', `the custody data directory: embedded store, keys, checkpoints (default ${DEFAULTS.DATA_DIR})`)
    .option('--clickhouse-url <url>', `a ClickHouse server instead of the embedded store (or $${ENV.CLICKHOUSE_URL})`)
    .option('--since <time>', 'verify from this time on: a duration back from now (24h) or an ISO-8601 time')
    .option('--checkpoints <dir>', `the checkpoint directory (default <data-dir>/checkpoints or $${ENV.CHECKPOINTS_DIR})`)
    .option('--jwks <file>', 'trust only these public keys (the set from GET /v1/audit/keys)')
    .option('--policy-jwks <file>', 'trust only these policy-plane keys for decision and rollout receipts (the set from GET /v1/policy/jwks.json; default <data-dir>/policy/keys/jwks.json)')
    .addOption(
      new Option('--expect-head <hash>', 'the checkpoint_hash of a head anchored outside custody (an external log, a WORM bucket): the chain must reach it').argParser((v) => {
        if (!/^[0-9a-f]{64}$/.test(v)) throw new InvalidArgumentError(`'${v}' is not a checkpoint hash (64 lowercase hex digits)`);
        return v;
      }),
    )
    .addOption(
      new Option('--expect-seq <n>', 'the seq of the anchored head: the chain must reach it').argParser((v) => {
        const n = Number(v);
        if (!/^\d+$/.test(v) || n < 1) throw new InvalidArgumentError(`'${v}' must be a whole number of at least 1`);
        return n;
      }),
    )
    .option('--json', 'print the report as JSON')
    .addOption(
      new Option('--clock-skew <duration>', 'allowed clock difference between agents, plane and token service (default 1s)').argParser((v) => {
        try {
          return Math.round(parseDuration(v, '--clock-skew') * 1000);
        } catch (err) {
          throw new InvalidArgumentError((err as Error).message);
        }
      }),
    )
    .addOption(
      new Option('--max-findings <n>', 'findings listed per kind (all are counted; default 200)').argParser((v) => {
        const n = Number(v);
        if (!/^\d+$/.test(v) || n < 1) throw new InvalidArgumentError(`'${v}' must be a whole number of at least 1`);
        return n;
      }),
    )
    .action((flags: VerifyFlags) => verify(flags));
}
