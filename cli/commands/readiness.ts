import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { CustodyError } from '../../common/errors';
import { safeJson, safeLines, safeText as t } from '../../common/terminal';
import { DEFAULTS, THRESHOLDS } from '../../common/names';
import { parseWindow } from '../../collector/rules/evaluate';
import { createEnforcer } from '../../enforcer/client/enforcer';
import { getJson } from '../control-client';
import { withClientOptions } from '../options';

/**
 * The seed's one-page readiness checklist, evaluated against a live custody: each item is checked
 * for real (read from the running services, or probed), printed as Markdown with pass/fail, and
 * the exit code says whether every item passed (0), one failed (1), or custody could not be asked (2).
 */
export interface ReadinessItem {
  item: string;
  expected: string;
  found: string;
  pass: boolean;
}

export interface ReadinessOptions {
  url: string;
  /** How far back "recent audit events" reach. */
  windowS: number;
  rulesFile: string;
  /** The enforcer's timeout used by the fail-closed probes. */
  timeoutMs?: number;
}

interface TokenConfig {
  default_ttl_seconds: number;
  max_ttl_seconds: number;
  require_sponsor: boolean;
  mode: string;
}
interface AuditHealth {
  events: number;
  sponsor_present_ratio: number | null;
  subagent_calls: number;
  parent_present_ratio: number | null;
  retention_days: number | null;
}
interface Rollout {
  percent: number;
  stages?: number[];
}

const PRESENT = 0.999;
const pct = (v: number) => `${(v * 100).toFixed(2)} %`;

export function defaultRulesFile(): string {
  return path.resolve(__dirname, '../../../alerts/custody.rules.yml');
}

/** The alerts the seed asks for: each named by the metric and threshold its expression must hold. */
const REQUIRED_ALERTS: { what: string; pattern: RegExp }[] = [
  { what: 'missing sponsor > 0.1 %', pattern: new RegExp(`custody_missing_sponsor_ratio\\)?\\s*>\\s*${THRESHOLDS.missing_sponsor_ratio}\\b`) },
  { what: 'policy p95 > 200 ms', pattern: /custody_policy_latency_p95_seconds\)?\s*>\s*0\.2\b/ },
  { what: 'policy error rate > 1 %', pattern: new RegExp(`custody_policy_error_rate\\)?\\s*>\\s*${THRESHOLDS.policy_error_rate}\\b`) },
  { what: 'token issuance failures > 0.5 %', pattern: new RegExp(`custody_token_issue_failure_ratio\\)?\\s*>\\s*${THRESHOLDS.token_issue_failure_ratio}\\b`) },
];

async function checkRules(file: string): Promise<ReadinessItem> {
  const item = 'Alert rules present and valid';
  const expected = `${REQUIRED_ALERTS.map((a) => a.what).join('; ')}; promtool check rules passes`;
  if (!fs.existsSync(file)) return { item, expected, found: `${file} not found`, pass: false };
  let exprs: string[];
  try {
    const doc = parseYaml(fs.readFileSync(file, 'utf8')) as { groups?: { rules?: { expr?: unknown }[] }[] };
    exprs = (doc.groups ?? []).flatMap((g) => g.rules ?? []).map((r) => String(r.expr ?? ''));
  } catch (err) {
    return { item, expected, found: `${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`, pass: false };
  }
  const missing = REQUIRED_ALERTS.filter((a) => !exprs.some((e) => a.pattern.test(e))).map((a) => a.what);
  let promtool = 'promtool not installed (apt-get install prometheus): YAML and thresholds checked only';
  let promtoolOk = true;
  try {
    await promisify(execFile)('promtool', ['check', 'rules', file], { timeout: 20_000 });
    promtool = 'promtool check rules: SUCCESS';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      promtoolOk = false;
      promtool = `promtool check rules failed: ${String((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n').slice(-1)[0]}`;
    }
  }
  const found = `${exprs.length} rules in ${path.basename(file)}${missing.length ? `; missing: ${missing.join(', ')}` : ''}; ${promtool}`;
  return { item, expected, found, pass: missing.length === 0 && promtoolOk };
}

