import fs from 'node:fs';
import path from 'node:path';
import { reportedAttributes } from '../../../enforcer/client/enforcer';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../common/errors';
import { RolloutConflictError, cohortBucket, cohortOf, inScope, openRolloutStore, rolloutView } from '../../../enforcer/policy/rollout';
import { tempDir } from '../../helpers/custody';

describe('cohorts', () => {
  it('are a stable hash of the agent instance id', () => {
    // first 32 bits of sha256("agent-1") = 0x6ff3b3bd → 0x6ff3b3bd / 2^32 * 100, in every process
    const b = cohortBucket('agent-1');
    expect(b).toBeCloseTo((0x6ff3b3bd / 2 ** 32) * 100, 12);
    expect(cohortBucket('agent-1')).toBe(b);
    expect(cohortOf('agent-1', b + 0.0001)).toBe('canary');
    expect(cohortOf('agent-1', b)).toBe('baseline');
  });

  it('put about percent % of instances in the canary, growing monotonically', () => {
    const ids = Array.from({ length: 20_000 }, (_, i) => `instance-${i}`);
    for (const percent of [0, 10, 30, 60, 100]) {
      const canary = ids.filter((id) => cohortOf(id, percent) === 'canary').length / ids.length;
      expect(Math.abs(canary - percent / 100)).toBeLessThan(0.015);
    }
    // an instance in the canary at 10 % is still there at 30 %
    for (const id of ids.slice(0, 2000)) if (cohortOf(id, 10) === 'canary') expect(cohortOf(id, 30)).toBe('canary');
    expect(ids.every((id) => cohortOf(id, 100) === 'canary')).toBe(true);
    expect(ids.every((id) => cohortOf(id, 0) === 'baseline')).toBe(true);
  });
});

describe('rollout state', () => {
  it('starts from the policy percent and persists changes across reopen', async () => {
    const file = path.join(tempDir(), 'policy', 'rollout.json');
    const store = openRolloutStore(file, 10, { now: () => Date.parse('2026-01-01T00:00:00Z') });
    expect(store.get()).toMatchObject({ percent: 10, actor: 'policy', incident: null });
    expect(fs.existsSync(file)).toBe(false);
    const { from, state } = await store.setPercent({ percent: 30, reason: 'healthy for 24h', actor: 'ops' });
    expect(from).toBe(10);
    expect(state).toMatchObject({ percent: 30, reason: 'healthy for 24h', actor: 'ops', updated_at: '2026-01-01T00:00:00.000Z' });
    await store.setIncident({ cache_ttl_s: 600, reason: 'plane degraded', actor: 'ops' });
    // a new process (a restart) reads what was stored, whatever the policy file now says
    const again = openRolloutStore(file, 60);
    expect(again.get()).toMatchObject({ percent: 30, incident: { cache_ttl_s: 600, reason: 'plane degraded' } });
    await again.setIncident({ cache_ttl_s: null, reason: 'over', actor: 'ops' });
    expect(openRolloutStore(file, 60).get().incident).toBeNull();
  });

  it('serializes concurrent changes', async () => {
    const file = path.join(tempDir(), 'rollout.json');
    const store = openRolloutStore(file, 10);
    const results = await Promise.all([10, 20, 30, 40].map((p) => store.setPercent({ percent: p + 1, reason: 'r', actor: 'a' })));
    expect(results.map((r) => r.from)).toEqual([10, 11, 21, 31]);
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).percent).toBe(41);
  });

  it('refuses a change made on a stale read', async () => {
    const store = openRolloutStore(path.join(tempDir(), 'rollout.json'), 10);
    const { state } = await store.setPercent({ percent: 30, reason: 'r', actor: 'a', ifRevision: 0, ifPercent: 10 });
    expect(state.revision).toBe(1);
    await expect(store.setPercent({ percent: 60, reason: 'r', actor: 'a', ifRevision: 0 })).rejects.toMatchObject({
      code: 'ERR_ROLLOUT_CONFLICT',
      expected: 'revision',
    });
    await expect(store.setPercent({ percent: 60, reason: 'r', actor: 'a', ifPercent: 10 })).rejects.toThrow(RolloutConflictError);
    expect(store.get()).toMatchObject({ percent: 30, revision: 1 });
    // a refused change does not block the next one
    expect((await store.setPercent({ percent: 60, reason: 'r', actor: 'a', ifRevision: 1 })).state.revision).toBe(2);
  });

  it('refuses a damaged state file naming it', () => {
    const file = path.join(tempDir(), 'rollout.json');
    fs.writeFileSync(file, '{"percent": 30,');
    expect(() => openRolloutStore(file, 10)).toThrow(ConfigError);
    fs.writeFileSync(file, JSON.stringify({ percent: 300, reason: '', actor: '', updated_at: '' }));
    expect(() => openRolloutStore(file, 10)).toThrow(/rollout.json: rollout state field 'percent'/);
  });

  it('reports the stage and the next step', () => {
    const base = { revision: 0, reason: '', actor: '', updated_at: '', incident: null };
    const staged = { percent: 10, stages: [10, 30, 60, 100] };
    expect(rolloutView({ ...base, percent: 0 }, staged)).toMatchObject({ stage: 0, next_percent: 10 });
    expect(rolloutView({ ...base, percent: 30 }, staged)).toMatchObject({ stage: 2, next_percent: 60 });
    expect(rolloutView({ ...base, percent: 45 }, staged)).toMatchObject({ stage: 2, next_percent: 60 });
    expect(rolloutView({ ...base, percent: 100 }, staged)).toMatchObject({ stage: 4, next_percent: null });
    expect(rolloutView({ ...base, percent: 10 }, { percent: 10, increment: 2, stages: [] })).toMatchObject({ stage: 0, next_percent: 12, increment: 2 });
  });
});

