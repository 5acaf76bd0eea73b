import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ENV } from '../../common/names';
import { cohortOf } from '../../enforcer/policy/rollout';
import { formatTrail } from '../commands/audit';
import type { AuditTrail } from '../../collector/audit/queries';
import { startOutageSwitch } from './proxy';
import { callCounts, renderSnapshot, type Snapshot } from './summary';

/**
 * The seed scenario, played against a running `custody up` with real agent processes loaded with
 * `--require custody/register`: a support assistant (alice, role support) triaging tickets through
 * MCP tools and handing refunds to a sub-agent process; a customer agent the policy denies
 * billing; the rest of the fleet in shadow; a policy-plane outage the enforcer fails closed on; an
 * agent without a sponsor; then the rollback job reacting to what the outage did to the rules.
 */
export interface ScenarioOptions {
  /** control API of the running custody */
  url: string;
  otlpUrl: string;
  dataDir: string;
  out: NodeJS.WritableStream & { isTTY?: boolean };
  /** $CUSTODY_ADMIN_TOKEN, to move the rollout back to its first stage. */
  adminToken?: string | undefined;
  /** How long the policy plane is cut off (ms). */
  outageMs?: number;
  /** How long to wait for the rollback job to react (ms). */
  rollbackWaitMs?: number;
}

export interface AgentReport {
  agent: { agentInstanceId: string; parentAgentId?: string; sponsorId?: string; role?: string };
  /** `at`: when the agent made the call (epoch ms). */
  calls: { tool: string; ok: boolean; at: number; code?: string; message?: string }[];
  refunds?: AgentReport[];
  ticket?: string;
}

export interface ScenarioResult {
  assistant: AgentReport[];
  customer: AgentReport;
  fleet: AgentReport[];
  unsponsored: AgentReport;
  /** A script without custody/register calling the guarded billing API directly. */
  rogue: AgentReport;
  duringOutage: AgentReport;
  toolServerSaw: { tool: string }[];
  rolledBack: boolean;
  /** When the rollout went to 0 (epoch ms), if it did. */
  rolledBackAt?: number;
  /** When the policy plane was cut off and restored (epoch ms). */
  outage: { from: number; to: number };
  final: Snapshot;
  refundTrail?: { refundAgent: string; trail: AuditTrail };
}

const EXAMPLES = path.resolve(__dirname, '../../../examples/support-assistant');
const PACKAGE_ROOT = path.resolve(__dirname, '../../..');
const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Agent instance ids with a given prefix that fall in the requested cohort at this rollout percent. */
export function pickInstances(prefix: string, cohort: 'canary' | 'baseline', percent: number, count: number): string[] {
  const ids: string[] = [];
  for (let k = 1; ids.length < count && k < 100_000; k++) {
    const id = `${prefix}-${k}`;
    if (cohortOf(id, percent) === cohort) ids.push(id);
  }
  return ids;
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`${url} answered ${res.status}`);
  return (await res.json()) as T;
}

/**
 * The scenario starts the gate at the policy's first stage (10 %): on a data dir where an earlier
 * run was rolled back, a person (here, the scenario, with the admin token) moves it back.
 */
async function canaryPercent(url: string, token: string | undefined): Promise<number> {
  let rollout = await getJson<{ percent: number; stages?: number[] }>(`${url}/v1/rollout`);
  const first = rollout.stages?.[0] ?? 10;
  if (rollout.percent !== first && token) {
    const res = await fetch(`${url}/v1/rollout`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ percent: first, reason: 'seed scenario: the canary starts at the first stage', actor: 'custody-demo' }),
      signal: AbortSignal.timeout(5000),
    });
    if (res.ok) rollout = (await res.json()) as typeof rollout;
  }
  if (!(rollout.percent > 0)) {
    throw new Error(`the rollout is at ${rollout.percent} % and could not be moved to ${first} % (set ${ENV.ADMIN_TOKEN}, or use a fresh --data-dir)`);
  }
  return rollout.percent;
}

export async function snapshot(url: string): Promise<Snapshot> {
  const [metrics, status] = await Promise.all([
    fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text()),
    getJson<{ action: string; sample_size: number; rules: Snapshot['rules']; rollout: { percent: number | null } }>(`${url}/v1/rollback/status`),
  ]);
  return { ...callCounts(metrics), rules: status.rules, action: status.action, sampleSize: status.sample_size, rolloutPercent: status.rollout.percent };
}

