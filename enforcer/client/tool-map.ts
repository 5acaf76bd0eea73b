import { resolveToolName, type ToolRef } from '../policy/tool-map';
import { requestJson } from './http';

type Map = Record<string, { tool: string; action?: string }>;

/**
 * The plane's tool_map (GET /v1/policy), fetched in the background and kept `freshMs`; a name
 * resolves with it when it can be had within the caller's time, else by the tool.action
 * convention (the plane still decides the call).
 */
export function createToolMapClient(o: { url: string; fetchTimeoutMs: number; freshMs: number; now: () => number }) {
  let table: { map: Map; fetchedAt: number } | undefined;
  let inflight: Promise<void> | undefined;

  function refresh(): void {
    if (inflight || (table && o.now() - table.fetchedAt < o.freshMs)) return;
    inflight = (async () => {
      try {
        const body = (await requestJson(o.url, { method: 'GET', signal: AbortSignal.timeout(o.fetchTimeoutMs), timeoutMs: o.fetchTimeoutMs })) as { tool_map?: unknown };
        if (body && typeof body.tool_map === 'object' && body.tool_map !== null) table = { map: body.tool_map as Map, fetchedAt: o.now() };
      } catch {
        /* without the table, names resolve by the tool.action convention; the plane still decides */
      } finally {
        inflight = undefined;
      }
    })();
  }

  return {
    /** Waits for a first table at most `waitMs`. */
    async resolve(name: string, waitMs: number): Promise<ToolRef> {
      refresh();
      if (!table && inflight && waitMs > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([inflight, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]).finally(() => clearTimeout(timer));
      }
      return resolveToolName(name, table?.map);
    },
  };
}