describe('a tier-scoped canary', () => {
  const scope = { 'customer.tier': ['free', 'trial'], region: ['eu'] };
  it('is canary only in scope, and there by the percent', () => {
    const inside = { 'customer.tier': 'free', region: 'eu' };
    expect(inScope(scope, inside)).toBe(true);
    expect(inScope(scope, { 'customer.tier': 'paid', region: 'eu' })).toBe(false);
    expect(inScope(scope, { 'customer.tier': 'free' })).toBe(false);
    expect(inScope(scope, undefined)).toBe(false);
    expect(cohortOf('any-instance', 100, scope, inside)).toBe('canary');
    expect(cohortOf('any-instance', 100, scope, { 'customer.tier': 'paid', region: 'eu' })).toBe('baseline');
    expect(cohortOf('any-instance', 0, scope, inside)).toBe('baseline');
    const id = 'instance-at-some-bucket';
    const bucket = cohortBucket(id);
    expect(cohortOf(id, bucket + 0.001, scope, inside)).toBe('canary');
    expect(cohortOf(id, bucket, scope, inside)).toBe('baseline');
  });

  it('GET /v1/rollout names the scope, null when unscoped', () => {
    const base = { percent: 10, revision: 0, reason: '', actor: '', updated_at: '', incident: null };
    expect(rolloutView(base, { percent: 10, stages: [10, 30], scope }).scope).toEqual(scope);
    expect(rolloutView(base, { percent: 10, stages: [10, 30] }).scope).toBeNull();
  });
});

describe('the attributes an agent reports with a check', () => {
  const attrs = { 'customer.tier': 'free', 'host.name': 'worker-1', long: 'x'.repeat(300) };
  it('the scope\'s only when the rollout is known; none for an unscoped one; what the plane takes when unknown', () => {
    expect(reportedAttributes(attrs, { 'customer.tier': ['free'] })).toEqual({ 'customer.tier': 'free' });
    expect(reportedAttributes(attrs, { region: ['eu'] })).toBeUndefined();
    expect(reportedAttributes(attrs, null)).toBeUndefined();
    expect(reportedAttributes(attrs, undefined)).toEqual({ 'customer.tier': 'free', 'host.name': 'worker-1' });
    const many = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, 'v']));
    expect(Object.keys(reportedAttributes(many, undefined)!)).toHaveLength(32);
  });
});
