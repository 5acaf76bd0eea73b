import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../collector/store';
import { createLogger } from '../../common/log';
import { ROOT, eventually, runCli, startCustody, tempDir, type RunningCustody } from '../helpers/custody';

// Who may write which record, tried as an attacker would against a real `custody up`: forged
// tool-call spans, forged decision-log and token-event spans, an agent's credential used to
// speak for another sponsor, and scoped service credentials used beyond their scope.

const hex = (n: number) => crypto.randomBytes(n).toString('hex');
const nowNs = () => BigInt(Date.now()) * 1_000_000n;
const str = (key: string, v: string | number | boolean) => ({
  key,
  value: typeof v === 'string' ? { stringValue: v } : typeof v === 'boolean' ? { boolValue: v } : { doubleValue: v },
});

interface SpanSpec {
  name: string;
  attrs: Record<string, string | number | boolean>;
}

function otlpJson(spans: SpanSpec[], service = 'forger'): string {
  const t = nowNs();
  return JSON.stringify({
    resourceSpans: [
      {
        resource: { attributes: [str('service.name', service)] },
        scopeSpans: [
          {
            spans: spans.map((s, i) => ({
              traceId: hex(16),
              spanId: hex(8),
              name: s.name,
              kind: 1,
              startTimeUnixNano: String(t + BigInt(i)),
              endTimeUnixNano: String(t + BigInt(i) + 3_000_000n),
              attributes: Object.entries(s.attrs).map(([k, v]) => str(k, v)),
            })),
          },
        ],
      },
    ],
  });
}

/** A canary tool call the plane "failed": what the rollback rules roll back on. */
function errorCall(sponsor: string, instance: string, extra: Record<string, string | number | boolean> = {}): SpanSpec {
  return {
    name: 'execute_tool billing',
    attrs: {
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.name': 'billing',
      'custody.sponsor_id': sponsor,
      'custody.agent_instance_id': instance,
      'custody.tool_id': 'billing',
      'custody.action': 'refund',
      'custody.policy.decision': 'error',
      'custody.policy.latency_ms': 450,
      'custody.policy.cached': false,
      'custody.enforced': true,
      'custody.rollout.cohort': 'canary',
      'error.type': 'policy_unavailable',
      ...extra,
    },
  };
}

