import fs from 'node:fs';
import { once } from 'node:events';
import type { Command } from 'commander';
import { Option } from 'commander';
import type { AuditEvent, EventPage } from '../../collector/audit/queries';
import { parseSince } from '../../common/duration';
import { CustodyError } from '../../common/errors';
import { safeJson } from '../../common/terminal';
import { getJson } from '../control-client';
import { withClientOptions } from '../options';

/**
 * `custody export`: streams audit events to a SIEM-friendly file, page by page (newest first, so a
 * long export shows its progress as the time range it has covered), as NDJSON or Elastic Common
 * Schema documents. Memory stays at one page whatever the range.
 */
export const EXPORT_FORMATS = ['ndjson', 'ecs'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

const PAGE = 1000;

/** One audit event as an ECS document: the standard fields a SIEM indexes, custody's own under `custody`. */
export function toEcs(e: AuditEvent): Record<string, unknown> {
  const failed = e.status === 'error';
  return {
    '@timestamp': e.timestamp,
    ecs: { version: '8.11.0' },
    event: {
      kind: 'event',
      category: ['iam'],
      type: [e.decision === 'allow' || e.decision === '' ? 'allowed' : 'denied'],
      action: `${e.tool_id}.${e.action}`,
      outcome: failed ? 'failure' : 'success',
      dataset: 'custody.audit',
      id: e.span_id,
      duration: Math.round(e.duration_ms * 1e6),
      ...(e.error_type ? { reason: e.error_type } : {}),
    },
    user: { id: e.sponsor_id || undefined, roles: e.role ? [e.role] : undefined },
    trace: { id: e.trace_id },
    span: { id: e.span_id },
    rule: e.rule_id ? { id: e.rule_id } : undefined,
    ...(e.error_type ? { error: { type: e.error_type } } : {}),
    gen_ai: { operation: { name: 'execute_tool' }, agent: { id: e.agent_instance_id }, tool: { name: e.tool_id } },
    custody: e,
  };
}

export interface ExportOptions {
  url: string;
  from: number;
  to: number;
  format: ExportFormat;
  out: NodeJS.WritableStream;
  /** Called after each page with the events written so far and the oldest time covered (epoch ms). */
  progress?: (written: number, coveredTo: number) => void;
}

export async function exportEvents(options: ExportOptions): Promise<number> {
  let cursor: string | null = null;
  let written = 0;
  do {
    const params = new URLSearchParams({ from: String(options.from), to: String(options.to), limit: String(PAGE) });
    if (cursor) params.set('cursor', cursor);
    const page: EventPage = (await getJson<EventPage>(options.url, `/v1/audit/events?${params}`, { timeoutMs: 60_000 })).body;
    let chunk = '';
    for (const e of page.events) chunk += safeJson(options.format === 'ecs' ? toEcs(e) : e) + '\n';
    if (chunk && !options.out.write(chunk)) await once(options.out, 'drain');
    written += page.events.length;
    const oldest = page.events.at(-1);
    const oldestMs = oldest ? Date.parse(oldest.timestamp) : NaN;
    options.progress?.(written, Number.isFinite(oldestMs) ? oldestMs : options.from);
    cursor = page.next_cursor;
  } while (cursor);
  return written;
}

function progressBar(from: number, to: number): (written: number, coveredTo: number) => void {
  const tty = process.stderr.isTTY === true;
  return (written, coveredTo) => {
    const share = to > from ? Math.min(1, Math.max(0, (to - coveredTo) / (to - from))) : 1;
    const width = 30;
    const filled = Math.round(share * width);
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(share * 100).toFixed(0).padStart(3)} %  ${written} events  back to ${new Date(coveredTo).toISOString()}`;
    if (tty) process.stderr.write(`\r\x1b[2K${line}`);
  };
}

export function registerExportCommand(program: Command): void {
  withClientOptions(
    program
      .command('export')
      .description('stream audit events for a SIEM, page by page, with progress on stderr')
      .option('--since <when>', 'a duration back from now (24h) or an ISO-8601 time', '24h')
      .option('--until <when>', 'end of the range (default now): a duration back from now or an ISO-8601 time')
      .addOption(new Option('--format <format>', 'ndjson: the audit rows; ecs: Elastic Common Schema documents').choices(EXPORT_FORMATS).default('ndjson'))
      .option('--out <file>', 'write to FILE instead of stdout'),
  ).action(async (flags: { url: string; since: string; until?: string; format: ExportFormat; out?: string }) => {
    const now = Date.now();
    let from: number;
    let to: number;
    try {
      from = parseSince(flags.since, now);
      to = flags.until ? parseSince(flags.until, now) : now;
    } catch (err) {
      throw new CustodyError('ERR_USAGE', (err as Error).message);
    }
    if (from >= to) throw new CustodyError('ERR_USAGE', `--since (${new Date(from).toISOString()}) must be before --until (${new Date(to).toISOString()})`);
    const out = flags.out ? fs.createWriteStream(flags.out) : process.stdout;
    const count = await exportEvents({ url: flags.url, from, to, format: flags.format, out, progress: progressBar(from, to) });
    if (flags.out) {
      const stream = out as fs.WriteStream;
      stream.end();
      await once(stream, 'close');
    }
    if (process.stderr.isTTY) process.stderr.write('\n');
    process.stderr.write(
      `exported ${count} audit events from ${new Date(from).toISOString()} to ${new Date(to).toISOString()} as ${flags.format}${flags.out ? ` to ${flags.out}` : ''}\n`,
    );
  });
}
