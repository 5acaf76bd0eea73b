import { CustodyError } from '../common/errors';
import { DEFAULTS, ENV } from '../common/names';

/** Audit reads carry the reader credential (or the admin one) when one is set: required off loopback. */
function readHeaders(pathname: string): Record<string, string> {
  if (!pathname.startsWith('/v1/audit/')) return {};
  const credential = process.env[ENV.AUDIT_READER_TOKEN] || process.env[ENV.ADMIN_TOKEN];
  return credential ? { authorization: `Bearer ${credential}` } : {};
}

/** GET a control-API path for the client commands; anything but a 2xx JSON answer is an error naming it. */
export async function getJson<T>(base: string, path: string, options: { timeoutMs?: number } = {}): Promise<{ status: number; body: T }> {
  let url: URL;
  try {
    url = new URL(path, base);
  } catch {
    throw new CustodyError('ERR_USAGE', `--url '${base}' is not a URL such as ${DEFAULTS.URL}`);
  }
  let res: Response;
  try {
    res = await fetch(url, { headers: readHeaders(url.pathname), signal: AbortSignal.timeout(options.timeoutMs ?? 15_000) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new CustodyError('ERR_CONNECTION', `cannot reach ${url.origin}: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new CustodyError('ERR_RESPONSE', `${url.pathname} answered ${res.status} with a body that is not JSON`);
  }
  if (!res.ok) {
    const e = (body as { error?: { code?: string; message?: string } }).error;
    throw new ControlApiError(res.status, e?.code ?? 'unknown', `${url.pathname} answered ${res.status}: ${e?.message ?? text.slice(0, 200)}`);
  }
  return { status: res.status, body: body as T };
}

/** A 4xx/5xx answer from the control API, with its status and error code. */
export class ControlApiError extends CustodyError {
  readonly status: number;
  readonly apiCode: string;
  constructor(status: number, apiCode: string, message: string) {
    super('ERR_RESPONSE', message);
    this.status = status;
    this.apiCode = apiCode;
  }
}
