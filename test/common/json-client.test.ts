import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CustodyError } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';

/**
 * The one JSON client every custody caller uses (enforcer, token client, rollback job, CLI), against
 * a real server on 127.0.0.1: each way a request can fail is told apart, the server's
 * `{"error":{code,message}}` is read, and nothing from the request's headers or query leaks into
 * the message.
 */
describe('fetchJson', () => {
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string }[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d)).on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      const path = req.url!.split('?')[0];
      if (path === '/ok') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ echo: body ? JSON.parse(body) : null }));
      if (path === '/refused') return void res.writeHead(403, { 'content-type': 'application/json' }).end('{"error":{"code":"forbidden","message":"not you"}}');
      if (path === '/html') return void res.writeHead(502).end('<html>bad gateway</html>');
      if (path === '/empty') return void res.writeHead(200).end();
      if (path === '/garbage') return void res.writeHead(200).end('{"half":');
      if (path === '/hang') return; // never answers
      res.writeHead(404).end();
    });
  });
  let base = '';
  let closedBase = '';

  beforeAll(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    closedBase = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
    await new Promise((r) => closed.close(r));
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const failure = (p: Promise<unknown>) =>
    p.then(
      () => expect.unreachable('the request should have failed'),
      (e: unknown) => e as JsonRequestError,
    );

  it('sends JSON and returns the parsed answer', async () => {
    const r = await fetchJson<{ echo: unknown }>(`${base}/ok`, { method: 'POST', body: { a: 1 }, headers: { 'x-test': 'y' }, timeoutMs: 10_000 });
    expect(r).toEqual({ status: 200, body: { echo: { a: 1 } } });
    const req = seen.at(-1)!;
    expect(req).toMatchObject({ method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json', 'x-test': 'y' } });
  });

  it('reads the error body of a refusal, with its status and code', async () => {
    const e = await failure(fetchJson(`${base}/refused?secret=q`, { headers: { authorization: 'Bearer s3cret' }, timeoutMs: 10_000 }));
    expect(e).toBeInstanceOf(JsonRequestError);
    expect(e).toBeInstanceOf(CustodyError);
    expect(e).toMatchObject({ kind: 'http', code: 'ERR_HTTP_STATUS', status: 403, apiError: { code: 'forbidden', message: 'not you' } });
    expect(e.message).toBe(`${base}/refused answered 403 (forbidden: not you)`);
    expect(e.message).not.toMatch(/s3cret|secret=q/);
  });

  it('a non-JSON error body is kept raw; a 2xx without JSON is malformed', async () => {
    const html = await failure(fetchJson(`${base}/html`, { timeoutMs: 10_000 }));
    expect(html).toMatchObject({ kind: 'http', status: 502, body: undefined, text: '<html>bad gateway</html>', apiError: undefined });
    expect(html.message).toContain('<html>bad gateway</html>');
    for (const p of ['/empty', '/garbage']) {
      expect(await failure(fetchJson(`${base}${p}`, { timeoutMs: 10_000 }))).toMatchObject({ kind: 'malformed', code: 'ERR_HTTP_MALFORMED', status: 200 });
    }
  });

  it('tells its own timeout from the caller giving up and from no connection', async () => {
    const started = performance.now();
    const timedOut = await failure(fetchJson(`${base}/hang`, { timeoutMs: 150 }));
    expect(timedOut).toMatchObject({ kind: 'timeout', code: 'ERR_HTTP_TIMEOUT', status: 0, reason: 'no answer within 150 ms' });
    expect(performance.now() - started).toBeLessThan(10_000);

    const caller = new AbortController();
    const pending = failure(fetchJson(`${base}/hang`, { timeoutMs: 60_000, signal: caller.signal }));
    caller.abort();
    expect(await pending).toMatchObject({ kind: 'aborted', code: 'ERR_HTTP_ABORTED' });

    const gone = await failure(fetchJson(`${closedBase}/ok`, { timeoutMs: 10_000 }));
    expect(gone).toMatchObject({ kind: 'unreachable', code: 'ERR_HTTP_UNREACHABLE', reason: 'ECONNREFUSED' });
  });

  it('an injected fetch is used instead of the global one', async () => {
    const calls: string[] = [];
    const fake: typeof fetch = async (input, init) => {
      calls.push(String(input));
      return fetch(input, init);
    };
    await fetchJson(`${base}/ok`, { fetch: fake, timeoutMs: 10_000 });
    expect(calls).toEqual([`${base}/ok`]);
  });
});
