import generatedRoot from 'otlp-proto-root/build/src/generated/root';
import type { KeyValue, PbLong } from './span';

/**
 * The protobufjs messages generated from the official OTLP protos, with the shapes read here (the
 * generated root ships without typings). Unset fields read as null (the generated prototypes'
 * defaults).
 */
export interface PbSpan {
  traceId: Uint8Array | null;
  spanId: Uint8Array | null;
  traceState: string | null;
  parentSpanId: Uint8Array | null;
  name: string | null;
  kind: number | null;
  startTimeUnixNano: PbLong | number | null;
  endTimeUnixNano: PbLong | number | null;
  attributes: KeyValue[] | null;
  events: { timeUnixNano: PbLong | number | null; name: string | null; attributes: KeyValue[] | null }[] | null;
  links: { traceId: Uint8Array | null; spanId: Uint8Array | null; traceState: string | null; attributes: KeyValue[] | null }[] | null;
  status: { code: number | null; message: string | null } | null;
}
export interface PbRequest {
  resourceSpans:
    | {
        resource: { attributes: KeyValue[] | null } | null;
        scopeSpans: { scope: { name: string | null; version: string | null } | null; spans: PbSpan[] | null }[] | null;
      }[]
    | null;
}
interface PbMessageType<T> {
  decode(body: Uint8Array): T;
  create(properties: object): T;
  encode(message: T): { finish(): Uint8Array };
}
interface GeneratedRoot {
  opentelemetry: {
    proto: {
      collector: {
        trace: {
          v1: {
            ExportTraceServiceRequest: PbMessageType<PbRequest>;
            ExportTraceServiceResponse: PbMessageType<object>;
            ExportTracePartialSuccess: PbMessageType<object>;
          };
        };
      };
    };
  };
}

const collectorTrace = (generatedRoot as unknown as GeneratedRoot).opentelemetry.proto.collector.trace.v1;
export const ExportTraceServiceRequest = collectorTrace.ExportTraceServiceRequest;
export const ExportTraceServiceResponse = collectorTrace.ExportTraceServiceResponse;
export const ExportTracePartialSuccess = collectorTrace.ExportTracePartialSuccess;
