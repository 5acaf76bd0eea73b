import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startCustody, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, check, issue, policyFile, putRollout } from '../../helpers/policy';

// Three real plane processes over one state: `custody up` owns the rollout and the single-use
// claims; two `custody policy-plane --state-url` replicas share them.
const SERVICE_TOKEN = 'replica-test-service-credential';

async function rolloutOf(url: string): Promise<{ status: number; percent: number; revision: number; etag: string | null }> {
  const res = await fetch(`${url}/v1/rollout`);
  const body = (await res.json()) as { percent: number; revision: number };
  return { status: res.status, percent: body.percent, revision: body.revision, etag: res.headers.get('etag') };
}

function startReplica(owner: string, policy: string, env: Record<string, string> = {}): Promise<RunningCustody> {
  return startCustody({
    command: 'policy-plane',
    args: ['--state-url', owner, '--token-url', owner, '--policy', policy],
    env: { CUSTODY_SERVICE_TOKEN: SERVICE_TOKEN, ...env },
  });
}

describe('policy-plane replicas over one shared state', () => {
  let owner: RunningCustody;
  let replicas: RunningCustody[] = [];
  let policy: string;

  beforeAll(async () => {
    policy = policyFile();
    owner = await startCustody({ args: ['--policy', policy], env: { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_SERVICE_TOKEN: SERVICE_TOKEN } });
    replicas = await Promise.all([startReplica(owner.url, policy), startReplica(owner.url, policy)]);
  });
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await owner?.stop();
  });

  const planes = () => [owner, ...replicas];

  it('a change made through any plane is in force on all within 2 s, under one revision', async () => {
    const before = await rolloutOf(owner.url);
    const changed = await putRollout(replicas[0]!.url, { percent: 0, reason: 'test: through replica A', actor: 'ops' });
    expect(changed.status).toBe(200);
    expect(changed.body).toMatchObject({ percent: 0, revision: before.revision + 1 });
    // every plane answers the owner's state, percent and revision (replicas read it every 500 ms;
    // the time it takes is measured in bench/, not asserted here)
    await eventually(async () => {
      const all = await Promise.all(planes().map((p) => rolloutOf(p.url)));
      return all.every((r) => r.percent === 0 && r.revision === before.revision + 1) ? all : undefined;
    }, 15_000, 50);

    // and the checks follow: an agent in any cohort is now baseline (shadow) at every plane
    const { token } = await issue(owner.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'replica-agent-1' });
    for (const p of planes()) {
      const r = await check(p.url, { token, tool: 'search', action: 'call' });
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ decision: 'allow', rollout_percent: 0, cohort: 'baseline', enforced: false });
    }
  });

  it('compare-and-set is global: of concurrent changes at one revision, exactly one wins', async () => {
    const { revision } = await rolloutOf(owner.url);
    const tries = planes().map((p, i) =>
      putRollout(p.url, { percent: 10 + i * 10, reason: `test: race ${i}` }, { authorization: `Bearer ${ADMIN_TOKEN}`, 'if-match': `"${revision}"` }),
    );
    const answers = await Promise.all(tries);
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses).toEqual([200, 412, 412]);
    const winner = answers.find((a) => a.status === 200)!;
    expect(winner.body.revision).toBe(revision + 1);
    for (const lost of answers.filter((a) => a.status === 412)) expect(lost.body.error.code).toBe('rollout_conflict');
    // no two states ever share a revision: every plane settles on the winner's
    await eventually(async () => {
      const all = await Promise.all(planes().map((p) => rolloutOf(p.url)));
      return all.every((r) => r.revision === revision + 1 && r.percent === winner.body.percent);
    }, 10_000, 50);
  });

  it('a rollout change without the credential is refused at a replica as at the owner', async () => {
    const r = await putRollout(replicas[1]!.url, { percent: 100, reason: 'test: no credential' }, {});
    expect(r.status).toBe(401);
    const wrong = await putRollout(replicas[1]!.url, { percent: 100, reason: 'test: wrong credential' }, { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect((await rolloutOf(owner.url)).percent).not.toBe(100);
  });

  it('a single-use token used at one replica is refused at every other plane', async () => {
    const { token } = await issue(owner.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'replica-agent-2' });
    const first = await check(replicas[0]!.url, { token, tool: 'billing', action: 'refund' });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ decision: 'allow', single_use_token: true });
    for (const p of [replicas[1]!, owner, replicas[0]!]) {
      const again = await check(p.url, { token, tool: 'billing', action: 'refund' });
      expect(again.status).toBe(200);
      expect(again.body.decision).toBe('deny');
      expect(again.body.reason).toMatch(/ERR_TOKEN_REPLAY/);
    }
    // used at the owner first, refused at a replica too
    const other = await issue(owner.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'replica-agent-3' });
    expect((await check(owner.url, { token: other.token, tool: 'billing', action: 'refund' })).body.decision).toBe('allow');
    expect((await check(replicas[1]!.url, { token: other.token, tool: 'billing', action: 'refund' })).body.reason).toMatch(/ERR_TOKEN_REPLAY/);
  });

  it('claims at the owner need the service credential', async () => {
    const res = await fetch(`${owner.url}/v1/state/replay`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jti: 'x', exp: 9_999_999_999 }) });
    expect(res.status).toBe(401);
    const bad = await fetch(`${owner.url}/v1/state/replay`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${SERVICE_TOKEN}` },
      body: JSON.stringify({ jti: 'x' }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/'exp'/);
  });

  it('without the shared state: replicas keep the last rollout and say so; single-use tokens fail closed; a new replica decides nothing', async () => {
    const { token: search } = await issue(owner.url, { tool: 'search', sponsor_id: 'alice', role: 'support', agent_instance_id: 'replica-agent-4' });
    const { token: billing } = await issue(owner.url, { tool: 'billing', sponsor_id: 'alice', role: 'support', agent_instance_id: 'replica-agent-5' });
    // the replicas have fetched the token service's keys before it goes
    for (const r of replicas) expect((await check(r.url, { token: search, tool: 'search', action: 'call' })).body.decision).toBe('allow');
    const last = await rolloutOf(owner.url);
    const ownerUrl = owner.url;
    await owner.stop('SIGKILL');

    for (const r of replicas) {
      const ready = await eventually(async () => {
        const res = await fetch(`${r.url}/readyz`);
        const body = (await res.json()) as { status: string; details?: Record<string, string> };
        return body.details?.['shared-state'] ? { status: res.status, body } : undefined;
      }, 10_000);
      expect(ready.status).toBe(200);
      expect(ready.body.details!['shared-state']).toMatch(new RegExp(`unreachable: serving rollout revision ${last.revision}`));
      expect(await rolloutOf(r.url)).toMatchObject({ status: 200, percent: last.percent, revision: last.revision });
      const allowed = await check(r.url, { token: search, tool: 'search', action: 'call' });
      expect(allowed.body).toMatchObject({ decision: 'allow', rollout_percent: last.percent });
      const single = await check(r.url, { token: billing, tool: 'billing', action: 'refund' });
      expect(single.status).toBe(503);
      expect(single.body.error.code).toBe('token_replay_unavailable');
      // a change cannot be made without the owner
      const moved = await putRollout(r.url, { percent: 100, reason: 'test: owner gone' });
      expect(moved.status).toBe(503);
      expect(moved.body.error.code).toBe('state_unavailable');
    }

    // a replica started now has no state to decide with: not ready, and it answers no check
    const late = await startCustody({
      command: 'policy-plane',
      args: ['--state-url', ownerUrl, '--token-url', ownerUrl, '--policy', policy],
      env: { CUSTODY_SERVICE_TOKEN: SERVICE_TOKEN },
      readyTimeoutMs: 1000,
    });
    replicas.push(late);
    const readyz = await fetch(`${late.url}/readyz`);
    expect(readyz.status).toBe(503);
    expect(((await readyz.json()) as { details: Record<string, string> }).details['shared-state']).toMatch(/not read yet/);
    const refused = await check(late.url, { token: search, tool: 'search', action: 'call' });
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe('state_unavailable');
    expect((await rolloutOf(late.url)).status).toBe(503);
  });
});
