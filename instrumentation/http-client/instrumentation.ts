import diagnosticsChannel from 'node:diagnostics_channel';
import type { ClientRequest } from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import { context, diag } from '@opentelemetry/api';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, isWrapped } from '@opentelemetry/instrumentation';
import { getRuntime } from '../runtime';
import { VERSION } from '../version';
import { UNDICI_REQUEST_CREATE, type HttpModule, type RequestFunction, type UndiciRequest } from './internal-types';
import type { HttpClientInstrumentationConfig } from './types';
import { normalOrigin, outgoingHeaders, requestOrigin, undiciHas } from './utils';

/**
 * The call's identity on the wire: HTTP requests made inside a tool call's body — `fetch` (undici,
 * through its diagnostics channel) and `http`/`https` `request`/`get` — carry the call's trace
 * context, and, to the tool origins only (CUSTODY_TOOL_ORIGINS), its baggage and token, which a
 * tool API behind custody/guard verifies. Nothing else about the request changes, and no span is
 * made for it: the tool-call span is its parent. Whatever goes wrong here, the request is still
 * sent as asked (a tool API then refuses it for want of a token).
 */
export class HttpClientInstrumentation extends InstrumentationBase<HttpClientInstrumentationConfig> {
  constructor(config: HttpClientInstrumentationConfig = {}) {
    super('custody-instrumentation-http-client', VERSION, config);
  }

  protected init() {
    return [
      new InstrumentationNodeModuleDefinition('http', ['*'], (m: HttpModule) => this.patch(m, 'http:'), (m: HttpModule) => this.unpatch(m)),
      new InstrumentationNodeModuleDefinition('https', ['*'], (m: HttpModule) => this.patch(m, 'https:'), (m: HttpModule) => this.unpatch(m)),
    ];
  }

  override enable(): void {
    super.enable();
    if (!undiciSubscribers.has(this)) {
      const handler = (message: unknown) => this.onUndiciRequest(message);
      undiciSubscribers.set(this, handler);
      diagnosticsChannel.subscribe(UNDICI_REQUEST_CREATE, handler);
    }
  }

  override disable(): void {
    super.disable();
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

  private patch(m: HttpModule, protocol: 'http:' | 'https:'): HttpModule {
    if (isWrapped(m.request)) this._unwrap(m, 'request');
    if (isWrapped(m.get)) this._unwrap(m, 'get');
    const self = this;
    this._wrap(m, 'request', (original: RequestFunction) =>
      function request(this: unknown, ...args: unknown[]) {
        const req = original.apply(this, args);
        self.addHeaders(req, args, protocol);
        return req;
      },
    );
    // http.get calls the module's own request, not the export: it is made again from the patched one
    this._wrap(m, 'get', () =>
      function get(this: unknown, ...args: unknown[]) {
        const req = m.request.apply(this, args);
        req.end();
        return req;
      },
    );
    // `import { request } from 'node:http'` reads the ESM view of the builtin
    syncBuiltinESMExports();
    return m;
  }

  private unpatch(m: HttpModule): void {
    if (isWrapped(m.request)) this._unwrap(m, 'request');
    if (isWrapped(m.get)) this._unwrap(m, 'get');
    syncBuiltinESMExports();
  }

  private addHeaders(req: ClientRequest, args: unknown[], protocol: 'http:' | 'https:'): void {
    try {
      if (req.headersSent) return;
      const headers = outgoingHeaders(context.active(), requestOrigin(args, protocol), this.origins(), (name) => req.hasHeader(name));
      for (const [name, value] of Object.entries(headers)) req.setHeader(name, value);
    } catch (err) {
      diag.debug(`custody: could not add the tool call's context to an HTTP request: ${(err as Error).message}`);
    }
  }
}

/** One undici subscription per instrumentation instance (enable() runs in the base constructor, before fields exist). */
const undiciSubscribers = new WeakMap<HttpClientInstrumentation, (message: unknown) => void>();
