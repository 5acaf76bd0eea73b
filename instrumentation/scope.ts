import { AsyncLocalStorage } from 'node:async_hooks';
import { propagation, type Baggage, type Context } from '@opentelemetry/api';
import { AuditChain } from '../common/audit-chain';
import { BAGGAGE } from '../common/names';
import { readIdentity, type AgentIdentity } from './identity';

/**
 * An agent instance as the calls made inside it see it: the identity the enforcer is asked with,
 * its audit hash chain (custody.audit.seq / prev_hash are numbered per instance) and the W3C
 * baggage entries that carry the sponsor downstream. The process is the root agent; sub-agents
 * (in-process, or remote callers of an MCP server) get scopes of their own.
 */
export class AgentScope {
  /** Replaced, never mutated, when the sponsor and role are learned from a token (sponsor.ts). */
  identity: Readonly<AgentIdentity>;
  readonly chain: AuditChain;
  readonly purpose: string | undefined;
  readonly parent: AgentScope | undefined;
  /** What this instance hands its own sub-agents (subagent.ts), once obtained. */
  delegation: DelegationState | undefined;
  /** Learning the sponsor of a registered or delegated agent (sponsor.ts), once. */
  learning: Promise<void> | undefined;
  learnFailedAt: number | undefined;
  private entries: [string, string][] = [];
  private lastIn: Baggage | undefined;
  private lastOut: Baggage | undefined;
  private own!: Baggage;

  constructor(
    identity: AgentIdentity,
    options: { purpose?: string | undefined; parent?: AgentScope | undefined; chain?: AuditChain } = {},
  ) {
    this.identity = Object.freeze({ ...identity });
    this.chain = options.chain ?? new AuditChain();
    this.purpose = options.purpose;
    this.parent = options.parent;
    this.rebuildBaggage();
  }

  /** Adds what a token says about this instance (a registered agent's sponsor and role). */
  learn(details: Pick<AgentIdentity, 'sponsorId' | 'role'>): void {
    const next: AgentIdentity = { ...this.identity };
    if (details.sponsorId && !next.sponsorId) next.sponsorId = details.sponsorId;
    if (details.role && !next.role) next.role = details.role;
    this.identity = Object.freeze(next);
    this.rebuildBaggage();
  }

  private rebuildBaggage(): void {
    const id = this.identity;
    this.entries = [];
    if (id.sponsorId) this.entries.push([BAGGAGE.SPONSOR_ID, id.sponsorId]);
    this.entries.push([BAGGAGE.AGENT_INSTANCE_ID, id.agentInstanceId]);
    if (id.parentAgentId) this.entries.push([BAGGAGE.PARENT_AGENT_ID, id.parentAgentId]);
    this.own = propagation.createBaggage(Object.fromEntries(this.entries.map(([k, v]) => [k, { value: v }])));
    this.lastIn = this.lastOut = undefined;
  }

  /**
   * The same agent instance (same id, same audit chain) acting under another identity detail, such
   * as a fresh delegation token from the agent that started it.
   */
  sharing(identity: AgentIdentity): AgentScope {
    return new AgentScope({ ...identity, agentInstanceId: this.identity.agentInstanceId }, { purpose: this.purpose, parent: this.parent, chain: this.chain });
  }

  /** `ctx` with this instance's custody.* baggage entries set (other entries kept). */
  withBaggage(ctx: Context): Context {
    const existing = propagation.getBaggage(ctx);
    if (!existing) return propagation.setBaggage(ctx, this.own);
    if (existing === this.lastOut || existing === this.own) return ctx;
    if (existing !== this.lastIn) {
      let merged = existing;
      // a remote caller's custody entries are replaced, not merged: this instance speaks for itself
      if (!this.identity.parentAgentId) merged = merged.removeEntry(BAGGAGE.PARENT_AGENT_ID);
      for (const [k, v] of this.entries) merged = merged.setEntry(k, { value: v });
      this.lastIn = existing;
      this.lastOut = merged;
    }
    return propagation.setBaggage(ctx, this.lastOut!);
  }
}

/** The token a scope hands its sub-agents, obtained by /issue (root) or exchange (sub-agent). */
export interface DelegationState {
  token?: string;
  /** epoch ms */
  expiresAt?: number;
  pending?: Promise<string | undefined>;
  /** epoch ms of the last failure: not asked again for a while */
  failedAt?: number;
  /** How long "a while" is after that failure (default: delegation.ts RETRY_AFTER_MS). */
  retryAfterMs?: number;
}

interface ScopeGlobals {
  storage: AsyncLocalStorage<AgentScope>;
  root: AgentScope | undefined;
}

// One store per process even if two copies of custody are loaded (ESM and CJS, or nested installs).
const KEY = Symbol.for('custody.instrumentation.scope');
const globals: ScopeGlobals = ((globalThis as Record<symbol, unknown>)[KEY] as ScopeGlobals | undefined) ??
  ((globalThis as Record<symbol, unknown>)[KEY] = { storage: new AsyncLocalStorage<AgentScope>(), root: undefined });

/** The process's own agent instance, from the CUSTODY_* environment, read once on first use. */
export function rootScope(): AgentScope {
  return (globals.root ??= new AgentScope(readIdentity(process.env)));
}

/** Replaces the root scope (register.ts at start, tests). */
export function setRootScope(scope: AgentScope): void {
  globals.root = scope;
}

/** The agent instance the current async context runs as. */
export function currentScope(): AgentScope {
  return globals.storage.getStore() ?? rootScope();
}

export function runInScope<T>(scope: AgentScope, fn: () => T): T {
  return globals.storage.run(scope, fn);
}
