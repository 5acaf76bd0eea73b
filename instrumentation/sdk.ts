import childProcess from 'node:child_process';
import {
  context,
  diag,
  DiagConsoleLogger,
  DiagLogLevel,
  metrics,
  propagation,
  trace,
  type ProxyTracerProvider,
  type Attributes,
  type Context,
  type Link,
  type SpanKind,
  type Tracer,
} from '@opentelemetry/api';
import { CompositePropagator, ExportResultCode, getNumberFromEnv, getStringFromEnv, W3CBaggagePropagator, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter as JsonTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { NodeSDK } from '@opentelemetry/sdk-node';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  SamplingDecision,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  type Sampler,
  type SamplingResult,
  type Span,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ATTR, DEFAULTS, SPAN } from '../common/names';
import { SCOPE_NAME } from './semconv';
import { VERSION } from './version';

/**
 * The agent's OpenTelemetry pipeline. custody starts the NodeSDK itself (OTLP/HTTP protobuf to
 * the collector, W3C tracecontext + baggage) unless another SDK — auto-instrumentations-node, the
 * app's own — already registered a global tracer provider. SDK 2.x providers take no processors
 * after construction, so then custody never registers a second global SDK: it keeps a provider of
 * its own, not global, for its tool-call spans only, exporting to custody's endpoint, while the
 * other SDK's context manager and propagators carry the trace — custody's spans join the app's
 * traces, and the audit does not depend on where the app sends its telemetry.
 *
 * Telemetry fails open: a collector that is down costs spans (with a diag warning), never calls.
 */
export interface Telemetry {
  readonly tracer: Tracer;
  /**
   * 'sdk': custody started the NodeSDK; 'own-provider': another SDK was already registered, or
   * registered after custody's and custody stepped aside (see yieldGlobalsToLaterSdk).
   */
  readonly mode: 'sdk' | 'own-provider' | 'disabled';
  readonly endpoint: string;
  flush(timeoutMs?: number): Promise<void>;
  shutdown(timeoutMs?: number): Promise<void>;
}

export interface TelemetryOptions {
  serviceName?: string | undefined;
  /** Instead of OTLP (tests, benchmarks). */
  exporter?: SpanExporter;
  /** The credential sent with the spans (see export-credential.ts). */
  credential?: () => string | undefined;
  /** Register exit and signal handlers (default true). */
  exitHooks?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
}

const FLUSH_TIMEOUT_MS = 5_000;

/**
 * The exporter's `Authorization: Bearer <credential>` (asked at each export: tokens are renewed),
 * unless OTEL_EXPORTER_OTLP_HEADERS already sets one (e.g. a gateway's).
 */
function authorizationHeader(env: Readonly<Record<string, string | undefined>>, credential: (() => string | undefined) | undefined) {
  const value = authorizationValue(env, credential);
  return async (): Promise<Record<string, string>> => {
    const v = value();
    return v && !headersConfigured(env) ? { Authorization: v } : {};
  };
}

const headersConfigured = (env: Readonly<Record<string, string | undefined>>): boolean =>
  /(^|,)\s*authorization\s*=/i.test(`${env.OTEL_EXPORTER_OTLP_HEADERS ?? ''},${env.OTEL_EXPORTER_OTLP_TRACES_HEADERS ?? ''}`);

/** The Authorization value the spans go with, now: the configured header's, else `Bearer <credential>`. */
function authorizationValue(env: Readonly<Record<string, string | undefined>>, credential: (() => string | undefined) | undefined): () => string | undefined {
  return () => {
    if (headersConfigured(env)) {
      const list = `${env.OTEL_EXPORTER_OTLP_TRACES_HEADERS ?? ''},${env.OTEL_EXPORTER_OTLP_HEADERS ?? ''}`;
      const m = /(?:^|,)\s*authorization\s*=\s*([^,]+)/i.exec(list);
      return m ? decodeURIComponent(m[1]!.trim()) : undefined;
    }
    const c = credential?.();
    return c ? `Bearer ${c}` : undefined;
  };
}
const WARN_INTERVAL_MS = 60_000;

