import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/custody';

const run = promisify(execFile);

/**
 * custody/register starts on the Node.js running the suite (.ci/run runs it on 20, 22 and 24, and
 * the scenario on 26): the one-liner that died on Node 22 with "Cannot read properties of undefined
 * (reading 'resolve')" before its first line, an ESM app with --import, and a start that cannot
 * succeed, which must say why in one line and not run the agent unenforced.
 */
describe(`custody/register on Node ${process.version}`, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-register-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  // nothing listens here: telemetry fails open, and no tool is called
  const env = { ...process.env, NODE_OPTIONS: '', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', CUSTODY_URL: 'http://127.0.0.1:9' };

  it('node --require custody/register -e runs the agent', async () => {
    const { stdout } = await run(process.execPath, ['--require', 'custody/register', '-e', 'console.log("agent ran")'], { cwd: ROOT, env });
    expect(stdout.trim()).toBe('agent ran');
  });

  it('node --import custody/register runs an ES module app that imports an ESM-only package and requires a CommonJS one', async () => {
    const app = path.join(tmp, 'app.mjs');
    fs.writeFileSync(
      app,
      [
        `import { createRequire } from 'node:module';`,
        `import { SignJWT } from ${JSON.stringify(require.resolve('jose'))};`,
        `const require = createRequire(import.meta.url);`,
        `const yaml = require(${JSON.stringify(require.resolve('yaml'))});`,
        `console.log(typeof SignJWT, typeof yaml.parse);`,
      ].join('\n'),
    );
    const { stdout } = await run(process.execPath, ['--import', 'custody/register', app], { cwd: ROOT, env });
    expect(stdout.trim()).toBe('function function');
  });

  it('a start that cannot succeed says why in one line on stderr, exits 1, and the agent never runs', async () => {
    const missing = path.join(tmp, 'no-such-tool-map.yaml');
    const result = await run(process.execPath, ['--require', 'custody/register', '-e', 'console.log("agent ran")'], {
      cwd: ROOT,
      env: { ...env, CUSTODY_TOOL_MAP: missing },
    }).then(
      () => ({ code: 0, stdout: 'agent ran', stderr: '' }),
      (err: { code: number; stdout: string; stderr: string }) => err,
    );
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    const lines = result.stderr.trim().split('\n').filter((l) => l.startsWith('custody:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('could not start');
    expect(lines[0]).toContain('no-such-tool-map.yaml');
  });
});
