import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import zlib from 'node:zlib';
import { HttpError } from './errors';
import { markArrival } from './http';
import type { Logger } from './log';

/**
 * JSON routes served on the bare `node:http` request, before Express sees it: for the hot path
 * (POST /v1/check, asked before every tool call that misses the agent's allow cache), where
 * Express's router, middleware chain and response helpers cost more than the decision itself.
 *
 * The contract stays the control API's: a JSON body (gzip/deflate allowed, 1 MB at most), the
 * project's `{"error":{code,message}}` on every failure with the same statuses Express gives
 * (400 unparseable JSON, 413 too large, 415 unknown encoding, HttpError's own status), a logged 500
 * for anything else. Every other request goes to the fallback (the Express app).
 */
export type JsonRouteHandler = (body: unknown, req: IncomingMessage) => Promise<unknown> | unknown;

export interface FastRoutes {
  /** Serves `POST path` (the query string ignored) with `handler`; its result is the 200 JSON answer. */
  post(path: string, handler: JsonRouteHandler): void;
}

export interface FastRouter extends FastRoutes {
  /** The server's request listener: a fast route if one matches, else `fallback`. */
  listener(fallback: RequestListener): RequestListener;
}

const BODY_LIMIT = 1024 * 1024;

export function createFastRouter(log: Logger): FastRouter {
  const posts = new Map<string, JsonRouteHandler>();
  return {
    post(path, handler) {
      if (posts.has(path)) throw new Error(`a fast route for POST ${path} is already mounted`);
      posts.set(path, handler);
    },
    listener(fallback) {
      return function custodyRequest(req, res) {
        markArrival(req);
        if (req.method === 'POST' && posts.size > 0) {
          const url = req.url ?? '/';
          const q = url.indexOf('?');
          const handler = posts.get(q < 0 ? url : url.slice(0, q));
          if (handler) return void serveJson(req, res, handler, log);
        }
        fallback(req, res);
      };
    },
  };
}

async function serveJson(req: IncomingMessage, res: ServerResponse, handler: JsonRouteHandler, log: Logger): Promise<void> {
  try {
    const body = await readJsonBody(req);
    send(res, 200, await handler(body, req));
  } catch (err) {
    if (err instanceof HttpError) return send(res, err.status, { error: { code: err.code, message: err.message } }, err.headers);
    log.error({ err }, 'unhandled error');
    send(res, 500, { error: { code: 'internal', message: 'internal error' } });
  }
}

function send(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return void res.end();
  const text = JSON.stringify(value);
  res.writeHead(status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The body as express.json() reads it: undefined unless the content type is JSON (the route then
 * says what it needed), a 413 past the limit, a 400 naming the parse error.
 */
function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  const isJson = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i.test(type);
  const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (isJson && encoding !== 'identity' && encoding !== 'gzip' && encoding !== 'deflate') {
    req.resume();
    return Promise.reject(new HttpError(415, 'unsupported_media_type', `unsupported content encoding '${encoding}'`));
  }
  const declared = Number(req.headers['content-length']);
  if (declared > BODY_LIMIT) {
    req.resume();
    return Promise.reject(tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > BODY_LIMIT) {
        failed = true;
        return reject(tooLarge());
      }
      chunks.push(chunk);
    });
    req.on('error', (err) => {
      failed = true;
      reject(new HttpError(400, 'invalid_request', `the request body could not be read: ${err.message}`));
    });
    req.on('end', () => {
      if (failed) return;
      if (!isJson) return resolve(undefined);
      try {
        let raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
        if (encoding === 'gzip') raw = zlib.gunzipSync(raw, { maxOutputLength: BODY_LIMIT });
        else if (encoding === 'deflate') raw = zlib.inflateSync(raw, { maxOutputLength: BODY_LIMIT });
        const text = raw.toString('utf8');
        resolve(text.trim() === '' ? {} : JSON.parse(text));
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'ERR_BUFFER_TOO_LARGE') return reject(tooLarge());
        reject(new HttpError(400, 'invalid_request', `the body is not valid JSON: ${(err as Error).message}`));
      }
    });
  });
}

function tooLarge(): HttpError {
  return new HttpError(413, 'payload_too_large', `the request body is larger than ${BODY_LIMIT} bytes`);
}