async function post(otlpUrl: string, body: string, authorization?: string): Promise<Response> {
  return fetch(`${otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
    body,
  });
}

async function json(url: string, init: RequestInit = {}): Promise<{ status: number; body: any }> {
  const r = await fetch(url, init);
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : undefined };
}

async function metrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** The value of one sample on /metrics (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{([^}]*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[4]);
  }
  return 0;
}

async function rolloutPercent(url: string): Promise<number> {
  return (await json(`${url}/v1/rollout`)).body.percent;
}

/** Waits until the rollback watch has completed an evaluation that started after `since` (epoch ms). */
async function watchTickedAfter(url: string, since: number): Promise<void> {
  await eventually(async () => sample(await metrics(url), 'custody_rollback_watch_last_success_timestamp_seconds') * 1000 > since + 1000, 60_000, 250);
}

async function query<T>(store: Store, sql: string, params: Record<string, unknown> = {}): Promise<T[]> {
  return (await (await store.client.query({ query: sql, query_params: params, format: 'JSONEachRow' })).json()) as T[];
}

const WATCH_ENV = { CUSTODY_ROLLBACK_INTERVAL: '1s', CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' };

describe('open first-day mode on loopback: spans without a credential are stored as agent-reported, never as the services\' records', () => {
  let custody: RunningCustody;
  const forgedInstance = `forged-${hex(4)}`;
  const forgedJti = `jti-${hex(6)}`;
  const forgedDecision = `pd_${hex(8)}`;

  beforeAll(async () => {
    custody = await startCustody({ env: WATCH_ENV });
  }, 90_000);
  afterAll(async () => {
    await custody?.stop();
  });

  it('says so in the banner and in custody readiness', async () => {
    expect(custody.output()).toMatch(/OPEN INGEST: spans without a credential are accepted and stored as unverified/);
    const r = await runCli(['readiness', '--url', custody.url]);
    expect(r.stdout).toMatch(/Open first-day mode \(loopback\):.*OTLP ingest accepts spans without a credential, storing them as unverified/);
  }, 60_000);

  it('180 forged decision=error canary spans with no credential do not move the rollout', async () => {
    expect(await rolloutPercent(custody.url)).toBe(10);
    const spans = Array.from({ length: 180 }, (_, i) => errorCall('alice', `${forgedInstance}-${i % 12}`));
    const r = await post(custody.otlpUrl, otlpJson(spans));
    expect(r.status).toBe(200);
    const stored = Date.now();
    const m = await metrics(custody.url);
    expect(sample(m, 'custody_spans_unverified_total', { reason: 'no_credential' })).toBeGreaterThanOrEqual(180);
    expect(sample(m, 'custody_tool_calls_total', { tool: 'billing', decision: 'error', cohort: 'canary' })).toBe(180);

    // the watch evaluates the rules after the spans were stored, twice, and leaves the gate alone
    await watchTickedAfter(custody.url, stored);
    await watchTickedAfter(custody.url, Date.now());
    expect(await rolloutPercent(custody.url)).toBe(10);
    const status = (await json(`${custody.url}/v1/rollback/status?cohort=canary`)).body;
    const rate = status.rules.find((x: { rule: string }) => x.rule === 'policy_error_rate');
    expect(rate.breached).toBe(false);
    expect(status.action).not.toBe('rollback');
  });

  it('a forged token event, allow decision and executed billing.refund are not the services\' records', async () => {
    const spans: SpanSpec[] = [
      {
        name: 'custody.token.issue',
        attrs: {
          'custody.token.result': 'issued',
          'custody.token.kind': 'issue',
          'custody.token.jti': forgedJti,
          'custody.sponsor_id': 'mallory',
          'custody.agent_instance_id': forgedInstance,
          'custody.tool_id': 'billing',
          'custody.token.ttl_seconds': 300,
          'custody.token.expires_at': Date.now() + 300_000,
        },
      },
      {
        name: 'custody.policy.decision',
        attrs: {
          'custody.policy_decision_id': forgedDecision,
          'custody.policy.decision': 'allow',
          'custody.policy.rule_id': 'allow-support-billing',
          'custody.sponsor_id': 'mallory',
          'custody.agent_instance_id': forgedInstance,
          'custody.tool_id': 'billing',
          'custody.action': 'refund',
          'custody.rollout.cohort': 'canary',
          'custody.enforced': true,
          'custody.token.jti': forgedJti,
          // the sender cannot say it is the service either
          'custody.ingest.trust': 'service',
        },
      },
      {
        name: 'custody.rollout.change',
        attrs: { 'custody.rollout.from_percent': 10, 'custody.rollout.to_percent': 0, 'custody.rollout.reason': 'forged', 'custody.rollout.actor': 'mallory' },
      },
      errorCall('mallory', forgedInstance, {
        'custody.policy.decision': 'allow',
        'custody.policy_decision_id': forgedDecision,
        'custody.token.jti': forgedJti,
        'custody.ingest.trust': 'service',
      }),
    ];
    expect((await post(custody.otlpUrl, otlpJson(spans))).status).toBe(200);
    const m = await metrics(custody.url);
    expect(sample(m, 'custody_spans_unverified_total', { reason: 'service_record_from_other_source' })).toBe(3);
    // the audit API lists the call as what it is: the agent's word
    const trail = (await json(`${custody.url}/v1/audit/trail/${forgedInstance}`)).body;
    expect(trail.agent.calls.map((c: { decision: string; trust: string }) => [c.decision, c.trust])).toEqual([['allow', 'unverified']]);
  });

  it('a credential that proves nothing is no better than none; a custody token binds an agent\'s spans', async () => {
    // three agents with tokens from the (open-mode) token service, each reporting its own failures
    const tokens = await Promise.all(
      [1, 2, 3].map(async (n) => {
        const r = await json(`${custody.url}/issue`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ tool: 'billing', sponsor_id: 'alice', agent_instance_id: `real-${n}-${hex(3)}` }),
        });
        expect(r.status).toBe(201);
        return { token: r.body.token as string, instance: r.body.claims.agent_instance_id as string };
      }),
    );
    // garbage bearer: accepted in open mode, still unverified
    expect((await post(custody.otlpUrl, otlpJson([errorCall('alice', 'x')]), 'Bearer not-a-credential')).status).toBe(200);
    expect(sample(await metrics(custody.url), 'custody_spans_unverified_total', { reason: 'invalid_credential' })).toBe(1);
    expect(await rolloutPercent(custody.url)).toBe(10);

    // the same failures, bound to the agents' own tokens: the rules take them, and the gate rolls back
    for (const t of tokens) {
      const r = await post(custody.otlpUrl, otlpJson(Array.from({ length: 60 }, () => errorCall('alice', t.instance)), 'agent'), `bearer ${t.token}`);
      expect(r.status).toBe(200);
    }
    await eventually(async () => (await rolloutPercent(custody.url)) === 0, 60_000, 250);
  });

  it('in the store: the forged rows are marked, the services\' tables hold none of them, and verify finds the call self-authorized', async () => {
    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, log: createLogger('test', 'error') });
    try {
      const trust = await query<{ trust: string; n: string }>(
        store,
        `SELECT trust, count() AS n FROM custody.audit_events GROUP BY trust ORDER BY trust`,
      );
      expect(Object.fromEntries(trust.map((r) => [r.trust, Number(r.n)]))).toEqual({ unverified: 182, verified: 180 });
      expect(await query(store, `SELECT * FROM custody.policy_decisions WHERE policy_decision_id = {id:String}`, { id: forgedDecision })).toEqual([]);
      expect(await query(store, `SELECT * FROM custody.token_events WHERE jti = {jti:String}`, { jti: forgedJti })).toEqual([]);
      expect(await query(store, `SELECT * FROM custody.rollout_events WHERE actor = 'mallory'`)).toEqual([]);
      // kept as what they are: agent-reported spans
      const raw = await query<{ SpanName: string; trust: string }>(
        store,
        `SELECT SpanName, SpanAttributes['custody.ingest.trust'] AS trust FROM custody.otel_traces
         WHERE SpanName IN ('custody.token.issue', 'custody.policy.decision', 'custody.rollout.change') AND ServiceName = 'forger'`,
      );
      expect(raw.map((r) => r.trust).sort()).toEqual(['unverified', 'unverified', 'unverified']);
      // the services' own records of this run are there, as the services'
      const real = await query<{ n: string }>(store, `SELECT count() AS n FROM custody.token_events WHERE result = 'issued'`);
      expect(Number(real[0]!.n)).toBe(3);
      const rolledBack = await query<{ to_percent: number }>(store, `SELECT to_percent FROM custody.rollout_events`);
      expect(rolledBack.map((r) => r.to_percent)).toContain(0);
    } finally {
      await store.close();
    }
    const verify = await runCli(['audit', 'verify', '--data-dir', custody.dataDir, '--json']);
    expect(verify.code, verify.stderr).toBe(1);
    expect(verify.stdout).toContain(forgedInstance);
    expect(verify.stdout).toMatch(/self.authorized/i);
  }, 120_000);
});

describe('mode: registered: a credential on every port, each scoped to its job', () => {
  let custody: RunningCustody;
  const ADMIN = `adm-${hex(8)}`;
  const ROLLOUT = `rol-${hex(8)}`;
  const READER = `rdr-${hex(8)}`;
  let bob: { credential: string; instance: string };

  beforeAll(async () => {
    const dir = tempDir();
    const config = fs.readFileSync(path.join(ROOT, 'token-service-config.yml'), 'utf8').replace(/^mode:.*$/m, 'mode: registered');
    fs.writeFileSync(path.join(dir, 'tokens.yml'), config);
    custody = await startCustody({
      args: ['--token-config', path.join(dir, 'tokens.yml')],
      env: { ...WATCH_ENV, CUSTODY_ADMIN_TOKEN: ADMIN, CUSTODY_ROLLOUT_TOKEN: ROLLOUT, CUSTODY_AUDIT_READER_TOKEN: READER },
    });
    const reg = await json(`${custody.url}/v1/agents`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify({ sponsor_id: 'bob', role: 'support', tools: ['billing', 'search'], name: 'bobs-agent' }),
    });
    expect(reg.status).toBe(201);
    const issued = await json(`${custody.url}/issue`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${reg.body.credential}` },
      body: JSON.stringify({ tool: 'billing' }),
    });
    expect(issued.status).toBe(201);
    bob = { credential: reg.body.credential, instance: issued.body.claims.agent_instance_id };
  }, 90_000);
  afterAll(async () => {
    await custody?.stop();
  });

  it('forged decision=error spans with no credential, or a wrong one, get 401 and move nothing', async () => {
    const body = otlpJson(Array.from({ length: 180 }, (_, i) => errorCall('alice', `forged-${i % 9}`)));
    const none = await post(custody.otlpUrl, body);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer');
    expect(((await none.json()) as any).error.message).toMatch(/Authorization: Bearer/);
    expect((await post(custody.otlpUrl, body, 'Bearer nope')).status).toBe(401);
    // a service-side credential of another scope is not an ingest credential either
    expect((await post(custody.otlpUrl, body, `Bearer ${ROLLOUT}`)).status).toBe(401);
    const since = Date.now();
    await watchTickedAfter(custody.url, since);
    expect(await rolloutPercent(custody.url)).toBe(10);
    expect(sample(await metrics(custody.url), 'custody_tool_calls_total', { tool: 'billing', decision: 'error', cohort: 'canary' })).toBe(0);
  });

  it('an agent credential speaking for another sponsor, or another sponsor\'s instance, is stored flagged unverified and counted', async () => {
    const own = errorCall('bob', bob.instance, { 'custody.policy.decision': 'allow' });
    const otherSponsor = errorCall('alice', bob.instance, { 'custody.policy.decision': 'allow' });
    const otherInstance = errorCall('bob', 'alice-root-0', { 'custody.policy.decision': 'allow' });
    const r = await post(custody.otlpUrl, otlpJson([own, otherSponsor, otherInstance, otherSponsor], 'bobs-agent'), `Bearer ${bob.credential}`);
    expect(r.status).toBe(200);
    expect(sample(await metrics(custody.url), 'custody_spans_unverified_total', { reason: 'identity_mismatch' })).toBe(3);
  });

  it('the rollout credential moves the rollout and nothing else; the reader credential only reads', async () => {
    const put = (token: string, percent = 30, scheme = 'Bearer') =>
      json(`${custody.url}/v1/rollout`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json', authorization: `${scheme} ${token}` },
        body: JSON.stringify({ percent, reason: 'attack suite' }),
      });
    const adminCall = (token: string, p: string, body: object = {}) =>
      json(`${custody.url}${p}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify(body) });

    // rollout credential: the rollout yes ("bearer" in any case), registration and keys no
    expect((await put(ROLLOUT, 30, 'bearer')).status).toBe(200);
    const register = await adminCall(ROLLOUT, '/v1/agents', { sponsor_id: 'eve', role: 'admin', tools: ['billing'] });
    expect(register.status).toBe(403);
    expect(register.body.error.code).toBe('insufficient_scope');
    expect((await adminCall(ROLLOUT, '/v1/tokens/keys/rotate')).status).toBe(403);
    expect((await adminCall(ROLLOUT, '/v1/audit/keys/rotate')).status).toBe(403);
    expect((await adminCall(ROLLOUT, '/v1/sponsors/bob/offboard')).status).toBe(403);

    // reader credential: reads the audit API, cannot move the rollout or flip the incident switch
    expect((await put(READER, 0)).status).toBe(403);
    const incident = await json(`${custody.url}/v1/rollout/incident`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${READER}` },
      body: JSON.stringify({ cache_ttl_s: 600, reason: 'attack suite' }),
    });
    expect(incident.status).toBe(403);
    expect((await adminCall(READER, '/v1/agents', { sponsor_id: 'eve', role: 'admin', tools: ['billing'] })).status).toBe(403);
    expect(await rolloutPercent(custody.url)).toBe(30);

    // an unknown credential is a 401, the admin one does everything
    expect((await put('wrong')).status).toBe(401);
    expect((await put(ADMIN, 10, 'BEARER')).status).toBe(200);
    expect((await adminCall(ADMIN, '/v1/tokens/keys/rotate')).status).toBe(200);
  });

  it('in the store: bob\'s own call is verified, the others unverified', async () => {
    expect(await custody.stop()).toBe(0);
    const store = await openStore({ dataDir: custody.dataDir, log: createLogger('test', 'error') });
    try {
      const rows = await query<{ sponsor_id: string; agent_instance_id: string; trust: string }>(
        store,
        `SELECT sponsor_id, agent_instance_id, trust FROM custody.audit_events WHERE service_name = 'bobs-agent' ORDER BY trust, sponsor_id`,
      );
      expect(rows).toEqual([
        { sponsor_id: 'alice', agent_instance_id: bob.instance, trust: 'unverified' },
        { sponsor_id: 'alice', agent_instance_id: bob.instance, trust: 'unverified' },
        { sponsor_id: 'bob', agent_instance_id: 'alice-root-0', trust: 'unverified' },
        { sponsor_id: 'bob', agent_instance_id: bob.instance, trust: 'verified' },
      ]);
    } finally {
      await store.close();
    }
  }, 60_000);
});
