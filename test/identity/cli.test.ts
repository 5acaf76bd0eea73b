import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jwksUrl } from '../../identity/client';
import { createTokenVerifier } from '../../identity/verify';
import { CLI, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { call } from '../helpers/tokens';

const run = promisify(execFile);

/** `custody …` as a person runs it: exit code, stdout, stderr. */
async function custody(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn', ...env }, ...(cwd ? { cwd } : {}), timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Starts a server command and waits for its banner, or for it to exit. */
function startServer(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ url?: string; code?: number | null; output: string; stop(): Promise<void> }> {
  const proc = spawn(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, CUSTODY_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const stop = () =>
    new Promise<void>((resolve) => {
      if (proc.exitCode !== null) return resolve();
      proc.once('exit', () => resolve());
      proc.kill('SIGTERM');
    });
  return new Promise((resolve) => {
    const onData = (d: Buffer) => {
      output += d;
      const url = /control API\s+(http:\/\/\S+)/.exec(output)?.[1];
      if (url && /agents\s+\d+ registered/.test(output)) resolve({ url, output, stop });
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.once('exit', (code) => resolve({ code, output, stop }));
  });
}

describe('custody token-service and the token commands (real processes)', () => {
  let svc: RunningCustody;
  const ADMIN = 'cli-admin-token';
  beforeAll(async () => {
    svc = await startCustody({ command: 'token-service', env: { CUSTODY_ADMIN_TOKEN: ADMIN } });
  });
  afterAll(() => svc.stop());

  it('starts alone, on loopback in open mode, and says so', () => {
    expect(svc.output()).toMatch(/custody token-service listening/);
    expect(svc.output()).toMatch(/OPEN MODE/);
  });

  it('custody token issue prints a token; a refusal exits 1 with the code', async () => {
    const ok = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--sponsor', 'alice', '--ttl', '300']);
    expect(ok.code, ok.stderr).toBe(0);
    const token = ok.stdout.trim();
    expect(token.split('.')).toHaveLength(3);
    expect(ok.stderr).toMatch(/token for 'billing'.*sponsor alice/);
    const verified = await custody(['token', 'verify', '--url', svc.url, '--tool', 'billing', token]);
    expect(verified.code, verified.stderr).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ sponsor_id: 'alice', ttl_seconds: 300 });
    const wrongTool = await custody(['token', 'verify', '--url', svc.url, '--tool', 'search', token]);
    expect(wrongTool.code).toBe(1);
    expect(wrongTool.stderr).toMatch(/ERR_TOKEN_AUDIENCE/);

    const json = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--sponsor', 'alice', '--tools', 'billing,search', '--json']);
    const parent = JSON.parse(json.stdout);
    const child = await custody(['token', 'exchange', '--url', svc.url, '--subject-token', parent.token, '--audience', 'search', '--json']);
    expect(child.code, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout).claims).toMatchObject({ parent_agent_id: parent.claims.agent_instance_id, tool: 'search', depth: 1 });

    const long = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--sponsor', 'alice', '--ttl', '901']);
    expect(long.code).toBe(1);
    expect(long.stderr).toMatch(/refused: ttl_too_long/);
    const nobody = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing']);
    expect([nobody.code, /sponsor_required/.test(nobody.stderr)]).toEqual([1, true]);
    const down = await custody(['token', 'issue', '--url', 'http://127.0.0.1:9', '--tool', 'billing', '--sponsor', 'a']);
    expect(down.code).toBe(2);
    const usage = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--ttl', 'soon']);
    expect(usage.code).toBe(2);
  });

  it('registers, lists, rotates and revokes agents; offboards sponsors', async () => {
    const env = { CUSTODY_ADMIN_TOKEN: ADMIN };
    const denied = await custody(['agent', 'register', '--url', svc.url, '--sponsor', 'alice', '--role', 'support', '--tools', 'billing'], { CUSTODY_ADMIN_TOKEN: 'wrong' });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/unauthorized/);
    const reg = await custody(['agent', 'register', '--url', svc.url, '--sponsor', 'alice', '--role', 'support', '--tools', 'billing,search', '--max-ttl', '120', '--name', 'triage'], env);
    expect(reg.code, reg.stderr).toBe(0);
    const credential = reg.stdout.trim();
    expect(credential).toMatch(/^cag\./);
    expect(reg.stderr).toMatch(/shown once/);

    const asAgent = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--json'], { CUSTODY_AGENT_CREDENTIAL: credential });
    expect(asAgent.code, asAgent.stderr).toBe(0);
    expect(JSON.parse(asAgent.stdout).claims).toMatchObject({ sponsor_id: 'alice', role: 'support', ttl_seconds: 120 });
    const mismatch = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--sponsor', 'mallory', '--credential', credential]);
    expect([mismatch.code, /sponsor_mismatch/.test(mismatch.stderr)]).toEqual([1, true]);

    const list = await custody(['agent', 'list', '--url', svc.url, '--sponsor', 'alice', '--json'], env);
    const [agent] = JSON.parse(list.stdout);
    expect(agent).toMatchObject({ name: 'triage', status: 'active' });
    const rotated = await custody(['agent', 'rotate', '--url', svc.url, agent.agent_id], env);
    expect(rotated.code).toBe(0);
    expect(rotated.stdout.trim()).not.toBe(credential);
    const old = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--credential', credential]);
    expect([old.code, /invalid_credential/.test(old.stderr)]).toEqual([1, true]);

    await custody(['agent', 'register', '--url', svc.url, '--sponsor', 'alice', '--role', 'user', '--tools', 'search'], env);
    const off = await custody(['sponsor', 'offboard', '--url', svc.url, 'alice', '--reason', 'left'], env);
    expect(off.code).toBe(0);
    expect(off.stdout).toMatch(/sponsor alice offboarded; 2 agent\(s\) revoked/);
    const after = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--credential', rotated.stdout.trim()]);
    expect(after.code).toBe(1);
    const openModeToo = await custody(['token', 'issue', '--url', svc.url, '--tool', 'billing', '--sponsor', 'alice']);
    expect([openModeToo.code, /sponsor_offboarded/.test(openModeToo.stderr)]).toEqual([1, true]);
  });

  it('a tool verifies tokens offline with the JWKS fetched once', async () => {
    const tokens = await Promise.all(
      ['billing', 'billing', 'search'].map(async (tool) => (await custody(['token', 'issue', '--url', svc.url, '--tool', tool, '--sponsor', 'bob'])).stdout.trim()),
    );
    const tool = createTokenVerifier({ issuer: 'agent-token-svc', jwks: jwksUrl(svc.url), timeoutMs: 1000 });
    await tool.verify(tokens[0]!, { audience: 'billing' });

    // rotate the key (admin API), then take the token service away entirely
    const rotated = await call(`${svc.url}/v1/tokens/keys/rotate`, { method: 'POST', auth: `Bearer ${ADMIN}` });
    expect(rotated.status).toBe(200);
    expect(await svc.stop()).toBe(0);
    await expect(fetch(`${svc.url}/healthz`)).rejects.toThrow();

    await expect(tool.verify(tokens[1]!, { audience: 'billing' })).resolves.toMatchObject({ sponsor_id: 'bob' });
    await expect(tool.verify(tokens[2]!, { audience: 'search' })).resolves.toMatchObject({ tool: 'search' });
    await expect(tool.verify(tokens[2]!, { audience: 'billing' })).rejects.toMatchObject({ code: 'ERR_TOKEN_AUDIENCE' });
    // a verifier that never fetched the keys has nothing to check with
    const late = createTokenVerifier({ issuer: 'agent-token-svc', jwks: jwksUrl(svc.url), timeoutMs: 1000 });
    await expect(late.verify(tokens[1]!)).rejects.toMatchObject({ code: 'ERR_TOKEN_JWKS_UNAVAILABLE' });
  });
});

