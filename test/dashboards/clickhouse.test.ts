import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../collector/store';
import { ROOT_CONTEXT, trace, type Span } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { ATTR } from '../../common/names';
import { eventually, startCustody, tempDir } from '../helpers/custody';
import { call, queryStoreAll, type CallRow } from '../helpers/rollback';
import { applyConditionalAll, expandPanelSql, interpolateVariables, type GrafanaContext, type VariableValue } from '../helpers/dashboards-macros';

/**
 * Every ClickHouse query of the "Chain of custody" dashboard (panels and template variables),
 * with Grafana's and grafana-clickhouse-datasource's macros expanded (see dashboards-macros.ts),
 * run against a dedicated embedded store holding a known chain of custody:
 *
 *   alice ─ root-1 ── child-1 ── grandchild-1        bob ─ root-2        (no sponsor) ─ orphan-x
 *   root-1: 5 search allow, 2 billing allow           root-2: 4 search allow, 1 search deny
 *   child-1: 3 billing allow, 1 billing deny          orphan-x: 3 search allow
 *   grandchild-1: 1 billing error (failed closed)
 */

interface Panel {
  title: string;
  type: string;
  targets?: { refId: string; rawSql: string; queryType: string; format: number }[];
}
const dashboard = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../dashboards/chain-of-custody.json'), 'utf8')) as {
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string }[] };
};
const sqlOf = (title: string, refId = 'A') => {
  const p = dashboard.panels.find((x) => x.title === title);
  if (!p) throw new Error(`no panel ${title}`);
  return p.targets!.find((t) => t.refId === refId)!.rawSql;
};

let store: Store;
const dir = tempDir('custody-dash-ch-');
// All rows in one minute in the middle of the previous hour: one bucket at any interval up to an hour.
const BASE = Math.floor(Date.now() / 3_600_000) * 3_600_000 - 1_800_000;
const TRACE = { root1: 'a'.repeat(32), root2: 'b'.repeat(32), orphan: 'c'.repeat(32) };

function rows(): CallRow[] {
  let t = BASE;
  const make = (n: number, over: Partial<CallRow>) => Array.from({ length: n }, () => call((t += 500), over));
  const alice = { sponsor_id: 'alice' };
  return [
    ...make(5, { ...alice, agent_instance_id: 'root-1', agent_name: 'triage', tool_id: 'search', trace_id: TRACE.root1 }),
    ...make(2, { ...alice, agent_instance_id: 'root-1', agent_name: 'triage', tool_id: 'billing', trace_id: TRACE.root1 }),
    ...make(3, { ...alice, agent_instance_id: 'child-1', agent_name: 'refunder', parent_agent_id: 'root-1', tool_id: 'billing', trace_id: TRACE.root1 }),
    ...make(1, {
      ...alice,
      agent_instance_id: 'child-1',
      agent_name: 'refunder',
      parent_agent_id: 'root-1',
      tool_id: 'billing',
      decision: 'deny',
      rule_id: 'deny-deep-delegation-billing',
      error_type: 'policy_denied',
      trace_id: TRACE.root1,
    }),
    ...make(1, {
      ...alice,
      agent_instance_id: 'grandchild-1',
      agent_name: 'checker',
      parent_agent_id: 'child-1',
      tool_id: 'billing',
      decision: 'error',
      rule_id: '',
      error_type: 'policy_unavailable',
      policy_latency_ms: 200,
      trace_id: TRACE.root1,
    }),
    ...make(4, { sponsor_id: 'bob', agent_instance_id: 'root-2', agent_name: 'researcher', tool_id: 'search', trace_id: TRACE.root2 }),
    ...make(1, { sponsor_id: 'bob', agent_instance_id: 'root-2', agent_name: 'researcher', tool_id: 'search', decision: 'deny', error_type: 'policy_denied', trace_id: TRACE.root2 }),
    ...make(3, { sponsor_id: '', agent_instance_id: 'orphan-x', agent_name: 'legacy-bot', service_name: 'legacy', tool_id: 'search', trace_id: TRACE.orphan }),
  ].map((r, i) => ({ ...r, span_id: (i + 1).toString(16).padStart(16, '0'), policy_latency_ms: r.policy_latency_ms === 4 ? 2 + (i % 10) : r.policy_latency_ms }));
}

