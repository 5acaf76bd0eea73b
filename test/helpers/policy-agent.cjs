// An agent process for the chaos tests: one enforcer (configured from CUSTODY_* env, as in a real
// agent) for its whole life. Each stdin line {id, tool, action} is one tool call: check, then run
// the "tool body" only when allowed. Each result goes to stdout as one JSON line.
const path = require('node:path');
const readline = require('node:readline');
const { performance } = require('node:perf_hooks');
const { trace } = require('@opentelemetry/api');
const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { createEnforcer } = require(path.resolve(__dirname, '../../dist/enforcer/client/enforcer.js'));

const exporter = new InMemorySpanExporter();
new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).register();
const tracer = trace.getTracer('policy-agent');
const enforcer = createEnforcer();
const identity = {
  sponsorId: process.env.CUSTODY_SPONSOR_ID,
  agentInstanceId: process.env.CUSTODY_AGENT_INSTANCE_ID,
  role: process.env.CUSTODY_ROLE,
};
let bodyRuns = 0;

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const call = JSON.parse(line);
  tracer.startActiveSpan(`execute_tool ${call.tool}.${call.action}`, async (span) => {
    const started = performance.now();
    const d = await enforcer.check({ tool: call.tool, action: call.action, identity });
    const elapsedMs = performance.now() - started;
    let bodyRan = false;
    if (d.allowed) {
      bodyRan = true;
      bodyRuns++;
    }
    span.end();
    const attributes = exporter.getFinishedSpans().find((s) => s.spanContext().spanId === span.spanContext().spanId)?.attributes;
    exporter.reset();
    process.stdout.write(
      JSON.stringify({
        id: call.id,
        decision: d.decision,
        allowed: d.allowed,
        enforced: d.enforced,
        cached: d.cached,
        elapsedMs,
        bodyRan,
        bodyRuns,
        reason: d.reason,
        code: d.error?.code,
        type: d.error?.type,
        attributes,
      }) + '\n',
    );
  });
});