export function startTelemetry(options: TelemetryOptions = {}): Telemetry {
  const env = options.env ?? process.env;
  const endpoint = tracesEndpoint(env);
  if (/^(1|true)$/i.test(env.OTEL_SDK_DISABLED ?? '')) {
    diag.warn('custody: OTEL_SDK_DISABLED is set; tool calls are still enforced but not exported');
    return { tracer: trace.getTracer(SCOPE_NAME, VERSION), mode: 'disabled', endpoint, flush: async () => {}, shutdown: async () => {} };
  }
  const ownsDiag = env.OTEL_LOG_LEVEL === undefined && !globalDiagRegistered();
  if (ownsDiag) diag.setLogger(new DiagConsoleLogger(), { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });

  // The exporter keeps the OTel defaults (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s, retries inside it): a
  // slow collector must not cost audit spans. The price: with the collector down, a short-lived
  // agent's exit waits for those retries; lower the timeout to shorten it.
  const protocol = tracesProtocol(env);
  const exporterConfig = { url: endpoint, headers: authorizationHeader(env, options.credential) };
  const exporter = new FailOpenExporter(options.exporter ?? (protocol === 'http/json' ? new JsonTraceExporter(exporterConfig) : new OTLPTraceExporter(exporterConfig)), endpoint);
  const processor = new AuditSpanProcessor(exporter, endpoint, batchConfig(env), protocol);
  // the process.exit() path sends with the same credential
  processor.authorization = authorizationValue(env, options.credential);
  const sampler = new AuditSampler(samplerFromEnv(env));

  let tracer: Tracer;
  let mode: Telemetry['mode'];
  let stop: () => Promise<void>;
  if (hasGlobalTracerProvider()) {
    const provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ [ATTR.SERVICE_NAME]: serviceName(env, options.serviceName) }),
      sampler,
      spanProcessors: [processor],
    });
    tracer = provider.getTracer(SCOPE_NAME, VERSION);
    mode = 'own-provider';
    stop = () => provider.shutdown();
    diag.debug('custody: a global tracer provider is already registered; custody exports its tool-call spans itself');
  } else {
    const explicitName = env.OTEL_SERVICE_NAME === undefined && !/(^|,)\s*service\.name=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '');
    const sdk = new NodeSDK({
      ...(explicitName ? { serviceName: serviceName(env, options.serviceName) } : {}),
      spanProcessors: [processor],
      sampler,
      // W3C tracecontext + baggage unless OTEL_PROPAGATORS says otherwise
      ...(env.OTEL_PROPAGATORS ? {} : { textMapPropagator: new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }) }),
      // custody's collector takes traces; metrics and logs only when asked for
      ...(env.OTEL_METRICS_EXPORTER ? {} : { metricReaders: [] }),
      ...(env.OTEL_LOGS_EXPORTER ? {} : { logRecordProcessors: [] }),
    });
    const before = registeredGlobals();
    sdk.start();
    // custody's own provider, held directly: its spans stay custody's if another SDK takes the globals later
    const own = (trace.getTracerProvider() as ProxyTracerProvider).getDelegate();
    tracer = own.getTracer(SCOPE_NAME, VERSION);
    mode = 'sdk';
    stop = () => sdk.shutdown();
    const registered = registeredGlobals().filter((g) => !before.includes(g));
    yieldGlobalsToLaterSdk(registered, () => {
      mode = 'own-provider';
      diag.debug('custody: another OpenTelemetry SDK registered after custody/register; it takes the globals, custody exports its tool-call spans itself');
    });
  }

  let stopped: Promise<void> | undefined;
  const telemetry: Telemetry = {
    tracer,
    get mode() {
      return mode;
    },
    endpoint,
    flush: (timeoutMs = FLUSH_TIMEOUT_MS) => bounded(processor.forceFlush(), timeoutMs),
    shutdown: (timeoutMs = FLUSH_TIMEOUT_MS) => (stopped ??= bounded(stop(), timeoutMs)),
  };
  if (options.exitHooks !== false) installExitHooks(telemetry, processor);
  return telemetry;
}

