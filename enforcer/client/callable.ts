import type { CallableTools } from '../policy/callable';
import { requestJson } from './http';

/**
 * The plane's answer to "what may this role ever call" (GET /v1/policy/callable), per role, kept
 * `freshMs`. Used only to leave tools out of the lists an agent is offered: an answer that cannot
 * be had in time is `undefined`, and the list is then offered whole (every call is still decided).
 */
export function createCallableClient(o: { url: string; timeoutMs: number; freshMs: number; now: () => number; maxRoles?: number }) {
  const answers = new Map<string, { value: CallableTools; fetchedAt: number }>();
  const inflight = new Map<string, Promise<CallableTools | undefined>>();
  const maxRoles = o.maxRoles ?? 256;

  async function fetchFor(role: string | null): Promise<CallableTools | undefined> {
    const url = role === null ? o.url : `${o.url}?role=${encodeURIComponent(role)}`;
    try {
      const body = await requestJson(url, { method: 'GET', signal: AbortSignal.timeout(o.timeoutMs), timeoutMs: o.timeoutMs });
      if (!isCallable(body)) return undefined;
      if (answers.size >= maxRoles) answers.clear();
      answers.set(role ?? '', { value: body, fetchedAt: o.now() });
      return body;
    } catch {
      return undefined;
    }
  }

  return {
    async get(role: string | null): Promise<CallableTools | undefined> {
      const kept = answers.get(role ?? '');
      if (kept && o.now() - kept.fetchedAt < o.freshMs) return kept.value;
      let p = inflight.get(role ?? '');
      if (!p) {
        p = fetchFor(role).finally(() => inflight.delete(role ?? ''));
        inflight.set(role ?? '', p);
      }
      // a stale answer beats none when the plane cannot be reached
      return (await p) ?? kept?.value;
    },
    clear(): void {
      answers.clear();
    },
  };
}

function isCallable(body: unknown): body is CallableTools {
  if (!body || typeof body !== 'object') return false;
  const b = body as Partial<CallableTools>;
  return typeof b.tools === 'object' && b.tools !== null && (b.any === null || typeof b.any === 'object');
}
