import fs from 'node:fs';
import path from 'node:path';
import { ROOT, tempDir } from './custody';

export const ADMIN_TOKEN = 'test-admin-token';
export const EXAMPLE_POLICY = path.join(ROOT, 'policy-config.yaml');

/** A copy of the example policy (or the given text) in a fresh directory, for tests that rewrite it. */
export function policyFile(text = fs.readFileSync(EXAMPLE_POLICY, 'utf8')): string {
  const file = path.join(tempDir('custody-policy-'), 'policy-config.yaml');
  fs.writeFileSync(file, text);
  return file;
}

/** Replaces a file the way config managers do: write aside, then rename over it. */
export function replaceFile(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

export interface IssueBody {
  tool: string;
  sponsor_id?: string;
  agent_instance_id?: string;
  role?: string;
  purpose?: string;
  tools?: string[];
  ttl?: number;
}

/** POST /issue in open mode: a real token from the real token service. */
export async function issue(url: string, body: IssueBody): Promise<{ token: string; claims: Record<string, unknown> }> {
  const res = await fetch(`${url}/issue`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await res.json()) as { token: string; claims: Record<string, unknown> };
  if (res.status !== 201) throw new Error(`/issue answered ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

export async function check(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}/v1/check`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

export async function putRollout(
  url: string,
  body: unknown,
  headers: Record<string, string> = { authorization: `Bearer ${ADMIN_TOKEN}` },
  pathname = '/v1/rollout',
): Promise<{ status: number; body: any; etag: string | null }> {
  const res = await fetch(`${url}${pathname}`, { method: 'PUT', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json(), etag: res.headers.get('etag') };
}

/** One sample's value from a Prometheus exposition, or undefined. */
export async function metric(url: string, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}
