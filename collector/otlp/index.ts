/**
 * OTLP trace requests, protobuf and JSON, decoded into one internal span shape, and the OTLP/HTTP
 * answers.
 */
export {
  SPAN_KIND,
  STATUS_CODE,
  findAttribute,
  type AnyValue,
  type Attributes,
  type DecodedRequest,
  type KeyValue,
  type PbLong,
  type RejectReason,
  type Resource,
  type Scope,
  type Span,
  type SpanEvent,
  type SpanLink,
} from './span';
export { OtlpDecodeError, OtlpHttpError, type OtlpErrorCode } from './errors';
export { decodeProtobuf } from './protobuf';
export { decodeJson } from './json';
export { GRPC_CODE, encodeExportResponse, encodeStatus, type WireFormat } from './response';
