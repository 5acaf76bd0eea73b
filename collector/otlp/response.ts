import { ExportTracePartialSuccess, ExportTraceServiceResponse } from './proto';

/** The OTLP/HTTP answers: ExportTraceServiceResponse on success, google.rpc.Status on errors. */

export type WireFormat = 'protobuf' | 'json';

/** ExportTraceServiceResponse; partial_success only when something was refused. */
export function encodeExportResponse(format: WireFormat, rejectedSpans: number, errorMessage: string): Buffer {
  const partial = rejectedSpans > 0 || errorMessage ? { rejectedSpans, errorMessage } : undefined;
  if (format === 'json') {
    // proto3 JSON writes int64 as a string
    return Buffer.from(
      JSON.stringify(partial ? { partialSuccess: { rejectedSpans: String(rejectedSpans), errorMessage } } : {}),
    );
  }
  const msg = ExportTraceServiceResponse.create(partial ? { partialSuccess: ExportTracePartialSuccess.create(partial) } : {});
  return Buffer.from(ExportTraceServiceResponse.encode(msg).finish());
}

/** gRPC status codes used in OTLP/HTTP error bodies. */
export const GRPC_CODE = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/**
 * The google.rpc.Status body OTLP/HTTP wants on 4xx/5xx. The type is not in the generated OTLP
 * root; its fields 1 (code, varint) and 2 (message, string) have the same wire form as
 * ExportTracePartialSuccess's fields 1 and 2, so that message's generated encoder writes it.
 */
export function encodeStatus(format: WireFormat, grpcCode: number, message: string, error: { code: string; message: string }): Buffer {
  if (format === 'json') return Buffer.from(JSON.stringify({ code: grpcCode, message, error }));
  const msg = ExportTracePartialSuccess.create({ rejectedSpans: grpcCode, errorMessage: message });
  return Buffer.from(ExportTracePartialSuccess.encode(msg).finish());
}