describe('token service start-up', () => {
  it('uses ./token-service-config.yml from the working directory by default, --token-config otherwise', async () => {
    const cwd = tempDir();
    fs.writeFileSync(path.join(cwd, 'token-service-config.yml'), 'issuer: from-cwd\nsupported_tools: [billing]\n');
    const other = path.join(cwd, 'other.yml');
    fs.writeFileSync(other, 'issuer: from-flag\nsupported_tools: [search]\n');
    for (const [args, issuer, tool] of [[[], 'from-cwd', 'billing'], [['--token-config', 'other.yml'], 'from-flag', 'search']] as const) {
      const s = await startServer(['token-service', '--port', '0', '--data-dir', path.join(cwd, 'data'), ...args], cwd);
      try {
        expect(s.url, s.output).toBeDefined();
        const r = await call(`${s.url}/issue`, { json: { tool, sponsor_id: 'alice' } });
        expect(r.status).toBe(201);
        expect(r.body.claims.iss).toBe(issuer);
      } finally {
        await s.stop();
      }
    }
  });

  it('refuses a bad config file at start, naming file:line and field', async () => {
    const cwd = tempDir();
    fs.writeFileSync(path.join(cwd, 'bad.yml'), 'issuer: x\nsupported_tools: [billing]\nmax_ttl_seconds: lots\n');
    const r = await custody(['token-service', '--port', '0', '--data-dir', cwd, '--token-config', 'bad.yml'], {}, cwd);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${path.join(cwd, 'bad.yml')}:3: field 'max_ttl_seconds'`);
  });

  it('refuses open mode on a non-loopback address before listening', async () => {
    const cwd = tempDir();
    fs.writeFileSync(path.join(cwd, 'open.yml'), 'issuer: x\nsupported_tools: [billing]\nmode: open\n');
    const r = await custody(['token-service', '--host', '0.0.0.0', '--port', '0', '--data-dir', cwd, '--token-config', 'open.yml'], {}, cwd);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/field 'mode': open mode .* loopback only, and --host is 0\.0\.0\.0/);
    expect(r.stdout).not.toMatch(/listening/);
  });
});
