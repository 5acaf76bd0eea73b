import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { roleWithin, type TokenClaims } from '../../identity/claims';
import { tokenConfig } from '../../identity/config';
import { TokenError, TokenRefusal } from '../../identity/errors';
import { createKeyRing, keySourceFor, type KeyRing } from '../../identity/keys';
import { createTokenService, type TokenService } from '../../identity/service';
import { createTokenVerifier } from '../../identity/verify';
import { EXCHANGE, SEED } from '../helpers/tokens';

const config = tokenConfig(SEED);
const ROLES = config.roleOrder;
const TOOLS = config.supported_tools;
const T0 = Date.UTC(2030, 5, 1);

// One clock for the service and the verifiers, moved by the properties.
let now = T0;
const clock = () => now;
let keys: KeyRing;
let service: TokenService;
beforeAll(async () => {
  keys = await createKeyRing(keySourceFor(config, {}), { now: clock });
  service = createTokenService({ config, keys, mode: 'open', now: clock });
});
const verifier = () => createTokenVerifier({ issuer: config.issuer, jwks: () => keys.jwks(), now: clock, roleOrder: ROLES, verifiedCacheSize: 0 });

const id = fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }).map((s) => s.trim()).filter((s) => s.length > 0 && !/[\u0000-\u001f\u007f]/.test(s));
const subset = (of: readonly string[]) => fc.subarray([...of], { minLength: 1 });

const validIssue = fc
  .record({
    tools: subset(TOOLS),
    sponsor_id: id,
    role: fc.option(fc.constantFrom(...ROLES), { nil: undefined }),
    // ids under agt_… belong to registered agents (instance.ts)
    agent_instance_id: fc.option(id.filter((s) => !s.startsWith('agt_')), { nil: undefined }),
    purpose: fc.option(id, { nil: undefined }),
    ttlFraction: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: undefined }),
    at: fc.integer({ min: 0, max: 365 * 86400 }),
  })
  .map(({ tools, role, ttlFraction, ...rest }) => {
    const max = role ? config.roles[role]!.max_ttl_seconds : config.max_ttl_seconds;
    return {
      ...rest,
      tool: tools[0]!,
      tools,
      ...(role ? { role } : {}),
      ...(ttlFraction !== undefined ? { ttl: Math.max(1, Math.round(ttlFraction * max)) } : {}),
    };
  });

function strip<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

