import { resolveToolName, type ToolRef } from '../policy/tool-map';
import { requestJson } from './http';

type Map = Record<string, { tool: string; action?: string }>;
type Tools = Record<string, { disclose_args?: string[] | null }>;

/**
 * The plane's tool_map (GET /v1/policy), fetched in the background and kept `freshMs`; a name
 * resolves with it when it can be had within the caller's time, else by the tool.action
 * convention (the plane still decides the call).
 */
export function createToolMapClient(o: { url: string; fetchTimeoutMs: number; freshMs: number; now: () => number }) {
  let table: { map: Map; tools: Tools; fetchedAt: number } | undefined;
  let inflight: Promise<void> | undefined;
  /** When the last read failed (the plane down or hung): callers then do not wait for the next one. */
  let failedAt: number | undefined;

  function refresh(): void {
    if (inflight || (table && o.now() - table.fetchedAt < o.freshMs)) return;
    inflight = (async () => {
      try {
        const body = (await requestJson(o.url, { method: 'GET', signal: AbortSignal.timeout(o.fetchTimeoutMs), timeoutMs: o.fetchTimeoutMs })) as { tool_map?: unknown; tools?: unknown };
        if (body && typeof body.tool_map === 'object' && body.tool_map !== null) {
          const tools = typeof body.tools === 'object' && body.tools !== null ? (body.tools as Tools) : {};
          table = { map: body.tool_map as Map, tools, fetchedAt: o.now() };
          failedAt = undefined;
        }
      } catch {
        failedAt = o.now();
        /* without the table, names resolve by the tool.action convention; the plane still decides */
      } finally {
        inflight = undefined;
      }
    })();
  }

  async function settle(waitMs: number): Promise<void> {
    refresh();
    if (!table && inflight && waitMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([inflight, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]).finally(() => clearTimeout(timer));
    }
  }

  return {
    /** Waits for a first table at most `waitMs`. */
    async resolve(name: string, waitMs: number): Promise<ToolRef> {
      await settle(waitMs);
      return resolveToolName(name, table?.map);
    },
    /**
     * The argument fields a tool discloses to the plane (its disclose_args), waiting for a first
     * table at most `waitMs`; unknown, none are sent (argument rules then fail closed at the plane).
     */
    disclosed(tool: string, waitMs: number): readonly string[] | null | Promise<readonly string[] | null> {
      const fieldsOf = (): readonly string[] | null => {
        const fields = table && Object.hasOwn(table.tools, tool) ? table.tools[tool]?.disclose_args : null;
        return Array.isArray(fields) ? fields : null;
      };
      // known: answered at once (the hot path of every call stays synchronous); unknown because
      // the plane did not answer lately: none are sent rather than every call spending its budget
      // waiting again (argument rules then fail closed at the plane)
      if (table || (failedAt !== undefined && o.now() - failedAt < o.freshMs)) {
        refresh();
        return fieldsOf();
      }
      return settle(waitMs).then(fieldsOf);
    },
  };
}
