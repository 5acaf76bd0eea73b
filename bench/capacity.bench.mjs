// Capacity estimate measured from the store: bytes per audit event after ClickHouse compression,
// scaled to the seed's 100,000 events/day for 90 days (the seed estimates ≈ 9 GB at 1 KB/event).
//
//   npm run build && node bench/capacity.bench.mjs [rows=200000]
//
// Rows are realistic tool calls: a few sponsors and tools, many agent instances, random
// SHA-256 hashes (incompressible), ULID-like decision ids, and the same call as an
// otel_traces row with its attribute maps, since custody stores every tool call in both.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { openStore } = require('../dist/collector/store/index.js');

const N = Number(process.argv[2] ?? 200_000);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-capacity-'));
const store = await openStore({ dataDir: dir });
const { client } = store;

const sponsors = ['alice', 'bob', 'carol', 'dave', 'erin'];
const tools = [['billing', 'refund'], ['billing', 'charge'], ['search', 'query'], ['file-store', 'read']];
const hex = (n) => crypto.randomBytes(n).toString('hex');
const t0 = Date.now() - 3600_000;

const BATCH = 20_000;
for (let done = 0; done < N; done += BATCH) {
  const audit = [];
  const traces = [];
  for (let i = done; i < Math.min(N, done + BATCH); i++) {
    const [tool, action] = tools[i % tools.length];
    const sponsor = sponsors[i % sponsors.length];
    const instance = `support-assistant-${(i / 20) | 0}`;
    const parent = i % 3 === 0 ? `support-assistant-${((i / 60) | 0) * 3}` : '';
    const ts = new Date(t0 + i * 17).toISOString();
    const traceId = hex(16);
    const spanId = hex(8);
    const decisionId = (t0 + i * 17).toString(36).toUpperCase().padStart(10, '0') + hex(8).toUpperCase();
    const row = {
      timestamp: ts, end_timestamp: ts, trace_id: traceId, span_id: spanId, parent_span_id: hex(8),
      service_name: 'support-assistant', sponsor_id: sponsor, agent_instance_id: instance, parent_agent_id: parent,
      agent_name: 'support-assistant', role: 'support', tool_id: tool, tool_name: `${tool}.${action}`, action,
      purpose: `ticket #${10_000 + (i % 5000)}`, request_hash: hex(32), response_hash: hex(32),
      policy_decision_id: decisionId, decision: i % 50 === 0 ? 'deny' : 'allow', rule_id: 'allow-support-billing',
      policy_latency_ms: 2 + (i % 40) / 10, policy_cached: i % 4 !== 0, enforced: true, cohort: i % 10 === 0 ? 'canary' : 'baseline',
      status: 'ok', error_type: '', token_jti: hex(16), tool_call_id: `call_${hex(8)}`, audit_seq: i % 20 + 1,
      audit_prev_hash: hex(32), duration_ns: 1_000_000 + (i % 1000) * 1000, attributes: {},
    };
    audit.push(row);
    const attrs = {
      'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': row.tool_name, 'gen_ai.agent.id': instance,
      'custody.sponsor_id': sponsor, 'custody.agent_instance_id': instance, 'custody.parent_agent_id': parent,
      'custody.tool_id': tool, 'custody.action': action, 'custody.purpose': row.purpose,
      'custody.request_hash': row.request_hash, 'custody.response_hash': row.response_hash,
      'custody.policy_decision_id': decisionId, 'custody.policy.decision': row.decision,
      'custody.policy.latency_ms': String(row.policy_latency_ms), 'custody.enforced': 'true',
      'custody.rollout.cohort': row.cohort, 'custody.token.jti': row.token_jti,
    };
    traces.push({
      Timestamp: ts, TraceId: traceId, SpanId: spanId, ParentSpanId: row.parent_span_id, TraceState: '',
      SpanName: `execute_tool ${tool}`, SpanKind: 'Internal', ServiceName: 'support-assistant',
      ResourceAttributes: { 'service.name': 'support-assistant', 'telemetry.sdk.language': 'nodejs' },
      ScopeName: 'custody', ScopeVersion: '0.1.0', SpanAttributes: attrs, Duration: row.duration_ns,
      StatusCode: 'Unset', StatusMessage: '',
    });
  }
  await client.insert({ table: 'custody.audit_events', values: audit, format: 'JSONEachRow' });
  await client.insert({ table: 'custody.otel_traces', values: traces, format: 'JSONEachRow' });
}
await client.command({ query: 'OPTIMIZE TABLE custody.audit_events FINAL' });
await client.command({ query: 'OPTIMIZE TABLE custody.otel_traces FINAL' });

const rs = await client.query({
  query: `SELECT table, sum(rows) AS rows, sum(data_compressed_bytes) AS compressed, sum(data_uncompressed_bytes) AS uncompressed
          FROM system.parts WHERE database = 'custody' AND active AND table IN ('audit_events', 'otel_traces') GROUP BY table ORDER BY table`,
  format: 'JSONEachRow',
});
const parts = await rs.json();
const perDay = 100_000;
const days = 90;
let totalPerEvent = 0;
console.log(`capacity: ${N} tool calls`);
for (const p of parts) {
  const per = Number(p.compressed) / Number(p.rows);
  totalPerEvent += per;
  console.log(
    `  ${p.table.padEnd(13)} ${per.toFixed(1)} B/event compressed (${(Number(p.uncompressed) / Number(p.rows)).toFixed(0)} B uncompressed, ratio ${(Number(p.uncompressed) / Number(p.compressed)).toFixed(1)}x)`,
  );
}
const gb = (b) => (b / 1e9).toFixed(2);
console.log(`  both tables   ${totalPerEvent.toFixed(1)} B/event`);
console.log(`  seed volume   ${perDay} events/day x ${days} days = ${gb(totalPerEvent * perDay * days)} GB (seed's estimate at 1 KB/event: 9 GB)`);
await store.close();
fs.rmSync(dir, { recursive: true, force: true });