describe('properties', () => {
  it('issue → verify round-trips for any valid request', async () => {
    await fc.assert(
      fc.asyncProperty(validIssue, async ({ at, ...req }) => {
        now = T0 + at * 1000;
        const body = strip(req);
        const issued = await service.issue(body);
        const claims = await verifier().verify(issued.token, { audience: req.tool });
        expect(claims).toEqual(issued.claims);
        expect(claims).toMatchObject(strip({
          sponsor_id: req.sponsor_id, tool: req.tool, aud: req.tool, role: req.role, purpose: req.purpose, depth: 0,
        }));
        expect(claims.parent_agent_id).toBeNull();
        expect(new Set(claims.tools)).toEqual(new Set(req.tools));
        if (req.agent_instance_id) expect(claims.agent_instance_id).toBe(req.agent_instance_id);
        const max = req.role ? config.roles[req.role]!.max_ttl_seconds : config.max_ttl_seconds;
        expect(claims.ttl_seconds).toBe(req.ttl ?? Math.min(300, max));
        expect(claims.exp).toBe(Math.floor(now / 1000) + claims.ttl_seconds);
      }),
      { numRuns: 150 },
    );
  });

  it('a TTL above the maximum is always refused, never shortened', async () => {
    await fc.assert(
      fc.asyncProperty(fc.option(fc.constantFrom(...ROLES), { nil: undefined }), fc.integer({ min: 1, max: 5000 }), async (role, over) => {
        now = T0;
        const max = role ? config.roles[role]!.max_ttl_seconds : config.max_ttl_seconds;
        const err = await service.issue(strip({ tool: 'billing', sponsor_id: 'alice', role, ttl: max + over })).catch((e) => e);
        expect(err).toBeInstanceOf(TokenRefusal);
        expect(err.code).toBe('ttl_too_long');
      }),
      { numRuns: 100 },
    );
  });

  // Mostly requests a well-behaved sub-agent would make, with wider, higher and longer ones mixed in.
  const step = fc.record({
    audience: fc.oneof(
      { weight: 3, arbitrary: fc.constant(undefined) },
      { weight: 3, arbitrary: fc.constantFrom(...TOOLS) },
      { weight: 1, arbitrary: fc.constant('payroll') },
    ),
    scope: fc.oneof(
      { weight: 4, arbitrary: fc.constant(undefined) },
      { weight: 2, arbitrary: fc.subarray([...TOOLS], { minLength: 1 }) },
      { weight: 1, arbitrary: fc.subarray([...TOOLS, 'payroll'], { minLength: 1 }) },
    ),
    role: fc.oneof({ weight: 5, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: fc.constantFrom(...ROLES, 'root') }),
    ttl: fc.oneof(
      { weight: 3, arbitrary: fc.constant(undefined) },
      { weight: 3, arbitrary: fc.integer({ min: 1, max: 60 }) },
      { weight: 1, arbitrary: fc.integer({ min: 61, max: 1000 }) },
    ),
    advance: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 5 }) }, { weight: 1, arbitrary: fc.integer({ min: 6, max: 400 }) }),
    fromRoot: fc.boolean(),
  });

  it('no sequence of exchanges widens a token, raises its role, extends its life or loses its sponsor', async () => {
    let exchanged = 0;
    let deepest = 0;
    await fc.assert(
      fc.asyncProperty(validIssue, fc.array(step, { minLength: 1, maxLength: 8 }), async ({ at, ttl, ...req }, steps) => {
        now = T0 + at * 1000;
        // roots that live long enough for a chain to grow (the role's maximum when asked for less than 30 s)
        const root = await service.issue(strip({ ...req, ttl: ttl !== undefined && ttl >= 30 ? ttl : undefined }));
        let current = root;
        for (const s of steps) {
          now += s.advance * 1000;
          const parent = s.fromRoot ? root : current;
          const params = strip({ ...EXCHANGE, subject_token: parent.token, audience: s.audience, scope: s.scope?.join(' '), role: s.role, ttl: s.ttl });
          let child;
          try {
            child = await service.exchange(params);
          } catch (err) {
            // refusals are fine; anything else is a bug
            expect(err).toBeInstanceOf(TokenRefusal);
            continue;
          }
          exchanged++;
          const c = child.claims;
          deepest = Math.max(deepest, c.depth);
          const p: TokenClaims = parent.claims;
          expect(c.tools.every((t) => p.tools.includes(t))).toBe(true);
          expect(c.tools.every((t) => root.claims.tools.includes(t))).toBe(true);
          expect(c.tools).toContain(c.tool);
          expect(c.exp).toBeLessThanOrEqual(p.exp);
          expect(c.exp).toBeLessThanOrEqual(root.claims.exp);
          expect(roleWithin(ROLES, c.role, p.role)).toBe(true);
          expect(roleWithin(ROLES, c.role, root.claims.role)).toBe(true);
          expect(c.sponsor_id).toBe(root.claims.sponsor_id);
          expect(c.parent_agent_id).toBe(p.agent_instance_id);
          expect(c.depth).toBe(p.depth + 1);
          expect(c.depth).toBeLessThanOrEqual(config.delegation.max_depth);
          // and a tool checking it offline agrees
          await expect(verifier().verify(child.token, { audience: c.tool })).resolves.toEqual(c);
          current = child;
        }
      }),
      {
        numRuns: 120,
        // what the random runs must cover, whatever the seed: a chain of well-behaved exchanges to
        // the maximum depth, and one step past it (refused)
        examples: [
          [
            { sponsor_id: 'alice', at: 0, tool: TOOLS[0]!, tools: [...TOOLS] },
            Array.from({ length: config.delegation.max_depth + 1 }, () => ({
              audience: undefined,
              scope: undefined,
              role: undefined,
              ttl: undefined,
              advance: 0,
              fromRoot: false,
            })),
          ],
        ],
      },
    );
    // the property must have exercised real delegation chains, not only refusals
    expect(exchanged).toBeGreaterThan(60);
    expect(deepest).toBe(config.delegation.max_depth);
  });

  it('any single-bit change to a token is refused', async () => {
    now = T0;
    const { token } = await service.issue({ tool: 'billing', tools: ['billing', 'search'], sponsor_id: 'alice', role: 'support' });
    const parts = token.split('.').map((p) => Buffer.from(p, 'base64url'));
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 }), fc.nat(), fc.integer({ min: 0, max: 7 }), async (part, at, bit) => {
        const bytes = parts.map((b) => Buffer.from(b));
        const target = bytes[part]!;
        target[at % target.length]! ^= 1 << bit;
        const altered = bytes.map((b) => b.toString('base64url')).join('.');
        const err = await verifier().verify(altered).catch((e) => e);
        expect(err).toBeInstanceOf(TokenError);
      }),
      { numRuns: 300 },
    );
  });
});
