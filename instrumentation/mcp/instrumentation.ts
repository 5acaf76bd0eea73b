import fs from 'node:fs';
import path from 'node:path';
import { context, diag, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, InstrumentationNodeModuleFile, isWrapped } from '@opentelemetry/instrumentation';
import { Hook } from 'require-in-the-middle';
import { ATTR, BAGGAGE, PROPAGATION } from '../../common/names';
import { delegationToken } from '../delegation';
import { getRuntime } from '../runtime';
import { currentScope } from '../scope';
import { MCP_METHOD, SEMCONV } from '../semconv';
import { runAsRemoteCallee, w3cCarrier } from '../subagent';
import { errorType, runToolCall } from '../tool-call';
import { callableOnly } from '../tool-list';
import { toolCallOf } from '../call-context';
import { VERSION } from '../version';
import type { CallToolParams, ClientModule, McpClient, McpRequest, McpRequestExtra, McpRequestHandler, McpServer, ServerModule } from './internal-types';
import type { McpInstrumentationConfig } from './types';
import { methodOfSchema, serverLocation, trustedServer } from './utils';

const SUPPORTED = ['>=1.0.0 <2'];
const PACKAGE = '@modelcontextprotocol/sdk';

/**
 * The SDK's CommonJS entry points. Its package "main" does not exist on disk, so the generic
 * require hook (which resolves a package's main to tell its internal files apart) never sees the
 * SDK's files; a hook on these exact subpath ids does.
 */
const CJS_ENTRY_IDS = [
  'client', 'client/index.js', 'client/stdio.js', 'client/sse.js', 'client/streamableHttp.js',
  'server', 'server/index.js', 'server/mcp.js', 'server/stdio.js', 'server/sse.js', 'server/streamableHttp.js',
].map((p) => `${PACKAGE}/${p}`);

/**
 * MCP TypeScript SDK 1.x. Client: `Client.callTool` is an enforced tool call of the calling agent
 * (a refused call throws before any request is sent, so the server never sees it), and the
 * request's `params._meta` carries traceparent and tracestate; baggage and the caller's delegation
 * token go only to a server the agent started (stdio), one in the same process, or one at an
 * origin in CUSTODY_TOOL_ORIGINS — never to a third-party server. Server: the `tools/call` handler — McpServer's or one set on Server directly — runs in the
 * caller's trace and baggage, as the sub-agent that serves that caller, under a SERVER span.
 */