const ctx = (variables: Partial<Record<string, VariableValue>> = {}): GrafanaContext => ({
  from: Date.now() - 24 * 3_600_000,
  to: Date.now() + 60_000,
  intervalS: 3600,
  variables: { sponsor: 'All', agent: 'All', tool: 'All', trace_id: [''], ...variables } as Record<string, VariableValue>,
});

async function run<T = Record<string, unknown>>(sql: string, c: GrafanaContext = ctx()): Promise<T[]> {
  const rs = await store.client.query({ query: expandPanelSql(sql, c), format: 'JSONEachRow' });
  return rs.json<T>();
}

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
  const audit = rows();
  await store.client.insert({ table: 'custody.audit_events', values: audit, format: 'JSONEachRow' });
  await store.client.insert({
    table: 'custody.policy_decisions',
    values: audit.map((r) => ({
      timestamp: r.timestamp,
      policy_decision_id: r.policy_decision_id,
      decision: r.decision,
      rule_id: r.rule_id,
      sponsor_id: r.sponsor_id,
      agent_instance_id: r.agent_instance_id,
      parent_agent_id: r.parent_agent_id,
      role: r.role,
      tool_id: r.tool_id,
      action: r.action,
      cohort: r.cohort,
      enforced: r.enforced,
      latency_ms: r.policy_latency_ms,
      attributes: { 'custody.policy.version': 'v2' },
    })),
    format: 'JSONEachRow',
  });
  // the policy plane's record of its policy: v1 loaded, v2 loaded, a refused file (v2 stays)
  const at = (i: number) => new Date(BASE - 60_000 + i * 1000).toISOString();
  await store.client.insert({
    table: 'custody.policy_events',
    values: [
      { timestamp: at(1), result: 'loaded', version: 'v1', hash: 'a'.repeat(64), source: '/etc/custody/policy.yaml' },
      { timestamp: at(2), result: 'loaded', version: 'v2', hash: 'b'.repeat(64), source: '/etc/custody/policy.yaml' },
      { timestamp: at(3), result: 'refused', version: 'v2', hash: 'c'.repeat(64), source: '/etc/custody/policy.yaml', error: "field 'rules.0.effect': expected allow or deny" },
    ],
    format: 'JSONEachRow',
  });
  await store.client.insert({
    table: 'custody.otel_traces',
    values: audit.map((r) => ({
      Timestamp: r.timestamp,
      TraceId: r.trace_id,
      SpanId: r.span_id,
      ParentSpanId: '',
      SpanName: `execute_tool ${r.tool_id}`,
      SpanKind: 'Internal',
      ServiceName: r.service_name,
      ResourceAttributes: { 'service.name': r.service_name },
      SpanAttributes: {
        'gen_ai.operation.name': 'execute_tool',
        'custody.sponsor_id': r.sponsor_id,
        'custody.agent_instance_id': r.agent_instance_id,
        'custody.parent_agent_id': r.parent_agent_id,
        'custody.tool_id': r.tool_id,
        'custody.policy.decision': r.decision,
      },
      Duration: 5_000_000,
      StatusCode: r.decision === 'allow' ? 'Unset' : 'Error',
    })),
    format: 'JSONEachRow',
  });
});

