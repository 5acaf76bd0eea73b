// Per-call overhead of custody's tool-call instrumentation (BENCHMARKS.md "## Instrumentation"),
// in one process, against the bare tool:
//   1. the manual API on a plain async function: span only (enforcement off), and span + baggage +
//      a cached allow from the real enforcer (a real `custody up` decided the first call);
//   2. the same LangChain tool (tool() with a zod schema, invoked with .invoke()): bare, with
//      custody's LangChain patch (span + baggage + cached allow), and with OpenInference's LangChain
//      instrumentation (@arizeai/openinference-instrumentation-langchain), in the same run.
// Spans go through a BatchSpanProcessor to an exporter that drops them, so export work (which runs
// off the call path, in the background) does not blur the per-call figures.
//
//   npm run build && node bench/instrumentation.bench.mjs [--calls 20000] [--rounds 10]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const dist = (p) => require(path.join(ROOT, 'dist', p));
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const CALLS = flag('calls', 20_000);
const ROUNDS = flag('rounds', 10);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- one OpenTelemetry pipeline for everyone ---------------------------------------------------
const api = require('@opentelemetry/api');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator, ExportResultCode } = require('@opentelemetry/core');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');

let exported = 0;
const dropping = {
  export(spans, done) {
    exported += spans.length;
    done({ code: ExportResultCode.SUCCESS });
  },
  shutdown: async () => {},
};
const provider = new BasicTracerProvider({
  spanProcessors: [new BatchSpanProcessor(dropping, { maxQueueSize: 100_000, maxExportBatchSize: 2_048, scheduledDelayMillis: 200 })],
});
api.trace.setGlobalTracerProvider(provider);
api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
api.propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }));

// --- custody: runtime, identity, patches (before @langchain/core loads) ------------------------
const { configureRuntime } = dist('instrumentation/runtime.js');
const { AgentScope, setRootScope } = dist('instrumentation/scope.js');
const { toolCall } = dist('instrumentation/tool-call.js');
const { LangChainInstrumentation: CustodyLangChain } = dist('instrumentation/langchain/instrumentation.js');
const { createEnforcer } = dist('enforcer/client/enforcer.js');
const custodyLangChain = new CustodyLangChain();
custodyLangChain.disable();

const { LangChainInstrumentation: OpenInferenceLangChain } = require('@arizeai/openinference-instrumentation-langchain');
const openInference = new OpenInferenceLangChain({ tracerProvider: provider });
const callbackManagerModule = require('@langchain/core/callbacks/manager');

const { tool } = require('@langchain/core/tools');
const { z } = require('zod');

// --- the tool --------------------------------------------------------------------------------
const body = async ({ q, limit }) => ({ hits: [`${q}-1`, `${q}-2`].slice(0, limit) });
const args1 = { q: 'refund policy', limit: 2 };
const lcTool = tool(body, { name: 'search.query', description: 'search the knowledge base', schema: z.object({ q: z.string(), limit: z.number() }) });

