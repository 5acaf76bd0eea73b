import diagnosticsChannel from 'node:diagnostics_channel';
import http, { type ClientRequest } from 'node:http';
import { context, diag } from '@opentelemetry/api';
import { InstrumentationBase, isWrapped } from '@opentelemetry/instrumentation';
import { getRuntime } from '../runtime';
import { VERSION } from '../version';
import { UNDICI_REQUEST_CREATE, type AddRequest, type HttpModule, type UndiciRequest } from './internal-types';
import type { HttpClientInstrumentationConfig } from './types';
import { normalOrigin, outgoingHeaders, requestOrigin, undiciHas } from './utils';

/**
 * The call's identity on the wire: HTTP requests made inside a tool call's body — `fetch` (undici,
 * through its diagnostics channel) and `http`/`https` (through their agents) — carry the call's trace
 * context, and, to the tool origins only (CUSTODY_TOOL_ORIGINS), its baggage and token, which a
 * tool API behind custody/guard verifies. Nothing else about the request changes, and no span is
 * made for it: the tool-call span is its parent. Whatever goes wrong here, the request is still
 * sent as asked (a tool API then refuses it for want of a token).
 */
export class HttpClientInstrumentation extends InstrumentationBase<HttpClientInstrumentationConfig> {
  constructor(config: HttpClientInstrumentationConfig = {}) {
    super('custody-instrumentation-http-client', VERSION, config);
  }

  /**
   * No module hook: `http.Agent.prototype.addRequest` is patched in enable() on the builtin this
   * module imported when it loaded (https.Agent inherits addRequest). Every request made through an
   * agent passes there once, before its headers are sent. Not `http.request`/`get`, and not through
   * require-in-the-middle: the app's own HTTP instrumentation (auto-instrumentations-node) unwraps
   * and rewraps those when it is enabled, and a builtin required through the shared hook before
   * that instrumentation registers is never offered to it again — loaded in either order, neither
   * undoes the other.
   */
  protected init() {
    return [];
  }

  override enable(): void {
    super.enable();
    this.patch(http as unknown as HttpModule);
    if (!undiciSubscribers.has(this)) {
      const handler = (message: unknown) => this.onUndiciRequest(message);
      undiciSubscribers.set(this, handler);
      diagnosticsChannel.subscribe(UNDICI_REQUEST_CREATE, handler);
    }
  }

  override disable(): void {
    super.disable();
    this.unpatch(http as unknown as HttpModule);
    const handler = undiciSubscribers.get(this);
    if (handler) {
      diagnosticsChannel.unsubscribe(UNDICI_REQUEST_CREATE, handler);
      undiciSubscribers.delete(this);
    }
  }

  private origins(): readonly string[] {
    return this.getConfig().toolOrigins ?? getRuntime().settings.toolOrigins ?? [];
  }

  private onUndiciRequest(message: unknown): void {
    try {
      const request = (message as { request?: UndiciRequest })?.request;
      if (!request || typeof request.addHeader !== 'function') return;
      let origin: string | undefined;
      try {
        const u = new URL(String(request.origin));
        origin = normalOrigin(u.protocol, u.hostname, u.port);
      } catch {
        origin = undefined;
      }
      const headers = outgoingHeaders(context.active(), origin, this.origins(), (name) => undiciHas(request.headers, name));
      for (const [name, value] of Object.entries(headers)) request.addHeader(name, value);
    } catch (err) {
      diag.debug(`custody: could not add the tool call's context to a fetch: ${(err as Error).message}`);
    }
  }

  private patch(m: HttpModule): HttpModule {
    const proto = m?.Agent?.prototype;
    if (!proto || typeof proto.addRequest !== 'function') return m;
    // only custody's own wrapper is taken off (another library's stays, under custody's)
    if (isOurs(proto.addRequest)) this._unwrap(proto, 'addRequest');
    const self = this;
    this._wrap(proto, 'addRequest', (original: AddRequest) =>
      function addRequest(this: unknown, req: ClientRequest, options: unknown, ...rest: unknown[]) {
        const agentProtocol = (this as { protocol?: string } | undefined)?.protocol;
        self.addHeaders(req, options, agentProtocol === 'https:' || (req as { protocol?: string }).protocol === 'https:' ? 'https:' : 'http:');
        return original.call(this, req, options, ...rest);
      },
    );
    (proto.addRequest as unknown as Record<symbol, boolean>)[OURS] = true;
    return m;
  }

  private unpatch(m: HttpModule): void {
    const proto = m?.Agent?.prototype;
    if (proto && isOurs(proto.addRequest)) this._unwrap(proto, 'addRequest');
  }

  private addHeaders(req: ClientRequest, options: unknown, protocol: 'http:' | 'https:'): void {
    try {
      if (!req || typeof req.setHeader !== 'function' || req.headersSent) return;
      const headers = outgoingHeaders(context.active(), requestOrigin([options], protocol), this.origins(), (name) => req.hasHeader(name));
      for (const [name, value] of Object.entries(headers)) req.setHeader(name, value);
    } catch (err) {
      diag.debug(`custody: could not add the tool call's context to an HTTP request: ${(err as Error).message}`);
    }
  }
}

const OURS = Symbol.for('custody.http-client.addRequest');
const isOurs = (fn: unknown): boolean => isWrapped(fn) && (fn as unknown as Record<symbol, boolean>)[OURS] === true;

/** One undici subscription per instrumentation instance (enable() runs in the base constructor, before fields exist). */
const undiciSubscribers = new WeakMap<HttpClientInstrumentation, (message: unknown) => void>();
