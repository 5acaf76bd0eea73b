import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tokenConfig } from '../../identity/config';
import { TOKEN_ERROR, TokenError } from '../../identity/errors';
import { openAgentRegistry } from '../../identity/registry';
import { createRevocationChecker, indexRevocations, revocationsVersion, type Revocation } from '../../identity/revocation';
import type { TokenClaims } from '../../identity/claims';
import { tempDir } from '../helpers/custody';
import { SEED } from '../helpers/tokens';

const T0 = Date.UTC(2026, 0, 1);
const claims = (over: Partial<TokenClaims>) => ({ sponsor_id: 'dave', iat: T0 / 1000 - 10, ...over }) as TokenClaims;

describe('revocation index (pure)', () => {
  const list: Revocation[] = [
    { kind: 'sponsor', sponsor_id: 'dave', revoked_at: T0 },
    { kind: 'agent', agent_id: 'agt_a', revoked_at: T0 },
    { kind: 'credential', agent_id: 'agt_b', credential_id: 'c-old', revoked_at: T0 },
    { kind: 'sponsor', sponsor_id: '__proto__', revoked_at: T0 },
  ];
  const index = indexRevocations(list);

  it("refuses an offboarded sponsor's tokens issued until the offboarding, not after a reinstatement", () => {
    expect(index.match(claims({}))?.kind).toBe('sponsor');
    expect(index.match(claims({ iat: T0 / 1000 }))?.kind).toBe('sponsor');
    expect(index.match(claims({ iat: T0 / 1000 + 1 }))).toBeUndefined();
    expect(index.match(claims({ sponsor_id: 'erin' }))).toBeUndefined();
    expect(index.match(claims({ sponsor_id: '__proto__' }))?.kind).toBe('sponsor');
    expect(index.match(claims({ sponsor_id: 'constructor' }))).toBeUndefined();
  });

  it("refuses a revoked agent's tokens whenever issued, and only the revoked credential's", () => {
    expect(index.match(claims({ sponsor_id: 'erin', agent_id: 'agt_a', iat: T0 / 1000 + 100 }))?.kind).toBe('agent');
    expect(index.match(claims({ sponsor_id: 'erin', agent_id: 'agt_b', credential_id: 'c-old' }))?.kind).toBe('credential');
    expect(index.match(claims({ sponsor_id: 'erin', agent_id: 'agt_b', credential_id: 'c-new' }))).toBeUndefined();
    // the credential id of another agent does not match
    expect(index.match(claims({ sponsor_id: 'erin', agent_id: 'agt_c', credential_id: 'c-old' }))).toBeUndefined();
  });

  it('versions the list by content', () => {
    expect(revocationsVersion(list)).toBe(revocationsVersion(structuredClone(list)));
    expect(revocationsVersion(list)).not.toBe(revocationsVersion(list.slice(1)));
    expect(index.version).toBe(revocationsVersion(list));
  });
});

