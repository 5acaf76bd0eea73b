import { afterEach, describe, expect, it } from 'vitest';
import { mountAuditReadGuard } from '../../../collector/audit/routes';
import { SCOPE, bearerToken, scopesOf, secretEquals } from '../../../common/credentials';
import { createJsonApp, finish, listen, type Listening } from '../../../common/http';
import { createLogger } from '../../../common/log';
import type { RoleContext } from '../../../common/role';

// The audit API's read guard on a real HTTP server on 127.0.0.1, configured as if custody listened
// on a non-loopback address (the guard decides from the configured host, not the socket).

const CREDS = { admin: 'adm-secret', rollout: 'rol-secret', auditReader: 'rdr-secret' };
let server: Listening | undefined;

afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function serve(host: string): Promise<string> {
  const app = createJsonApp();
  const ctx = { control: app, options: { host } } as unknown as RoleContext;
  const { open } = mountAuditReadGuard(ctx, CREDS);
  expect(open).toBe(host.startsWith('127.'));
  for (const p of ['/v1/audit/events', '/v1/audit/trail/x', '/v1/audit/checkpoints', '/v1/audit/keys', '/metrics', '/v1/rollback/status']) {
    app.get(p, (_req, res) => void res.json({ path: p }));
  }
  finish(app, createLogger('test', 'silent'));
  server = await listen(app, '127.0.0.1', 0);
  return server.url;
}

const get = async (url: string, authorization?: string) => {
  const r = await fetch(url, authorization ? { headers: { authorization } } : {});
  return { status: r.status, body: (await r.json()) as { error?: { code: string; message: string } } };
};

describe('audit API read guard', () => {
  it('off loopback: audit reads need the reader or admin credential; metrics, status and keys stay open', async () => {
    const url = await serve('203.0.113.7');
    for (const p of ['/v1/audit/events', '/v1/audit/trail/x', '/v1/audit/checkpoints']) {
      const none = await get(`${url}${p}`);
      expect(none.status, p).toBe(401);
      expect(none.body.error!.message).toMatch(/CUSTODY_AUDIT_READER_TOKEN/);
      expect((await get(`${url}${p}`, 'Bearer wrong')).status).toBe(401);
      // the rollout credential is valid, but not for reading the audit
      const rollout = await get(`${url}${p}`, `Bearer ${CREDS.rollout}`);
      expect(rollout.status).toBe(403);
      expect(rollout.body.error!.code).toBe('insufficient_scope');
      expect((await get(`${url}${p}`, `Bearer ${CREDS.auditReader}`)).status).toBe(200);
      expect((await get(`${url}${p}`, `bearer ${CREDS.auditReader}`)).status).toBe(200);
      expect((await get(`${url}${p}`, `BEARER ${CREDS.admin}`)).status).toBe(200);
    }
    for (const p of ['/v1/audit/keys', '/metrics', '/v1/rollback/status']) expect((await get(`${url}${p}`)).status, p).toBe(200);
  });

  it('on loopback (the open first-day mode) audit reads need nothing', async () => {
    const url = await serve('127.0.0.1');
    expect((await get(`${url}/v1/audit/events`)).status).toBe(200);
  });
});

describe('credentials', () => {
  it('reads Bearer in any case and nothing else', () => {
    expect(bearerToken('Bearer abc')).toBe('abc');
    expect(bearerToken('bearer abc')).toBe('abc');
    expect(bearerToken('BeArEr   abc  ')).toBe('abc');
    expect(bearerToken('Basic abc')).toBeUndefined();
    expect(bearerToken('Bearer')).toBeUndefined();
    expect(bearerToken('Bearer a b')).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
  });

  it('compares secrets of any length, and gives each credential its scopes only', () => {
    expect(secretEquals('s3cret', 's3cret')).toBe(true);
    expect(secretEquals('s3cret', 's3cret!')).toBe(false);
    expect(secretEquals('', 'x')).toBe(false);
    expect([...scopesOf(CREDS.admin, CREDS)].sort()).toEqual([SCOPE.ADMIN, SCOPE.AUDIT_READ, SCOPE.ROLLOUT].sort());
    expect([...scopesOf(CREDS.rollout, CREDS)]).toEqual([SCOPE.ROLLOUT]);
    expect([...scopesOf(CREDS.auditReader, CREDS)]).toEqual([SCOPE.AUDIT_READ]);
    expect(scopesOf('adm-secre', CREDS).size).toBe(0);
    // an unset credential matches nothing, not even the empty string
    expect(scopesOf('', {}).size).toBe(0);
  });
});
