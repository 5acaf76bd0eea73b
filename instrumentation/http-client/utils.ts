import { isTracingSuppressed } from '@opentelemetry/core';
import { propagation, type Context } from '@opentelemetry/api';
import { PROPAGATION } from '../../common/names';
import { toolCallOf } from '../call-context';

/**
 * The headers outgoing HTTP from inside a tool call gets: the trace context everywhere (the
 * process's propagators, W3C tracecontext by default); baggage and the call's token only to the
 * tool origins. Headers the request already has are left as they are (an app's own
 * instrumentation, or the caller, set them). Outside a tool call, or with tracing suppressed
 * (exports), nothing.
 */
export function outgoingHeaders(ctx: Context, origin: string | undefined, toolOrigins: readonly string[], has: (name: string) => boolean): Record<string, string> {
  const call = toolCallOf(ctx);
  if (!call || isTracingSuppressed(ctx)) return {};
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  const trusted = origin !== undefined && toolOrigins.includes(origin);
  if (!trusted) delete carrier[PROPAGATION.BAGGAGE];
  if (trusted && call.token) carrier[PROPAGATION.HTTP_TOKEN] = call.token;
  for (const name of Object.keys(carrier)) if (has(name)) delete carrier[name];
  return carrier;
}

/** `scheme://host[:port]` as URL.origin gives it, or undefined when it cannot be told. */
export function normalOrigin(protocol: string, host: string, port: string | number | undefined | null): string | undefined {
  try {
    const bracketed = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
    return new URL(`${protocol}//${bracketed}${port !== undefined && port !== null && port !== '' ? `:${port}` : ''}`).origin;
  } catch {
    return undefined;
  }
}

/**
 * The origin of an `http.request` / `https.request` call from its arguments — `(url[, options][, cb])`
 * or `(options[, cb])`, options overriding the URL as Node does.
 */
export function requestOrigin(args: readonly unknown[], defaultProtocol: 'http:' | 'https:'): string | undefined {
  let url: URL | undefined;
  let options: Record<string, unknown> | undefined;
  const [first, second] = args;
  if (typeof first === 'string') url = safeUrl(first);
  else if (first instanceof URL) url = first;
  else if (first && typeof first === 'object') options = first as Record<string, unknown>;
  if (url && second && typeof second === 'object') options = second as Record<string, unknown>;
  const protocol = (typeof options?.protocol === 'string' ? options.protocol : undefined) ?? url?.protocol ?? defaultProtocol;
  let host = typeof options?.hostname === 'string' ? options.hostname : undefined;
  let port = options?.port as string | number | undefined;
  if (host === undefined && typeof options?.host === 'string') {
    // `host` may carry a port; `hostname` never does
    const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(options.host);
    host = m?.[1] ?? options.host;
    port ??= m?.[2];
  }
  host ??= url?.hostname ?? 'localhost';
  if (port === undefined && url && !options?.hostname && !options?.host) port = url.port;
  return normalOrigin(protocol, host, port);
}

function safeUrl(s: string): URL | undefined {
  try {
    return new URL(s);
  } catch {
    return undefined;
  }
}

/** Whether an undici request already has a header, whichever form its headers take. */
export function undiciHas(headers: unknown, name: string): boolean {
  const lower = name.toLowerCase();
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === lower) return true;
    return false;
  }
  if (typeof headers === 'string') return headers.toLowerCase().split('\r\n').some((line) => line.startsWith(`${lower}:`));
  return false;
}
