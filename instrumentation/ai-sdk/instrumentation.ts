import { types as utilTypes } from 'node:util';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, isWrapped } from '@opentelemetry/instrumentation';
import { VERSION } from '../version';
import type { AiModule, CallOptions, GenerateFn, ToolLoopAgentLike } from './internal-types';
import type { AiSdkInstrumentationConfig } from './types';
import { withWrappedTools } from './utils';

const SUPPORTED = ['>=6.0.0 <7'];
const ENTRY_POINTS = ['generateText', 'streamText'] as const;

/**
 * Vercel AI SDK (`ai` 6.x): the tools given to `generateText` / `streamText` — and to a
 * `ToolLoopAgent`, which calls them internally — run their `execute` as enforced, audited tool
 * calls. A refusal is thrown from `execute`, which the SDK turns into a `tool-error` result for the
 * model; the tool body never runs. The caller's tool objects are not modified.
 */
export class AiSdkInstrumentation extends InstrumentationBase<AiSdkInstrumentationConfig> {
  constructor(config: AiSdkInstrumentationConfig = {}) {
    super('custody-instrumentation-ai-sdk', VERSION, config);
  }

  protected init() {
    return new InstrumentationNodeModuleDefinition(
      'ai',
      SUPPORTED,
      (m: AiModule) => this.patch(m),
      (m: AiModule) => this.unpatch(m),
    );
  }

  private patch(m: AiModule): AiModule {
    if (!m || typeof m.generateText !== 'function') return m;
    // The CommonJS build exports read-only getters: hand out a writable copy instead (the require
    // hook caches what patch returns). The ESM namespace (import-in-the-middle) takes writes.
    const target = utilTypes.isProxy(m) || writable(m, 'generateText') ? m : writableCopy(m);
    for (const name of ENTRY_POINTS) {
      if (typeof target[name] !== 'function') continue;
      if (isWrapped(target[name])) this._unwrap(target, name);
      this._wrap(target, name, (original) =>
        function (this: unknown, options: CallOptions, ...rest: unknown[]) {
          return (original as (...a: unknown[]) => unknown).call(this, withWrappedTools(options), ...rest);
        } as GenerateFn,
      );
    }
    const agent = target.ToolLoopAgent?.prototype;
    if (agent && typeof agent.prepareCall === 'function') {
      if (isWrapped(agent.prepareCall)) this._unwrap(agent, 'prepareCall');
      this._wrap(agent, 'prepareCall', (original) =>
        async function prepareCall(this: ToolLoopAgentLike, options: unknown) {
          return withWrappedTools(await (original as ToolLoopAgentLike['prepareCall']).call(this, options));
        },
      );
    }
    return target;
  }

  private unpatch(m: AiModule): void {
    for (const name of ENTRY_POINTS) {
      if (!isWrapped(m?.[name])) continue;
      // an ESM namespace takes the original back as a plain write
      if (utilTypes.isProxy(m)) m[name] = (m[name] as unknown as { __original: GenerateFn }).__original;
      else this._unwrap(m, name);
    }
    const agent = m?.ToolLoopAgent?.prototype;
    if (agent && isWrapped(agent.prepareCall)) this._unwrap(agent, 'prepareCall');
  }
}

function writable(obj: object, key: string): boolean {
  const d = Object.getOwnPropertyDescriptor(obj, key);
  return !d || d.configurable === true || d.writable === true;
}

function writableCopy(m: AiModule): AiModule {
  const copy = {} as AiModule;
  for (const key of Object.keys(m)) {
    Object.defineProperty(copy, key, { value: m[key], enumerable: true, writable: true, configurable: true });
  }
  Object.defineProperty(copy, '__esModule', { value: true });
  return copy;
}
