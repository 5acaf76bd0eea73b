import zlib from 'node:zlib';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpError } from '../../common/errors';
import { createFastRouter } from '../../common/fast-route';
import { createJsonApp, finish, listen, type Listening } from '../../common/http';
import { createLogger } from '../../common/log';

/**
 * The hot-path router keeps the control API's contract on the bare request: the same body rules
 * and error shapes as express.json() and the error boundary, and everything else left to Express.
 */
describe('fast JSON routes', () => {
  let server: Listening;
  beforeAll(async () => {
    const log = createLogger('test', 'silent');
    const fast = createFastRouter(log);
    fast.post('/v1/echo', (body) => ({ got: body }));
    fast.post('/v1/refuse', () => {
      throw new HttpError(429, 'busy', 'try later', { 'retry-after': '1' });
    });
    fast.post('/v1/crash', () => {
      throw new Error('secret detail');
    });
    const app = createJsonApp();
    app.get('/v1/echo', (_req: express.Request, res: express.Response) => void res.json({ via: 'express' }));
    finish(app, log);
    server = await listen(fast.listener(app), '127.0.0.1', 0);
  });
  afterAll(() => server.close());

  const post = (path: string, body: string | Buffer, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    fetch(`${server.url}${path}`, { method: 'POST', headers, body });

  it('answers a JSON body with 200 JSON, whatever the query string', async () => {
    const res = await post('/v1/echo?x=1', JSON.stringify({ a: [1, 'é'] }));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ got: { a: [1, 'é'] } });
  });

  it('takes gzip and deflate bodies, and refuses other encodings with 415', async () => {
    const body = JSON.stringify({ z: true });
    for (const [enc, packed] of [['gzip', zlib.gzipSync(body)], ['deflate', zlib.deflateSync(body)]] as const) {
      const res = await post('/v1/echo', packed, { 'content-type': 'application/json', 'content-encoding': enc });
      expect(await res.json()).toEqual({ got: { z: true } });
    }
    const res = await post('/v1/echo', body, { 'content-type': 'application/json', 'content-encoding': 'br' });
    expect(res.status).toBe(415);
    expect((await res.json()).error.code).toBe('unsupported_media_type');
  });

  it('names a JSON syntax error with 400, and a body over 1 MB (declared, streamed or inflated) with 413', async () => {
    const bad = await post('/v1/echo', '{"a":');
    expect(bad.status).toBe(400);
    expect((await bad.json()).error).toMatchObject({ code: 'invalid_request', message: expect.stringContaining('not valid JSON') });
    const big = JSON.stringify({ pad: 'x'.repeat(1024 * 1024) });
    const large = await post('/v1/echo', big);
    expect(large.status).toBe(413);
    expect((await large.json()).error.code).toBe('payload_too_large');
    const bomb = await post('/v1/echo', zlib.gzipSync(big), { 'content-type': 'application/json', 'content-encoding': 'gzip' });
    expect(bomb.status).toBe(413);
  });

  it('gives a handler nothing for a non-JSON body and {} for an empty JSON one, as express.json() does', async () => {
    expect(await (await post('/v1/echo', 'a=1', { 'content-type': 'application/x-www-form-urlencoded' })).json()).toEqual({});
    expect(await (await post('/v1/echo', '')).json()).toEqual({ got: {} });
  });

  it("keeps an HttpError's status, code and headers; anything else is a 500 without its message", async () => {
    const refused = await post('/v1/refuse', '{}');
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(await refused.json()).toEqual({ error: { code: 'busy', message: 'try later' } });
    const crash = await post('/v1/crash', '{}');
    expect(crash.status).toBe(500);
    expect(JSON.stringify(await crash.json())).not.toContain('secret detail');
  });

  it('leaves other methods and paths to Express', async () => {
    expect(await (await fetch(`${server.url}/v1/echo`)).json()).toEqual({ via: 'express' });
    const missing = await post('/v1/other', '{}');
    expect(missing.status).toBe(404);
    expect((await missing.json()).error.code).toBe('not_found');
  });
});