export async function playScenario(options: ScenarioOptions): Promise<ScenarioResult> {
  const { url, out } = options;
  const target = new URL(url);
  const outage = await startOutageSwitch({ host: target.hostname, port: Number(target.port) });
  const toolsLog = path.join(options.dataDir, 'demo-tools.log');
  fs.rmSync(toolsLog, { force: true });

  // the live summary
  let phase = 'starting';
  let shown = 0;
  let last: Snapshot | undefined;
  const live = out.isTTY === true;
  const draw = async () => {
    try {
      last = await snapshot(url);
    } catch {
      return;
    }
    const lines = renderSnapshot(last, phase);
    if (live) {
      out.write((shown ? `\x1b[${shown}A` : '') + lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
      shown = lines.length;
    }
  };
  const say = async (text: string) => {
    phase = text;
    if (live) {
      shown = 0;
      out.write(`\n▶ ${text}\n`);
      await draw();
    } else {
      await draw();
      out.write(`\n▶ ${text}\n${last ? renderSnapshot(last, text).slice(1).map((l) => `  ${l}`).join('\n') + '\n' : ''}`);
    }
  };
  const ticker = live ? setInterval(() => void draw(), 1000) : undefined;

  const percent = await canaryPercent(url, options.adminToken);
  const agentEnv = (extra: Record<string, string | undefined>): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = { ...process.env, TOOLS_LOG: toolsLog };
    for (const k of Object.keys(env)) if (k.startsWith('CUSTODY_') || k.startsWith('OTEL_') || k === 'NODE_OPTIONS') delete env[k];
    Object.assign(env, {
      [ENV.URL]: outage.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: options.otlpUrl,
      [ENV.LOG_LEVEL]: 'error',
    });
    for (const [k, v] of Object.entries(extra)) if (v !== undefined) env[k] = v;
    return env;
  };
  const agent = async (script: string, env: Record<string, string | undefined>, withCustody = true): Promise<AgentReport> => {
    let stdout: string;
    try {
      ({ stdout } = await run(process.execPath, [...(withCustody ? ['--require', 'custody/register'] : []), path.join(EXAMPLES, script)], {
        cwd: PACKAGE_ROOT,
        env: agentEnv(env),
        maxBuffer: 16 * 1024 * 1024,
      }));
    } catch (err) {
      // an agent that died says why on stderr (custody/register prints one line when it cannot start)
      const { code, signal, stderr } = err as { code?: number | string; signal?: string; stderr?: string };
      const why = (stderr ?? '').trim().split('\n').slice(-5).join('\n') || '(nothing on stderr)';
      throw new Error(`agent ${script} ${signal ? `died of ${signal}` : `exited with ${code}`}:\n${why}`);
    }
    return JSON.parse(stdout.trim().split('\n').pop()!) as AgentReport;
  };

  try {
    const [assistantId, secondShiftId, nightShiftId] = pickInstances('support-assistant', 'canary', percent, 3);
    const [customerId] = pickInstances('customer-agent', 'canary', percent, 1);
    const [unsponsoredId] = pickInstances('unsponsored-agent', 'canary', percent, 1);
    const fleetIds = pickInstances('fleet-agent', 'baseline', percent, 4);

    await say(`support assistant triages 60 tickets for alice (role support, canary at ${percent} %); a customer agent then ${fleetIds.length} fleet agents in shadow`);
    const support = { [ENV.SPONSOR_ID]: 'alice', [ENV.ROLE]: 'support', [ENV.AGENT_NAME]: 'support-assistant' };
    const [firstShift, customer] = await Promise.all([
      agent('assistant.cjs', { ...support, [ENV.AGENT_INSTANCE_ID]: assistantId, TICKETS: '1-60' }),
      agent('user-agent.cjs', { [ENV.SPONSOR_ID]: 'bob', [ENV.ROLE]: 'user', [ENV.AGENT_NAME]: 'customer-agent', [ENV.AGENT_INSTANCE_ID]: customerId }),
    ]);
    const fleet = await Promise.all(
      fleetIds.map((id) => agent('fleet-agent.cjs', { [ENV.SPONSOR_ID]: 'carol', [ENV.ROLE]: 'support', [ENV.AGENT_NAME]: 'fleet-agent', [ENV.AGENT_INSTANCE_ID]: id })),
    );

    await say('a script without custody/register calls the billing API directly: the guard in front of billing refuses it');
    const rogue = await agent('rogue-refund.cjs', {}, false);

    const outageMs = options.outageMs ?? 4000;
    // Two canary agents work through the outage: the rules never let one instance's failure reports
    // roll the gate back on their own, and a real outage is seen by every agent that asks.
    await say(`policy plane outage for ${outageMs / 1000} s while two assistants of the second shift work: calls fail closed`);
    const connectedBefore = outage.connections;
    const secondShiftRuns = [
      agent('assistant.cjs', { ...support, [ENV.AGENT_INSTANCE_ID]: secondShiftId, TICKETS: '61-68', TICKET_PAUSE_MS: '150' }),
      agent('assistant.cjs', { ...support, [ENV.AGENT_INSTANCE_ID]: nightShiftId, TICKETS: '69-75', TICKET_PAUSE_MS: '150' }),
    ];
    // cut once both agents talk to custody, so the outage falls on their work however long they take to start
    for (const until = Date.now() + 30_000; outage.connections < connectedBefore + 2 && Date.now() < until; ) await sleep(20);
    outage.cut();
    const outageFrom = Date.now();
    await sleep(outageMs);
    // on a loaded machine the agents may not have asked in that time: the outage lasts until they have
    for (const until = Date.now() + 30_000; outage.refusedCalls < 2 && Date.now() < until; ) await sleep(20);
    outage.restore();
    const outageTo = Date.now();
    await say('policy plane back: the same agent processes succeed again');
    const [secondShift, nightShift] = await Promise.all(secondShiftRuns);
    // one report for both, the second shift's agent first
    const duringOutage: AgentReport = {
      ...secondShift!,
      calls: [...secondShift!.calls, ...nightShift!.calls],
      ...(secondShift!.refunds || nightShift!.refunds ? { refunds: [...(secondShift!.refunds ?? []), ...(nightShift!.refunds ?? [])] } : {}),
    };

    await say('an agent started without a sponsor');
    const unsponsored = await agent('anonymous-agent.cjs', { [ENV.AGENT_NAME]: 'unsponsored-agent', [ENV.AGENT_INSTANCE_ID]: unsponsoredId });

    await say('rollback job evaluates the canary: the outage pushed the policy error rate over 1 %');
    let rolledBack = false;
    let rolledBackAt: number | undefined;
    const deadline = Date.now() + (options.rollbackWaitMs ?? 45_000);
    while (Date.now() < deadline) {
      const r = await getJson<{ percent: number; updated_at?: string }>(`${url}/v1/rollout`);
      if (r.percent === 0) {
        rolledBack = true;
        if (r.updated_at) rolledBackAt = Date.parse(r.updated_at);
        break;
      }
      await sleep(1000);
    }
    await say(rolledBack ? 'rolled back: the policy gate is at 0 % until a person or a healthy period moves it' : 'the rollback job has not acted yet (see custody rollback check)');

    // the chain of custody of one refund: alice → assistant → refund sub-agent → billing.refund,
    // one the plane allowed where there is one (on a loaded machine a refund in shadow may have run
    // on a plane error)
    let refundTrail: ScenarioResult['refundTrail'];
    let refund: AgentReport | undefined;
    const ran = (firstShift.refunds ?? []).filter((r) => r.calls.some((c) => c.tool === 'billing.refund' && c.ok));
    const allowed = (t: AuditTrail) => t.agent.calls.some((c) => c.decision === 'allow');
    for (const candidate of ran) {
      const id = candidate.agent.agentInstanceId;
      let trail: AuditTrail | undefined;
      for (let i = 0; i < 50 && !trail; i++) {
        const got = await getJson<AuditTrail>(`${url}/v1/audit/trail/${encodeURIComponent(id)}`).catch(() => undefined);
        if (got && got.ancestors.length && got.agent.calls.length) trail = got;
        else await sleep(200);
      }
      if (trail && (!refundTrail || (allowed(trail) && !allowed(refundTrail.trail)))) {
        refundTrail = { refundAgent: id, trail };
        refund = candidate;
      }
      if (refundTrail && allowed(refundTrail.trail)) break;
    }
    if (refundTrail) out.write(`\nchain of custody of refund ${refund!.ticket} (custody audit trail ${refundTrail.refundAgent}):\n${formatTrail(refundTrail.trail)}\n`);

    const toolServerSaw = fs.existsSync(toolsLog)
      ? fs.readFileSync(toolsLog, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { tool: string })
      : [];
    const final = await snapshot(url);
    return {
      assistant: [firstShift],
      customer,
      fleet,
      unsponsored,
      rogue,
      duringOutage,
      toolServerSaw,
      rolledBack,
      ...(rolledBackAt !== undefined ? { rolledBackAt } : {}),
      outage: { from: outageFrom, to: outageTo },
      final,
      ...(refundTrail ? { refundTrail } : {}),
    };
  } finally {
    if (ticker) clearInterval(ticker);
    await outage.close();
  }
}
