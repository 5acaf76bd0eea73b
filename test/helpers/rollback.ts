import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './custody';

/**
 * Test data for the rollback tests, written straight into a data directory's embedded store
 * before `custody up` opens it. chDB allows one process per directory, so the rows are written
 * by a short-lived child process that opens the store, inserts and exits.
 */

export interface CallRow {
  timestamp: string;
  end_timestamp: string;
  trace_id: string;
  span_id: string;
  sponsor_id: string;
  agent_instance_id: string;
  parent_agent_id: string;
  agent_name: string;
  role: string;
  tool_id: string;
  tool_name: string;
  action: string;
  purpose: string;
  policy_decision_id: string;
  decision: string;
  rule_id: string;
  policy_latency_ms: number;
  policy_cached: boolean;
  enforced: boolean;
  cohort: string;
  status: string;
  error_type: string;
  service_name: string;
}

let seq = 0;
const hex = (n: number, len: number) => n.toString(16).padStart(len, '0');

/** One tool-call audit row; `at` is epoch ms. */
export function call(at: number, over: Partial<CallRow> = {}): CallRow {
  seq += 1;
  const cohort = over.cohort ?? 'canary';
  return {
    timestamp: new Date(at).toISOString(),
    end_timestamp: new Date(at + 5).toISOString(),
    trace_id: hex(seq, 32),
    span_id: hex(seq, 16),
    sponsor_id: 'alice',
    agent_instance_id: `agent-${cohort}-${seq % 7}`,
    parent_agent_id: '',
    agent_name: 'support-assistant',
    role: 'support',
    tool_id: 'billing',
    tool_name: 'billing',
    action: 'refund',
    purpose: 'ticket',
    policy_decision_id: `pd-${seq}`,
    decision: 'allow',
    rule_id: 'allow-support-billing',
    policy_latency_ms: 4,
    policy_cached: false,
    enforced: cohort === 'canary',
    cohort,
    status: 'ok',
    error_type: '',
    service_name: 'agent',
    ...over,
  };
}

/** `n` calls spread over the `spreadMs` before `end`, each shaped by `shape(i)`. */
export function calls(n: number, end: number, shape: (i: number) => Partial<CallRow> = () => ({}), spreadMs = 10_000): CallRow[] {
  return Array.from({ length: n }, (_, i) => call(end - spreadMs + Math.floor((i * spreadMs) / n), shape(i)));
}

/** The plane's own decision-log rows for calls made by `calls` (same spread), each shaped by `shape(i)`. */
export function decisions(
  n: number,
  end: number,
  shape: (i: number) => Partial<{ decision: string; latency_ms: number; cohort: string; agent_instance_id: string }> = () => ({}),
  spreadMs = 10_000,
): object[] {
  return Array.from({ length: n }, (_, i) => {
    seq += 1;
    const over = shape(i);
    const cohort = over.cohort ?? 'canary';
    return {
      timestamp: new Date(end - spreadMs + Math.floor((i * spreadMs) / n)).toISOString(),
      policy_decision_id: `pd-log-${seq}`,
      decision: 'allow',
      rule_id: 'allow-support-billing',
      sponsor_id: 'alice',
      agent_instance_id: `agent-${cohort}-${seq % 7}`,
      tool_id: 'billing',
      action: 'refund',
      cohort,
      enforced: cohort === 'canary',
      latency_ms: 4,
      service_name: 'custody',
      ...over,
    };
  });
}

/** Inserts rows into `<dataDir>/clickhouse` (custody.<table>) from a child process. */
export { seedStore } from './custody';

export const ADMIN_TOKEN = 'rollback-test-admin-token';

export async function getRollout(url: string): Promise<{ percent: number; revision: number; reason: string; actor: string; updated_at: string; stages: number[] }> {
  const res = await fetch(`${url}/v1/rollout`);
  if (!res.ok) throw new Error(`GET /v1/rollout ${res.status}`);
  return (await res.json()) as never;
}

export async function putRollout(url: string, percent: number, reason: string): Promise<Response> {
  return fetch(`${url}/v1/rollout`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
    body: JSON.stringify({ percent, reason, actor: 'test' }),
  });
}

/** Runs queries on a stopped custody's embedded store from one child process; JSONEachRow rows per query. */
export function queryStoreAll<T = Record<string, unknown>>(dataDir: string, queries: string[]): T[][] {
  const script = `
    const { openStore } = require(${JSON.stringify(path.join(ROOT, 'dist/collector/store/index.js'))});
    let input = '';
    process.stdin.on('data', (d) => (input += d)).on('end', async () => {
      try {
        const store = await openStore({ dataDir: ${JSON.stringify(dataDir)}, migrate: false });
        const out = [];
        for (const query of JSON.parse(input)) {
          const rs = await store.client.query({ query, format: 'JSONEachRow' });
          out.push(await rs.json());
        }
        process.stdout.write(JSON.stringify(out));
        await store.close();
        process.exit(0);
      } catch (err) {
        console.error(err);
        process.exit(1);
      }
    });`;
  const r = spawnSync(process.execPath, ['-e', script], { input: JSON.stringify(queries), encoding: 'utf8', timeout: 120_000, maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`queries on ${dataDir} failed (${r.status}):\n${r.stderr}`);
  return JSON.parse(r.stdout) as T[][];
}

export function queryStore<T = Record<string, unknown>>(dataDir: string, query: string): T[] {
  return queryStoreAll<T>(dataDir, [query])[0]!;
}
