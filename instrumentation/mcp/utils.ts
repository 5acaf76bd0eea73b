/**
 * The JSON-RPC method a request schema stands for: its `method` literal (zod 3 or 4, as the SDK
 * accepts both). undefined when it cannot be read.
 */
export function methodOfSchema(schema: unknown): string | undefined {
  const shape = (schema as { shape?: Record<string, unknown> } | undefined)?.shape;
  const method = shape?.method as { value?: unknown; _def?: { value?: unknown }; _zod?: { def?: { values?: unknown[] } } } | undefined;
  const value = method?.value ?? method?._def?.value ?? method?._zod?.def?.values?.[0];
  return typeof value === 'string' ? value : undefined;
}

/**
 * Where an MCP client's server runs, from its transport: `local` for a process the agent started
 * over stdio (a sub-agent, which gets the agent's chain in its environment anyway) or a server in
 * this process; the origin of an HTTP, SSE or WebSocket server's URL; undefined when it cannot be
 * told (a transport of one's own).
 */
export function serverLocation(transport: unknown): 'local' | string | undefined {
  const t = transport as { _url?: unknown; _serverParams?: unknown; _otherTransport?: unknown } | undefined;
  if (!t || typeof t !== 'object') return undefined;
  if (t._url instanceof URL) return t._url.origin;
  if (typeof t._url === 'string') {
    try {
      return new URL(t._url).origin;
    } catch {
      return undefined;
    }
  }
  if (t._serverParams !== undefined || t._otherTransport !== undefined) return 'local';
  return undefined;
}

/** A server that may have the caller's baggage and delegation token: a local one, or one at a tool origin (CUSTODY_TOOL_ORIGINS). */
export function trustedServer(location: string | undefined, toolOrigins: readonly string[]): boolean {
  return location === 'local' || (location !== undefined && toolOrigins.includes(location));
}
