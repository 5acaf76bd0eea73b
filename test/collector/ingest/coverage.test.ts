import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { OTLPLogExporter as LogsJsonExporter } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPLogExporter as LogsProtoExporter } from '@opentelemetry/exporter-logs-otlp-proto';
import { OTLPMetricExporter as MetricsJsonExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as MetricsProtoExporter } from '@opentelemetry/exporter-metrics-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { LoggerProvider, type LogRecordProcessor, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashValue } from '../../../common/canonical';
import { fixtureRequest } from '../../helpers/conventions';
import { ROOT, eventually, runCli, startCustody, type RunningCustody } from '../../helpers/custody';
import { hex, nowNs } from '../../helpers/otlp-bodies';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import fs from 'node:fs';

const run = promisify(execFile);

let custody: RunningCustody;

beforeAll(async () => {
  custody = await startCustody();
});
afterAll(async () => {
  await custody?.stop();
});

interface Event {
  tool_id: string;
  sponsor_id: string;
  agent_instance_id: string;
  parent_agent_id: string;
  role: string;
  decision: string;
  request_hash: string;
  response_hash: string;
  trust: string;
  convention: string;
}

async function events(query: string): Promise<Event[]> {
  const res = await fetch(`${custody.url}/v1/audit/events?${query}`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { events: Event[] }).events;
}