/** A loopback server that accepts connections and never answers: a hung policy plane. */
async function hungServer(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => void sockets.add(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A loopback port that nothing listens on: an unreachable policy plane. */
async function closedPort(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

async function probeFailClosed(url: string, timeoutMs: number): Promise<ReadinessItem> {
  const item = 'Fail-closed verified by a probe';
  const expected = `forged token denied by the live plane; unreachable and hung planes refuse within ${timeoutMs} ms + margin`;
  const findings: string[] = [];
  let pass = true;

  // the live plane: a token nobody signed must be denied
  const res = await fetch(new URL('/v1/check', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJyZWFkaW5lc3MtcHJvYmUifQ.', tool: 'billing', action: 'refund' }),
    signal: AbortSignal.timeout(5000),
  });
  const body = (await res.json().catch(() => ({}))) as { decision?: string };
  if (res.ok && body.decision === 'deny') findings.push('forged token: deny');
  else {
    pass = false;
    findings.push(`forged token: ${res.status} ${body.decision ?? 'no decision'}`);
  }

  // the enforcer custody ships: an unreachable plane and a hung one must both refuse the call
  const hung = await hungServer();
  try {
    for (const [name, planeUrl] of [['unreachable', await closedPort()], ['hung', hung.url]] as const) {
      const enforcer = createEnforcer({ url: planeUrl, policyUrl: planeUrl, tokenUrl: planeUrl, timeoutMs, recordOnActiveSpan: false, env: {} });
      const started = performance.now();
      let ran = false;
      try {
        const d = await enforcer.check({
          tool: 'billing',
          action: 'refund',
          identity: { sponsorId: 'readiness-probe', agentInstanceId: `readiness-probe-${process.pid}` },
        });
        if (d.allowed) ran = true;
        const ms = performance.now() - started;
        const ok = !ran && ms <= timeoutMs + 150;
        pass &&= ok;
        findings.push(`${name} plane: ${d.allowed ? 'ALLOWED' : `${d.decision} (${d.error?.code ?? 'no code'})`} in ${ms.toFixed(0)} ms`);
      } finally {
        await enforcer.close();
      }
    }
  } finally {
    await hung.close();
  }
  return { item, expected, found: findings.join('; '), pass };
}

export async function evaluateReadiness(options: ReadinessOptions): Promise<ReadinessItem[]> {
  const { url } = options;
  const items: ReadinessItem[] = [];
  const timeoutMs = options.timeoutMs ?? DEFAULTS.POLICY_TIMEOUT_MS;
  // nothing answers at all: not a failed checklist, a checklist that could not be asked (exit 2)
  await getJson(url, '/healthz', { timeoutMs: 5000 });
  const read = async <T>(p: string, timeoutMs = 15_000): Promise<T | Error> => {
    try {
      return (await getJson<T>(url, p, { timeoutMs })).body;
    } catch (err) {
      return err as Error;
    }
  };

  const tokens = await read<TokenConfig>('/v1/tokens/config');
  const tok = <K extends keyof TokenConfig>(k: K, show: (v: TokenConfig[K]) => string) =>
    tokens instanceof Error ? `token service: ${tokens.message}` : show(tokens[k]);
  items.push({
    item: 'Token service: default TTL',
    expected: `${DEFAULTS.TOKEN_TTL_S} s`,
    found: tok('default_ttl_seconds', (v) => `${v} s`),
    pass: !(tokens instanceof Error) && tokens.default_ttl_seconds === DEFAULTS.TOKEN_TTL_S,
  });
  items.push({
    item: 'Token service: maximum TTL',
    expected: `≤ ${DEFAULTS.TOKEN_MAX_TTL_S} s`,
    found: tok('max_ttl_seconds', (v) => `${v} s`),
    pass: !(tokens instanceof Error) && tokens.max_ttl_seconds <= DEFAULTS.TOKEN_MAX_TTL_S,
  });
  items.push({
    item: 'Token service: sponsor required',
    expected: 'require_sponsor: true',
    found: tok('require_sponsor', (v) => `require_sponsor: ${v}`),
    pass: !(tokens instanceof Error) && tokens.require_sponsor === true,
  });

  const window = `${options.windowS}s`;
  const audit = await read<AuditHealth>(`/v1/audit/health?window=${window}`, 60_000);
  const auditFailed = audit instanceof Error ? `audit store: ${audit.message}` : undefined;
  items.push({
    item: 'Audit events carry sponsor_id',
    expected: `≥ ${pct(PRESENT)} of recent events`,
    found:
      auditFailed ??
      ((audit as AuditHealth).sponsor_present_ratio === null
        ? `no audit events in the last ${window}`
        : `${pct((audit as AuditHealth).sponsor_present_ratio!)} of ${(audit as AuditHealth).events}`),
    pass: !auditFailed && (audit as AuditHealth).sponsor_present_ratio !== null && (audit as AuditHealth).sponsor_present_ratio! >= PRESENT,
  });
  items.push({
    item: 'Audit events carry parent_agent_id',
    expected: `≥ ${pct(PRESENT)} of sub-agent calls`,
    found:
      auditFailed ??
      ((audit as AuditHealth).parent_present_ratio === null
        ? `no sub-agent calls in the last ${window}: nothing to attribute`
        : `${pct((audit as AuditHealth).parent_present_ratio!)} of ${(audit as AuditHealth).subagent_calls} sub-agent calls`),
    pass: !auditFailed && ((audit as AuditHealth).parent_present_ratio === null || (audit as AuditHealth).parent_present_ratio! >= PRESENT),
  });

  const rollout = await read<Rollout>('/v1/rollout', 5000);
  items.push({
    item: 'Policy plane reachable',
    expected: 'GET /v1/rollout answers',
    found: rollout instanceof Error ? rollout.message : 'answered',
    pass: !(rollout instanceof Error),
  });
  const stages = (!(rollout instanceof Error) && rollout.stages) || [...DEFAULTS.ROLLOUT_STAGES];
  items.push({
    item: 'Rollout at a canary stage',
    expected: `a stage of ${stages.join(' → ')} %`,
    found: rollout instanceof Error ? 'unknown' : `${rollout.percent} %${rollout.percent === 0 ? ' (rolled back or not started)' : ''}`,
    pass: !(rollout instanceof Error) && rollout.percent > 0 && stages.includes(rollout.percent),
  });
  items.push(
    await probeFailClosed(url, timeoutMs).catch((err: Error) => ({
      item: 'Fail-closed verified by a probe',
      expected: 'the live plane and the enforcer refuse what they cannot decide',
      found: `probe failed: ${err.message}`,
      pass: false,
    })),
  );
  items.push(await checkRules(options.rulesFile));
  items.push({
    item: 'Audit retention',
    expected: `≥ ${DEFAULTS.AUDIT_RETENTION_DAYS} days on custody.audit_events`,
    found: auditFailed ?? ((audit as AuditHealth).retention_days === null ? 'no TTL on the table' : `${(audit as AuditHealth).retention_days} days`),
    pass: !auditFailed && (audit as AuditHealth).retention_days !== null && (audit as AuditHealth).retention_days! >= DEFAULTS.AUDIT_RETENTION_DAYS,
  });
  return items;
}

export function formatReadiness(url: string, items: ReadinessItem[]): string {
  // `found` holds what the servers answered (error messages, values agents wrote): escaped
  const esc = (s: string) => t(s).replace(/\|/g, '\\|');
  const lines = [
    `# custody readiness: ${t(url)}`,
    '',
    '| result | item | expected | found |',
    '| --- | --- | --- | --- |',
    ...items.map((i) => `| ${i.pass ? 'pass' : '**FAIL**'} | ${esc(i.item)} | ${esc(i.expected)} | ${esc(i.found)} |`),
    '',
    `${items.filter((i) => i.pass).length} of ${items.length} items pass.`,
  ];
  return lines.join('\n') + '\n';
}

/** The open first-day mode, said in words: what it accepts that a registered setup refuses. */
export async function modeNote(url: string): Promise<string> {
  try {
    const { body } = await getJson<TokenConfig>(url, '/v1/tokens/config', { timeoutMs: 5000 });
    if (body.mode !== 'open') return '';
  } catch {
    return '';
  }
  return (
    '\n**Open first-day mode (loopback):** `/issue` trusts the sponsor and role in the request body, and OTLP ingest ' +
    'accepts spans without a credential, storing them as unverified (never counted as plane errors). ' +
    'Register agents and set `mode: registered` before anyone else can reach these ports.\n'
  );
}

export function registerReadinessCommand(program: Command): void {
  withClientOptions(
    program
      .command('readiness')
      .description("the seed's readiness checklist against a live custody, as Markdown; exit 0 all pass, 1 an item fails, 2 cannot ask")
      .option('--window <duration>', 'how far back "recent audit events" reach', '24h')
      .option('--rules <file>', 'Prometheus alert rules file', defaultRulesFile())
      .option('--json', 'print the items as JSON'),
  ).action(async (flags: { url: string; window: string; rules: string; json?: boolean }) => {
    let windowS: number;
    try {
      windowS = parseWindow(flags.window);
    } catch (err) {
      throw new CustodyError('ERR_USAGE', `--window: ${(err as Error).message}`);
    }
    const items = await evaluateReadiness({ url: flags.url, windowS, rulesFile: path.resolve(flags.rules) });
    process.stdout.write(flags.json ? `${safeJson(items, 2)}\n` : safeLines(formatReadiness(flags.url, items)) + (await modeNote(flags.url)));
    process.exitCode = items.every((i) => i.pass) ? 0 : 1;
  });
}
