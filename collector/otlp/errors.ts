import { CustodyError, HttpError } from '../../common/errors';

/** The request body could not be read as an OTLP trace request at all. */
export class OtlpDecodeError extends CustodyError {
  constructor(message: string) {
    super('ERR_OTLP_MALFORMED', message);
  }
}

/** The `error.code` values of the receiver's answers. */
export type OtlpErrorCode =
  | 'invalid_request'
  | 'not_found'
  | 'method_not_allowed'
  | 'unauthorized'
  | 'unsupported_media_type'
  | 'unsupported_encoding'
  | 'payload_too_large'
  | 'overloaded'
  | 'storage_unavailable'
  | 'storage_refused'
  | 'rows_refused'
  | 'internal';

/** An OTLP/HTTP error answer: HTTP status, the gRPC code for the google.rpc.Status body, custody's code, headers. */
export class OtlpHttpError extends HttpError {
  declare readonly code: OtlpErrorCode;
  constructor(
    status: number,
    readonly grpcCode: number,
    code: OtlpErrorCode,
    message: string,
    headers: Record<string, string> = {},
  ) {
    super(status, code, message, headers);
  }
}
