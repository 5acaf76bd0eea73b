import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { openStore, type Store } from '../../../collector/store';
import { cachedLoader, registerRuleMetrics } from '../../../collector/rules/metrics';
import { resolveRulesConfig } from '../../../collector/rules/evaluate';
import { registry } from '../../../common/metrics';
import { tempDir } from '../../helpers/custody';

const dir = tempDir('custody-rule-metrics-');
let store: Store;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
});
afterAll(async () => {
  await store?.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('cachedLoader', () => {
  it('serves one read per TTL, shares an in-flight read and does not keep failures', async () => {
    let t = 0;
    let reads = 0;
    let fail = false;
    const load = cachedLoader(
      async () => {
        reads += 1;
        await new Promise((r) => setTimeout(r, 5));
        if (fail) throw new Error('down');
        return reads;
      },
      1000,
      () => t,
    );
    expect(await Promise.all([load(), load(), load()])).toEqual([1, 1, 1]);
    t = 999;
    expect(await load()).toBe(1);
    t = 1000;
    fail = true;
    await expect(load()).rejects.toThrow('down');
    fail = false;
    expect(await load()).toBe(3); // the failure was not cached
    expect(reads).toBe(3);
  });
});

describe('rule gauges', () => {
  it('are computed at scrape time from the rollups, cached between scrapes, and left out when storage fails', async () => {
    const now = Date.now();
    const values = Array.from({ length: 400 }, (_, i) => ({
      timestamp: new Date(now - 5 * 60_000 + i).toISOString(),
      sponsor_id: i < 2 ? '' : 'alice',
      agent_instance_id: 'a',
      tool_id: 'billing',
      decision: i < 8 ? 'error' : 'allow',
      // the plane answered every call: an error it logged is not an agent-only failure
      policy_decision_id: `d${i}`,
      policy_latency_ms: i % 20 === 0 ? 250 : 30,
      cohort: 'canary',
    }));
    await store.client.insert({ table: 'custody.audit_events', values, format: 'JSONEachRow' });
    // the plane's own log for the same calls: 8 errors, 20 answers at 250 ms
    const decisions = values.map((v, i) => ({
      timestamp: v.timestamp,
      policy_decision_id: v.policy_decision_id,
      decision: v.decision,
      agent_instance_id: 'a',
      tool_id: 'billing',
      cohort: 'canary',
      latency_ms: v.policy_latency_ms,
    }));
    await store.client.insert({ table: 'custody.policy_decisions', values: decisions, format: 'JSONEachRow' });
    let reads = 0;
    const metrics = registerRuleMetrics(
      { ...store, client: new Proxy(store.client, { get: (c, k) => (k === 'query' ? (...a: unknown[]) => (reads++, (c.query as any)(...a)) : (c as any)[k]) }) },
      { config: resolveRulesConfig(), log, cacheMs: 60_000 },
    );
    const scrape = async () => registry.metrics();
    const line = (text: string, series: string) => text.split('\n').find((l) => l.startsWith(`${series} `));
    const text = await scrape();
    expect(line(text, 'custody_missing_sponsor_ratio{cohort="canary"}')).toBe('custody_missing_sponsor_ratio{cohort="canary"} 0.005');
    expect(line(text, 'custody_policy_error_rate{cohort="canary"}')).toBe('custody_policy_error_rate{cohort="canary"} 0.02');
    // 400 values, 20 at 250 ms: the nearest-rank p95 (the 380th smallest) is 30
    expect(line(text, 'custody_policy_latency_p95_seconds{cohort="canary"}')).toBe('custody_policy_latency_p95_seconds{cohort="canary"} 0.03');
    expect(line(text, 'custody_rollback_rule_breached{rule="missing_sponsor_ratio",cohort="canary"}')).toMatch(/ 1$/);
    expect(line(text, 'custody_rollback_rule_breached{rule="policy_error_rate",cohort="canary"}')).toMatch(/ 1$/);
    expect(line(text, 'custody_rollback_rule_breached{rule="policy_latency_p95_ms",cohort="canary"}')).toMatch(/ 0$/);
    // missing sponsors are judged fleet-wide: every cohort's breach series says so
    expect(line(text, 'custody_missing_sponsor_ratio{cohort="fleet"}')).toBe('custody_missing_sponsor_ratio{cohort="fleet"} 0.005');
    expect(line(text, 'custody_rollback_rule_breached{rule="missing_sponsor_ratio",cohort="baseline"}')).toMatch(/ 1$/);
    // an empty cohort has no ratio series, but its breach series reads 0
    expect(line(text, 'custody_missing_sponsor_ratio{cohort="baseline"}')).toBeUndefined();
    expect(line(text, 'custody_policy_error_rate{cohort="unmanaged"}')).toBeUndefined();
    expect(line(text, 'custody_rollback_rule_breached{rule="policy_error_rate",cohort="unmanaged"}')).toMatch(/ 0$/);
    // an unlabelled prom-client gauge always has its one series: no token requests read 0
    expect(line(text, 'custody_token_issue_failure_ratio')).toBe('custody_token_issue_failure_ratio 0');
    const afterFirst = reads;
    expect(afterFirst).toBe(5); // one read of each rollup for every gauge
    await scrape();
    await scrape();
    expect(reads).toBe(afterFirst);
    metrics.close();

    // a store that cannot answer: the rule series go, the rest of /metrics stays
    await store.close();
    const broken = registerRuleMetrics(store, { config: resolveRulesConfig(), log, cacheMs: 0 });
    const down = await scrape();
    expect(line(down, 'custody_missing_sponsor_ratio{cohort="canary"}')).toBeUndefined();
    expect(down).toMatch(/# TYPE custody_missing_sponsor_ratio gauge/);
    broken.close();
  });
});
