import { randomBytes } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { bearerToken, requireScope, secretEquals, SCOPE, type ServiceCredentials } from '../../common/credentials';
import { HttpError, badRequest } from '../../common/errors';
import { describeFetchError } from '../../common/json-client';
import type { Policy } from '../policy/compile';
import { approvalView, type ApprovalBook, type ApprovalInput, type ApprovalRecord } from './approvals';
import { authenticateApprover, mayApprove, type Approver } from './approvers';
import { inboxPage, loginPage } from './approval-page';

export const APPROVAL_PATHS = {
  LIST: '/v1/approvals',
  ONE: '/v1/approvals/:id',
  ANSWER: '/v1/approvals/:id/:verb',
  STATE: '/v1/state/approvals',
  PAGE: '/approvals',
} as const;

/** The longest a GET /v1/approvals/<id>?wait=… holds: agents ask again. */
export const MAX_APPROVAL_WAIT_S = 30;
const SESSION_COOKIE = 'custody_approver';
const SESSION_MS = 8 * 60 * 60 * 1000;
const MAX_SESSIONS = 10_000;

const answerBody = z.strictObject({
  reason: z.string().trim().max(500).optional(),
  /** With the admin credential: the person it acts for. */
  as: z.string().trim().min(1).max(128).optional(),
});

interface Session {
  approver: Approver;
  csrf: string;
  expires: number;
}

export interface ApprovalRoutesOptions {
  book: ApprovalBook;
  policy: () => Policy;
  credentials: ServiceCredentials;
  /** The credential replicas create requests with (the state credential). */
  stateCredential: string | undefined;
  now?: () => number;
}

/**
 * The approvals API and the inbox page, at the plane that keeps the requests:
 *
 * - `GET /v1/approvals` the pending requests (an approver's credential or the admin one);
 * - `GET /v1/approvals/<id>[?wait=s]` one request, long-polled by the waiting enforcer (the id,
 *   128 random bits handed only to the agent that asked and to approvers, is what reads it);
 * - `POST /v1/approvals/<id>/approve|deny {reason?, as?}` answers it;
 * - `POST /v1/state/approvals` a replica's new request (the state credential);
 * - `GET /approvals` the inbox page: sign in with an approver credential (or admin + acting-for)
 *   into a session cookie (HttpOnly, SameSite=Strict), answer with forms that carry the
 *   session's CSRF token.
 */
