// Rollback-rule evaluation cost as stored tool calls grow: 1M, then 10M rows in audit_events.
//
//   npm run build && node bench/rules.bench.mjs [sizes=1000000,10000000] [iterations=50]
//
// Rows are generated inside chDB (INSERT … SELECT FROM numbers()), so the materialized views fill
// the per-minute rollups exactly as ingest does. They are spread over the last 7 days (the 10M
// store is ten times denser), across 8 tools, both cohorts (10 % canary), ~0.05 % without
// sponsor, 60 % decisions from the cache, 2 % denies, 0.2 % errors (half of them failures only the
// agent saw, with no plane decision) and a latency tail; every call not served from the cache also
// has its row in the plane's decision log (policy_decisions), as the plane writes it.
// Rule evaluation reads only the rollups, so its cost should not move between the two sizes.
// Audit queries (which do read audit_events) are timed too, for information.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { openStore } = require('../dist/collector/store/index.js');
const { evaluateRules, evaluateCohorts, COHORTS } = require('../dist/collector/rules/evaluate.js');
const { auditEvents, auditTrail } = require('../dist/collector/audit/queries.js');

const sizes = (process.argv[2] ?? '1000000,10000000').split(',').map(Number);
const iterations = Number(process.argv[3] ?? 50);
const SPAN_MS = 7 * 86_400_000;
const CHUNK = 1_000_000;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-rules-bench-'));
const store = await openStore({ dataDir: dir });
const { client } = store;
const now = Date.now();

async function scalar(query) {
  const rs = await client.query({ query, format: 'JSONEachRow' });
  const [row] = await rs.json();
  return Object.values(row)[0];
}

/** Tool calls numbered [from, to): a deterministic mix derived from each row's number. */
async function generate(from, to) {
  // h: one hash per row, sliced for independent-looking choices
  await client.command({
    query: `INSERT INTO custody.audit_events
      (timestamp, end_timestamp, trace_id, span_id, service_name, sponsor_id, agent_instance_id, parent_agent_id,
       agent_name, role, tool_id, tool_name, action, purpose, request_hash, response_hash, policy_decision_id,
       decision, rule_id, policy_latency_ms, policy_cached, enforced, cohort, status, error_type, token_jti,
       audit_seq, duration_ns)
    SELECT
      fromUnixTimestamp64Milli(toInt64(${now} - (h % ${SPAN_MS}))) AS ts,
      ts + toIntervalMillisecond(3) AS end_ts,
      lower(hex(cityHash64(number, 1))) || lower(hex(cityHash64(number, 2))),
      lower(hex(cityHash64(number, 3))),
      'support-assistant',
      if(h % 2000 = 7, '', ['alice', 'bob', 'carol', 'dave', 'erin'][1 + bitShiftRight(h, 8) % 5]),
      concat('agent-', toString(intDiv(number, 40))),
      if(number % 3 = 0, concat('agent-', toString(intDiv(number, 120) * 3)), ''),
      'support-assistant',
      'support',
      ['billing', 'crm', 'search', 'email', 'file-store', 'calendar', 'tickets', 'kb'][1 + bitShiftRight(h, 16) % 8] AS tool,
      tool,
      ['read', 'write', 'charge', 'refund'][1 + bitShiftRight(h, 20) % 4],
      concat('ticket #', toString(number % 5000)),
      lower(hex(SHA256(toString(number)))),
      lower(hex(SHA256(toString(number + 1)))),
      if(bitShiftRight(h, 24) % 1000 < 1, '', concat('pd-', toString(number))),
      multiIf(bitShiftRight(h, 24) % 1000 < 2, 'error', bitShiftRight(h, 24) % 1000 < 22, 'deny', 'allow') AS decision,
      if(decision = 'deny', 'default-deny', 'allow-support'),
      if(bitShiftRight(h, 34) % 100 = 0, 150 + bitShiftRight(h, 40) % 250, 3 + (bitShiftRight(h, 40) % 1200) / 10.0),
      decision != 'error' AND bitShiftRight(h, 44) % 10 < 6,
      true,
      if(bitShiftRight(h, 48) % 10 = 0, 'canary', 'baseline'),
      if(decision = 'allow', 'ok', 'error'),
      multiIf(decision = 'deny', 'policy_denied', decision = 'error', 'policy_unavailable', ''),
      lower(hex(cityHash64(number, 4))),
      number % 40 + 1,
      1000000 + (h % 5000000)
    FROM (SELECT number, cityHash64(number) AS h FROM numbers(${from}, ${to - from}))`,
  });
  // the plane's decision log: every call not served from the cache, except the agent-only failures
  await client.command({
    query: `INSERT INTO custody.policy_decisions
      (timestamp, policy_decision_id, decision, rule_id, sponsor_id, agent_instance_id, tool_id, action, cohort, enforced, latency_ms)
    SELECT
      fromUnixTimestamp64Milli(toInt64(${now} - (h % ${SPAN_MS}))),
      concat('pd-', toString(number)),
      multiIf(bitShiftRight(h, 24) % 1000 < 2, 'error', bitShiftRight(h, 24) % 1000 < 22, 'deny', 'allow') AS decision,
      if(decision = 'deny', 'default-deny', 'allow-support'),
      'alice',
      concat('agent-', toString(intDiv(number, 40))),
      ['billing', 'crm', 'search', 'email', 'file-store', 'calendar', 'tickets', 'kb'][1 + bitShiftRight(h, 16) % 8],
      'read',
      if(bitShiftRight(h, 48) % 10 = 0, 'canary', 'baseline') AS cohort,
      cohort = 'canary',
      if(bitShiftRight(h, 34) % 100 = 0, 150 + bitShiftRight(h, 40) % 250, 3 + (bitShiftRight(h, 40) % 1200) / 10.0)
    FROM (SELECT number, cityHash64(number) AS h FROM numbers(${from}, ${to - from}))
    WHERE bitShiftRight(h, 24) % 1000 >= 1 AND (bitShiftRight(h, 24) % 1000 < 2 OR bitShiftRight(h, 44) % 10 >= 6)`,
  });
  // one token request per ten calls, 0.3 % refused
  await client.command({
    query: `INSERT INTO custody.token_events (timestamp, result, kind, code, jti, sponsor_id, agent_instance_id, tool_id)
    SELECT fromUnixTimestamp64Milli(toInt64(${now} - (h % ${SPAN_MS}))), if(h % 1000 < 3, 'refused', 'issued'), 'issue',
      if(h % 1000 < 3, 'sponsor_required', ''), lower(hex(cityHash64(number, 5))), 'alice',
      concat('agent-', toString(intDiv(number * 10, 40))), 'billing'
    FROM (SELECT number, cityHash64(number, 9) AS h FROM numbers(${Math.floor(from / 10)}, ${Math.floor((to - from) / 10)}))`,
  });
}

