import { types as utilTypes } from 'node:util';
import { InstrumentationBase, InstrumentationNodeModuleDefinition, InstrumentationNodeModuleFile, isWrapped } from '@opentelemetry/instrumentation';
import { VERSION } from '../version';
import type { ToolModule, ToolOptions } from './internal-types';
import type { OpenAIAgentsInstrumentationConfig } from './types';
import { withWrappedExecute } from './utils';

const SUPPORTED = ['>=0.20.0 <1'];

/**
 * OpenAI Agents SDK (@openai/agents, which re-exports @openai/agents-core): function tools made
 * with `tool({ execute })` — including agents exposed as tools and MCP tools, which the SDK builds
 * the same way — run `execute` as enforced, audited tool calls. A refusal is thrown from `execute`
 * inside the SDK's invoke, so it takes the SDK's tool-error path (the error function's message
 * goes back to the model, or the run fails when the tool has none); the body never runs.
 */
export class OpenAIAgentsInstrumentation extends InstrumentationBase<OpenAIAgentsInstrumentationConfig> {
  constructor(config: OpenAIAgentsInstrumentationConfig = {}) {
    super('custody-instrumentation-openai-agents', VERSION, config);
  }

  protected init() {
    const file = (name: string) =>
      new InstrumentationNodeModuleFile(
        `@openai/agents-core/dist/${name}`,
        SUPPORTED,
        (m: ToolModule) => this.patch(m),
        (m: ToolModule) => this.unpatch(m),
      );
    return new InstrumentationNodeModuleDefinition('@openai/agents-core', SUPPORTED, undefined, undefined, [file('tool.js'), file('tool.mjs')]);
  }

  private patch(m: ToolModule): ToolModule {
    if (!m || typeof m.tool !== 'function') return m;
    if (isWrapped(m.tool)) this.unpatch(m);
    this._wrap(m, 'tool', (original) =>
      function tool(this: unknown, options: ToolOptions) {
        return (original as ToolModule['tool']).call(this, withWrappedExecute(options) ?? options);
      },
    );
    return m;
  }

  private unpatch(m: ToolModule): void {
    if (!m || !isWrapped(m.tool)) return;
    // an ESM namespace takes the original back as a plain write
    if (utilTypes.isProxy(m)) (m as { tool: unknown }).tool = (m.tool as unknown as { __original: unknown }).__original;
    else this._unwrap(m, 'tool');
  }
}