describe('revocation feed over HTTP', () => {
  let server: http.Server;
  let url: string;
  let answer: (res: http.ServerResponse) => void;
  let requests = 0;
  beforeAll(async () => {
    server = http.createServer((_req, res) => {
      requests++;
      answer(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/tokens/revocations`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const feed = (list: Revocation[]) => (res: http.ServerResponse) =>
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: 'x', version: revocationsVersion(list), refresh_seconds: 2, revocations: list }));
  const codeOf = (p: Promise<unknown>) => p.then(() => 'accepted', (e: TokenError) => e.code);

  it('learns a revocation on the first check after its refresh interval, and is shared by concurrent checks', async () => {
    let now = T0;
    answer = feed([]);
    const checker = createRevocationChecker(url, { refreshMs: 1000, maxStaleMs: 10_000, now: () => now });
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
    answer = feed([{ kind: 'sponsor', sponsor_id: 'dave', revoked_at: T0 }]);
    now += 500;
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
    now += 500;
    const before = requests;
    const results = await Promise.all([1, 2, 3, 4].map(() => codeOf(checker.check(claims({})))));
    expect(results).toEqual(Array(4).fill(TOKEN_ERROR.REVOKED));
    expect(requests - before).toBe(1);
  });

  it('keeps the last copy while the feed fails, then refuses every token (fails closed)', async () => {
    let now = T0;
    answer = feed([]);
    const checker = createRevocationChecker(url, { refreshMs: 1000, maxStaleMs: 5000, now: () => now });
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
    answer = (res) => res.writeHead(503).end('down');
    now += 2000;
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
    answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"revocations":"none"}');
    now += 2000;
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
    now += 1500;
    expect(await codeOf(checker.check(claims({})))).toBe(TOKEN_ERROR.REVOCATIONS_UNAVAILABLE);
    // back: accepted again
    answer = feed([]);
    now += 1000;
    expect(await codeOf(checker.check(claims({})))).toBe('accepted');
  });

  it('never having read the feed, accepts nothing', async () => {
    const checker = createRevocationChecker('http://127.0.0.1:9/v1/tokens/revocations', { refreshMs: 1000, timeoutMs: 500 });
    expect(await codeOf(checker.check(claims({})))).toBe(TOKEN_ERROR.REVOCATIONS_UNAVAILABLE);
  });

  it('refuses options that would make it lag without bound', () => {
    expect(() => createRevocationChecker(url, { refreshMs: 10 })).toThrow(TypeError);
    expect(() => createRevocationChecker(url, { refreshMs: 5000, maxStaleMs: 1000 })).toThrow(TypeError);
  });
});

describe('registry revocations', () => {
  const config = tokenConfig(SEED);

  it('lists offboardings, revocations and rotated credentials, keeps them across a restart and a reinstatement', async () => {
    const file = path.join(tempDir('custody-registry-'), 'agents.json');
    const registry = openAgentRegistry({ config, file });
    const a = await registry.register({ sponsor_id: 'dave', role: 'user', tools: ['search'] });
    const b = await registry.register({ sponsor_id: 'erin', role: 'user', tools: ['search'] });
    const c = await registry.register({ sponsor_id: 'erin', role: 'user', tools: ['search'] });
    const rotated = await registry.rotate(b.agent.agent_id);
    expect(rotated.agent.credential_id).not.toBe(b.agent.credential_id);
    await registry.revoke(c.agent.agent_id);
    await registry.offboardSponsor('dave');
    await registry.reinstateSponsor('dave');
    const kinds = registry.revocationList().map((r) => r.kind);
    expect(kinds).toEqual(['credential', 'agent', 'sponsor', 'agent']);
    const version = registry.revocations().version;

    const reopened = openAgentRegistry({ config, file });
    expect(reopened.revocationList()).toEqual(registry.revocationList());
    expect(reopened.revocations().version).toBe(version);
    expect(reopened.revocations().match({ sponsor_id: 'erin', agent_id: b.agent.agent_id, credential_id: b.agent.credential_id, iat: 0 })?.kind).toBe('credential');
    expect(reopened.revocations().match({ sponsor_id: 'erin', agent_id: b.agent.agent_id, credential_id: rotated.agent.credential_id, iat: 0 })).toBeUndefined();
    expect(reopened.revocations().match({ sponsor_id: 'dave', agent_id: a.agent.agent_id, iat: 0 })).toBeDefined();
  });

  it('reads a registry written before revocations were listed: its revoked agents and offboarded sponsors are revoked', () => {
    const file = path.join(tempDir('custody-registry-'), 'agents.json');
    const agent = { agent_id: 'agt_old', name: 'old', sponsor_id: 'gail', role: 'user', tools: ['search'], max_ttl_seconds: 60, status: 'revoked', created_at: 1, created_by: 'admin', credential_issued_at: 1, revoked_at: 5, revoked_reason: 'x', credential_hash: 'a'.repeat(64) };
    fs.writeFileSync(file, JSON.stringify({ version: 1, agents: [agent], offboarded_sponsors: { hank: { at: 7, reason: 'left' } } }));
    const registry = openAgentRegistry({ config, file });
    expect(registry.revocationList()).toEqual([
      { kind: 'sponsor', sponsor_id: 'hank', revoked_at: 7 },
      { kind: 'agent', agent_id: 'agt_old', revoked_at: 5 },
    ]);
  });
});
