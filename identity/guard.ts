import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { bearerToken } from '../common/credentials';
import { TOOL_ENV, readEnv } from '../common/env';
import { HttpError } from '../common/errors';
import { JsonRequestError, fetchJson } from '../common/json-client';
import { ATTR, DECISION, DEFAULTS, ENV, PROPAGATION, SPAN } from '../common/names';
import type { TokenClaims } from './claims';
import { endpoint, jwksUrl, revocationsUrl } from './client';
import { TOKEN_ERROR, TokenError } from './errors';
import { certificateClaims, parseCertificateAuthorities, peerCertificateOf, readCertificateAuthorities } from './certificates';
import type { ReplayCache } from './replay';
import { createTokenVerifier, type TokenVerifier } from './verify';

/**
 * custody/guard: enforcement at the tool. A tool API (the billing service, …) refuses any request
 * that does not carry a valid custody token for it, whoever sends it — an agent that skipped
 * custody/register, a script, curl — and records its own side of the call, joined to the caller's
 * trace. The token travels in `x-custody-token` (custody/register sends it to the origins listed
 * in CUSTODY_TOOL_ORIGINS); any client in any language can send it.
 *
 * `offline` (the default) verifies the token against the token service's JWKS (cached, refetched
 * on an unknown kid) and revocation feed: signature, issuer, expiry, the tool (audience), the
 * delegation chain, revocation, and single use when asked. A token does not name an action, so
 * `plane` also asks the policy plane (`POST /v1/check`) whether this identity may do this action.
 */

/** The verified identity of a guarded request (`req.custody`). */
export interface CustodyIdentity {
  sponsor_id: string | undefined;
  agent_instance_id: string;
  parent_agent_id: string | null;
  role: string | undefined;
  purpose: string | undefined;
  /** The tool the token is for. */
  tool: string;
  /** The action the guard checked, when it was given one. */
  action: string | undefined;
  /** The token's id. */
  jti: string;
  /** The plane's decision id (`check: 'plane'` only). */
  policy_decision_id: string | undefined;
  claims: Readonly<TokenClaims>;
}

export interface ToolGuardOptions {
  /** The tool (the token's audience, as the token service names tools): one, or any of a list. */
  tool: string | readonly string[];
  /** The action this route performs. Required with `check: 'plane'`. */
  action?: string;
  /** `offline` (default): the token alone; `plane`: also the policy plane's decision. */
  check?: 'offline' | 'plane';
  /** Control API base URL. Default $CUSTODY_URL, else http://127.0.0.1:8080. */
  url?: string;
  /** The token service (JWKS, revocations). Default $CUSTODY_TOKEN_URL, else `url`. */
  tokenUrl?: string;
  /** The policy plane. Default $CUSTODY_POLICY_URL, else `url`. */
  policyUrl?: string;
  /** The tokens' issuer. Default $CUSTODY_TOKEN_ISSUER, else `agent-token-svc` (the shipped token config's). */
  issuer?: string;
  /** Also take the token from `Authorization: Bearer`. Default false. */
  bearer?: boolean;
  /** Accept each token (jti) once: for tools the policy marks `single_use_tokens`. Default false. */
  singleUse?: boolean;
  /** Check the revocation feed (GET /v1/tokens/revocations). Default true. */
  revocations?: boolean;
  /** Timeout of a JWKS, revocation feed or plane request, ms. Default 2000. */
  timeoutMs?: number;
  /** An unknown kid refetches the JWKS at most this often, ms. Default 5000. */
  jwksCooldownMs?: number;
  clockSkewSeconds?: number;
  /** The clock, epoch ms. */
  now?: () => number;
  /** A replay cache shared between guards of one process (single use across routes). */
  replayCache?: ReplayCache;
  /** A verifier of one's own (tests, a shared one): replaces the JWKS and revocation options. */
  verifier?: TokenVerifier;
  /** Where the guard's spans go. Default the global tracer provider's `custody` tracer. */
  tracer?: Tracer;
  /** Fetch used for the plane (tests). */
  fetch?: typeof fetch;
  /**
   * mTLS: custody's certificate authority (PEM text, or the path of a PEM file; GET
   * /v1/certs/ca.pem). A request without a token whose TLS client certificate this authority
   * issued is verified from the certificate's claims, with the same refusals as a token (expired,
   * wrong tool, revoked). The server must ask for client certificates (`requestCert: true`).
   * Not with `check: 'plane'`, which forwards the token to the plane.
   */
  clientCa?: string;
}

