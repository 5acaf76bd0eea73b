import { SpanStatusCode, type Attributes, type Context, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { ATTR, DEFAULTS } from './names';

/**
 * How the server roles (token service, policy plane, rollback job) report their events to the
 * collector: as OTLP spans over HTTP, the same path agents use, so a role can run in another
 * process or on another machine. Its own provider, never the global one: an agent process that
 * also loads custody/register keeps its SDK to itself. Telemetry fails open: a collector that is
 * down loses these events, never the request that caused them.
 */
export interface Reporter {
  readonly tracer: Tracer;
  /** Records one event as a zero-length span. */
  event(name: string, attributes: Attributes, options?: { error?: string; context?: Context; time?: number }): void;
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

export interface ReporterOptions {
  serviceName: string;
  /** OTLP/HTTP base URL of the collector (the host passes --otlp-url or $OTEL_EXPORTER_OTLP_ENDPOINT), default http://127.0.0.1:4318. */
  endpoint?: string;
  headers?: Record<string, string>;
  /** For tests: where spans go instead of OTLP. */
  exporter?: SpanExporter;
}

export function createReporter(options: ReporterOptions): Reporter {
  const base = (options.endpoint ?? DEFAULTS.OTLP_ENDPOINT).replace(/\/+$/, '');
  const exporter =
    options.exporter ??
    new OTLPTraceExporter({ url: `${base}/v1/traces`, ...(options.headers ? { headers: options.headers } : {}) });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR.SERVICE_NAME]: options.serviceName }),
    spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 200, maxExportBatchSize: 1000, maxQueueSize: 20_000 })],
  });
  const tracer = provider.getTracer('custody');
  return {
    tracer,
    event(name, attributes, opts = {}) {
      const time = opts.time ?? Date.now();
      const span = tracer.startSpan(name, { attributes, startTime: time }, opts.context);
      if (opts.error) span.setStatus({ code: SpanStatusCode.ERROR, message: opts.error });
      span.end(time);
    },
    flush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}