afterAll(async () => {
  await store?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('Grafana / ClickHouse plugin macro expansion', () => {
  it('drops a filter for All and keeps it for a selection, quoting values', () => {
    const sql = "WHERE $__conditionalAll(sponsor_id IN (${sponsor:singlequote}), $sponsor) AND x = 1";
    expect(applyConditionalAll(sql, { sponsor: 'All' })).toBe('WHERE 1=1 AND x = 1');
    const kept = applyConditionalAll(sql, { sponsor: ['alice', "o'neil"] });
    expect(interpolateVariables(kept, { sponsor: ['alice', "o'neil"] })).toBe("WHERE sponsor_id IN ('alice','o\\'neil') AND x = 1");
  });

  it('expands the time macros the way the plugin does', () => {
    const c = { from: 1_700_000_000_500, to: 1_700_003_600_000, intervalS: 0.2, variables: {} };
    expect(expandPanelSql('WHERE $__timeFilter(ts) GROUP BY $__timeInterval(ts) -- $__interval_s $__fromTime $__toTime', c)).toBe(
      'WHERE ts >= toDateTime(1700000000) AND ts <= toDateTime(1700003600) GROUP BY toStartOfInterval(toDateTime(ts), INTERVAL 1 second) -- 1 toDateTime(1700000000) toDateTime(1700003600)',
    );
  });
});

describe('Chain of custody queries on the embedded store', () => {
  it('template variables list sponsors, agents (narrowed by sponsor) and tools', async () => {
    const v = (name: string) => dashboard.templating.list.find((x) => x.name === name)!.query!;
    const col = (rs: Record<string, unknown>[]) => rs.map((r) => Object.values(r)[0]);
    expect(col(await run(v('sponsor')))).toEqual(['alice', 'bob']);
    expect(col(await run(v('agent')))).toEqual(['child-1', 'grandchild-1', 'orphan-x', 'root-1', 'root-2']);
    expect(col(await run(v('agent'), ctx({ sponsor: ['bob'] })))).toEqual(['root-2']);
    expect(col(await run(v('tool')))).toEqual(['billing', 'search']);
  });

  it('calls by sponsor and tool, with denied and failed-closed counts', async () => {
    const r = await run(sqlOf('Calls by sponsor and tool'));
    expect(r.map((x) => [x.sponsor, x.tool, Number(x.calls), Number(x.allowed), Number(x.denied), Number(x.failed_closed), Number(x.agents)])).toEqual([
      ['alice', 'billing', 7, 5, 1, 1, 3],
      ['alice', 'search', 5, 5, 0, 0, 1],
      ['bob', 'search', 5, 4, 1, 0, 1],
      ['(missing)', 'search', 3, 3, 0, 0, 1],
    ]);
    const bob = await run(sqlOf('Calls by sponsor and tool'), ctx({ sponsor: ['bob'], tool: ['search'] }));
    expect(bob.map((x) => x.sponsor)).toEqual(['bob']);
    const agents = await run(sqlOf('Calls by sponsor and tool'), ctx({ agent: ['child-1', 'grandchild-1'] }));
    expect(agents.map((x) => [x.sponsor, x.tool, Number(x.calls)])).toEqual([['alice', 'billing', 5]]);
  });

  it('calls by tool over time add up to the calls', async () => {
    const r = await run<{ time: string; tool: string; calls: string }>(sqlOf('Calls by tool'), ctx({}));
    const total = (tool: string) => r.filter((x) => x.tool === tool).reduce((s, x) => s + Number(x.calls), 0);
    expect(total('billing')).toBe(7);
    expect(total('search')).toBe(13);
    // one hour bucket: the time column is the start of the interval
    expect(new Set(r.map((x) => x.time)).size).toBe(1);
    const fine = await run(sqlOf('Calls by tool'), { ...ctx(), intervalS: 1 });
    expect(fine.length).toBeGreaterThan(r.length);
  });

  it('denied and failed-closed calls, over time and one by one', async () => {
    const series = await run<{ denied: string; failed_closed: string }>(sqlOf('Denied and failed-closed over time'));
    expect(series.reduce((s, x) => s + Number(x.denied), 0)).toBe(2);
    expect(series.reduce((s, x) => s + Number(x.failed_closed), 0)).toBe(1);
    const list = await run<{ agent: string; outcome: string; rule_id: string; trace_id: string }>(sqlOf('Denied and failed-closed calls'));
    expect(list.map((x) => [x.agent, x.outcome]).sort()).toEqual([
      ['child-1', 'deny'],
      ['grandchild-1', 'failed_closed'],
      ['root-2', 'deny'],
    ]);
    expect(list.find((x) => x.agent === 'child-1')!.rule_id).toBe('deny-deep-delegation-billing');
    expect(list.every((x) => /^[0-9a-f]{32}$/.test(x.trace_id))).toBe(true);
  });

  it('the agent → sub-agent tree: nodes for every agent and parent, edges parent → child', async () => {
    const nodes = await run<{ id: string; title: string; subtitle: string; mainstat: string }>(sqlOf('Agent → sub-agent tree', 'nodes'));
    expect(Object.fromEntries(nodes.map((n) => [n.id, Number(n.mainstat)]))).toEqual({ 'child-1': 4, 'grandchild-1': 1, 'orphan-x': 3, 'root-1': 7, 'root-2': 5 });
    expect(nodes.find((n) => n.id === 'child-1')).toMatchObject({ title: 'refunder', subtitle: 'alice' });
    const edges = await run<{ id: string; source: string; target: string; mainstat: string }>(sqlOf('Agent → sub-agent tree', 'edges'));
    expect(edges.map((e) => [e.source, e.target, Number(e.mainstat)])).toEqual([
      ['child-1', 'grandchild-1', 1],
      ['root-1', 'child-1', 4],
    ]);
    expect(new Set(edges.map((e) => e.id)).size).toBe(edges.length);
    // every edge end is a node, as the node graph panel needs
    const ids = new Set(nodes.map((n) => n.id));
    for (const e of edges) expect(ids.has(e.source) && ids.has(e.target)).toBe(true);

    // narrowed to child-1: its parent appears as a node without calls, its sub-agent with its own
    const narrowed = await run<{ id: string; mainstat: string }>(sqlOf('Agent → sub-agent tree', 'nodes'), ctx({ agent: ['child-1'] }));
    expect(Object.fromEntries(narrowed.map((n) => [n.id, Number(n.mainstat)]))).toEqual({ 'child-1': 4, 'grandchild-1': 1, 'root-1': 0 });

    const table = await run<{ parent: string; agent: string; sponsors: string; tools: string; calls: string }>(sqlOf('Sub-agents and their sponsors'));
    expect(table.map((x) => [x.parent, x.agent, x.sponsors, x.tools, Number(x.calls)])).toEqual([
      ['root-1', 'child-1', 'alice', 'billing', 4],
      ['child-1', 'grandchild-1', 'alice', 'billing', 1],
    ]);
  });

  it('missing sponsor: the ratio, and the drill-down to the offending instance', async () => {
    const ratio = await run<{ missing_sponsor_ratio: number }>(sqlOf('Missing sponsor ratio'));
    expect(ratio.map((x) => x.missing_sponsor_ratio)).toEqual([3 / 20]);
    const offenders = await run<Record<string, string>>(sqlOf('Missing sponsor: offending instances'));
    expect(offenders).toHaveLength(1);
    expect(offenders[0]).toMatchObject({ agent: 'orphan-x', name: 'legacy-bot', service: 'legacy', tools: 'search', example_trace: TRACE.orphan });
    expect([Number(offenders[0]!.missing), Number(offenders[0]!.calls), Number(offenders[0]!.missing_ratio)]).toEqual([3, 3, 1]);
    // a filter on a healthy agent leaves nothing to drill into
    expect(await run(sqlOf('Missing sponsor: offending instances'), ctx({ agent: ['root-1'] }))).toEqual([]);
  });

  it('decision latency (heatmap points) and decisions by result from the decision log', async () => {
    const points = await run<{ time: string; latency_ms: number }>(sqlOf('Decision latency'));
    expect(points).toHaveLength(20);
    expect(Math.max(...points.map((p) => p.latency_ms))).toBe(200);
    expect(points.map((p) => p.time)).toEqual([...points.map((p) => p.time)].sort());
    const decisions = await run<{ decision: string; decisions: string }>(sqlOf('Decisions by result (decision log)'));
    const by = (d: string) => decisions.filter((x) => x.decision === d).reduce((s, x) => s + Number(x.decisions), 0);
    expect([by('allow'), by('deny'), by('error')]).toEqual([17, 2, 1]);
  });

  it('tool-call spans link to their traces, and the trace panel reads one whole trace', async () => {
    const spans = await run<{ trace_id: string; sponsor: string; tool: string; decision: string; duration_ms: number }>(sqlOf('Tool-call spans'), ctx({ sponsor: ['bob'] }));
    expect(spans).toHaveLength(5);
    expect(spans.every((s) => s.trace_id === TRACE.root2 && s.sponsor === 'bob' && s.tool === 'search' && s.duration_ms === 5)).toBe(true);
    expect(await run(sqlOf('Tool-call spans'))).toHaveLength(20);

    const trace = await run<{ traceID: string; spanID: string; operationName: string; duration: number; tags: { key: string; value: string }[]; serviceTags: unknown[] }>(
      sqlOf('Trace $trace_id'),
      ctx({ trace_id: [TRACE.root1] }),
    );
    expect(trace).toHaveLength(12);
    expect(trace.every((s) => s.traceID === TRACE.root1 && s.duration === 5)).toBe(true);
    expect(trace[0]!.tags).toContainEqual({ key: 'custody.sponsor_id', value: 'alice' });
    expect(trace[0]!.serviceTags).toContainEqual({ key: 'service.name', value: 'agent' });
    // an unknown trace id reads nothing
    expect(await run(sqlOf('Trace $trace_id'), ctx({ trace_id: ['f'.repeat(32)] }))).toEqual([]);
  });

  it('policy changes: loads and refused reloads, newest first, with the decisions naming each version', async () => {
    const changes = await run<{ result: string; version: string; hash: string; error: string; decisions_in_range: string }>(sqlOf('Policy changes'));
    expect(changes.map((c) => [c.result, c.version, c.hash, Number(c.decisions_in_range)])).toEqual([
      ['refused', 'v2', 'c'.repeat(12), 20],
      ['loaded', 'v2', 'b'.repeat(12), 20],
      ['loaded', 'v1', 'a'.repeat(12), 0],
    ]);
    expect(changes[0]!.error).toMatch(/expected allow or deny/);
  });

  it('every query of the dashboard was run above', () => {
    const covered = [
      'Calls by sponsor and tool',
      'Calls by tool',
      'Denied and failed-closed over time',
      'Denied and failed-closed calls',
      'Agent → sub-agent tree',
      'Sub-agents and their sponsors',
      'Missing sponsor ratio',
      'Missing sponsor: offending instances',
      'Decision latency',
      'Decisions by result (decision log)',
      'Tool-call spans',
      'Trace $trace_id',
      'Policy changes',
    ];
    expect(dashboard.panels.filter((p) => p.targets?.length).map((p) => p.title).sort()).toEqual([...covered].sort());
  });
});

/**
 * The same queries on what a real `custody up` stored from real traffic: tool-call spans from the
 * stock OTLP exporter (a parent agent, its sub-agent, an agent without a sponsor), and the decision
 * log of real POST /v1/check calls. Run on custody's data directory once it has stopped.
 */
describe('Chain of custody queries on what custody up ingested', () => {
  const dataDir = tempDir('custody-dash-up-');
  const traces: Record<string, string> = {};
  let results: Record<string, Record<string, unknown>[]> = {};
  let checks = { allow: 0, deny: 0 };

  beforeAll(async () => {
    // the agents' spans come through a gateway's credential, as from an upstream Collector
    const gateway = 'dash-test-gateway-credential';
    const custody = await startCustody({ dataDir, env: { CUSTODY_ROLLBACK_WATCH: 'off', CUSTODY_INGEST_TOKEN: gateway } });
    try {
      const provider = new BasicTracerProvider({
        resource: resourceFromAttributes({ [ATTR.SERVICE_NAME]: 'support-agent' }),
        spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${custody.otlpUrl}/v1/traces`, headers: { authorization: `Bearer ${gateway}` } }))],
      });
      const tracer = provider.getTracer('dash-test');
      const toolCall = (agent: string, parent: string, sponsor: string, tool: string, decision: string, parentSpan?: Span): Span => {
        const ctx = parentSpan ? trace.setSpan(ROOT_CONTEXT, parentSpan) : undefined;
        const span = tracer.startSpan(
          `execute_tool ${tool}`,
          {
            attributes: {
              [ATTR.GEN_AI_OPERATION_NAME]: 'execute_tool',
              [ATTR.GEN_AI_TOOL_NAME]: tool,
              [ATTR.GEN_AI_AGENT_NAME]: agent.replace(/-\d+$/, ''),
              [ATTR.TOOL_ID]: tool,
              ...(sponsor ? { [ATTR.SPONSOR_ID]: sponsor } : {}),
              [ATTR.AGENT_INSTANCE_ID]: agent,
              ...(parent ? { [ATTR.PARENT_AGENT_ID]: parent } : {}),
              [ATTR.POLICY_DECISION]: decision,
              [ATTR.POLICY_LATENCY_MS]: 7,
              [ATTR.ROLLOUT_COHORT]: 'canary',
              [ATTR.ENFORCED]: true,
              ...(decision === 'deny' ? { [ATTR.ERROR_TYPE]: 'policy_denied' } : {}),
            },
          },
          ctx,
        );
        span.end();
        return span;
      };
      const root = toolCall('planner-1', '', 'carol', 'search', 'allow');
      toolCall('planner-1', '', 'carol', 'search', 'allow', root);
      toolCall('refunds-1', 'planner-1', 'carol', 'billing', 'allow', root);
      toolCall('refunds-1', 'planner-1', 'carol', 'billing', 'deny', root);
      const orphan = toolCall('cron-1', '', '', 'search', 'allow');
      traces.root = root.spanContext().traceId;
      traces.orphan = orphan.spanContext().traceId;
      await provider.shutdown();

      // the decision log, from the policy plane itself
      for (const [role, tool, action] of [['support', 'search', 'call'], ['support', 'search', 'call'], ['user', 'billing', 'refund']] as const) {
        const issued = await fetch(`${custody.url}/issue`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ tool, sponsor_id: 'carol', role, agent_instance_id: 'planner-1', ttl: 60 }),
        });
        expect(issued.status).toBe(201);
        const { token } = (await issued.json()) as { token: string };
        const res = await fetch(`${custody.url}/v1/check`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, tool, action }) });
        const body = (await res.json()) as { decision: 'allow' | 'deny' };
        checks[body.decision]++;
      }
      // 5 tool calls over OTLP; the 3 decisions and 3 token events the roles write to the store themselves
      await eventually(async () => {
        const m = /^custody_spans_ingested_total (\d+)/m.exec(await (await fetch(`${custody.url}/metrics`)).text());
        return Number(m?.[1] ?? 0) >= 5;
      });
    } finally {
      await custody.stop();
    }
    const panels = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ key: `${p.title} ${t.refId}`, sql: t.rawSql })));
    const c = { ...ctx(), intervalS: 60, variables: { ...ctx().variables, trace_id: [traces.root!] } as Record<string, VariableValue> };
    const out = queryStoreAll(dataDir, panels.map((p) => expandPanelSql(p.sql, c)));
    results = Object.fromEntries(panels.map((p, i) => [p.key, out[i]!]));
  }, 120_000);

  afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  it('every panel query runs on the ingested data', () => {
    expect(Object.keys(results).length).toBe(dashboard.panels.flatMap((p) => p.targets ?? []).length);
  });

  it('calls by sponsor and tool, denied calls, and the missing sponsor drill-down', () => {
    const calls = results['Calls by sponsor and tool A']!.map((r) => [r.sponsor, r.tool, Number(r.calls), Number(r.denied)]);
    expect(calls).toEqual([
      ['carol', 'billing', 2, 1],
      ['carol', 'search', 2, 0],
      ['(missing)', 'search', 1, 0],
    ]);
    expect(results['Denied and failed-closed calls A']!.map((r) => [r.agent, r.parent, r.outcome, r.trace_id])).toEqual([['refunds-1', 'planner-1', 'deny', traces.root]]);
    expect(results['Missing sponsor: offending instances A']!.map((r) => [r.agent, r.service, r.example_trace])).toEqual([['cron-1', 'support-agent', traces.orphan]]);
  });

  it('the agent tree from parent_agent_id', () => {
    expect(results['Agent → sub-agent tree edges']!.map((r) => [r.source, r.target, Number(r.mainstat)])).toEqual([['planner-1', 'refunds-1', 2]]);
    const nodes = Object.fromEntries(results['Agent → sub-agent tree nodes']!.map((r) => [r.id, [r.title, Number(r.mainstat)]]));
    expect(nodes).toEqual({ 'cron-1': ['cron', 1], 'planner-1': ['planner', 2], 'refunds-1': ['refunds', 2] });
  });

  it('the policy plane recorded the policy it loaded at start, and the decisions name it', () => {
    const changes = results['Policy changes A']!;
    expect(changes.map((c) => [c.result, c.version])).toEqual([['loaded', 'starter-1']]);
    expect(Number(changes[0]!.decisions_in_range)).toBe(checks.allow + checks.deny);
  });

  it('the decision log counts the plane\'s real decisions', () => {
    const by = (d: string) => results['Decisions by result (decision log) A']!.filter((r) => r.decision === d).reduce((s, r) => s + Number(r.decisions), 0);
    expect({ allow: by('allow'), deny: by('deny') }).toEqual(checks);
    expect(checks).toEqual({ allow: 2, deny: 1 });
  });

  it('tool-call spans carry their custody attributes in otel_traces, and the trace panel opens a trace', () => {
    const spans = results['Tool-call spans A']!;
    expect(spans).toHaveLength(5);
    expect(spans.filter((s) => s.trace_id === traces.root).map((s) => [s.agent, s.sponsor, s.tool, s.decision]).sort()).toEqual([
      ['planner-1', 'carol', 'search', 'allow'],
      ['planner-1', 'carol', 'search', 'allow'],
      ['refunds-1', 'carol', 'billing', 'allow'],
      ['refunds-1', 'carol', 'billing', 'deny'],
    ]);
    const tr = results['Trace $trace_id A']! as { traceID: string; parentSpanID: string; serviceName: string; tags: { key: string; value: string }[] }[];
    expect(tr).toHaveLength(4);
    expect(tr.every((s) => s.traceID === traces.root && s.serviceName === 'support-agent')).toBe(true);
    expect(tr.filter((s) => s.parentSpanID === '')).toHaveLength(1);
    expect(tr[0]!.tags).toContainEqual({ key: 'custody.sponsor_id', value: 'carol' });
  });

  it('decision latency points and the missing sponsor ratio', () => {
    const points = results['Decision latency A']!;
    expect(points).toHaveLength(5);
    expect(points.every((p) => p.latency_ms === 7)).toBe(true);
    const ratio = results['Missing sponsor ratio A']! as { missing_sponsor_ratio: number }[];
    const total = ratio.reduce((s, r) => s + r.missing_sponsor_ratio, 0);
    expect(total).toBeGreaterThan(0);
  });
});