function packageVersion(basedir: string): string | undefined {
  try {
    return (JSON.parse(fs.readFileSync(path.join(basedir, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

export class McpInstrumentation extends InstrumentationBase<McpInstrumentationConfig> {
  // assigned from enable(), which the base constructor calls: declared, never initialized here
  declare private cjsHook: Hook | undefined;
  declare private cjsPatched: Set<ClientModule | ServerModule> | undefined;

  constructor(config: McpInstrumentationConfig = {}) {
    super('custody-instrumentation-mcp', VERSION, config);
  }

  override enable(): void {
    super.enable();
    this.cjsHook ??= new Hook(CJS_ENTRY_IDS, { internals: false }, (exports, _name, basedir) => {
      if (this.isEnabled() && basedir) this.patchCommonJs(basedir);
      return exports;
    });
  }

  override disable(): void {
    super.disable();
    for (const m of this.cjsPatched ?? []) {
      if ('Client' in m) this.unpatchClient(m);
      else this.unpatchServer(m as ServerModule);
    }
    this.cjsPatched?.clear();
  }

  /** Any CommonJS entry of the SDK: patch its client and server modules (the files all others import). */
  private patchCommonJs(basedir: string): void {
    const version = packageVersion(basedir);
    // SUPPORTED is 1.x
    if (!version || version.split('.')[0] !== '1') return;
    const patched = (this.cjsPatched ??= new Set());
    try {
      const client = require(path.join(basedir, 'dist', 'cjs', 'client', 'index.js')) as ClientModule;
      const server = require(path.join(basedir, 'dist', 'cjs', 'server', 'index.js')) as ServerModule;
      if (!patched.has(client)) patched.add(this.patchClient(client));
      if (!patched.has(server)) patched.add(this.patchServer(server));
    } catch (err) {
      diag.warn(`custody: could not instrument ${PACKAGE} ${version}: ${(err as Error).message}`);
    }
  }

  protected init() {
    const clientFile = (flavour: string) =>
      new InstrumentationNodeModuleFile(
        `@modelcontextprotocol/sdk/dist/${flavour}/client/index.js`,
        SUPPORTED,
        (m: ClientModule) => this.patchClient(m),
        (m: ClientModule) => this.unpatchClient(m),
      );
    const serverFile = (flavour: string) =>
      new InstrumentationNodeModuleFile(
        `@modelcontextprotocol/sdk/dist/${flavour}/server/index.js`,
        SUPPORTED,
        (m: ServerModule) => this.patchServer(m),
        (m: ServerModule) => this.unpatchServer(m),
      );
    return new InstrumentationNodeModuleDefinition('@modelcontextprotocol/sdk', SUPPORTED, undefined, undefined, [
      clientFile('cjs'),
      clientFile('esm'),
      serverFile('cjs'),
      serverFile('esm'),
    ]);
  }

  private patchClient(m: ClientModule): ClientModule {
    const proto = m?.Client?.prototype;
    if (!proto || typeof proto.callTool !== 'function') return m;
    if (isWrapped(proto.callTool)) this._unwrap(proto, 'callTool');
    this._wrap(proto, 'callTool', (original) => this.callToolWrapper(original as McpClient['callTool']));
    if (typeof proto.listTools === 'function') {
      if (isWrapped(proto.listTools)) this._unwrap(proto, 'listTools');
      this._wrap(proto, 'listTools', (original) => this.listToolsWrapper(original as NonNullable<McpClient['listTools']>));
    }
    return m;
  }

  private unpatchClient(m: ClientModule): void {
    const proto = m?.Client?.prototype;
    if (proto && isWrapped(proto.callTool)) this._unwrap(proto, 'callTool');
    if (proto && isWrapped(proto.listTools)) this._unwrap(proto, 'listTools');
  }

  private patchServer(m: ServerModule): ServerModule {
    const proto = m?.Server?.prototype;
    if (!proto || typeof proto.setRequestHandler !== 'function') return m;
    if (isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
    this._wrap(proto, 'setRequestHandler', (original) => this.setRequestHandlerWrapper(original as McpServer['setRequestHandler']));
    return m;
  }

  private unpatchServer(m: ServerModule): void {
    const proto = m?.Server?.prototype;
    if (proto && isWrapped(proto.setRequestHandler)) this._unwrap(proto, 'setRequestHandler');
  }

  private callToolWrapper(original: McpClient['callTool']): McpClient['callTool'] {
    const instrumentation = this;
    return function callTool(this: McpClient, params: CallToolParams, ...rest: unknown[]) {
      const client = this;
      if (!params || typeof params.name !== 'string') return original.call(client, params, ...rest);
      const send = async () => {
        const meta: Record<string, unknown> = { ...(params._meta ?? {}) };
        const scope = currentScope();
        const carrier = w3cCarrier(scope.withBaggage(context.active()));
        const trusted = trustedServer(serverLocation(client.transport), getRuntime().settings.toolOrigins ?? []);
        if (!trusted) delete carrier[PROPAGATION.BAGGAGE];
        Object.assign(meta, carrier);
        const token = trusted ? await delegationToken(scope) : undefined;
        if (token) meta[PROPAGATION.MCP_DELEGATION_TOKEN] = token;
        // the call's own token, for a server guarded with mcpToolGuard (custody/guard)
        const callToken = trusted ? toolCallOf(context.active())?.token : undefined;
        if (callToken) meta[PROPAGATION.MCP_CALL_TOKEN] = callToken;
        return original.call(client, { ...params, _meta: meta }, ...rest);
      };
      if (instrumentation.getConfig().enforceClientCalls === false) return send();
      // a server custody trusts gets the call's token (mcpToolGuard checks it), also in shadow
      const sendsToken = trustedServer(serverLocation(client.transport), getRuntime().settings.toolOrigins ?? []);
      return runToolCall({ name: params.name, args: params.arguments ?? {}, sendsToken }, send);
    };
  }

  /** `tools/list`: tools the agent's role may never call are left out (SEP-1881); every call is still checked. */
  private listToolsWrapper(original: NonNullable<McpClient['listTools']>): NonNullable<McpClient['listTools']> {
    const instrumentation = this;
    return async function listTools(this: McpClient, params?: unknown, options?: unknown) {
      const result = await original.call(this, params, options);
      if (instrumentation.getConfig().filterToolLists === false || !result || !Array.isArray(result.tools)) return result;
      const tools = await callableOnly(result.tools, (t) => (t && typeof t === 'object' ? (t as { name?: unknown }).name : undefined));
      return tools.length === result.tools.length ? result : { ...result, tools };
    };
  }

  private setRequestHandlerWrapper(original: McpServer['setRequestHandler']): McpServer['setRequestHandler'] {
    return function setRequestHandler(this: McpServer, schema: unknown, handler: McpRequestHandler) {
      if (typeof handler !== 'function' || methodOfSchema(schema) !== MCP_METHOD.TOOLS_CALL) {
        return original.call(this, schema, handler);
      }
      const traced = function (this: unknown, request: McpRequest, extra: McpRequestExtra) {
        const meta = request?.params?._meta;
        const self = this;
        return runAsRemoteCallee(meta && typeof meta === 'object' ? meta : {}, (ctx) => {
          const tool = typeof request?.params?.name === 'string' ? request.params.name : '';
          const sponsor = propagation.getBaggage(ctx)?.getEntry(BAGGAGE.SPONSOR_ID)?.value;
          const span = getRuntime().tracer.startSpan(
            tool ? `${MCP_METHOD.TOOLS_CALL} ${tool}` : MCP_METHOD.TOOLS_CALL,
            {
              kind: SpanKind.SERVER,
              attributes: {
                [SEMCONV.MCP_METHOD_NAME]: MCP_METHOD.TOOLS_CALL,
                ...(tool ? { [ATTR.GEN_AI_TOOL_NAME]: tool } : {}),
                ...(extra?.requestId !== undefined ? { [SEMCONV.JSONRPC_REQUEST_ID]: String(extra.requestId) } : {}),
                ...(typeof extra?.sessionId === 'string' ? { [SEMCONV.MCP_SESSION_ID]: extra.sessionId } : {}),
                ...(sponsor ? { [ATTR.SPONSOR_ID]: sponsor } : {}),
              },
            },
            ctx,
          );
          const end = (err?: unknown) => {
            if (err !== undefined) {
              span.setAttribute(ATTR.ERROR_TYPE, errorType(err));
              if (err instanceof Error) span.recordException(err);
              span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
            }
            span.end();
          };
          try {
            const result = context.with(trace.setSpan(ctx, span), () => handler.call(self, request, extra));
            if (result && typeof (result as PromiseLike<unknown>).then === 'function') {
              return Promise.resolve(result).then(
                (value) => {
                  end();
                  return value;
                },
                (err: unknown) => {
                  end(err);
                  throw err;
                },
              );
            }
            end();
            return result;
          } catch (err) {
            end(err);
            throw err;
          }
        });
      };
      return original.call(this, schema, traced);
    };
  }
}