async function time(fn, n) {
  for (let i = 0; i < 3; i++) await fn(); // warm-up
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    ms.push(performance.now() - t);
  }
  ms.sort((a, b) => a - b);
  const q = (p) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))];
  return { median: q(0.5), p95: q(0.95), max: ms[ms.length - 1] };
}

const fmt = (t) => `median ${t.median.toFixed(1)} ms, p95 ${t.p95.toFixed(1)} ms, max ${t.max.toFixed(1)} ms`;
const results = [];
let stored = 0;
console.log(`rules bench: ${os.cpus().length} CPUs, node ${process.version}, store ${dir}`);
for (const size of sizes) {
  const t0 = performance.now();
  for (let from = stored; from < size; from += CHUNK) await generate(from, Math.min(size, from + CHUNK));
  const genS = (performance.now() - t0) / 1000;
  stored = size;
  const rows = Number(await scalar('SELECT count() FROM custody.audit_events'));
  const rollupRows = Number(await scalar('SELECT count() FROM custody.audit_rollup_1m'));
  const windowRows = Number(
    await scalar(`SELECT count() FROM custody.audit_rollup_1m WHERE cohort = 'canary' AND minute >= now() - INTERVAL 15 MINUTE`),
  );
  const status = await evaluateRules(store, { cohort: 'canary' });
  const canary = await time(() => evaluateRules(store, { cohort: 'canary' }), iterations);
  const both = await time(() => evaluateCohorts(store, COHORTS), iterations);
  const decisionRows = Number(await scalar('SELECT count() FROM custody.policy_decisions'));
  const events = await time(() => auditEvents(store, { sponsor: 'alice', limit: 100 }), 10);
  const trail = await time(() => auditTrail(store, 'agent-300'), 10);
  const parts = Number(await scalar(`SELECT count() FROM system.parts WHERE database = 'custody' AND table = 'audit_rollup_1m' AND active`));
  // the steady state once background merges have caught up
  await client.command({ query: 'OPTIMIZE TABLE custody.audit_rollup_1m FINAL' });
  await client.command({ query: 'OPTIMIZE TABLE custody.token_rollup_1m FINAL' });
  await client.command({ query: 'OPTIMIZE TABLE custody.decision_rollup_1m FINAL' });
  await client.command({ query: 'OPTIMIZE TABLE custody.agent_failure_rollup_1m FINAL' });
  const merged = await time(() => evaluateRules(store, { cohort: 'canary' }), iterations);
  const mergedRows = Number(await scalar('SELECT count() FROM custody.audit_rollup_1m'));
  results.push({ size, rows, canary, both, merged });
  console.log(`\n${rows.toLocaleString('en')} stored tool calls, ${decisionRows.toLocaleString('en')} plane decisions (generated in ${genS.toFixed(1)} s); rollup rows ${rollupRows.toLocaleString('en')}, in the canary's 15-min window ${windowRows}`);
  console.log(`  canary window: ${status.sample_size} calls, action ${status.action}, ` +
    status.rules.map((r) => `${r.rule}=${r.value === null ? 'null' : +r.value.toPrecision(4)} (${r.verdict})`).join(' '));
  console.log(`  evaluateRules(canary, 15m)          ${fmt(canary)}   (${parts} rollup parts, as loaded)`);
  console.log(`  evaluateRules, rollups merged       ${fmt(merged)}   (${mergedRows.toLocaleString('en')} rollup rows)`);
  console.log(`  evaluateCohorts(all three cohorts)  ${fmt(both)}   (the /metrics read)`);
  console.log(`  auditEvents(sponsor, 100 rows)      ${fmt(events)}`);
  console.log(`  auditTrail(one instance)            ${fmt(trail)}`);
}
if (results.length > 1) {
  const [a, b] = [results[0], results[results.length - 1]];
  console.log(
    `\nmedian evaluateRules at ${b.size.toLocaleString('en')} / at ${a.size.toLocaleString('en')}: ` +
      `${(b.canary.median / a.canary.median).toFixed(2)}× as loaded, ${(b.merged.median / a.merged.median).toFixed(2)}× merged`,
  );
}
await store.close();
fs.rmSync(dir, { recursive: true, force: true });
