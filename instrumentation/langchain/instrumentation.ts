import { AsyncLocalStorage } from 'node:async_hooks';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, InstrumentationNodeModuleFile, isWrapped } from '@opentelemetry/instrumentation';
import { runToolCall } from '../tool-call';
import { VERSION } from '../version';
import type { StructuredToolLike, ToolCallConfig, ToolsModule } from './internal-types';
import type { LangChainInstrumentationConfig } from './types';
import { ownerOf } from './utils';

const SUPPORTED = ['>=1.0.0 <2'];

/**
 * LangChain.js tools (@langchain/core 1.x). Every tool runs through `StructuredTool.call`, which
 * validates the input, starts the callbacks, then runs the tool body `_call` and reports a throw
 * through `handleToolError`. custody wraps `_call` — on DynamicTool and DynamicStructuredTool (and so
 * `tool()`) at once, on other StructuredTool subclasses the first time one is called — so the
 * enforcer is asked before the body, a refusal never runs it, and the refusal takes LangChain's own
 * tool-error path.
 */
export class LangChainInstrumentation extends InstrumentationBase<LangChainInstrumentationConfig> {
  /** Prototypes whose `_call` this instance wrapped, to undo. */
  private readonly patched = new Set<StructuredToolLike>();
  /** The tool instance whose body is running: a subclass `_call` calling `super._call` is one call. */
  private readonly running = new AsyncLocalStorage<StructuredToolLike>();

  constructor(config: LangChainInstrumentationConfig = {}) {
    super('custody-instrumentation-langchain', VERSION, config);
  }

  protected init() {
    const file = (name: string) =>
      new InstrumentationNodeModuleFile(
        `@langchain/core/dist/tools/${name}`,
        SUPPORTED,
        (m: ToolsModule) => this.patch(m),
        (m: ToolsModule) => this.unpatch(m),
      );
    return new InstrumentationNodeModuleDefinition('@langchain/core', SUPPORTED, undefined, undefined, [file('index.cjs'), file('index.js')]);
  }

  private patch(m: ToolsModule): ToolsModule {
    const base = m?.StructuredTool?.prototype;
    if (!base || typeof base.call !== 'function') return m;
    for (const cls of [m.DynamicTool, m.DynamicStructuredTool]) if (cls?.prototype) this.wrapBody(cls.prototype);
    if (isWrapped(base.call)) this._unwrap(base, 'call');
    const instrumentation = this;
    this._wrap(base, 'call', (original) =>
      function call(this: StructuredToolLike, ...args: unknown[]) {
        // a subclass seen for the first time: wrap the `_call` it defines
        const owner = ownerOf(Object.getPrototypeOf(this), '_call') as StructuredToolLike | undefined;
        if (owner && !isWrapped(owner._call)) instrumentation.wrapBody(owner);
        return (original as (...a: unknown[]) => Promise<unknown>).apply(this, args);
      },
    );
    return m;
  }

  private unpatch(m: ToolsModule): void {
    const base = m?.StructuredTool?.prototype;
    if (base && isWrapped(base.call)) this._unwrap(base, 'call');
    for (const proto of this.patched) if (isWrapped(proto._call)) this._unwrap(proto, '_call');
    this.patched.clear();
  }

  private wrapBody(proto: StructuredToolLike): void {
    if (typeof proto._call !== 'function' || isWrapped(proto._call)) return;
    const running = this.running;
    this._wrap(proto, '_call', (original) =>
      function _call(this: StructuredToolLike, arg: unknown, runManager?: unknown, parentConfig?: ToolCallConfig) {
        const tool = this;
        const body = () => (original as StructuredToolLike['_call']).call(tool, arg, runManager, parentConfig);
        if (running.getStore() === tool) return body();
        const request = {
          name: tool.name,
          args: arg,
          ...(parentConfig?.toolCall?.id ? { toolCallId: parentConfig.toolCall.id } : {}),
          ...(typeof tool.description === 'string' ? { description: tool.description } : {}),
        };
        return runToolCall(request, () => running.run(tool, body));
      },
    );
    this.patched.add(proto);
  }
}