/**
 * OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf` (the
 * default) or `http/json`. custody/register speaks OTLP over HTTP only; `grpc` or anything else
 * is said once and exported as http/protobuf.
 */
export function tracesProtocol(env: Readonly<Record<string, string | undefined>>): 'http/protobuf' | 'http/json' {
  const raw = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? '').trim().toLowerCase();
  if (raw === '' || raw === 'http/protobuf') return 'http/protobuf';
  if (raw === 'http/json') return 'http/json';
  diag.warn(`custody: OTLP protocol '${raw}' is not one custody/register exports with; using http/protobuf (or set http/json)`);
  return 'http/protobuf';
}

/** OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is), else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else 127.0.0.1:4318. */
export function tracesEndpoint(env: Readonly<Record<string, string | undefined>>): string {
  const signal = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (signal) return signal;
  const base = (env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || DEFAULTS.OTLP_ENDPOINT).replace(/\/+$/, '');
  return `${base}/v1/traces`;
}

function serviceName(env: Readonly<Record<string, string | undefined>>, explicit?: string): string {
  return explicit ?? env.OTEL_SERVICE_NAME ?? env.CUSTODY_AGENT_NAME ?? 'custody-agent';
}

type GlobalApi = 'trace' | 'context' | 'propagation' | 'metrics';

/** Which of the API's globals some SDK has registered (the API keeps them on one global object). */
function registeredGlobals(): GlobalApi[] {
  const g = (globalThis as Record<symbol, Partial<Record<GlobalApi, unknown>> | undefined>)[Symbol.for('opentelemetry.js.api.1')];
  return (['trace', 'context', 'propagation', 'metrics'] as const).filter((k) => g?.[k] !== undefined);
}

/**
 * custody/register loaded before another SDK (`--require custody/register --require
 * @opentelemetry/auto-instrumentations-node/register`): the first global that SDK registers makes
 * custody step aside — it unregisters the globals it registered, so the app's SDK registers all of
 * its own without "duplicate registration" errors and keeps its spans, and custody goes on with its
 * own provider for its tool-call spans (as when the app's SDK came first). Only the next
 * registration through these API entry points is watched; the entry points are then restored.
 */
function yieldGlobalsToLaterSdk(mine: readonly GlobalApi[], onYield: () => void): void {
  if (mine.length === 0) return;
  const entryPoints = [
    [trace, 'setGlobalTracerProvider'],
    [context, 'setGlobalContextManager'],
    [propagation, 'setGlobalPropagator'],
    [metrics, 'setGlobalMeterProvider'],
  ] as const;
  let yielded = false;
  const stepAside = () => {
    if (yielded) return;
    yielded = true;
    for (const [api, name] of entryPoints) delete (api as unknown as Record<string, unknown>)[name];
    // trace: the registration is removed but the API's proxy kept, so the tracers it handed out
    // before now (the app's instrumentations take theirs when constructed) follow the next provider
    if (mine.includes('trace')) delete (globalThis as Record<symbol, Partial<Record<GlobalApi, unknown>> | undefined>)[Symbol.for('opentelemetry.js.api.1')]?.trace;
    if (mine.includes('context')) context.disable();
    if (mine.includes('propagation')) propagation.disable();
    if (mine.includes('metrics')) metrics.disable();
    onYield();
  };
  for (const [api, name] of entryPoints) {
    const original = (api as unknown as Record<string, (...args: unknown[]) => boolean>)[name]!;
    Object.defineProperty(api, name, {
      configurable: true,
      writable: true,
      value: function (...args: unknown[]) {
        stepAside();
        return original.apply(api, args);
      },
    });
  }
}

