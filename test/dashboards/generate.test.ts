import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { DATASOURCE } from '../../dashboards/src/common';
import { dashboardsDir, renderDashboards } from '../../dashboards/src/generate';
import { METRIC } from '../../common/names';

const dir = path.resolve(__dirname, '../../dashboards');

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: { refId: string; datasource?: { type: string; uid: string }; expr?: string; legendFormat?: string; rawSql?: string; queryType?: string; format?: number; pluginVersion?: string; editorType?: string }[];
  panels?: Panel[];
}

const load = (file: string) => JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as { uid: string; title: string; panels: Panel[]; templating: { list: { name: string; type: string; query?: string }[] } };

describe('dashboards', () => {
  it('the committed JSON is exactly what the generator writes (run `npm run dashboards` after a change)', () => {
    expect(dashboardsDir()).toBe(dir);
    const rendered = renderDashboards();
    expect(Object.keys(rendered).sort()).toEqual(['chain-of-custody.json', 'rollout-health.json']);
    for (const [file, json] of Object.entries(rendered)) {
      expect(fs.readFileSync(path.join(dir, file), 'utf8'), file).toBe(json);
    }
  });

  it('every query panel names its datasource type, and all panel ids are unique', () => {
    for (const [file, type] of [
      ['rollout-health.json', DATASOURCE.PROMETHEUS.type],
      ['chain-of-custody.json', DATASOURCE.CLICKHOUSE.type],
    ] as const) {
      const d = load(file);
      const ids = d.panels.map((p) => p.id);
      expect(new Set(ids).size, file).toBe(ids.length);
      const queryPanels = d.panels.filter((p) => p.type !== 'row');
      expect(queryPanels.length).toBeGreaterThan(8);
      for (const p of queryPanels) {
        expect(p.datasource?.type, `${file}: ${p.title}`).toBe(type);
        expect(p.targets?.length, `${file}: ${p.title}`).toBeGreaterThan(0);
        for (const t of p.targets!) {
          expect(t.datasource?.type).toBe(type);
          expect(t.expr ?? t.rawSql, `${p.title} ${t.refId}`).toBeTruthy();
        }
      }
      expect(d.templating.list.find((v) => v.name === 'datasource')?.type).toBe('datasource');
    }
  });

  it('Rollout health charts every contract metric', () => {
    const exprs = load('rollout-health.json').panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr!));
    const all = exprs.join('\n');
    for (const m of [
      METRIC.MISSING_SPONSOR_RATIO,
      METRIC.POLICY_ERROR_RATE,
      METRIC.POLICY_LATENCY_P95_SECONDS,
      METRIC.TOKEN_ISSUE_FAILURE_RATIO,
      METRIC.ROLLBACK_RULE_BREACHED,
      METRIC.ROLLOUT_PERCENT,
      METRIC.ROLLOUT_SCOPE_INFO,
      METRIC.TOOL_CALLS_TOTAL,
      METRIC.SPANS_INGESTED_TOTAL,
      METRIC.SPANS_REJECTED_TOTAL,
      METRIC.TOKENS_ISSUED_TOTAL,
      `${METRIC.POLICY_DECISION_DURATION_SECONDS}_bucket`,
    ]) {
      expect(all, m).toContain(m);
    }
  });

  it('Chain of custody has the sponsor, agent and tool variables and uses only the plugin\'s macros', () => {
    const d = load('chain-of-custody.json');
    expect(d.templating.list.map((v) => v.name)).toEqual(['datasource', 'sponsor', 'agent', 'tool', 'trace_id']);
    const known = new Set(['timeFilter', 'timeInterval', 'conditionalAll', 'fromTime', 'toTime', 'interval_s']);
    const sql = [...d.panels.flatMap((p) => (p.targets ?? []).map((t) => t.rawSql!)), ...d.templating.list.map((v) => v.query ?? '')].join('\n');
    for (const m of sql.matchAll(/\$__(\w+)/g)) expect(known.has(m[1]!) || m[1] === 'all', m[0]).toBe(true);
    const types = new Set(d.panels.map((p) => p.type));
    for (const t of ['table', 'timeseries', 'nodeGraph', 'heatmap', 'traces']) expect(types.has(t), t).toBe(true);
  });

  it('provisioning creates the datasources the dashboards default to, and loads the dashboards', () => {
    const ds = parse(fs.readFileSync(path.join(dir, 'provisioning/datasources.yaml'), 'utf8')) as { datasources: { uid: string; type: string }[] };
    expect(ds.datasources.map((d) => [d.uid, d.type])).toEqual([
      [DATASOURCE.PROMETHEUS.uid, DATASOURCE.PROMETHEUS.type],
      [DATASOURCE.CLICKHOUSE.uid, DATASOURCE.CLICKHOUSE.type],
    ]);
    const dashboards = parse(fs.readFileSync(path.join(dir, 'provisioning/dashboards.yaml'), 'utf8')) as { apiVersion: number; providers: { type: string; options: { path: string } }[] };
    expect(dashboards.apiVersion).toBe(1);
    expect(dashboards.providers[0]!.type).toBe('file');
  });

  it('ClickHouse targets are v4 queries as the plugin defines them', () => {
    // grafana/clickhouse-datasource v4: QueryType table|logs|timeseries|traces, Format 1|2|0|3
    const format: Record<string, number> = { table: 1, logs: 2, timeseries: 0, traces: 3 };
    const targets = load('chain-of-custody.json').panels.flatMap((p) => p.targets ?? []);
    expect(targets.length).toBeGreaterThan(8);
    for (const t of targets) {
      expect(t.pluginVersion, t.refId).toMatch(/^4\.\d+\.\d+$/);
      expect(t.editorType).toBe('sql');
      expect(Object.keys(format)).toContain(t.queryType);
      expect(t.format).toBe(format[t.queryType!]);
    }
    expect(targets.some((t) => t.queryType === 'timeseries')).toBe(true);
  });

  it('Prometheus legends name only labels their query keeps, and no query depends on the scrape job name', () => {
    for (const p of load('rollout-health.json').panels) {
      for (const t of p.targets ?? []) {
        expect(t.expr, `${p.title} ${t.refId}`).not.toMatch(/\bjob\s*(=|=~|!=|!~)\s*"/);
        for (const [, label] of (t.legendFormat ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
          // an aggregation must keep the label: `by (…label…)`; a bare selector keeps every label of its metric
          const by = [...t.expr!.matchAll(/\bby\s*\(([^)]*)\)/g)].map((m) => m[1]!.split(',').map((x) => x.trim()));
          const aggregated = /\b(sum|max|min|avg|count|topk|bottomk|quantile)\s*(\(|by|without)/.test(t.expr!);
          if (aggregated) expect(by.some((labels) => labels.includes(label!)), `${p.title} ${t.refId}: {{${label}}} on ${t.expr}`).toBe(true);
        }
      }
    }
    const token = load('rollout-health.json').panels.find((p) => p.title === 'Token issuance failures')!;
    expect(token.targets![0]!.legendFormat).not.toMatch(/\{\{/);
  });

  it('the ClickHouse datasource reads traces with the OTel schema: otelEnabled with an otelVersion', () => {
    const ds = parse(fs.readFileSync(path.join(dir, 'provisioning/datasources.yaml'), 'utf8')) as {
      datasources: { type: string; jsonData: { traces?: { otelEnabled?: boolean; otelVersion?: string } } }[];
    };
    const traces = ds.datasources.find((d) => d.type === DATASOURCE.CLICKHOUSE.type)!.jsonData.traces!;
    expect(traces.otelEnabled).toBe(true);
    expect(traces.otelVersion).toBe('latest');
  });
});
