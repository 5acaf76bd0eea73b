import { context, defaultTextMapSetter, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';

/** Why a call to the plane gave no usable answer. Every kind fails closed. */
export type TransportFailure = 'timeout' | 'unreachable' | 'http' | 'malformed';

export class TransportError extends Error {
  readonly kind: TransportFailure;
  /** HTTP status when there was one. */
  readonly status: number;
  constructor(kind: TransportFailure, message: string, status = 0, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransportError';
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
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      method: init.method,
      headers: {
        accept: 'application/json',
        ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...init.headers,
      },
      ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
      signal: init.signal,
    });
    text = await res.text();
  } catch (err) {
    if (init.signal.aborted) throw new TransportError('timeout', `no answer from ${origin(url)} within ${init.timeoutMs} ms`, 0, { cause: err });
    throw new TransportError('unreachable', `${origin(url)} unreachable: ${describe(err)}`, 0, { cause: err });
  }
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const detail = typeof e?.message === 'string' ? `${String(e.code)}: ${e.message}` : text.slice(0, 200) || res.statusText;
    throw new TransportError('http', `${origin(url)} answered ${res.status} (${detail})`, res.status);
  }
  if (json === undefined) throw new TransportError('malformed', `${origin(url)} answered ${res.status} without a JSON body`, res.status);
  return json;
}

function origin(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return url;
  }
}

/** undici hides the socket error (ECONNREFUSED, ECONNRESET) in `cause`. */
function describe(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (err as Error)?.message ?? String(err);
}