async function main() {
  const up = await startCustody();
  const results = { machine: machine(), calls: CALLS, rounds: ROUNDS };
  try {
    setRootScope(new AgentScope({ agentInstanceId: 'bench-agent-1', sponsorId: 'alice', role: 'support', agentName: 'bench' }));
    const enforcer = createEnforcer({ url: up.url, timeoutMs: 2_000, recordOnActiveSpan: false });
    configureRuntime({ tracer: provider.getTracer('custody'), enforcer, toolMap: undefined, captureContent: false });
    // the first call asks the plane; the allow is cached from then on
    const first = await enforcer.check({ tool: 'search', action: 'query', identity: { agentInstanceId: 'bench-agent-1', sponsorId: 'alice', role: 'support' } });
    if (first.decision !== 'allow' || !first.enforced) throw new Error(`expected an enforced allow, got ${JSON.stringify(first)}`);

    const spanOnly = () => {
      configureRuntime({ enforcer: null });
      return toolCall('search.query', args1, body);
    };
    const enforced = () => {
      configureRuntime({ enforcer });
      return toolCall('search.query', args1, body);
    };

    results.manual = await compare({
      'bare function': () => body(args1),
      'custody: span only (enforcement off)': spanOnly,
      'custody: span + baggage + cached allow': enforced,
    });
    configureRuntime({ enforcer });
    const cachedAfter = await enforcer.check({ tool: 'search', action: 'query', identity: { agentInstanceId: 'bench-agent-1', sponsorId: 'alice', role: 'support' } });
    results.cacheHitConfirmed = cachedAfter.cached;

    // LangChain: switch the instrumentations per variant (each is idempotent and reversible)
    const use = (which) => {
      if (which === 'custody') custodyLangChain.enable();
      else custodyLangChain.disable();
      if (which === 'openinference') openInference.manuallyInstrument(callbackManagerModule);
      else openInference.unpatch(callbackManagerModule);
    };
    results.langchain = await compare(
      {
        'LangChain tool.invoke, bare': () => lcTool.invoke(args1),
        'LangChain + custody (span + baggage + cached allow)': () => lcTool.invoke(args1),
        'LangChain + OpenInference': () => lcTool.invoke(args1),
      },
      {
        'LangChain tool.invoke, bare': () => use('none'),
        'LangChain + custody (span + baggage + cached allow)': () => use('custody'),
        'LangChain + OpenInference': () => use('openinference'),
      },
    );
    use('none');
    await enforcer.close();
  } finally {
    await up.stop();
  }
  await provider.forceFlush();
  results.spansExported = exported;
  print(results);
  fs.mkdirSync(path.join(ROOT, 'bench/out'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench/out/instrumentation.json'), JSON.stringify(results, null, 2));
  console.log('\nwritten bench/out/instrumentation.json');
}

/**
 * Runs the variants round-robin (ROUNDS rounds of CALLS/ROUNDS calls each, after a warm-up), timing
 * every call; returns per-variant median/p95/p99 and the median overhead over the first variant.
 */
async function compare(variants, setups = {}) {
  const names = Object.keys(variants);
  const samples = Object.fromEntries(names.map((n) => [n, new Float64Array(CALLS)]));
  const filled = Object.fromEntries(names.map((n) => [n, 0]));
  const perRound = Math.floor(CALLS / ROUNDS);
  for (const name of names) {
    setups[name]?.();
    for (let i = 0; i < 2_000; i++) await variants[name]();
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of names) {
      setups[name]?.();
      const fn = variants[name];
      const out = samples[name];
      for (let i = 0; i < perRound; i++) {
        const t0 = process.hrtime.bigint();
        await fn();
        out[filled[name]++] = Number(process.hrtime.bigint() - t0) / 1_000;
      }
      // let the batch processor drain between batches, off the clock
      await sleep(5);
    }
  }
  const stats = {};
  for (const name of names) stats[name] = summarize(samples[name].subarray(0, filled[name]));
  const base = stats[names[0]];
  for (const name of names) stats[name].overheadMedianUs = round2(stats[name].medianUs - base.medianUs);
  return stats;
}

function summarize(arr) {
  const sorted = Float64Array.from(arr).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { n: sorted.length, medianUs: round2(at(0.5)), p95Us: round2(at(0.95)), p99Us: round2(at(0.99)), meanUs: round2(mean) };
}

const round2 = (x) => Math.round(x * 100) / 100;

function print(results) {
  console.log(`node ${results.machine.node}, ${results.machine.cpus} cpus (${results.machine.model}), load ${results.machine.loadavg.join(' ')}`);
  for (const [title, table] of [['manual API', results.manual], ['LangChain', results.langchain]]) {
    console.log(`\n${title}`);
    for (const [name, s] of Object.entries(table)) {
      console.log(`  ${name.padEnd(56)} median ${String(s.medianUs).padStart(8)} µs  p95 ${String(s.p95Us).padStart(8)} µs  p99 ${String(s.p99Us).padStart(8)} µs  overhead ${s.overheadMedianUs} µs`);
    }
  }
  console.log(`\ncache hit confirmed: ${results.cacheHitConfirmed}; spans exported: ${results.spansExported}`);
}

function machine() {
  return { node: process.version, cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavg: os.loadavg().map((x) => x.toFixed(2)) };
}

async function startCustody() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'custody-bench-instr-'));
  const admin = 'bench-admin';
  const p = spawn(process.execPath, [CLI, 'up', '--port', '0', '--otlp-port', '0', '--data-dir', dataDir], {
    cwd: ROOT,
    env: { ...process.env, CUSTODY_LOG_LEVEL: 'error', CUSTODY_ADMIN_TOKEN: admin },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  for (let i = 0; i < 600; i++) {
    const url = /control API\s+(http:\/\/\S+)/.exec(out)?.[1];
    if (url && (await fetch(`${url}/readyz`).then((r) => r.ok, () => false))) {
      const res = await fetch(`${url}/v1/rollout`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` },
        body: JSON.stringify({ percent: 100, reason: 'bench: every instance enforced' }),
      });
      if (!res.ok) throw new Error(`PUT /v1/rollout: ${res.status} ${await res.text()}`);
      return {
        url,
        stop: async () => {
          p.kill('SIGTERM');
          await sleep(300);
        },
      };
    }
    if (p.exitCode !== null) throw new Error(`custody exited:\n${out}`);
    await sleep(100);
  }
  p.kill('SIGKILL');
  throw new Error(`custody did not start:\n${out}`);
}

await main();
