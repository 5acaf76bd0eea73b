// `custody collector` in its own process on free ports, for the ingest benches.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Starts the collector on `dataDir` and resolves once /readyz answers: its OTLP/HTTP, OTLP/gRPC and control URLs. */
export async function startCollector(dataDir) {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/cli/main.js'), 'collector', '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
    cwd: ROOT,
    env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  for (let i = 0; i < 600; i++) {
    const otlp = /OTLP\s+(http:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
    const grpc = /OTLP\/gRPC\s+(http:\/\/[^\s/]+:\d+)/.exec(out)?.[1];
    const control = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (otlp && grpc && control) {
      const r = await fetch(`${control}/readyz`).catch(() => undefined);
      if (r?.status === 200) return { child, otlp, grpc, control };
    }
    if (child.exitCode !== null) throw new Error(`collector exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('collector did not become ready');
}
