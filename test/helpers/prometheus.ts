import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { tempDir } from './custody';

/** A real Prometheus (Debian's `prometheus` package) on a free loopback port with a temporary TSDB. */

export const hasPrometheus = spawnSync('prometheus', ['--version']).status === 0 && spawnSync('promtool', ['--version']).status === 0;

export interface RunningPrometheus {
  url: string;
  proc: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startPrometheus(opts: { targets: string[]; ruleFiles?: string[]; scrapeInterval?: string; job?: string }): Promise<RunningPrometheus> {
  const dir = tempDir('custody-prometheus-');
  const config = [
    'global:',
    `  scrape_interval: ${opts.scrapeInterval ?? '500ms'}`,
    `  scrape_timeout: ${opts.scrapeInterval ?? '500ms'}`,
    '  evaluation_interval: 1s',
    ...(opts.ruleFiles?.length ? ['rule_files:', ...opts.ruleFiles.map((f) => `  - ${JSON.stringify(f)}`)] : []),
    'scrape_configs:',
    `  - job_name: ${opts.job ?? 'custody'}`,
    '    static_configs:',
    `      - targets: [${opts.targets.map((t) => JSON.stringify(t)).join(', ')}]`,
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'prometheus.yml'), config + '\n');
  const port = await freePort();
  const proc = spawn(
    'prometheus',
    [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`prometheus exited with ${proc.exitCode}:\n${out}`);
    try {
      if ((await fetch(`${url}/-/ready`)).ok) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`prometheus did not become ready:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    proc,
    output: () => out,
    stop: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null) return resolve();
        proc.once('exit', () => {
          fs.rmSync(dir, { recursive: true, force: true });
          resolve();
        });
        proc.kill('SIGTERM');
      }),
  };
}

export interface Sample {
  metric: Record<string, string>;
  value: number;
}

/** An instant query through the HTTP API; a query Prometheus refuses fails the call with its error. */
export async function instant(prom: string, query: string, time?: number): Promise<Sample[]> {
  const body = new URLSearchParams({ query, ...(time ? { time: String(time / 1000) } : {}) });
  const res = await fetch(`${prom}/api/v1/query`, { method: 'POST', body });
  const json = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] } };
  if (json.status !== 'success') throw new Error(`prometheus refused '${query}': ${json.error}`);
  if (json.data!.resultType === 'scalar') {
    const v = json.data!.result as unknown as [number, string];
    return [{ metric: {}, value: Number(v[1]) }];
  }
  return json.data!.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
}

/** Grafana's Prometheus interpolation of a template variable (regex-escaped; multi → (a|b); All → allValue). */
export function interpolateProm(expr: string, vars: Record<string, string[] | { all: string }>, builtins: Record<string, string>): string {
  let out = expr;
  for (const [name, value] of Object.entries(builtins)) out = out.split(`$${name}`).join(value);
  for (const [name, value] of Object.entries(vars)) {
    const text = Array.isArray(value)
      ? value.length === 1
        ? escapeRegex(value[0]!)
        : `(${value.map(escapeRegex).join('|')})`
      : value.all;
    out = out.replace(new RegExp(`\\$\\{${name}\\}|\\$${name}\\b`, 'g'), text);
  }
  return out;
}

function escapeRegex(v: string): string {
  return v.replace(/[\\^$*+?.()|[\]{}]/g, '\\$&');
}

/** Grafana's $__rate_interval: max($__interval + scrape interval, 4 × scrape interval), in seconds. */
export function rateInterval(intervalS: number, scrapeS: number): string {
  // Prometheus durations take no fractions: milliseconds
  return `${Math.round(Math.max(intervalS + scrapeS, 4 * scrapeS) * 1000)}ms`;
}