function hasGlobalTracerProvider(): boolean {
  const provider = trace.getTracerProvider() as { getDelegateTracer?: (name: string) => Tracer | undefined };
  // The API hands out a proxy; it has a delegate only once some SDK registered one.
  if (typeof provider.getDelegateTracer === 'function') return provider.getDelegateTracer(SCOPE_NAME) !== undefined;
  return true;
}

function globalDiagRegistered(): boolean {
  const g = (globalThis as Record<symbol, { diag?: unknown } | undefined>)[Symbol.for('opentelemetry.js.api.1')];
  return g?.diag !== undefined;
}

function batchConfig(env: Readonly<Record<string, string | undefined>>) {
  const read = (name: string, fallback: number): number => {
    const v = env === process.env ? getNumberFromEnv(name) : Number(env[name]);
    return v !== undefined && Number.isFinite(v) && v > 0 ? v : fallback;
  };
  return {
    // audit rows should show up within a second, not the SDK default five
    scheduledDelayMillis: read('OTEL_BSP_SCHEDULE_DELAY', 1_000),
    exportTimeoutMillis: read('OTEL_BSP_EXPORT_TIMEOUT', 30_000),
    maxQueueSize: read('OTEL_BSP_MAX_QUEUE_SIZE', 2_048),
    maxExportBatchSize: read('OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512),
  };
}

/** The sampler OTEL_TRACES_SAMPLER names (default parentbased_always_on). */
export function samplerFromEnv(env: Readonly<Record<string, string | undefined>>): Sampler {
  const name = (env === process.env ? getStringFromEnv('OTEL_TRACES_SAMPLER') : env.OTEL_TRACES_SAMPLER)?.trim().toLowerCase();
  const arg = Number(env.OTEL_TRACES_SAMPLER_ARG);
  const ratio = Number.isFinite(arg) && arg >= 0 && arg <= 1 ? arg : 1;
  switch (name) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(ratio);
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
    default:
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

/**
 * Tool-call spans are audit records: always recorded and exported, whatever the trace sampler
 * decides for the rest (an unsampled incoming traceparent must not drop an audit row).
 */
export class AuditSampler implements Sampler {
  constructor(private readonly delegate: Sampler) {}
  shouldSample(ctx: Context, traceId: string, name: string, kind: SpanKind, attributes: Attributes, links: Link[]): SamplingResult {
    if (attributes[ATTR.GEN_AI_OPERATION_NAME] === SPAN.TOOL_CALL_OPERATION) return { decision: SamplingDecision.RECORD_AND_SAMPLED };
    return this.delegate.shouldSample(ctx, traceId, name, kind, attributes, links);
  }
  toString(): string {
    return `AuditSampler{${this.delegate.toString()}}`;
  }
}

/** Exports never throw into the agent; failures are reported through diag, at most once a minute. */
class FailOpenExporter implements SpanExporter {
  private lastWarn = 0;
  private dropped = 0;
  onSettled: ((spans: ReadableSpan[]) => void) | undefined;

  constructor(
    private readonly inner: SpanExporter,
    private readonly endpoint: string,
  ) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    const settle = (result: ExportResult): void => {
      this.onSettled?.(spans);
      if (result.code !== ExportResultCode.SUCCESS) this.warn(spans.length, result.error);
      done(result);
    };
    try {
      this.inner.export(spans, settle);
    } catch (err) {
      settle({ code: ExportResultCode.FAILED, error: err as Error });
    }
  }

  private warn(count: number, error: Error | undefined): void {
    this.dropped += count;
    const now = Date.now();
    if (now - this.lastWarn < WARN_INTERVAL_MS) return;
    this.lastWarn = now;
    diag.warn(`custody: could not export ${this.dropped} span(s) to ${this.endpoint}; the agent goes on, spans are dropped: ${error?.message ?? 'export failed'}`);
    this.dropped = 0;
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }
  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

/**
 * A batch processor that also knows which ended spans no export has taken yet, so that a process
 * ending with process.exit() — where nothing asynchronous runs any more — can still send them.
 */
class AuditSpanProcessor implements SpanProcessor {
  readonly pending = new Set<ReadableSpan>();
  authorization: (() => string | undefined) | undefined;
  private readonly batch: BatchSpanProcessor;
  ended = 0;

  constructor(
    readonly exporter: FailOpenExporter,
    readonly endpoint: string,
    config: ConstructorParameters<typeof BatchSpanProcessor>[1],
    readonly protocol: 'http/protobuf' | 'http/json' = 'http/protobuf',
  ) {
    this.batch = new BatchSpanProcessor(exporter, config);
    exporter.onSettled = (spans) => {
      for (const s of spans) this.pending.delete(s);
    };
  }
  onStart(span: Span, ctx: Context): void {
    this.batch.onStart(span, ctx);
  }
  onEnd(span: ReadableSpan): void {
    if (!span.spanContext().traceFlags) return; // not sampled: never exported
    this.ended++;
    this.pending.add(span);
    this.batch.onEnd(span);
  }
  forceFlush(): Promise<void> {
    return this.batch.forceFlush();
  }
  shutdown(): Promise<void> {
    return this.batch.shutdown();
  }
}

function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
    timer.unref();
  });
  // a failed export was already reported by the exporter
  return Promise.race([p.then(() => undefined, () => undefined), timeout]).finally(() => clearTimeout(timer));
}