async function metric(line: RegExp): Promise<number | undefined> {
  const text = await (await fetch(`${custody.url}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m === undefined ? undefined : Number(m.split(' ').pop());
}

async function postTraces(body: object) {
  const res = await fetch(`${custody.otlpUrl}/v1/traces`, { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } });
  return { status: res.status, body: await res.text() };
}

describe('tool calls of other conventions over OTLP/HTTP', () => {
  it('OpenInference, OpenLLMetry and MCP-semconv spans become audit events with their convention and their resource identity', async () => {
    for (const name of ['openinference-langchain-python', 'openllmetry-python', 'mcp-semconv'] as const) {
      expect(await postTraces(fixtureRequest(name)), name).toEqual({ status: 200, body: '{}' });
    }
    const [oi] = await eventually(async () => (await events('sponsor=carol@example.com')).filter((e) => e.tool_id === 'lookup_order'));
    expect(oi).toMatchObject({ convention: 'openinference', agent_instance_id: 'py-agent-1', role: 'support', decision: '', trust: 'unverified' });
    expect(oi!.request_hash).toBe(hashValue({ order_id: 'A-1001' }));
    const [mcp] = await eventually(async () => events('agent_instance_id=py-mcp-1'));
    expect(mcp).toMatchObject({ convention: 'mcp', tool_id: 'get_weather', sponsor_id: 'dave@example.com', parent_agent_id: 'py-orchestrator-1', role: 'support' });
    const [tl] = await eventually(async () => events('tool=refund'));
    expect(tl).toMatchObject({ convention: 'openllmetry', sponsor_id: '', agent_instance_id: '' });
    expect(tl!.request_hash).toBe(hashValue({ args: [], kwargs: { order_id: 'A-1001', amount: 25 } }));
  });

  it('counts them on /metrics by convention, and the tool-looking span it could not map by reason', async () => {
    expect(await metric(/^custody_tool_calls_by_convention_total\{convention="openinference"\}/)).toBeGreaterThanOrEqual(1);
    expect(await metric(/^custody_tool_calls_by_convention_total\{convention="openllmetry"\}/)).toBeGreaterThanOrEqual(1);
    expect(await metric(/^custody_tool_calls_by_convention_total\{convention="mcp"\}/)).toBeGreaterThanOrEqual(1);
    expect(await metric(/^custody_tool_spans_unmapped_total\{convention="mcp",reason="missing_tool_name"\}/)).toBe(1);
  });

  it('a call without a sponsor counts in missing_sponsor_ratio like a GenAI one (cohort unmanaged)', async () => {
    const status = await eventually(async () => {
      const s = (await (await fetch(`${custody.url}/v1/rollback/status?window=15m`)).json()) as {
        by_cohort: Record<string, { calls: number; missing_sponsor: number }>;
        rules: { rule: string; value: number | null }[];
      };
      return s.by_cohort.unmanaged!.calls >= 3 ? s : undefined;
    });
    expect(status.by_cohort.unmanaged).toEqual({ calls: 3, missing_sponsor: 1 });
    expect(status.rules.find((r) => r.rule === 'missing_sponsor_ratio')!.value).toBeCloseTo(1 / 3);
  });

  it('the real OpenInference LangChain.js instrumentation: its tool run is audited with the identity of OTEL_RESOURCE_ATTRIBUTES', async () => {
    const { stdout } = await run(process.execPath, [path.join(ROOT, 'test/fixtures/agents/openinference-langchain.mjs'), custody.otlpUrl], {
      cwd: ROOT,
      env: { ...process.env, OTEL_RESOURCE_ATTRIBUTES: 'custody.sponsor_id=erin@example.com,custody.agent_instance_id=lc-oi-1,custody.role=support' },
      timeout: 60_000,
    });
    const out = JSON.parse(stdout.trim().split('\n').pop()!) as { code: number; error?: string; spans: { spanId: string; name: string }[] };
    expect(out.error).toBeUndefined();
    expect(out.code).toBe(0);
    const [e] = await eventually(async () => events('agent_instance_id=lc-oi-1'));
    expect(e).toMatchObject({ convention: 'openinference', tool_id: 'lookup_order', sponsor_id: 'erin@example.com', role: 'support' });
    // LangChain gives the tool its input as text
    expect(e!.request_hash).toBe(hashValue('A-1001'));
  });
});

describe('metrics and logs from stock SDKs', () => {
  class Reader extends MetricReader {
    protected async onForceFlush() {}
    protected async onShutdown() {}
  }
  const resource = resourceFromAttributes({ 'service.name': 'stock-sdk' });

  it('/v1/metrics and /v1/logs answer success to the stock JSON and protobuf exporters, and are counted and dropped', async () => {
    const reader = new Reader();
    const meters = new MeterProvider({ resource, readers: [reader] });
    meters.getMeter('m').createCounter('requests').add(3);
    const { resourceMetrics } = await reader.collect();
    // kept as emitted (the SDK's own export path is what the exporters below replace)
    const records: ReadableLogRecord[] = [];
    const keep: LogRecordProcessor = { onEmit: (r) => void records.push(r), forceFlush: async () => {}, shutdown: async () => {} };
    const loggers = new LoggerProvider({ resource, processors: [keep] });
    loggers.getLogger('l').emit({ body: 'hello', severityText: 'INFO' });
    expect(records).toHaveLength(1);

    const exports = [
      new MetricsJsonExporter({ url: `${custody.otlpUrl}/v1/metrics` }),
      new MetricsProtoExporter({ url: `${custody.otlpUrl}/v1/metrics` }),
    ].map((x) => new Promise<{ code: number; error?: Error }>((resolve) => x.export(resourceMetrics, resolve)));
    const logExports = [
      new LogsJsonExporter({ url: `${custody.otlpUrl}/v1/logs` }),
      new LogsProtoExporter({ url: `${custody.otlpUrl}/v1/logs` }),
    ].map((x) => new Promise<{ code: number; error?: Error }>((resolve) => x.export(records, resolve)));
    for (const r of await Promise.all([...exports, ...logExports])) {
      expect(r.error).toBeUndefined();
      expect(r.code).toBe(0);
    }
    expect(await metric(/^custody_otlp_signals_dropped_total\{signal="metrics"\}/)).toBe(2);
    expect(await metric(/^custody_otlp_signals_dropped_total\{signal="logs"\}/)).toBe(2);
    await meters.shutdown();
    await loggers.shutdown();
  });

  it('the same answers as /v1/traces to a wrong method or content type', async () => {
    const get = await fetch(`${custody.otlpUrl}/v1/metrics`);
    expect(get.status).toBe(405);
    expect(((await get.json()) as { error: { message: string } }).error.message).toMatch(/GET is not allowed on \/v1\/metrics/);
    const text = await fetch(`${custody.otlpUrl}/v1/logs`, { method: 'POST', body: 'x', headers: { 'Content-Type': 'text/plain' } });
    expect(text.status).toBe(415);
  });
});

describe('custody export --format ndjson', () => {
  it('each row carries every field of audit-log-schema.json; a fully identified call is valid against it, a call without sponsor or action is not', async () => {
    const t = nowNs();
    const attrs: Record<string, string | number | boolean> = {
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.name': 'billing.refund',
      'gen_ai.tool.call.id': 'call-export-1',
      'gen_ai.agent.name': 'support-assistant',
      'custody.sponsor_id': 'heidi@example.com',
      'custody.agent_instance_id': 'export-agent-1',
      'custody.role': 'support',
      'custody.tool_id': 'billing',
      'custody.action': 'refund',
      'custody.purpose': 'ticket 1',
      'custody.request_hash': 'a'.repeat(64),
      'custody.response_hash': 'b'.repeat(64),
      'custody.policy_decision_id': 'pd-export-1',
      'custody.policy.decision': 'allow',
      'custody.policy.latency_ms': 3.5,
      'custody.enforced': true,
      'custody.rollout.cohort': 'canary',
      'custody.audit.seq': 1,
      'custody.audit.prev_hash': 'c'.repeat(64),
    };
    const span = {
      traceId: hex(16),
      spanId: hex(8),
      name: 'execute_tool billing.refund',
      startTimeUnixNano: String(t - 4_000_000n),
      endTimeUnixNano: String(t),
      attributes: Object.entries(attrs).map(([key, v]) => ({
        key,
        value: typeof v === 'string' ? { stringValue: v } : typeof v === 'boolean' ? { boolValue: v } : Number.isInteger(v) ? { intValue: v } : { doubleValue: v },
      })),
      status: { code: 1 },
    };
    const body = { resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'export-agent' } }] }, scopeSpans: [{ spans: [span] }] }] };
    expect((await postTraces(body)).status).toBe(200);
    await eventually(async () => (await events('agent_instance_id=export-agent-1')).length > 0);

    const r = await runCli(['export', '--since', '1h', '--url', custody.url]);
    expect(r.code, r.stderr).toBe(0);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const schema = JSON.parse(fs.readFileSync(path.join(ROOT, 'audit-log-schema.json'), 'utf8')) as { properties: Record<string, unknown> };
    const ajv = new Ajv2020({ allErrors: true, strict: false });
    addFormats(ajv);
    const validate = ajv.compile(schema);
    for (const row of rows) expect(Object.keys(schema.properties).filter((k) => !(k in row)), String(row.span_id)).toEqual([]);
    const full = rows.find((row) => row.agent_instance_id === 'export-agent-1')!;
    expect(validate(full), JSON.stringify(validate.errors)).toBe(true);
    expect(full).toMatchObject({ tool_name: 'billing.refund', tool_call_id: 'call-export-1', agent_name: 'support-assistant', service_name: 'export-agent', duration_ns: 4_000_000, duration_ms: 4, convention: 'gen_ai' });
    const unsponsored = rows.find((row) => row.tool_id === 'refund' && row.convention === 'openllmetry')!;
    expect(validate(unsponsored)).toBe(false);
    expect(new Set(validate.errors!.map((e) => e.instancePath))).toEqual(new Set(['/sponsor_id', '/agent_instance_id', '/action']));
  });
});