/** Why a request was refused: the HTTP status and the `code` of the `{"error":{…}}` body. */
export const GUARD_ERROR = {
  /** 401: no token in the request. */
  TOKEN_REQUIRED: 'token_required',
  /** 401: the token does not verify (signature, form, issuer, claims, unknown key). */
  TOKEN_INVALID: 'token_invalid',
  /** 401: the token has expired (or is not valid yet). */
  TOKEN_EXPIRED: 'token_expired',
  /** 401: its sponsor was offboarded, its agent or credential revoked. */
  TOKEN_REVOKED: 'token_revoked',
  /** 401: a single-use token presented again. */
  TOKEN_REPLAYED: 'token_replayed',
  /** 403: a valid token for another tool. */
  WRONG_TOOL: 'wrong_tool',
  /** 403: the policy plane denied this action to this identity. */
  ACTION_DENIED: 'action_denied',
  /** 503: the keys, the revocation feed or the plane could not be had: nothing is accepted. */
  UNAVAILABLE: 'guard_unavailable',
} as const;
export type GuardErrorCode = (typeof GUARD_ERROR)[keyof typeof GUARD_ERROR];

/** A refused request: an HttpError (status, code) that also says what the token error was, if any. */
export class GuardError extends HttpError {
  declare readonly code: GuardErrorCode;
  /** The verifier's code (ERR_TOKEN_EXPIRED, …) when a token was refused. */
  readonly tokenError: string | undefined;
  constructor(status: number, code: GuardErrorCode, message: string, tokenError?: string) {
    super(status, code, message, status === 401 ? { 'WWW-Authenticate': `Bearer realm="custody", error="invalid_token"` } : {});
    this.tokenError = tokenError;
  }
}

/** Request headers as Node gives them, or a fetch `Headers`. */
export type GuardHeaders = IncomingHttpHeaders | Headers | Readonly<Record<string, string | string[] | undefined>>;

export interface GuardRequestInfo {
  method?: string;
  path?: string;
  route?: string;
  /** The TLS client certificate (DER) the request came with: `socket.getPeerCertificate().raw`. */
  clientCertificate?: Buffer;
}

const TOKEN_STATUS: Partial<Record<string, [number, GuardErrorCode]>> = {
  [TOKEN_ERROR.EXPIRED]: [401, GUARD_ERROR.TOKEN_EXPIRED],
  [TOKEN_ERROR.NOT_YET_VALID]: [401, GUARD_ERROR.TOKEN_EXPIRED],
  [TOKEN_ERROR.REVOKED]: [401, GUARD_ERROR.TOKEN_REVOKED],
  [TOKEN_ERROR.REPLAY]: [401, GUARD_ERROR.TOKEN_REPLAYED],
  [TOKEN_ERROR.AUDIENCE]: [403, GUARD_ERROR.WRONG_TOOL],
  [TOKEN_ERROR.JWKS_UNAVAILABLE]: [503, GUARD_ERROR.UNAVAILABLE],
  [TOKEN_ERROR.REVOCATIONS_UNAVAILABLE]: [503, GUARD_ERROR.UNAVAILABLE],
};

function refusalOf(err: TokenError): GuardError {
  const [status, code] = TOKEN_STATUS[err.code] ?? [401, GUARD_ERROR.TOKEN_INVALID];
  return new GuardError(status, code, `${PROPAGATION.HTTP_TOKEN} refused (${err.code}): ${err.message}`, err.code);
}

const DEFAULT_ISSUER = 'agent-token-svc';
const traceContext = new W3CTraceContextPropagator();
const headerGetter = {
  keys: (h: Record<string, unknown>) => Object.keys(h),
  get(h: Record<string, unknown>, key: string) {
    const v = h[key];
    return typeof v === 'string' || Array.isArray(v) ? (v as string | string[]) : undefined;
  },
};