function installExitHooks(telemetry: Telemetry, processor: AuditSpanProcessor): void {
  // Natural exit: the event loop is empty; flush what ended since the last flush (a flush with
  // nothing new would schedule nothing, and beforeExit would not fire again).
  let flushedAt = 0;
  process.on('beforeExit', () => {
    if (processor.ended === flushedAt) return;
    flushedAt = processor.ended;
    void telemetry.flush();
  });

  // SIGTERM/SIGINT: flush, then keep the signal's meaning. With no handler of the app's own the
  // default is to die of the signal, so re-raise it once ours is gone; otherwise the app decides.
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const onSignal = (): void => {
      void telemetry.shutdown(2_000).finally(() => {
        if (process.listenerCount(signal) === 1) {
          process.removeListener(signal, onSignal);
          // dying of the signal runs no 'exit' handler: what the bounded flush did not deliver goes now
          sendPendingSync(processor);
          process.kill(process.pid, signal);
        }
      });
    };
    process.on(signal, onSignal);
  }

  // process.exit(): nothing asynchronous runs now. Send what no export took yet from a short-lived
  // child, synchronously, bounded.
  process.once('exit', () => sendPendingSync(processor));
}

// Taken before custody patches child_process: the sender must start without custody's environment.
const spawnSync = childProcess.spawnSync;

const SYNC_SENDER = `
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c)).on('end', async () => {
  try {
    await fetch(process.argv[1], { method: 'POST', headers: { 'content-type': process.argv[2], ...(process.argv[3] ? { authorization: process.argv[3] } : {}) }, body: Buffer.concat(chunks), signal: AbortSignal.timeout(5000) });
  } catch {}
});`;

function sendPendingSync(processor: AuditSpanProcessor): void {
  if (processor.pending.size === 0 || !/^https?:/.test(processor.endpoint)) return;
  try {
    const json = processor.protocol === 'http/json';
    const body = (json ? JsonTraceSerializer : ProtobufTraceSerializer).serializeRequest([...processor.pending]);
    if (!body) return;
    const env = { ...process.env };
    delete env.NODE_OPTIONS; // the sender must not load custody itself
    // the send gives up after 5 s; the bound here leaves room for the child to start on a loaded machine
    spawnSync(process.execPath, ['-e', SYNC_SENDER, processor.endpoint, json ? 'application/json' : 'application/x-protobuf', processor.authorization?.() ?? ''], { input: body, env, timeout: 10_000, stdio: ['pipe', 'ignore', 'ignore'] });
  } catch {
    /* telemetry fails open */
  }
}
