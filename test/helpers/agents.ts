import { spawn } from 'node:child_process';
import path from 'node:path';
import type { AuditEvent, AuditTrail } from '../../collector/audit/queries';
import { eventually, ROOT, type RunningCustody } from './custody';

export const AGENTS = path.join(ROOT, 'test', 'fixtures', 'agents');

export interface AgentRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The last stdout line, parsed. */
  report: any;
}

/**
 * Runs a fixture agent as its own node process from the package root, the way users do:
 * `node --require custody/register` (or `--import`), so `custody/register` resolves to this
 * package by self-reference, configured for `custody` through the environment only.
 */
export function runAgent(
  script: string,
  options: { flag?: '--require' | '--import' | null; env?: NodeJS.ProcessEnv; custody?: RunningCustody; args?: string[]; timeoutMs?: number } = {},
): Promise<AgentRun> {
  const flag = options.flag === undefined ? '--require' : options.flag;
  // A generous decision budget: on a loaded machine a process's first call (its first fetch)
  // alone can take longer than the 200 ms default. Tests of the deadline set their own.
  const env: NodeJS.ProcessEnv = { ...process.env, CUSTODY_LOG_LEVEL: 'warn', CUSTODY_POLICY_TIMEOUT_MS: '5000' };
  // a test runner's own preload must not leak into the agent
  delete env.NODE_OPTIONS;
  if (options.custody) {
    env.CUSTODY_URL = options.custody.url;
    env.OTEL_EXPORTER_OTLP_ENDPOINT = options.custody.otlpUrl;
  }
  Object.assign(env, options.env);
  const argv = [...(flag ? [flag, 'custody/register'] : []), path.join(AGENTS, script), ...(options.args ?? [])];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${script} did not finish:\n${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop() ?? '';
      let report: unknown;
      try {
        report = JSON.parse(last);
      } catch {
        report = undefined;
      }
      resolve({ code, signal, stdout, stderr, report });
    });
  });
}

/** The audit rows of one agent instance, once at least `count` are stored. */
export async function auditEventsOf(custody: RunningCustody, agentInstanceId: string, count: number): Promise<AuditEvent[]> {
  let seen = 0;
  try {
    return await eventually(async () => {
      const res = await fetch(`${custody.url}/v1/audit/events?agent_instance_id=${encodeURIComponent(agentInstanceId)}&limit=1000`);
      if (res.status !== 200) return undefined;
      const page = (await res.json()) as { events: AuditEvent[] };
      seen = page.events.length;
      return page.events.length >= count ? page.events.sort((a, b) => a.audit_seq - b.audit_seq) : undefined;
    }, 30_000);
  } catch (err) {
    throw new Error(`${agentInstanceId}: ${seen} of ${count} audit rows stored: ${(err as Error).message}`);
  }
}

export async function auditTrailOf(custody: RunningCustody, agentInstanceId: string): Promise<AuditTrail> {
  const res = await fetch(`${custody.url}/v1/audit/trail/${encodeURIComponent(agentInstanceId)}`);
  if (res.status !== 200) throw new Error(`trail answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as AuditTrail;
}