interface Guard {
  readonly tools: readonly string[];
  readonly options: Readonly<ToolGuardOptions>;
  /** Verifies and decides; throws GuardError. Records the decision on `span`. */
  decide(headers: GuardHeaders, span: Span, certificate?: Buffer): Promise<CustodyIdentity>;
  tracer(): Tracer;
}

/** Options validated once: a guard that cannot work is a TypeError at start, naming the option. */
function compileGuard(options: ToolGuardOptions): Guard {
  if (!options || typeof options !== 'object') throw new TypeError('custody/guard: options are required ({ tool, action?, check? })');
  const tools = typeof options.tool === 'string' ? [options.tool] : [...(options.tool ?? [])];
  if (tools.length === 0 || tools.some((t) => typeof t !== 'string' || t === '')) throw new TypeError("custody/guard: 'tool' must name the tool (a non-empty string, or a list of them)");
  const check = options.check ?? 'offline';
  if (check !== 'offline' && check !== 'plane') throw new TypeError(`custody/guard: 'check' must be 'offline' or 'plane', got '${String(check)}'`);
  if (options.action !== undefined && (typeof options.action !== 'string' || options.action === '')) throw new TypeError("custody/guard: 'action' must be a non-empty string");
  if (check === 'plane' && !options.action) throw new TypeError("custody/guard: check 'plane' needs the route's 'action' (the plane decides a tool and an action)");

  const env = readEnv(process.env, TOOL_ENV);
  const base = options.url ?? env[ENV.URL] ?? DEFAULTS.URL;
  const tokenBase = options.tokenUrl ?? env[ENV.TOKEN_URL] ?? base;
  const policyBase = options.policyUrl ?? env[ENV.POLICY_URL] ?? base;
  const timeoutMs = options.timeoutMs ?? 2000;
  const verifier =
    options.verifier ??
    createTokenVerifier({
      issuer: options.issuer ?? env[ENV.TOKEN_ISSUER] ?? DEFAULT_ISSUER,
      jwks: jwksUrl(tokenBase),
      timeoutMs,
      jwksCooldownMs: options.jwksCooldownMs ?? 5000,
      ...(options.revocations === false ? {} : { revocations: revocationsUrl(tokenBase) }),
      ...(options.clockSkewSeconds !== undefined ? { clockSkewSeconds: options.clockSkewSeconds } : {}),
      ...(options.now ? { now: options.now } : {}),
      ...(options.replayCache ? { replayCache: options.replayCache } : {}),
    });
  const checkUrl = endpoint(policyBase, '/v1/check');
  if (options.clientCa !== undefined && typeof options.clientCa !== 'string') throw new TypeError("custody/guard: 'clientCa' must be PEM text or the path of a PEM file");
  if (options.clientCa && check === 'plane') throw new TypeError("custody/guard: 'clientCa' cannot be combined with check 'plane' (the plane is asked with the call's token)");
  const authorities = options.clientCa
    ? options.clientCa.includes('-----BEGIN') ? parseCertificateAuthorities(options.clientCa, 'clientCa') : readCertificateAuthorities(options.clientCa)
    : [];
  const now = options.now ?? Date.now;
  const verifyOptions = { audience: tools, singleUse: options.singleUse === true };
  let tracer: Tracer | undefined;

  async function askPlane(token: string, tool: string, action: string): Promise<string> {
    let body: { decision?: unknown; policy_decision_id?: unknown; rule_id?: unknown; reason?: unknown };
    try {
      body = (await fetchJson<typeof body>(checkUrl, { method: 'POST', body: { token, tool, action }, timeoutMs, ...(options.fetch ? { fetch: options.fetch } : {}) })).body;
    } catch (err) {
      const why = err instanceof JsonRequestError ? (err.apiError?.message ?? err.message) : (err as Error).message;
      throw new GuardError(503, GUARD_ERROR.UNAVAILABLE, `the policy plane at ${checkUrl.origin} gave no decision: ${why}`);
    }
    if (body?.decision === DECISION.ALLOW && typeof body.policy_decision_id === 'string') return body.policy_decision_id;
    if (body?.decision === DECISION.DENY) {
      throw new GuardError(403, GUARD_ERROR.ACTION_DENIED, `the policy plane denied ${tool}.${action} (${String(body.rule_id)}): ${String(body.reason)} [${String(body.policy_decision_id)}]`);
    }
    throw new GuardError(503, GUARD_ERROR.UNAVAILABLE, `the policy plane at ${checkUrl.origin} answered without a decision`);
  }

  return {
    tools,
    options: { ...options, check },
    tracer: () => (tracer ??= options.tracer ?? trace.getTracer('custody')),
    async decide(headers, span, certificate) {
      const token = tokenOf(headers, options.bearer === true);
      const byCertificate = !token && certificate !== undefined && authorities.length > 0;
      if (!token && !byCertificate) {
        const orCert = authorities.length ? ', or present a client certificate of custody\'s authority' : '';
        throw new GuardError(401, GUARD_ERROR.TOKEN_REQUIRED, `no custody token: send the call's token in ${PROPAGATION.HTTP_TOKEN}${options.bearer ? ' or Authorization: Bearer' : ''}${orCert}`);
      }
      let claims: TokenClaims;
      try {
        claims = byCertificate
          ? await verifier.verifyClaims(certificateClaims(certificate!, authorities, now()), verifyOptions)
          : await verifier.verify(token!, verifyOptions);
      } catch (err) {
        if (err instanceof TokenError) throw refusalOf(err);
        throw err;
      }
      span.setAttributes(identityAttributes(claims));
      const decisionId = check === 'plane' ? await askPlane(token!, claims.tool, options.action!) : undefined;
      return {
        sponsor_id: claims.sponsor_id,
        agent_instance_id: claims.agent_instance_id,
        parent_agent_id: claims.parent_agent_id,
        role: claims.role,
        purpose: claims.purpose,
        tool: claims.tool,
        action: options.action,
        jti: claims.jti,
        policy_decision_id: decisionId,
        claims,
      };
    },
  };
}

