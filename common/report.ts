import { SpanStatusCode, type Attributes, type Context, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { BasicTracerProvider, type ReadableSpan, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { ATTR, DEFAULTS } from './names';

/**
 * How the server roles (token service, policy plane, rollback job) report their events to the
 * collector: as OTLP spans over HTTP, the same path agents use, so a role can run in another
 * process or on another machine. Its own provider, never the global one: an agent process that
 * also loads custody/register keeps its SDK to itself.
 *
 * Records are kept until the collector has acknowledged them: a collector that is down or refuses
 * a batch gets it again later (backing off up to 30 s), never loses it. The queue is bounded
 * (`maxQueue`); a role whose records must never be lost (the policy plane's decisions) asks
 * `hasRoom()` first and refuses the request rather than act unrecorded.
 */
export interface Reporter {
  readonly tracer: Tracer;
  /** Records one event as a zero-length span. */
  event(name: string, attributes: Attributes, options?: { error?: string; context?: Context; time?: number }): void;
  /** Whether one more record fits in the queue of records not yet acknowledged. */
  hasRoom(): boolean;
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
  /** Records held until acknowledged, at most. Default 20,000. */
  maxQueue?: number;
}

/** Default bound of the records a reporter holds until the collector acknowledges them. */
export const REPORT_QUEUE_MAX = 20_000;

export function createReporter(options: ReporterOptions): Reporter {
  const base = (options.endpoint ?? DEFAULTS.OTLP_ENDPOINT).replace(/\/+$/, '');
  const exporter =
    options.exporter ??
    new OTLPTraceExporter({ url: `${base}/v1/traces`, ...(options.headers ? { headers: options.headers } : {}) });
  const processor = new AcknowledgedBatchProcessor(exporter, { maxQueue: options.maxQueue ?? REPORT_QUEUE_MAX, batch: 1000, delayMs: 200 });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR.SERVICE_NAME]: options.serviceName }),
    spanProcessors: [processor],
  });
  const tracer = provider.getTracer('custody');
  return {
    tracer,
    hasRoom: () => processor.hasRoom(),
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

/**
 * A batch span processor that drops nothing it has accepted: a batch leaves the queue only once the
 * exporter says SUCCESS; a failed one is sent again after a back-off (0.5 s doubling to 30 s). One
 * export at a time, in order. A span that arrives when the queue is full is not kept (callers that
 * must not lose records ask `hasRoom()` first).
 */
export class AcknowledgedBatchProcessor implements SpanProcessor {
  private readonly queue: ReadableSpan[] = [];
  private inflight: Promise<boolean> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private backoffMs = 0;
  private stopped = false;

  constructor(
    private readonly exporter: SpanExporter,
    private readonly o: { maxQueue: number; batch: number; delayMs: number },
  ) {}

  hasRoom(): boolean {
    return this.queue.length < this.o.maxQueue;
  }

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    if (this.stopped || !this.hasRoom()) return;
    this.queue.push(span);
    this.schedule(this.queue.length >= this.o.batch ? 0 : this.o.delayMs);
  }

  private schedule(delayMs: number): void {
    if (this.timer || this.inflight || this.queue.length === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.exportOnce().then((ok) => this.schedule(ok ? (this.queue.length >= this.o.batch ? 0 : this.o.delayMs) : this.backoffMs));
    }, delayMs);
    this.timer.unref?.();
  }

  /** Sends the head of the queue; true when the collector took it (or there was nothing to send). */
  private exportOnce(): Promise<boolean> {
    if (this.inflight) return this.inflight;
    if (this.queue.length === 0) return Promise.resolve(true);
    const batch = this.queue.slice(0, this.o.batch);
    this.inflight = new Promise<ExportResult>((resolve) => {
      try {
        this.exporter.export(batch, resolve);
      } catch (error) {
        resolve({ code: ExportResultCode.FAILED, error: error as Error });
      }
    }).then((result) => {
      this.inflight = undefined;
      if (result.code === ExportResultCode.SUCCESS) {
        this.queue.splice(0, batch.length);
        this.backoffMs = 0;
        return true;
      }
      this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 500), 30_000);
      return false;
    });
    return this.inflight;
  }

  /** Sends everything queued; stops at the first batch the collector does not take. */
  async forceFlush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.queue.length > 0) {
      if (!(await this.exportOnce())) break;
    }
    this.schedule(this.backoffMs || this.o.delayMs);
  }

  async shutdown(): Promise<void> {
    await this.forceFlush();
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.exporter.shutdown();
  }
}
