import { describe, expect, it } from 'vitest';
import { nextAction, nextStage, sinceChangeWindowS, statusCohort, type RollbackStatus, type RolloutState } from '../../../enforcer/rollback/watch';
import { parseRollout, parseStatus } from '../../../enforcer/rollback/plane';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const at = (s: number) => ({ now: () => T0 + s * 1000 });
const opts = { healthyPeriodS: 100, minSample: 50, manualGates: false };
const stages = [10, 30, 60, 100];

function status(over: Partial<RollbackStatus> & { breach?: string[] } = {}): RollbackStatus {
  const breach = over.breach ?? [];
  const rules = ['missing_sponsor_ratio', 'policy_error_rate', 'policy_latency_p95_ms'].map((rule) => ({
    rule,
    value: breach.includes(rule) ? 0.5 : 0,
    threshold: rule === 'policy_latency_p95_ms' ? 300 : 0.01,
    breached: breach.includes(rule),
  }));
  return { action: breach.length ? 'rollback' : 'advance', window_s: 900, sample_size: 500, rules, ...over };
}

const state = (percent: number, updatedAtS = 0): RolloutState => ({ percent, stages, updatedAt: T0 + updatedAtS * 1000 });

describe('nextAction', () => {
  it('rolls back at once on a breach, naming the rule and its value', () => {
    const a = nextAction(state(30), { recent: status({ breach: ['policy_error_rate'] }) }, at(5), opts);
    expect(a).toMatchObject({ kind: 'rollback', from: 30, to: 0, breached: ['policy_error_rate'] });
    expect(a.reason).toMatch(/policy_error_rate 0\.5000 > 0\.01/);
  });

  it('stays at 0 while the rules are breached (no flapping)', () => {
    const a = nextAction(state(0), { recent: status({ breach: ['missing_sponsor_ratio'] }) }, at(1000), opts);
    expect(a).toMatchObject({ kind: 'hold', percent: 0 });
  });

  it('holds until the healthy period is over, and says how long is left', () => {
    const a = nextAction(state(10), { recent: status() }, at(40), opts);
    expect(a).toMatchObject({ kind: 'hold', percent: 10, remainingS: 60 });
    expect(a).not.toHaveProperty('need');
  });

  it('asks for the rules since the last change once the period is over, then advances', () => {
    const first = nextAction(state(10), { recent: status() }, at(150), opts);
    expect(first).toMatchObject({ kind: 'hold', need: 'since_change' });
    const a = nextAction(state(10), { recent: status(), sinceChange: status({ window_s: 150 }) }, at(150), opts);
    expect(a).toMatchObject({ kind: 'advance', from: 10, to: 30 });
  });

  it('does not advance on too small a sample or a breach since the last change', () => {
    const small = nextAction(state(30), { recent: status(), sinceChange: status({ sample_size: 49 }) }, at(150), opts);
    expect(small).toMatchObject({ kind: 'hold' });
    expect(small.reason).toMatch(/49 calls/);
    const bad = nextAction(state(30), { recent: status(), sinceChange: status({ breach: ['policy_latency_p95_ms'] }) }, at(150), opts);
    expect(bad).toMatchObject({ kind: 'hold' });
    expect(bad.reason).toMatch(/policy_latency_p95_ms/);
  });

  it('does not advance while an alert holds the stage (p95 over 200 ms), now or since the last change', () => {
    const alerts = [{ alert: 'policy_latency_p95_ms', value: 250, threshold: 200, firing: true }];
    const now = nextAction(state(10), { recent: status({ action: 'hold', alerts }), sinceChange: status() }, at(150), opts);
    expect(now).toMatchObject({ kind: 'hold' });
    expect(now.reason).toMatch(/policy_latency_p95_ms 250 > 200 now/);
    const since = nextAction(state(10), { recent: status(), sinceChange: status({ action: 'hold', alerts }) }, at(150), opts);
    expect(since.reason).toMatch(/since the last change/);
    const thin = nextAction(state(10), { recent: status(), sinceChange: status({ action: 'insufficient_data', sample_size: 80 }) }, at(150), opts);
    expect(thin).toMatchObject({ kind: 'hold' });
  });

  it('waits for approval with manual gates', () => {
    const a = nextAction(state(60), { recent: status(), sinceChange: status() }, at(150), { ...opts, manualGates: true });
    expect(a).toMatchObject({ kind: 'await_approval', from: 60, to: 100 });
  });

  it('is done at the last stage, and starts again from 0 after a healthy period', () => {
    expect(nextAction(state(100), { recent: status() }, at(1e6), opts)).toMatchObject({ kind: 'hold', percent: 100 });
    expect(nextAction(state(0), { recent: status(), sinceChange: status() }, at(150), opts)).toMatchObject({ kind: 'advance', from: 0, to: 10 });
  });

  it('insufficient data in the short window neither rolls back nor blocks an earned advance', () => {
    const recent = status({ action: 'insufficient_data', sample_size: 3 });
    expect(nextAction(state(10), { recent, sinceChange: status() }, at(150), opts)).toMatchObject({ kind: 'advance' });
  });

  it('cannot time a stage whose start the plane does not give', () => {
    const a = nextAction({ percent: 10, stages }, { recent: status() }, at(150), opts);
    expect(a).toMatchObject({ kind: 'hold' });
    expect(a.reason).toMatch(/does not say when/);
  });

  it('is a function of its inputs: the same inputs give the same action', () => {
    const obs = { recent: status(), sinceChange: status() };
    expect(nextAction(state(30), obs, at(150), opts)).toEqual(nextAction(state(30), obs, at(150), opts));
  });
});

describe('helpers', () => {
  it('picks stages and cohorts', () => {
    expect(nextStage(0, stages)).toBe(10);
    expect(nextStage(10, stages)).toBe(30);
    expect(nextStage(45, stages)).toBe(60);
    expect(nextStage(100, stages)).toBeUndefined();
    expect(statusCohort(0)).toBe('baseline');
    expect(statusCohort(10)).toBe('canary');
  });

  it('judges a stage on all of its time (and the minute it began), never on less than the rule window', () => {
    const o = { healthyPeriodS: 86_400, windowS: 900 };
    expect(sinceChangeWindowS(state(30, 0), at(2 * 86_400), o)).toBe(2 * 86_400 + 60);
    expect(sinceChangeWindowS(state(30, 0), at(30), o)).toBe(900);
    expect(sinceChangeWindowS({ percent: 30, stages }, at(30), o)).toBe(86_460);
  });

  it('parses the plane\'s rollout and status bodies, refusing bad ones with a code', () => {
    expect(parseRollout({ percent: 30, updated_at: '2026-01-01T00:00:10Z' })).toEqual({ percent: 30, stages, updatedAt: T0 + 10_000 });
    expect(parseRollout({ percent: 30, stages: [5, 50, 100], updated_at: T0, revision: 7 })).toEqual({
      percent: 30,
      stages: [5, 50, 100],
      updatedAt: T0,
      revision: '7',
    });
    expect(() => parseRollout({ percent: 'x' })).toThrow(expect.objectContaining({ code: 'ERR_PLANE_RESPONSE' }));
    expect(() => parseStatus({ action: 'maybe', rules: [] })).toThrow(/unexpected body/);
    expect(parseStatus(status()).action).toBe('advance');
  });
});