/** The token from `x-custody-token` (or `Authorization: Bearer` when `bearer`). */
function tokenOf(headers: GuardHeaders, bearer: boolean): string | undefined {
  const get = (name: string): string | undefined => {
    if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
    const v = (headers as Record<string, string | string[] | undefined>)[name];
    return Array.isArray(v) ? v[0] : v;
  };
  const direct = get(PROPAGATION.HTTP_TOKEN)?.trim();
  if (direct) return direct;
  return bearer ? bearerToken(get('authorization')) : undefined;
}

function identityAttributes(c: TokenClaims): Attributes {
  const a: Attributes = { [ATTR.AGENT_INSTANCE_ID]: c.agent_instance_id, [ATTR.TOOL_ID]: c.tool, [ATTR.TOKEN_JTI]: c.jti };
  if (c.sponsor_id) a[ATTR.SPONSOR_ID] = c.sponsor_id;
  if (c.parent_agent_id) a[ATTR.PARENT_AGENT_ID] = c.parent_agent_id;
  if (c.role) a[ATTR.ROLE] = c.role;
  if (c.purpose) a[ATTR.PURPOSE] = c.purpose;
  return a;
}

/**
 * The caller's trace: the active span when an HTTP instrumentation made one, else the request's
 * W3C traceparent. (Baggage is not read: the identity is the verified token's.)
 */
function parentContext(headers: GuardHeaders): { parent: Context; nested: boolean } {
  if (trace.getActiveSpan()) return { parent: context.active(), nested: true };
  let carrier = headers as Record<string, string | string[] | undefined>;
  if (typeof (headers as Headers).get === 'function') {
    carrier = {};
    for (const name of [PROPAGATION.TRACEPARENT, PROPAGATION.TRACESTATE]) {
      const v = (headers as Headers).get(name);
      if (v !== null) carrier[name] = v;
    }
  }
  return { parent: traceContext.extract(ROOT_CONTEXT, carrier, headerGetter), nested: false };
}

