import { CustodyError } from './errors';

/**
 * Why a JSON request gave no usable answer: no answer within the request's own timeout, the
 * caller's signal fired first, no connection, a non-2xx status, or a 2xx without a JSON body.
 */
export type JsonFailure = 'timeout' | 'aborted' | 'unreachable' | 'http' | 'malformed';

const FAILURE_CODE: Record<JsonFailure, string> = {
  timeout: 'ERR_HTTP_TIMEOUT',
  aborted: 'ERR_HTTP_ABORTED',
  unreachable: 'ERR_HTTP_UNREACHABLE',
  http: 'ERR_HTTP_STATUS',
  malformed: 'ERR_HTTP_MALFORMED',
};

/** The `{"error":{"code","message"}}` body every custody server answers a failure with. */
export interface ApiErrorBody {
  code?: string;
  message?: string;
}

/**
 * A JSON request that failed, with what is known of the answer. Callers map it to their own error
 * class; the message names the failure without the request's headers (which may hold a token).
 */
export class JsonRequestError extends CustodyError {
  readonly kind: JsonFailure;
  /** HTTP status, 0 when there was no answer. */
  readonly status: number;
  /** Origin and path of the request (no query). */
  readonly where: string;
  /** The parsed body, undefined when there was none or it was not JSON. */
  readonly body: unknown;
  /** The raw body (empty when there was no answer). */
  readonly text: string;
  /** The status line's text ('' when there was no answer). */
  readonly statusText: string;
  /** The server's `error` object, when it sent one. */
  readonly apiError: ApiErrorBody | undefined;
  /** No answer: the socket error's code (ECONNREFUSED, …) or message; for a timeout, "no answer within N ms". */
  readonly reason: string;

  constructor(kind: JsonFailure, message: string, init: { where: string; status?: number; statusText?: string; body?: unknown; text?: string; reason?: string; cause?: unknown }) {
    super(FAILURE_CODE[kind], message, init.cause !== undefined ? { cause: init.cause } : undefined);
    this.kind = kind;
    this.where = init.where;
    this.status = init.status ?? 0;
    this.body = init.body;
    this.text = init.text ?? '';
    this.statusText = init.statusText ?? '';
    this.apiError = apiErrorOf(init.body);
    this.reason = init.reason ?? '';
  }

}

/** `code: message` from a custody error body, else the start of the raw body, else the fallback. */
export function errorDetail(body: unknown, text: string, fallback = ''): string {
  const e = apiErrorOf(body);
  if (typeof e?.message === 'string') return `${String(e.code)}: ${e.message}`;
  return text.slice(0, 200) || fallback;
}

export interface JsonRequest {
  /** Default GET. */
  method?: string;
  /** Sent as JSON with `content-type: application/json`. */
  body?: unknown;
  headers?: Record<string, string>;
  /** The request's own bound, connection to last byte; a `timeout` failure names it. */
  timeoutMs?: number;
  /** The caller's cancellation (a deadline shared with other calls); its firing is an `aborted` failure. */
  signal?: AbortSignal;
  /** Tests inject a fetch; the global one otherwise. */
  fetch?: typeof fetch;
}

export interface JsonAnswer<T = unknown> {
  status: number;
  body: T;
}

/**
 * One JSON request. Anything but a 2xx with a JSON body is a JsonRequestError saying which
 * failure it was; the body is returned unvalidated.
 */
export async function fetchJson<T = unknown>(url: string | URL, req: JsonRequest = {}): Promise<JsonAnswer<T>> {
  const at = where(url);
  const timeout = req.timeoutMs !== undefined ? AbortSignal.timeout(req.timeoutMs) : undefined;
  const signal = timeout && req.signal ? AbortSignal.any([req.signal, timeout]) : (timeout ?? req.signal);
  const doFetch = req.fetch ?? fetch;
  let res: Response;
  let text: string;
  try {
    res = await doFetch(url, {
      method: req.method ?? 'GET',
      headers: {
        accept: 'application/json',
        ...(req.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...req.headers,
      },
      ...(req.body !== undefined ? { body: JSON.stringify(req.body) } : {}),
      ...(signal ? { signal } : {}),
    });
    text = await res.text();
  } catch (err) {
    if (timeout?.aborted) {
      const reason = `no answer within ${req.timeoutMs} ms`;
      throw new JsonRequestError('timeout', `${at}: ${reason}`, { where: at, reason, cause: err });
    }
    if (req.signal?.aborted) {
      const reason = (err as Error)?.message ?? String(err);
      throw new JsonRequestError('aborted', `${at}: ${reason}`, { where: at, reason, cause: err });
    }
    const reason = describeFetchError(err);
    throw new JsonRequestError('unreachable', `${at} unreachable: ${reason}`, { where: at, reason, cause: err });
  }
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  if (!res.ok) {
    const message = `${at} answered ${res.status} (${errorDetail(body, text, res.statusText)})`;
    throw new JsonRequestError('http', message, { where: at, status: res.status, statusText: res.statusText, body, text });
  }
  if (body === undefined) {
    throw new JsonRequestError('malformed', `${at} answered ${res.status} without a JSON body`, { where: at, status: res.status, text });
  }
  return { status: res.status, body: body as T };
}

/** The `error` object of a custody failure body, if it is one. */
export function apiErrorOf(body: unknown): ApiErrorBody | undefined {
  const e = (body as { error?: unknown } | undefined)?.error;
  if (typeof e !== 'object' || e === null) return undefined;
  const { code, message } = e as { code?: unknown; message?: unknown };
  return {
    ...(typeof code === 'string' ? { code } : {}),
    ...(typeof message === 'string' ? { message } : {}),
  };
}

/** undici hides the socket error (ECONNREFUSED, ECONNRESET) in `cause`. */
export function describeFetchError(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } } | undefined)?.cause;
  return cause?.code ?? cause?.message ?? (err as Error | undefined)?.message ?? String(err);
}

/** Origin and path: never the query, which may carry identifiers not meant for logs. */
function where(url: string | URL): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return String(url);
  }
}
