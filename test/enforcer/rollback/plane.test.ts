import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpPlane, PlaneResponseError, PlaneUnreachableError, RolloutConflictError, statusWindowS } from '../../../enforcer/rollback/plane';

/**
 * The watch's HTTP client against small real servers on 127.0.0.1 standing in for a collector and a
 * policy plane on different hosts: where each call goes, what it sends, and how each failure is
 * classified (unreachable → no change and a loud error; conflict → someone else decided first).
 */

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function server(handler: (req: Seen, res: http.ServerResponse) => void) {
  const seen: Seen[] = [];
  const s = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d)).on('end', () => {
      const r = { method: req.method!, url: req.url!, headers: req.headers, body };
      seen.push(r);
      handler(r, res);
    });
  });
  return {
    seen,
    start: () => new Promise<string>((resolve) => s.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(s.address() as AddressInfo).port}`))),
    stop: () => new Promise<void>((resolve) => s.close(() => resolve())),
  };
}

const json = (res: http.ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
};

const rollout = { percent: 30, revision: 7, updated_at: '2026-01-01T00:00:00Z', stages: [10, 30, 60, 100], reason: 'x', actor: 'y' };
const status = { action: 'advance', window_s: 900, sample_size: 120, rules: [{ rule: 'policy_error_rate', value: 0, threshold: 0.01, breached: false }] };

describe('the watch\'s plane client', () => {
  let putStatus = 200;
  const collector = server((req, res) => json(res, 200, status));
  const plane = server((req, res) => {
    if (req.method === 'PUT') {
      if (putStatus !== 200) return json(res, putStatus, { error: { code: putStatus === 401 ? 'unauthorized' : 'rollout_conflict', message: 'no' } });
      return json(res, 200, { ...rollout, percent: JSON.parse(req.body).percent, revision: 8 });
    }
    json(res, 200, rollout);
  });
  const hung = http.createServer(() => undefined);
  let collectorUrl = '';
  let planeUrl = '';
  let hungUrl = '';

  beforeAll(async () => {
    collectorUrl = await collector.start();
    planeUrl = await plane.start();
    hungUrl = await new Promise((resolve) => hung.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(hung.address() as AddressInfo).port}`)));
  });
  afterAll(async () => {
    await collector.stop();
    await plane.stop();
    hung.closeAllConnections();
    await new Promise((r) => hung.close(r));
  });

  it('reads the status from --url and the rollout from --policy-url, and writes with If-Match and the admin token', async () => {
    const c = httpPlane({ url: collectorUrl, policyUrl: planeUrl, adminToken: 'tok' });
    const state = await c.getRollout();
    expect(state).toEqual({ percent: 30, stages: [10, 30, 60, 100], updatedAt: Date.parse('2026-01-01T00:00:00Z'), revision: '7' });
    expect((await c.status({ windowS: 90, cohort: 'canary' })).sample_size).toBe(120);
    expect(collector.seen.at(-1)!.url).toBe('/v1/rollback/status?window=120s&cohort=canary');
    const next = await c.setRollout({ percent: 0, reason: 'rollback: test', actor: 'w', expected: state });
    expect(next).toMatchObject({ percent: 0, revision: '8' });
    const put = plane.seen.at(-1)!;
    expect(put.method).toBe('PUT');
    expect(put.headers['if-match']).toBe('"7"');
    expect(put.headers.authorization).toBe('Bearer tok');
    expect(JSON.parse(put.body)).toEqual({ percent: 0, reason: 'rollback: test', actor: 'w', expected_percent: 30 });
    expect(collector.seen.every((r) => r.method === 'GET' && r.url.startsWith('/v1/rollback/status'))).toBe(true);
  });

  it('classifies failures: conflict, refused, unreachable, timeout', async () => {
    const c = httpPlane({ url: planeUrl, adminToken: 'tok' });
    const expected = await c.getRollout();
    putStatus = 412;
    await expect(c.setRollout({ percent: 0, reason: 'r', actor: 'a', expected })).rejects.toBeInstanceOf(RolloutConflictError);
    putStatus = 409;
    await expect(c.setRollout({ percent: 0, reason: 'r', actor: 'a', expected })).rejects.toMatchObject({ code: 'ERR_ROLLOUT_CONFLICT' });
    putStatus = 401;
    const refused = await c.setRollout({ percent: 0, reason: 'r', actor: 'a', expected }).catch((e) => e);
    expect(refused).toBeInstanceOf(PlaneResponseError);
    expect(refused).toMatchObject({ code: 'unauthorized', status: 401 });
    putStatus = 503;
    await expect(c.setRollout({ percent: 0, reason: 'r', actor: 'a', expected })).rejects.toBeInstanceOf(PlaneUnreachableError);
    putStatus = 200;

    const closed = http.createServer();
    const port = await new Promise<number>((resolve) => closed.listen(0, '127.0.0.1', () => resolve((closed.address() as AddressInfo).port)));
    await new Promise((r) => closed.close(r));
    const gone = httpPlane({ url: `http://127.0.0.1:${port}` });
    await expect(gone.getRollout()).rejects.toMatchObject({ code: 'ERR_PLANE_UNREACHABLE', message: expect.stringMatching(/ECONNREFUSED/) });
    const slow = httpPlane({ url: hungUrl, timeoutMs: 200 });
    await expect(slow.status({ windowS: 900, cohort: 'canary' })).rejects.toMatchObject({ code: 'ERR_PLANE_UNREACHABLE', message: expect.stringMatching(/no answer within 200 ms/) });
  });

  it('asks for whole minutes, from one minute to a week', () => {
    expect([1, 60, 61, 900, 86_460, 30 * 86_400].map(statusWindowS)).toEqual([60, 60, 120, 900, 86_460, 7 * 86_400]);
  });
});
