import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../helpers/custody';
import { ADMIN_TOKEN, policyFile, putRollout } from '../helpers/policy';

// Chaos: a real agent process (one enforcer for its whole life) against a real custody up, and
// against broken planes in their own processes. Every enforced call must be refused within the
// timeout plus a small margin, its tool body must not run, and its span must say decision=error.

const TIMEOUT_MS = 200;
const MARGIN_MS = 150;
const AGENT = path.join(__dirname, '../helpers/policy-agent.cjs');
const FAULT_PLANE = path.join(__dirname, '../helpers/policy-fault-plane.cjs');

interface CallResult {
  id: number;
  decision: string;
  allowed: boolean;
  enforced: boolean;
  elapsedMs: number;
  bodyRan: boolean;
  bodyRuns: number;
  reason: string;
  code?: string;
  type?: string;
  attributes: Record<string, unknown>;
}

interface Agent {
  proc: ChildProcess;
  call(tool: string, action: string): Promise<CallResult>;
  stop(): void;
}

function startAgent(env: Record<string, string>): Agent {
  const proc = spawn(process.execPath, [AGENT], {
    env: {
      ...process.env,
      CUSTODY_POLICY_TIMEOUT_MS: String(TIMEOUT_MS),
      CUSTODY_DECISION_CACHE_TTL_S: '0',
      CUSTODY_SPONSOR_ID: 'alice',
      CUSTODY_ROLE: 'support',
      CUSTODY_LOG_LEVEL: 'error',
      ...env,
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const waiting = new Map<number, (r: CallResult) => void>();
  readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
    const r = JSON.parse(line) as CallResult;
    waiting.get(r.id)?.(r);
    waiting.delete(r.id);
  });
  let next = 0;
  return {
    proc,
    call: (tool, action) =>
      new Promise((resolve, reject) => {
        const id = next++;
        waiting.set(id, resolve);
        setTimeout(() => reject(new Error(`agent gave no answer for call ${id}`)), 10_000).unref();
        proc.stdin!.write(JSON.stringify({ id, tool, action }) + '\n');
      }),
    stop: () => void proc.kill('SIGKILL'),
  };
}

async function startFaultPlane(mode: string): Promise<{ url: string; stop(): void }> {
  const proc = spawn(process.execPath, [FAULT_PLANE, mode, '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout!.once('data', (d) => resolve(Number(/listening (\d+)/.exec(String(d))?.[1])));
    proc.once('exit', (code) => reject(new Error(`fault plane exited with ${code}`)));
  });
  return { url: `http://127.0.0.1:${port}`, stop: () => void proc.kill('SIGKILL') };
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function expectFailedClosed(r: CallResult): void {
  expect(r.decision).toBe('error');
  expect(r.allowed).toBe(false);
  expect(r.enforced).toBe(true);
  expect(r.bodyRan).toBe(false);
  expect(r.code).toBe('ERR_POLICY_UNAVAILABLE');
  expect(r.type).toBe('policy_unavailable');
  expect(r.elapsedMs, `refused after ${r.elapsedMs.toFixed(1)} ms (${r.reason})`).toBeLessThanOrEqual(TIMEOUT_MS + MARGIN_MS);
  expect(r.attributes).toMatchObject({ 'custody.policy.decision': 'error', 'custody.enforced': true, 'custody.rollout.cohort': 'canary' });
}

/**
 * The plane's answer to a call the plane can answer: on a loaded machine a live plane may still miss
 * the 200 ms SLO now and then, and such a call must fail closed (its body not run); it is asked again.
 */
async function answered(agent: Agent, tool: string, action: string): Promise<CallResult> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await agent.call(tool, action);
    if (r.decision !== 'error' || Date.now() > deadline) return r;
    expect(r).toMatchObject({ allowed: false, bodyRan: false, code: 'ERR_POLICY_UNAVAILABLE' });
  }
}

describe('chaos: the enforcer fails closed', () => {
  let custody: RunningCustody;
  let port: number;
  let policy: string;
  const agents: Agent[] = [];
  const faults: { stop(): void }[] = [];

  beforeAll(async () => {
    port = await freePort();
    policy = policyFile();
    custody = await startCustody({ args: ['--port', String(port), '--policy', policy], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    expect((await putRollout(custody.url, { percent: 100, reason: 'enforce everyone' })).status).toBe(200);
  });
  afterAll(async () => {
    for (const a of agents) a.stop();
    for (const f of faults) f.stop();
    await custody?.stop('SIGKILL');
  });

  const faultCases: [string, string, number][] = [
    // fault, what, least time the refusal can take
    ['hang', 'a plane that accepts connections and never answers', TIMEOUT_MS - 10],
    ['slow', 'a plane that answers allow after 250 ms', TIMEOUT_MS - 10],
    ['garbage', 'a plane that answers garbage', 0],
    ['5xx', 'a plane that answers 503', 0],
  ];
  it.each(faultCases)('%s: %s', async (mode, _what, least) => {
    const fault = await startFaultPlane(mode);
    faults.push(fault);
    const agent = startAgent({ CUSTODY_TOKEN_URL: custody.url, CUSTODY_POLICY_URL: fault.url, CUSTODY_AGENT_INSTANCE_ID: `chaos-${mode}` });
    agents.push(agent);
    for (let i = 0; i < 6; i++) {
      const r = await agent.call('search', i % 2 ? 'call' : 'lookup');
      expectFailedClosed(r);
      expect(r.elapsedMs).toBeGreaterThanOrEqual(least);
      expect(r.bodyRuns).toBe(0);
    }
  });

  it('a token service that hangs', async () => {
    const fault = await startFaultPlane('hang');
    faults.push(fault);
    const agent = startAgent({ CUSTODY_TOKEN_URL: fault.url, CUSTODY_POLICY_URL: custody.url, CUSTODY_AGENT_INSTANCE_ID: 'chaos-token-hang' });
    agents.push(agent);
    for (let i = 0; i < 3; i++) {
      const r = await agent.call('search', 'call');
      expectFailedClosed(r);
      expect(r.reason).toMatch(/token/);
    }
  });

  it('the plane killed, then restarted: the same agent is refused, then allowed again', async () => {
    const agent = startAgent({ CUSTODY_URL: custody.url, CUSTODY_AGENT_INSTANCE_ID: 'chaos-restart' });
    agents.push(agent);
    const before = await answered(agent, 'search', 'call');
    expect(before).toMatchObject({ decision: 'allow', allowed: true, bodyRan: true, enforced: true });

    await custody.stop('SIGKILL');
    for (let i = 0; i < 6; i++) {
      const r = await agent.call('search', i % 2 ? 'call' : 'lookup');
      expectFailedClosed(r);
      expect(r.bodyRuns).toBe(1);
    }

    custody = await startCustody({ dataDir: custody.dataDir, args: ['--port', String(port), '--policy', policy], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN } });
    const pid = agent.proc.pid;
    // the restarted token service has new keys: the agent's kept token is refused once and replaced
    const after = await eventually(async () => {
      const r = await agent.call('search', 'call');
      return r.allowed ? r : undefined;
    }, 20_000);
    expect(after).toMatchObject({ decision: 'allow', bodyRan: true, enforced: true, bodyRuns: 2 });
    expect(agent.proc.pid).toBe(pid);
    expect(agent.proc.exitCode).toBeNull();
    // and a deny is still a deny
    const deny = await answered(agent, 'file-store', 'delete');
    expect(deny).toMatchObject({ decision: 'deny', allowed: false, bodyRan: false, code: 'ERR_POLICY_DENIED', type: 'policy_denied' });
  });
});
