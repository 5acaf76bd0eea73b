import { TOKEN_ERROR, TokenError } from './errors';

/** RFC 8693 `act`: the actor this token was derived from, and the limits its own token had. */
export interface ActorClaim {
  /** The parent agent instance. */
  sub: string;
  /** The parent token's `tools`: the child's must be a subset. */
  tools?: string[];
  /** The parent token's role (absent: it had none): the child's is never higher. */
  role?: string;
  /** The parent token's `exp`: the child's is never later. */
  exp?: number;
  /** The parent's own actor, when the parent was itself delegated. */
  act?: ActorClaim;
}

/** The claims of a custody token (the public surface; README "Tokens and agent registration"). */
export interface TokenClaims {
  iss: string;
  /** The agent instance (= agent_instance_id). */
  sub: string;
  /** The tool (= tool). */
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  /** The human sponsor; absent only when the service does not require one. */
  sponsor_id?: string;
  agent_instance_id: string;
  /** The delegating agent instance; null at the root. Set only by token exchange (RFC 8693), never asked for. */
  parent_agent_id: string | null;
  tool: string;
  /** What the token may be exchanged for; always holds `tool`. */
  tools: string[];
  role?: string;
  purpose?: string;
  ttl_seconds: number;
  /** Delegation depth: 0 for an issued token, the length of the `act` chain for an exchanged one. */
  depth: number;
  act?: ActorClaim;
  /** The registered agent the token was issued to (registered mode); kept through exchanges. */
  agent_id?: string;
  /** Which of the agent's credentials the token was issued with (revocable on its own); kept through exchanges. */
  credential_id?: string;
}

export const DEFAULT_ROLE_ORDER: readonly string[] = Object.freeze(['user', 'support', 'admin']);
/** Deeper `act` nesting than this is refused outright. */
export const MAX_CHAIN = 32;

export interface ClaimCheckOptions {
  issuer: string;
  /** The tool the token must be for (`aud`); any of a list. */
  audience?: string | readonly string[];
  /** The clock, epoch seconds. */
  nowSeconds: number;
  clockSkewSeconds: number;
  /** Refuse a token without sponsor_id (default true). */
  requireSponsor?: boolean;
  /** Refuse delegation deeper than this. */
  maxDepth?: number;
  /** Refuse a token whose lifetime (exp - iat) exceeds this. */
  maxTtlSeconds?: number;
  /** Role order, lowest authority first, for comparing a child's role to its parent's. */
  roleOrder?: readonly string[];
}

const claimsError = (message: string) => new TokenError(TOKEN_ERROR.CLAIMS, message);
const chainError = (message: string) => new TokenError(TOKEN_ERROR.CHAIN, message);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNonEmptyString = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isNonEmptyString);
const isSeconds = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function requireString(p: Record<string, unknown>, name: string, optional = false): void {
  const v = p[name];
  if (v === undefined && optional) return;
  if (!isNonEmptyString(v)) throw claimsError(`claim '${name}' ${v === undefined ? 'is missing' : 'must be a non-empty string'}`);
}
function requireSeconds(p: Record<string, unknown>, name: string): void {
  if (!isSeconds(p[name])) throw claimsError(`claim '${name}' ${p[name] === undefined ? 'is missing' : 'must be a whole number of seconds'}`);
}

/** Number of actors nested in `act`; throws when the chain is malformed or too deep. */
export function actorChainLength(act: unknown): number {
  let n = 0;
  for (let a: unknown = act; a !== undefined; a = (a as Record<string, unknown>).act) {
    if (!isObject(a)) throw chainError('an `act` entry must be an object');
    if (!isNonEmptyString(a.sub)) throw chainError("an `act` entry has no 'sub'");
    if (a.tools !== undefined && !isStringArray(a.tools)) throw chainError("an `act` entry's 'tools' must be an array of strings");
    if (a.role !== undefined && !isNonEmptyString(a.role)) throw chainError("an `act` entry's 'role' must be a string");
    if (a.exp !== undefined && !isSeconds(a.exp)) throw chainError("an `act` entry's 'exp' must be a number of seconds");
    if (++n > MAX_CHAIN) throw chainError(`the \`act\` chain is deeper than ${MAX_CHAIN}`);
  }
  return n;
}

/** True when role `child` has no more authority than `parent` (absent = no role, the lowest). */
export function roleWithin(order: readonly string[], child: string | undefined, parent: string | undefined): boolean {
  if (child === parent) return true;
  if (child === undefined) return true;
  if (parent === undefined) return false;
  const c = order.indexOf(child);
  const p = order.indexOf(parent);
  return c >= 0 && p >= 0 && c <= p;
}

/**
 * Checks the delegation chain as far as the token shows it: depth matches the `act` nesting, the
 * parent named in parent_agent_id is the first actor, and at every link the delegate is no wider
 * (tools), no longer-lived (exp) and no higher (role) than its delegator.
 */