function startGuardSpan(guard: Guard, headers: GuardHeaders, info: GuardRequestInfo): { span: Span; ctx: Context } {
  const { parent, nested } = parentContext(headers);
  const attributes: Attributes = {
    [ATTR.GUARD_CHECK]: guard.options.check!,
    [ATTR.TOOL_ID]: guard.tools[0]!,
  };
  if (guard.options.action) attributes[ATTR.ACTION] = guard.options.action;
  if (info.method) attributes[ATTR.HTTP_REQUEST_METHOD] = info.method;
  if (info.path) attributes[ATTR.URL_PATH] = info.path;
  if (info.route) attributes[ATTR.HTTP_ROUTE] = info.route;
  const span = guard.tracer().startSpan(`${SPAN.GUARD} ${guard.tools[0]}`, { kind: nested ? SpanKind.INTERNAL : SpanKind.SERVER, attributes }, parent);
  return { span, ctx: trace.setSpan(parent, span) };
}

function recordAllowed(span: Span, identity: CustodyIdentity): void {
  span.setAttribute(ATTR.POLICY_DECISION, DECISION.ALLOW);
  if (identity.policy_decision_id) span.setAttribute(ATTR.POLICY_DECISION_ID, identity.policy_decision_id);
}

function recordRefused(span: Span, err: unknown): GuardError | undefined {
  const refusal = err instanceof GuardError ? err : undefined;
  span.setAttribute(ATTR.POLICY_DECISION, refusal && refusal.status !== 503 ? DECISION.DENY : DECISION.ERROR);
  span.setAttribute(ATTR.ERROR_TYPE, refusal?.code ?? ((err as Error)?.name || 'Error'));
  if (refusal) span.setAttribute(ATTR.POLICY_REASON, refusal.message);
  if (err instanceof Error) span.recordException(err);
  span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  return refusal;
}

/** What an MCP tool handler gets last (the SDK's RequestHandlerExtra), as far as the guard reads and writes it. */
export interface McpHandlerExtra {
  _meta?: Record<string, unknown>;
  /** Set by mcpToolGuard for the handler: the caller's verified identity. */
  custody?: CustodyIdentity;
  [key: string]: unknown;
}

/**
 * The guard for an MCP server (TypeScript SDK 1.x): wraps a tool's handler, which then runs only
 * for a request whose `params._meta` carries a valid token for the tool (`dev.custody/token`,
 * sent by custody/register to the servers it trusts: stdio servers it started, CUSTODY_TOOL_ORIGINS).
 * The verified identity is `extra.custody`; a refusal is thrown as a GuardError, which the SDK
 * answers as the tool's error result (`isError`), so the handler never runs:
 *
 *   server.registerTool('web_search', { inputSchema }, mcpToolGuard({ tool: 'search' })(async (args, extra) => …));
 */
export function mcpToolGuard(options: ToolGuardOptions): <H extends (...args: any[]) => unknown>(handler: H) => H {
  const guard = compileGuard(options);
  return <H extends (...args: any[]) => unknown>(handler: H): H => {
    if (typeof handler !== 'function') throw new TypeError('custody/guard: mcpToolGuard(options) wraps a tool handler function');
    return async function custodyMcpToolGuard(this: unknown, ...args: unknown[]) {
      const extra = args[args.length - 1] as McpHandlerExtra | undefined;
      const meta = extra && typeof extra._meta === 'object' && extra._meta !== null ? extra._meta : {};
      const headers: Record<string, string> = {};
      const token = meta[PROPAGATION.MCP_CALL_TOKEN];
      if (typeof token === 'string') headers[PROPAGATION.HTTP_TOKEN] = token;
      for (const name of [PROPAGATION.TRACEPARENT, PROPAGATION.TRACESTATE]) if (typeof meta[name] === 'string') headers[name] = meta[name] as string;
      const { span, ctx } = startGuardSpan(guard, headers, { method: 'tools/call' });
      let identity: CustodyIdentity;
      try {
        identity = await guard.decide(headers, span);
        recordAllowed(span, identity);
      } catch (err) {
        recordRefused(span, err);
        span.end();
        if (err instanceof GuardError) {
          // the SDK shows the message to the caller: it says which refusal, as the HTTP guard's code does
          const where = err.code === GUARD_ERROR.TOKEN_REQUIRED ? `no custody token in _meta['${PROPAGATION.MCP_CALL_TOKEN}']` : err.message;
          throw new GuardError(err.status, err.code, `custody: ${err.code}: ${where}`, err.tokenError);
        }
        throw err;
      }
      if (extra) extra.custody = identity;
      try {
        return await context.with(ctx, () => handler.apply(this, args));
      } finally {
        span.end();
      }
    } as unknown as H;
  };
}

