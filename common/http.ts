import { performance } from 'node:perf_hooks';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import express, { type ErrorRequestHandler, type Express, type RequestHandler } from 'express';
import { bearerToken, secretEquals } from './credentials';
import { CustodyError, HttpError, badRequest, unauthorized } from './errors';
import type { Logger } from './log';

/** When the request arrived (performance.now()), before its body was read: see arrivedAt. */
const ARRIVED_AT = Symbol('custody.arrivedAt');

/** Stamps the request's arrival once (the fast routes stamp before Express would). */
export function markArrival(req: object): void {
  (req as Record<symbol, number>)[ARRIVED_AT] ??= performance.now();
}

const stampArrival: RequestHandler = function stampArrival(req, _res, next) {
  markArrival(req);
  next();
};

/** The request's arrival time (performance.now() scale), for latencies measured server-side from arrival. */
export function arrivedAt(req: unknown): number | undefined {
  return (req as Record<symbol, number | undefined>)[ARRIVED_AT];
}

/** An express app with a JSON body parser and nothing else; call `finish` after mounting routes. */
export function createJsonApp(): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('query parser', 'simple');
  app.use(stampArrival);
  app.use(express.json({ limit: '1mb' }));
  return app;
}

/** The one error boundary of a server: known errors keep their status and code, anything else is a logged 500. */
export function errorBoundary(log: Logger): ErrorRequestHandler {
  return function custodyErrorBoundary(err, _req, res, _next) {
    if (err instanceof HttpError) {
      res.set(err.headers).status(err.status).json({ error: { code: err.code, message: err.message } });
      return;
    }
    // body-parser errors carry a status and a type
    const status = typeof err?.status === 'number' ? err.status : typeof err?.statusCode === 'number' ? err.statusCode : 0;
    if (status >= 400 && status < 500) {
      const code = err.type === 'entity.too.large' ? 'payload_too_large' : 'invalid_request';
      res.status(status).json({ error: { code, message: String(err.message ?? 'bad request') } });
      return;
    }
    log.error({ err }, 'unhandled error');
    res.status(500).json({ error: { code: 'internal', message: 'internal error' } });
  };
}

/** Mounts a 404 for unknown routes and the error boundary. */
export function finish(app: Express, log: Logger): Express {
  app.use((req, _res, next) => next(new HttpError(404, 'not_found', `no route for ${req.method} ${req.path}`)));
  app.use(errorBoundary(log));
  return app;
}

/** Requires `Authorization: Bearer <token>` when a token is configured. */
export function bearerAuth(token: string | undefined): RequestHandler {
  return function requireBearer(req, _res, next) {
    if (!token) return next();
    const given = bearerToken(req.get('authorization'));
    if (given === undefined || !secretEquals(given, token)) return next(unauthorized());
    next();
  };
}

/**
 * TLS for a listening port (--tls-cert, --tls-key, --client-ca): the server's certificate and key
 * (PEM text), and the client certificate authorities whose certificates are asked for. A client
 * certificate is asked for, never required at the handshake: a caller may still send a bearer
 * credential, and the routes decide what a presented certificate proves (certificates.ts).
 */
export interface TlsSettings {
  cert: string;
  key: string;
  /** PEM: one or more authorities' certificates; absent, no client certificate is asked for. */
  clientCa?: string;
}

export interface Listening {
  server: http.Server;
  port: number;
  url: string;
  close(): Promise<void>;
}

export async function listen(handler: http.RequestListener, host: string, port: number, tls?: TlsSettings): Promise<Listening> {
  const server: http.Server = tls
    ? https.createServer({ cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: false } : {}) }, handler)
    : http.createServer(handler);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE' || err.code === 'EACCES' || err.code === 'EADDRNOTAVAIL'
          ? new CustodyError('ERR_LISTEN', `cannot listen on ${host}:${port}: ${err.code === 'EADDRINUSE' ? 'the port is in use (another custody? choose another with --port / --otlp-port)' : err.message}`)
          : err,
      ),
    );
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actual = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    server,
    port: actual,
    url: `${tls ? 'https' : 'http'}://${shownHost}:${actual}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections?.();
      }),
  };
}

/** Query parameter helpers: a bad value is a 400 naming the parameter. */
export function queryString(q: Record<string, unknown>, name: string): string | undefined {
  const v = q[name];
  if (v === undefined || v === '') return undefined;
  if (typeof v !== 'string') throw badRequest('invalid_parameter', `query parameter '${name}' must be given once, as a string`);
  return v;
}

export function queryInt(q: Record<string, unknown>, name: string, min: number, max: number): number | undefined {
  const s = queryString(q, name);
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!/^-?\d+$/.test(s) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw badRequest('invalid_parameter', `query parameter '${name}' must be an integer from ${min} to ${max}, got '${s}'`);
  }
  return n;
}