export function checkChain(c: TokenClaims, roleOrder: readonly string[] = DEFAULT_ROLE_ORDER, maxDepth?: number): void {
  const length = actorChainLength(c.act);
  if (c.depth !== length) throw chainError(`depth ${c.depth} does not match the \`act\` chain of ${length}`);
  if (maxDepth !== undefined && c.depth > maxDepth) throw chainError(`delegation depth ${c.depth} exceeds ${maxDepth}`);
  if (!c.act) {
    // a parent exists only through exchange: a root token that names one was not issued by custody's rules
    if (c.parent_agent_id !== null) throw chainError(`parent_agent_id '${c.parent_agent_id}' without an \`act\` chain: a parent comes only from token exchange`);
    return;
  }
  if (c.parent_agent_id !== c.act.sub) {
    throw chainError(`parent_agent_id '${c.parent_agent_id ?? ''}' is not the actor '${c.act.sub}'`);
  }
  let child: ActorClaim = c;
  for (let parent: ActorClaim | undefined = c.act; parent; child = parent, parent = parent.act) {
    if (parent.sub === child.sub) throw chainError(`'${child.sub}' is its own delegator`);
    if (parent.tools && child.tools && !child.tools.every((t) => parent.tools!.includes(t))) {
      throw chainError(`'${child.sub}' holds tools [${child.tools.join(', ')}] wider than its delegator's [${parent.tools.join(', ')}]`);
    }
    if (parent.exp !== undefined && child.exp !== undefined && child.exp > parent.exp) {
      throw chainError(`'${child.sub}' outlives its delegator (exp ${child.exp} > ${parent.exp})`);
    }
    if (!roleWithin(roleOrder, child.role, parent.role)) {
      throw chainError(`'${child.sub}' has role '${child.role ?? ''}' above its delegator's '${parent.role ?? '(none)'}'`);
    }
  }
}

/**
 * The claim checks of a verified token, pure: the payload and the clock in, the typed claims or a
 * TokenError with its own code out. Signature checking happens before, in verify.ts.
 */
export function checkClaims(payload: unknown, o: ClaimCheckOptions): TokenClaims {
  if (!isObject(payload)) throw claimsError('the payload is not a JSON object');
  const p = payload;
  for (const n of ['iss', 'sub', 'jti', 'agent_instance_id', 'tool']) requireString(p, n);
  for (const n of ['iat', 'nbf', 'exp', 'ttl_seconds', 'depth']) requireSeconds(p, n);
  for (const n of ['role', 'purpose', 'agent_id', 'credential_id']) requireString(p, n, true);
  if (p.parent_agent_id === undefined) throw claimsError("claim 'parent_agent_id' is missing (null at the root)");
  if (p.parent_agent_id !== null) requireString(p, 'parent_agent_id');
  requireString(p, 'sponsor_id', o.requireSponsor === false);
  if (!isNonEmptyString(p.aud)) throw claimsError(`claim 'aud' must be one tool (a non-empty string)`);
  if (!isStringArray(p.tools) || p.tools.length === 0) throw claimsError(`claim 'tools' must be a non-empty array of tool names`);
  if (p.act !== undefined && !isObject(p.act)) throw chainError('claim `act` must be an object');
  const c = p as unknown as TokenClaims;

  if (c.iss !== o.issuer) throw new TokenError(TOKEN_ERROR.ISSUER, `issuer '${c.iss}' is not '${o.issuer}'`);
  const now = o.nowSeconds;
  const skew = o.clockSkewSeconds;
  if (c.exp <= now - skew) throw new TokenError(TOKEN_ERROR.EXPIRED, `the token expired at ${new Date(c.exp * 1000).toISOString()}`);
  if (c.nbf > now + skew) throw new TokenError(TOKEN_ERROR.NOT_YET_VALID, `the token is not valid before ${new Date(c.nbf * 1000).toISOString()}`);
  if (c.iat > now + skew) throw new TokenError(TOKEN_ERROR.NOT_YET_VALID, `the token was issued in the future (${new Date(c.iat * 1000).toISOString()})`);
  if (o.audience !== undefined) {
    const wanted = typeof o.audience === 'string' ? [o.audience] : o.audience;
    if (!wanted.includes(c.aud)) throw new TokenError(TOKEN_ERROR.AUDIENCE, `the token is for '${c.aud}', not '${wanted.join("' or '")}'`);
  }

  if (c.sub !== c.agent_instance_id) throw claimsError(`sub '${c.sub}' is not agent_instance_id '${c.agent_instance_id}'`);
  if (c.aud !== c.tool) throw claimsError(`aud '${c.aud}' is not tool '${c.tool}'`);
  if (!c.tools.includes(c.tool)) throw claimsError(`tools [${c.tools.join(', ')}] do not hold the token's tool '${c.tool}'`);
  if (c.nbf > c.exp || c.iat > c.exp) throw claimsError('the token ends before it starts');
  if (c.ttl_seconds !== c.exp - c.iat) throw claimsError(`ttl_seconds ${c.ttl_seconds} is not exp - iat (${c.exp - c.iat})`);
  if (o.maxTtlSeconds !== undefined && c.ttl_seconds > o.maxTtlSeconds) {
    throw claimsError(`the token lives ${c.ttl_seconds} s, more than the ${o.maxTtlSeconds} s allowed`);
  }
  checkChain(c, o.roleOrder ?? DEFAULT_ROLE_ORDER, o.maxDepth);
  return c;
}