export function mountApprovalRoutes(router: Router, o: ApprovalRoutesOptions): void {
  const now = o.now ?? Date.now;
  const sessions = new Map<string, Session>();
  const form = express.urlencoded({ extended: false, limit: '16kb' });

  const answer = async (id: string, verb: string, approver: Approver, reason: string | undefined): Promise<ApprovalRecord> => {
    if (verb !== 'approve' && verb !== 'deny') throw new HttpError(404, 'not_found', `no route for ${verb}: approve or deny`);
    const r = o.book.get(id);
    if (!r) throw new HttpError(404, 'approval_not_found', `no approval request '${id}'`);
    const can = mayApprove(r, approver.person, o.policy().approvals);
    if (!can.ok) throw new HttpError(403, 'approver_not_allowed', can.why);
    return o.book.resolve(id, { status: verb === 'approve' ? 'approved' : 'denied', by: approver.person, via: approver.via, reason: reason ?? '' });
  };

  router.get(APPROVAL_PATHS.LIST, (req, res) => {
    const approver = authenticateApprover(bearerToken(req.get('authorization')), queryText(req, 'as'), o.policy().approvals, o.credentials);
    const settings = o.policy().approvals;
    res.set('cache-control', 'no-store').json({
      approvals: o.book.pending().map((r) => ({ ...approvalView(r), can_answer: mayApprove(r, approver.person, settings).ok })),
    });
  });

  router.get(APPROVAL_PATHS.ONE, async (req, res) => {
    const id = String(req.params.id);
    const wait = Math.min(MAX_APPROVAL_WAIT_S, Math.max(0, Number(queryText(req, 'wait') ?? 0) || 0));
    const r = await o.book.wait(id, wait * 1000);
    if (!r) throw new HttpError(404, 'approval_not_found', `no approval request '${id}' (unknown, or resolved long ago)`);
    res.set('cache-control', 'no-store').json(approvalView(r));
  });

  router.post(APPROVAL_PATHS.ANSWER, async (req, res) => {
    const body = parse(answerBody, req.body);
    const approver = authenticateApprover(bearerToken(req.get('authorization')), body.as, o.policy().approvals, o.credentials);
    const r = await answer(String(req.params.id), String(req.params.verb), approver, body.reason);
    res.json(approvalView(r));
  });

  const service = requireScope(SCOPE.SERVICE, { service: o.stateCredential }, { what: 'approval requests from replicas', disabled: { status: 403, code: 'forbidden' } });
  router.post(APPROVAL_PATHS.STATE, service, (req, res) => {
    res.status(201).json(o.book.create(req.body as ApprovalInput));
  });

  // ---- the inbox page ----
  const sessionOf = (req: Request): Session | undefined => {
    const sid = cookie(req, SESSION_COOKIE);
    if (!sid) return undefined;
    const s = sessions.get(sid);
    if (!s || s.expires < now()) {
      sessions.delete(sid);
      return undefined;
    }
    return s;
  };
  const html = (res: Response, status: number, body: string) =>
    res
      .status(status)
      .set({ 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'x-frame-options': 'DENY', 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'", 'referrer-policy': 'no-referrer' })
      .send(body);
  const secure = (req: Request) => req.secure || req.get('x-forwarded-proto') === 'https';

  router.get(APPROVAL_PATHS.PAGE, (req, res) => {
    const s = sessionOf(req);
    if (!s) return void html(res, 200, loginPage());
    const settings = o.policy().approvals;
    const requests = o.book.pending().sort((a, b) => a.created_at - b.created_at);
    const note = queryText(req, 'note');
    const page = Number(queryText(req, 'page') ?? 1) || 1;
    html(res, 200, inboxPage({ person: s.approver.person, via: s.approver.via, csrf: s.csrf, requests, page, can: (r) => mayApprove(r, s.approver.person, settings), ...(note ? { note } : {}) }));
  });

  router.post(`${APPROVAL_PATHS.PAGE}/login`, form, (req, res) => {
    const b = (req.body ?? {}) as Record<string, unknown>;
    const credential = typeof b.credential === 'string' ? b.credential.trim() : '';
    const as = typeof b.as === 'string' && b.as.trim() ? b.as.trim() : undefined;
    let approver: Approver;
    try {
      approver = authenticateApprover(credential || undefined, as, o.policy().approvals, o.credentials);
    } catch (err) {
      return void html(res, err instanceof HttpError ? err.status : 401, loginPage({ error: (err as Error).message }));
    }
    if (sessions.size >= MAX_SESSIONS) for (const [k, v] of sessions) if (v.expires < now()) sessions.delete(k);
    if (sessions.size >= MAX_SESSIONS) throw new HttpError(503, 'too_many_sessions', 'too many approver sessions');
    const sid = randomBytes(32).toString('base64url');
    sessions.set(sid, { approver, csrf: randomBytes(24).toString('base64url'), expires: now() + SESSION_MS });
    res.cookie(SESSION_COOKIE, sid, { httpOnly: true, sameSite: 'strict', path: APPROVAL_PATHS.PAGE, maxAge: SESSION_MS, secure: secure(req) });
    res.redirect(303, APPROVAL_PATHS.PAGE);
  });

  router.post(`${APPROVAL_PATHS.PAGE}/logout`, form, (req, res) => {
    const s = sessionOf(req);
    if (s && csrfOk(req, s)) sessions.delete(cookie(req, SESSION_COOKIE)!);
    res.clearCookie(SESSION_COOKIE, { path: APPROVAL_PATHS.PAGE });
    res.redirect(303, APPROVAL_PATHS.PAGE);
  });

  router.post(`${APPROVAL_PATHS.PAGE}/:id/:verb`, form, async (req, res) => {
    const s = sessionOf(req);
    if (!s) return void html(res, 401, loginPage({ error: 'sign in first' }));
    if (!csrfOk(req, s)) throw new HttpError(403, 'csrf', 'the form is not from this session: reload the page');
    const reason = typeof req.body?.reason === 'string' ? req.body.reason.trim().slice(0, 500) : '';
    const id = String(req.params.id);
    const verb = String(req.params.verb);
    let note: string;
    try {
      const r = await answer(id, verb, s.approver, reason);
      note = `${r.id} ${r.status} by ${r.decided_by}`;
    } catch (err) {
      if (!(err instanceof HttpError) || err.status >= 500) throw err;
      note = `${id}: ${err.message}`;
    }
    res.redirect(303, `${APPROVAL_PATHS.PAGE}?note=${encodeURIComponent(note)}`);
  });
}

/** A replica: every approvals route is the owner's; this one relays the request as it came and the answer as it is. */
export function mountApprovalRelay(router: Router, owner: string): void {
  const relay = async (req: Request, res: Response) => {
    const headers: Record<string, string> = {};
    for (const h of ['authorization', 'content-type', 'cookie', 'accept'] as const) {
      const v = req.get(h);
      if (v) headers[h] = v;
    }
    const hasBody = req.method === 'POST';
    const type = req.get('content-type') ?? '';
    const body = !hasBody ? undefined : type.includes('json') ? JSON.stringify(req.body ?? {}) : new URLSearchParams((req.body ?? {}) as Record<string, string>).toString();
    let answer: globalThis.Response;
    try {
      answer = await fetch(new URL(req.originalUrl, owner), { method: req.method, headers, body, redirect: 'manual', signal: AbortSignal.timeout((MAX_APPROVAL_WAIT_S + 10) * 1000) });
    } catch (err) {
      throw new HttpError(503, 'state_unavailable', `the approvals' owner at ${new URL(owner).origin} did not answer (${describeFetchError(err)})`, { 'retry-after': '1' });
    }
    res.status(answer.status);
    for (const h of ['content-type', 'location', 'set-cookie', 'cache-control', 'content-security-policy', 'x-frame-options', 'www-authenticate']) {
      const v = h === 'set-cookie' ? answer.headers.getSetCookie() : answer.headers.get(h);
      if (v && (!Array.isArray(v) || v.length)) res.set(h, v as string | string[]);
    }
    res.send(Buffer.from(await answer.arrayBuffer()));
  };
  const form = express.urlencoded({ extended: false, limit: '16kb' });
  router.get(APPROVAL_PATHS.LIST, relay);
  router.get(APPROVAL_PATHS.ONE, relay);
  router.post(APPROVAL_PATHS.ANSWER, relay);
  router.get(APPROVAL_PATHS.PAGE, relay);
  router.post(`${APPROVAL_PATHS.PAGE}/login`, form, relay);
  router.post(`${APPROVAL_PATHS.PAGE}/logout`, form, relay);
  router.post(`${APPROVAL_PATHS.PAGE}/:id/:verb`, form, relay);
}

function csrfOk(req: Request, s: Session): boolean {
  const given = typeof req.body?.csrf === 'string' ? req.body.csrf : '';
  return given !== '' && secretEquals(given, s.csrf);
}

function cookie(req: Request, name: string): string | undefined {
  const header = req.get('cookie');
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return decodeURIComponent(part.slice(i + 1).trim());
  }
  return undefined;
}

function queryText(req: Request, name: string): string | undefined {
  const v = req.query[name];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function parse<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  const r = schema.safeParse(body ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw badRequest('invalid_request', `${issue.path.length ? `'${issue.path.join('.')}': ` : ''}${issue.message}`);
}
