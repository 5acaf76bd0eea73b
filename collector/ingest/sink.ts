import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { decodeProtobuf, type Span } from '../otlp';

/**
 * The span exporter of the roles `custody up` hosts beside the collector (token service, policy
 * plane, rollback job): their records go straight to the store, through the same decoding and
 * mapping as OTLP requests, written as the service's own (trust `service`). They never pass the
 * public OTLP port, so nothing that reaches that port can pass for them.
 */
export function createServiceSink(write: (spans: readonly Span[]) => Promise<void>): SpanExporter {
  let stopped = false;
  return {
    export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
      if (stopped) return done({ code: ExportResultCode.FAILED, error: new Error('the collector has stopped') });
      let decoded: readonly Span[];
      try {
        decoded = decodeProtobuf(Buffer.from(ProtobufTraceSerializer.serializeRequest(spans) ?? new Uint8Array())).spans;
      } catch (err) {
        return done({ code: ExportResultCode.FAILED, error: err as Error });
      }
      write(decoded).then(
        () => done({ code: ExportResultCode.SUCCESS }),
        (err: Error) => done({ code: ExportResultCode.FAILED, error: err }),
      );
    },
    async shutdown() {
      stopped = true;
    },
    async forceFlush() {},
  };
}
