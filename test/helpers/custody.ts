import https from 'node:https';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
export const CLI = path.join(ROOT, 'dist/cli/main.js');

export interface RunningCustody {
  proc: ChildProcess;
  /** control API base URL */
  url: string;
  /** OTLP base URL */
  otlpUrl: string;
  /** The OTLP/gRPC endpoint (`http://host:port`), '' when gRPC is off. */
  otlpGrpcUrl: string;
  dataDir: string;
  output(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function tempDir(prefix = 'custody-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Starts `custody <command>` (default `up`) as a real child process on ephemeral loopback ports
 * and waits until /readyz answers 200. Extra args are passed through.
 */
export async function startCustody(
  opts: {
    command?: string;
    args?: string[];
    demo?: boolean;
    dataDir?: string;
    env?: NodeJS.ProcessEnv;
    readyTimeoutMs?: number;
    /** The server certificate's authority (PEM), when custody serves over TLS (--tls-cert). */
    ca?: string;
  } = {},
): Promise<RunningCustody> {
  const dataDir = opts.dataDir ?? tempDir();
  const command = opts.command ?? 'up';
  // tests drive custody themselves: the seed scenario plays only when a test asks for it
  const demo = command === 'up' && !opts.demo ? ['--no-demo'] : [];
  const args = [CLI, command, ...demo, '--port', '0', '--otlp-port', '0', '--data-dir', dataDir, ...(opts.args ?? [])];
  const proc = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, CUSTODY_LOG_LEVEL: process.env.CUSTODY_LOG_LEVEL ?? 'warn', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  // the banner comes first and may take long on a loaded machine; readyTimeoutMs bounds the wait
  // for /readyz after it (a test of a collector that never becomes ready sets it short)
  const start = Date.now();
  const bannerDeadline = start + 90_000;
  let readyDeadline = start + (opts.readyTimeoutMs ?? 60_000);
  let url: string | undefined;
  let otlpUrl: string | undefined;
  let otlpGrpcUrl: string | undefined;
  while (url ? Date.now() < readyDeadline : Date.now() < bannerDeadline) {
    if (proc.exitCode !== null) throw new Error(`custody exited with ${proc.exitCode}:\n${out}`);
    if (!url) {
      url = /control API\s+(https?:\/\/\S+)/.exec(out)?.[1];
      if (url) readyDeadline = Math.max(readyDeadline, Date.now() + (opts.readyTimeoutMs ?? 60_000));
    }
    otlpUrl ??= /OTLP\s+(https?:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
    otlpGrpcUrl ??= /OTLP\/gRPC\s+(http:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
    if (url) {
      try {
        const status = url.startsWith('https:') ? (await tlsRequest(`${url}/readyz`, { ca: opts.ca })).status : (await fetch(`${url}/readyz`)).status;
        if (status === 200) break;
      } catch {
        /* not yet */
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!url) {
    proc.kill('SIGKILL');
    throw new Error(`custody did not become ready:\n${out}`);
  }
  return {
    proc,
    url,
    otlpUrl: otlpUrl ?? '',
    otlpGrpcUrl: otlpGrpcUrl ?? '',
    dataDir,
    output: () => out,
    stop: (signal = 'SIGTERM') =>
      new Promise((resolve) => {
        // gone already (exited, or killed by a signal: then exitCode stays null)
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
        // custody exits by itself within 30 s of a SIGTERM; a test never waits forever on it
        const kill = setTimeout(() => proc.kill('SIGKILL'), 90_000);
        proc.once('exit', (code) => {
          clearTimeout(kill);
          resolve(code);
        });
        proc.kill(signal);
      }),
  };
}

/** Polls `fn` until it returns a truthy value or the time runs out. */
export async function eventually<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 15_000, stepMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`condition not met within ${timeoutMs} ms${last ? `: ${String(last)}` : ''}`);
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `custody` CLI as a child process. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (d) => (stdout += d));
    proc.stderr!.on('data', (d) => (stderr += d));
    proc.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Writes rows into a data dir's store from a separate process before custody starts on it (chDB:
 * one process per data directory, so a test process cannot hold it while custody runs).
 */
export function seedStore(dataDir: string, rows: Record<string, unknown[]>): void {
  const script = `
    const { openStore } = require(${JSON.stringify(path.join(ROOT, 'dist/collector/store/index.js'))});
    let input = '';
    process.stdin.on('data', (d) => (input += d)).on('end', async () => {
      const tables = JSON.parse(input);
      const store = await openStore({ dataDir: ${JSON.stringify(dataDir)} });
      for (const [table, values] of Object.entries(tables)) {
        if (values.length) await store.client.insert({ table: 'custody.' + table, values, format: 'JSONEachRow' });
      }
      await store.close();
      process.exit(0);
    });`;
  const r = spawnSync(process.execPath, ['-e', script], { input: JSON.stringify(rows), encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`seeding ${dataDir} failed (${r.status}):\n${r.stderr}`);
}

/** An HTTPS request with a given server authority and, for mTLS, a client certificate and key (PEM). */
export function tlsRequest(
  url: string,
  o: { method?: string; body?: unknown; headers?: Record<string, string>; ca?: string | undefined; cert?: string; key?: string } = {},
): Promise<{ status: number; body: any; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = o.body === undefined ? undefined : Buffer.from(typeof o.body === 'string' ? o.body : JSON.stringify(o.body));
    const req = https.request(
      url,
      {
        method: o.method ?? (payload ? 'POST' : 'GET'),
        ...(o.ca ? { ca: o.ca } : {}),
        ...(o.cert ? { cert: o.cert, key: o.key } : {}),
        headers: { ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}), ...o.headers },
        agent: false,
        timeout: 20_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body, text });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within 20 s`)));
    req.on('error', reject);
    req.end(payload);
  });
}
