import { CustodyError } from '../common/errors';
import { JsonRequestError, fetchJson } from '../common/json-client';
import { DEFAULTS, ENV } from '../common/names';
import { cliEnv } from './options';

let auditCredential: { value: string | undefined } | undefined;

/** Audit reads carry the reader credential (or the admin one) when one is set: required off loopback. */
function readHeaders(pathname: string): Record<string, string> {
  if (!pathname.startsWith('/v1/audit/')) return {};
  // read from the environment once, on the command's first audit read
  if (!auditCredential) {
    const env = cliEnv(ENV.AUDIT_READER_TOKEN, ENV.ADMIN_TOKEN);
    auditCredential = { value: env[ENV.AUDIT_READER_TOKEN] ?? env[ENV.ADMIN_TOKEN] };
  }
  const credential = auditCredential.value;
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
  try {
    return await fetchJson<T>(url, { headers: readHeaders(url.pathname), timeoutMs: options.timeoutMs ?? 15_000 });
  } catch (err) {
    if (!(err instanceof JsonRequestError)) throw err;
    if (err.kind === 'timeout' || err.kind === 'aborted' || err.kind === 'unreachable') {
      // the socket error's code (ECONNREFUSED) when there is one, else fetch's own message
      const why = err.kind === 'unreachable' ? err.reason : ((err.cause as Error | undefined)?.message ?? err.reason);
      throw new CustodyError('ERR_CONNECTION', `cannot reach ${url.origin}: ${why}`);
    }
    if (err.body === undefined) throw new CustodyError('ERR_RESPONSE', `${url.pathname} answered ${err.status} with a body that is not JSON`);
    throw new ControlApiError(err.status, err.apiError?.code ?? 'unknown', `${url.pathname} answered ${err.status}: ${err.apiError?.message ?? err.text.slice(0, 200)}`);
  }
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