const compiled = new WeakMap<ToolGuardOptions, ToolRequestVerifier>();

/**
 * Framework-free: verifies one request's headers and returns the caller's verified identity, or
 * throws a GuardError (status 401/403/503 and a `code`). Records a `custody.guard {tool}` span
 * joined to the caller's trace. The options are compiled once per options object (keep the same
 * object, or a `toolRequestVerifier(options)`, so the JWKS stays cached between requests).
 */
export async function verifyToolRequest(headers: GuardHeaders, options: ToolGuardOptions | ToolRequestVerifier, info: GuardRequestInfo = {}): Promise<CustodyIdentity> {
  let verify = typeof options === 'function' ? options : compiled.get(options);
  if (!verify) compiled.set(options as ToolGuardOptions, (verify = toolRequestVerifier(options as ToolGuardOptions)));
  return verify(headers, info);
}

export type ToolRequestVerifier = (headers: GuardHeaders, info?: GuardRequestInfo) => Promise<CustodyIdentity>;

/** A verifier of tool requests with its options compiled once (the JWKS cached across requests). */
export function toolRequestVerifier(options: ToolGuardOptions): ToolRequestVerifier {
  const guard = compileGuard(options);
  return async (headers, info = {}) => {
    const { span } = startGuardSpan(guard, headers, info);
    try {
      const identity = await guard.decide(headers, span, info.clientCertificate);
      recordAllowed(span, identity);
      return identity;
    } catch (err) {
      recordRefused(span, err);
      throw err;
    } finally {
      span.end();
    }
  };
}

type Next = (err?: unknown) => void;
type GuardedRequest = IncomingMessage & { custody?: CustodyIdentity; originalUrl?: string; route?: { path?: string } };

/**
 * Express/Connect middleware: `app.post('/refunds', toolGuard({ tool: 'billing', action: 'refund' }), handler)`.
 * A refused request is answered here (`{"error":{"code","message"}}`, 401/403/503) and never reaches
 * the handler; an accepted one has `req.custody` and runs inside the guard's span, which ends
 * with the response.
 */
export function toolGuard(options: ToolGuardOptions): (req: IncomingMessage, res: ServerResponse, next: Next) => void {
  const guard = compileGuard(options);
  return function custodyToolGuard(req: GuardedRequest, res, next) {
    const info: GuardRequestInfo = { method: req.method ?? 'GET', path: (req.originalUrl ?? req.url ?? '/').split('?')[0]! };
    const { span, ctx } = startGuardSpan(guard, req.headers, info);
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      span.setAttribute(ATTR.HTTP_RESPONSE_STATUS_CODE, res.statusCode);
      span.end();
    };
    guard.decide(req.headers, span, peerCertificateOf(req.socket)).then(
      (identity) => {
        recordAllowed(span, identity);
        req.custody = identity;
        res.once('finish', end).once('close', end);
        context.with(ctx, () => next());
      },
      (err: unknown) => {
        const refusal = recordRefused(span, err);
        if (!refusal || res.headersSent) {
          end();
          return next(err);
        }
        res.statusCode = refusal.status;
        for (const [k, v] of Object.entries(refusal.headers)) res.setHeader(k, v);
        res.setHeader('content-type', 'application/json; charset=utf-8');
        end();
        res.end(JSON.stringify({ error: { code: refusal.code, message: refusal.message } }));
      },
    );
  };
}
