import { context, defaultTextMapSetter, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { CustodyError } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';

/** Why a call to the plane gave no usable answer. Every kind fails closed. */
export type TransportFailure = 'timeout' | 'unreachable' | 'http' | 'malformed';

export class TransportError extends CustodyError {
  static readonly code = 'ERR_POLICY_TRANSPORT';
  readonly kind: TransportFailure;
  /** HTTP status when there was one. */
  readonly status: number;
  constructor(kind: TransportFailure, message: string, status = 0, options?: { cause?: unknown }) {
    super(TransportError.code, message, options);
    this.kind = kind;
    this.status = status;
  }
}

const propagator = new W3CTraceContextPropagator();

/** `traceparent` of the active span, so the plane's decision span joins the tool call's trace. */
export function traceHeaders(): Record<string, string> {
  const headers: Record<string, string> = {};
  if (trace.getSpanContext(context.active())) propagator.inject(context.active(), headers, defaultTextMapSetter);
  return headers;
}

/**
 * One JSON request, bounded by the caller's signal. Anything but a 2xx with a JSON body is a
 * TransportError saying which failure it was; the body is returned unvalidated.
 */
export async function requestJson(
  url: string,
  init: { method: 'GET' | 'POST'; body?: unknown; headers?: Record<string, string>; signal: AbortSignal; timeoutMs: number },
): Promise<unknown> {
  const { method, body, headers, signal } = init;
  try {
    return (await fetchJson(url, { method, ...(body !== undefined ? { body } : {}), ...(headers ? { headers } : {}), signal })).body;
  } catch (err) {
    if (!(err instanceof JsonRequestError)) throw err;
    // the caller's signal is the one budget of the tool call: its firing is this call's timeout
    if (err.kind === 'aborted' || err.kind === 'timeout') {
      throw new TransportError('timeout', `no answer from ${err.where} within ${init.timeoutMs} ms`, 0, { cause: err.cause });
    }
    throw new TransportError(err.kind, err.message, err.status, err.cause !== undefined ? { cause: err.cause } : undefined);
  }
}
