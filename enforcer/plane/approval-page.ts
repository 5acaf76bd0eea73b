import type { ApprovalRecord } from './approvals';

/**
 * The approval inbox, server-rendered HTML (no script): the pending requests with sponsor, agent
 * chain, tool, action, purpose and the disclosed arguments, each with approve and deny forms that
 * carry a reason and the session's CSRF token.
 */

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => ESCAPES[c]!);

// rows off screen are not laid out until scrolled to (content-visibility): a thousand requests load as fast as a screenful
const STYLE = `body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;width:100%;table-layout:fixed}
tbody tr{content-visibility:auto;contain-intrinsic-size:auto 4rem}
th,td{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top;font-size:.9rem}
code{font-size:.85rem}form{display:inline-block;margin:0 .2rem}input[name=reason]{width:12rem}.note{padding:.5rem;background:#eef}
.err{padding:.5rem;background:#fdd}`;

function document(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

export function loginPage(o: { error?: string } = {}): string {
  return document(
    'custody — approvals: sign in',
    `<h1>Approvals</h1>${o.error ? `<p class="err" id="error">${escapeHtml(o.error)}</p>` : ''}
<form method="post" action="/approvals/login" id="login">
<p><label>Approver credential <input type="password" name="credential" autocomplete="off" required></label></p>
<p><label>Acting for (with the admin credential only) <input type="text" name="as"></label></p>
<p><button type="submit">Sign in</button></p></form>`,
  );
}

function args(a: Record<string, unknown>): string {
  const entries = Object.entries(a);
  if (!entries.length) return '<em>none disclosed</em>';
  return entries.map(([k, v]) => `<code>${escapeHtml(k)}=${escapeHtml(JSON.stringify(v))}</code>`).join('<br>');
}

function row(r: ApprovalRecord, csrf: string, can: { ok: boolean; why?: string }): string {
  const id = escapeHtml(r.id);
  const chain = [r.agent_instance_id, ...r.chain].map(escapeHtml).join(' ← ');
  // one form per request, its buttons choosing the verb: half the controls of two forms, for pages of a thousand rows
  const actions = can.ok
    ? `<form method="post" action="/approvals/${id}/approve"><input type="hidden" name="csrf" value="${escapeHtml(csrf)}">` +
      `<input type="text" name="reason" placeholder="reason"><button type="submit" value="approve">Approve</button>` +
      `<button type="submit" value="deny" formaction="/approvals/${id}/deny">Deny</button></form>`
    : `<em>${escapeHtml(can.why ?? 'not yours to answer')}</em>`;
  return `<tr id="${id}" data-id="${id}"><td><code>${id}</code><br>expires ${escapeHtml(new Date(r.expires_at).toISOString())}</td>` +
    `<td>${escapeHtml(r.sponsor_id)}</td><td>${chain}${r.role ? `<br>role ${escapeHtml(r.role)}` : ''}</td>` +
    `<td>${escapeHtml(r.tool)}</td><td>${escapeHtml(r.action)}</td><td>${escapeHtml(r.purpose || '—')}</td><td>${args(r.args)}</td>` +
    `<td>${escapeHtml(r.rule_id)}</td><td>${actions}</td></tr>`;
}

/** Requests per page: a browser lays out a hundred rows of forms in a fraction of a second, a thousand in more than one. */
export const INBOX_PAGE_SIZE = 100;

export function inboxPage(o: {
  person: string;
  via: string;
  csrf: string;
  /** Every pending request, oldest first; the page shows `page` (1-based) of them. */
  requests: ApprovalRecord[];
  page: number;
  can: (r: ApprovalRecord) => { ok: boolean; why?: string };
  note?: string;
}): string {
  const pages = Math.max(1, Math.ceil(o.requests.length / INBOX_PAGE_SIZE));
  const page = Math.min(Math.max(1, o.page), pages);
  const from = (page - 1) * INBOX_PAGE_SIZE;
  const shown = o.requests.slice(from, from + INBOX_PAGE_SIZE);
  const rows = shown.map((r) => row(r, o.csrf, o.can(r))).join('');
  const nav = pages > 1
    ? `<p id="pages">showing ${from + 1}–${from + shown.length}, oldest first${page > 1 ? ` · <a href="/approvals?page=${page - 1}">previous</a>` : ''}${page < pages ? ` · <a href="/approvals?page=${page + 1}">next</a>` : ''}</p>`
    : '';
  return document(
    'custody — approvals',
    `<h1>Approvals</h1><p>Signed in as <strong id="who">${escapeHtml(o.person)}</strong>${o.via === 'admin' ? ' (admin acting for them)' : ''}.
<form method="post" action="/approvals/logout"><input type="hidden" name="csrf" value="${escapeHtml(o.csrf)}"><button type="submit">Sign out</button></form></p>
${o.note ? `<p class="note" id="note">${escapeHtml(o.note)}</p>` : ''}
<p id="count">${o.requests.length} pending</p>${nav}
<table><thead><tr><th>request</th><th>sponsor</th><th>agent chain</th><th>tool</th><th>action</th><th>purpose</th><th>arguments</th><th>rule</th><th></th></tr></thead>
<tbody>${rows}</tbody></table>`,
  );
}
