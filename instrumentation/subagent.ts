import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type TextMapGetter,
} from '@opentelemetry/api';
import { W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { ATTR, BAGGAGE, ENV, PROPAGATION } from '../common/names';
import { boundInstanceId, instanceOwner } from '../identity/instance';
import { delegationToken, delegationTokenSync, undelegatedReason } from './delegation';
import type { AgentIdentity } from './identity';
import { getRuntime } from './runtime';
import { AgentScope, currentScope, rootScope, runInScope } from './scope';
import { errorType } from './tool-call';

/** What an agent instance knows about itself. */
export interface AgentInfo {
  agentInstanceId: string;
  parentAgentId?: string;
  sponsorId?: string;
  role?: string;
  agentName?: string;
}

export interface SubAgentOptions {
  /** gen_ai.agent.name of the sub-agent. */
  name?: string;
  /** Default: a new UUID. */
  agentInstanceId?: string;
  /** Recorded on every call the sub-agent makes (custody.purpose), unless a call states its own. */
  purpose?: string;
  /** Tools the sub-agent may use (a subset of the parent's); default: all of the parent's. */
  tools?: string[];
}

const INVOKE_AGENT = 'invoke_agent';

export function currentAgent(): AgentInfo {
  return info(currentScope().identity);
}

function info(id: Readonly<AgentIdentity>): AgentInfo {
  const out: AgentInfo = { agentInstanceId: id.agentInstanceId };
  if (id.parentAgentId) out.parentAgentId = id.parentAgentId;
  if (id.sponsorId) out.sponsorId = id.sponsorId;
  if (id.role) out.role = id.role;
  if (id.agentName) out.agentName = id.agentName;
  return out;
}

/**
 * Runs `fn` as a sub-agent of the current agent instance: a new agent_instance_id whose parent is
 * the current one, the same sponsor, and a token delegated by the parent (exchanged per tool by the
 * enforcer), so every call made inside `fn` — by any framework — is attributed to the sub-agent.
 * The run is an `invoke_agent {name}` span; the calls inside are its children.
 */
export async function startSubAgent<T>(fn: (agent: AgentInfo) => T | PromiseLike<T>): Promise<Awaited<T>>;
export async function startSubAgent<T>(options: string | SubAgentOptions, fn: (agent: AgentInfo) => T | PromiseLike<T>): Promise<Awaited<T>>;
export async function startSubAgent<T>(
  a: string | SubAgentOptions | ((agent: AgentInfo) => T | PromiseLike<T>),
  b?: (agent: AgentInfo) => T | PromiseLike<T>,
): Promise<Awaited<T>> {
  const fn = (typeof a === 'function' ? a : b)!;
  const options: SubAgentOptions = typeof a === 'string' ? { name: a } : typeof a === 'object' ? a : {};
  if (typeof fn !== 'function') throw new TypeError('startSubAgent: expected a function to run as the sub-agent');

  const parent = currentScope();
  const p = parent.identity;
  // a registered agent's sub-agents are instances in its namespace, as the token service requires
  const owner = instanceOwner(p.agentInstanceId);
  const local = options.agentInstanceId ?? randomUUID();
  const identity: AgentIdentity = { agentInstanceId: owner ? boundInstanceId(owner, local) : local, parentAgentId: p.agentInstanceId };
  if (p.sponsorId) identity.sponsorId = p.sponsorId;
  if (p.role) identity.role = p.role;
  const name = options.name ?? p.agentName;
  if (name) identity.agentName = name;
  const token = await delegationToken(parent, options.tools);
  if (token) identity.delegationToken = token;
  else {
    const why = undelegatedReason(p);
    if (why) identity.delegationUnavailable = why;
  }
  const scope = new AgentScope(identity, { purpose: options.purpose ?? parent.purpose, parent });

  const runtime = getRuntime();
  let ctx = context.active();
  if (ctx === ROOT_CONTEXT && runtime.rootContext) ctx = runtime.rootContext;
  const span = runtime.tracer.startSpan(
    name ? `${INVOKE_AGENT} ${name}` : INVOKE_AGENT,
    {
      kind: SpanKind.INTERNAL,
      attributes: {
        [ATTR.GEN_AI_OPERATION_NAME]: INVOKE_AGENT,
        [ATTR.GEN_AI_AGENT_ID]: identity.agentInstanceId,
        ...(name ? { [ATTR.GEN_AI_AGENT_NAME]: name } : {}),
        [ATTR.AGENT_INSTANCE_ID]: identity.agentInstanceId,
        [ATTR.PARENT_AGENT_ID]: p.agentInstanceId,
        ...(identity.sponsorId ? { [ATTR.SPONSOR_ID]: identity.sponsorId } : {}),
      },
    },
    ctx,
  );
  const runCtx = scope.withBaggage(propagation.setBaggage(ctx, propagation.getBaggage(ctx) ?? propagation.createBaggage()));
  try {
    const result = await runInScope(scope, () => context.with(trace.setSpan(runCtx, span), () => fn(info(identity))));
    span.setStatus({ code: SpanStatusCode.OK });
    return result;
  } catch (err) {
    span.setAttribute(ATTR.ERROR_TYPE, errorType(err));
    if (err instanceof Error) span.recordException(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    throw err;
  } finally {
    span.end();
  }
}

// ---- child processes ---------------------------------------------------------------------------

/** Identity variables a child must never inherit as they are (they name this instance, not the child's). */
const IDENTITY_KEYS = new Set<string>([
  ENV.SPONSOR_ID,
  ENV.AGENT_INSTANCE_ID,
  ENV.PARENT_AGENT_ID,
  ENV.ROLE,
  ENV.AGENT_CREDENTIAL,
  ENV.DELEGATION_TOKEN,
  ENV.AGENT_NAME,
  ENV.TRACEPARENT,
  ENV.TRACESTATE,
  ENV.BAGGAGE,
]);

const traceContextPropagator = new W3CTraceContextPropagator();
const baggagePropagator = new W3CBaggagePropagator();

/** W3C context of `ctx` as a carrier: traceparent, tracestate, baggage. Independent of the global propagator. */
export function w3cCarrier(ctx: Context): Record<string, string> {
  const carrier: Record<string, string> = {};
  traceContextPropagator.inject(ctx, carrier, defaultTextMapSetter);
  baggagePropagator.inject(ctx, carrier, defaultTextMapSetter);
  return carrier;
}

/** The context a W3C carrier describes (traceparent, tracestate, baggage). */
export function extractW3c(carrier: Record<string, unknown>, base: Context = ROOT_CONTEXT): Context {
  const getter = defaultTextMapGetter as TextMapGetter<Record<string, unknown>>;
  return baggagePropagator.extract(traceContextPropagator.extract(base, carrier, getter), carrier, getter);
}

/** The context TRACEPARENT / TRACESTATE / BAGGAGE hand down from a parent process, if any. */
export function contextFromEnv(env: Readonly<Record<string, string | undefined>>): Context | undefined {
  if (!env[ENV.TRACEPARENT] && !env[ENV.BAGGAGE]) return undefined;
  const carrier: Record<string, string> = {};
  if (env[ENV.TRACEPARENT]) carrier[PROPAGATION.TRACEPARENT] = env[ENV.TRACEPARENT]!;
  if (env[ENV.TRACESTATE]) carrier[PROPAGATION.TRACESTATE] = env[ENV.TRACESTATE]!;
  if (env[ENV.BAGGAGE]) carrier[PROPAGATION.BAGGAGE] = env[ENV.BAGGAGE]!;
  return extractW3c(carrier);
}

/** Configuration a child needs to reach the same custody, when the caller passes a reduced env. */
function isInheritedConfig(key: string): boolean {
  if (IDENTITY_KEYS.has(key)) return false;
  if (key.startsWith('CUSTODY_')) return true;
  return key.startsWith('OTEL_') && key !== 'OTEL_SERVICE_NAME' && key !== 'OTEL_RESOURCE_ATTRIBUTES';
}

let registerPath: string | null | undefined;
function registerScript(): string | null {
  if (registerPath !== undefined) return registerPath;
  // dist/instrumentation/register.js; from the TypeScript sources (tests), the built one
  for (const candidate of [path.join(__dirname, 'register.js'), path.join(__dirname, '..', 'dist', 'instrumentation', 'register.js')]) {
    if (fs.existsSync(candidate)) return (registerPath = candidate);
  }
  return (registerPath = null);
}

/**
 * The environment for a child process started by the current agent instance: the child is a
 * sub-agent (CUSTODY_PARENT_AGENT_ID = this instance, same sponsor, this instance's delegation
 * token), continues the trace (TRACEPARENT/TRACESTATE/BAGGAGE), reaches the same custody, and — for
 * node children — loads custody/register. Values the caller set explicitly (different from this
 * process's own) are kept.
 */
export function childEnv(base?: NodeJS.ProcessEnv | Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  const own = process.env;
  const given = base ?? own;
  const env: NodeJS.ProcessEnv = { ...given };
  const explicit = (key: string): boolean => given[key] !== undefined && given[key] !== own[key];
  const put = (key: string, value: string | undefined): void => {
    if (explicit(key)) return;
    if (value === undefined) delete env[key];
    else env[key] = value;
  };

  const scope = currentScope();
  const id = scope.identity;
  const runtime = getRuntime();

  if (base) for (const key of Object.keys(own)) if (env[key] === undefined && isInheritedConfig(key)) env[key] = own[key];

  put(ENV.AGENT_INSTANCE_ID, undefined); // the child is another instance
  put(ENV.PARENT_AGENT_ID, id.agentInstanceId);
  put(ENV.SPONSOR_ID, id.sponsorId);
  put(ENV.ROLE, id.role);
  let token: string | undefined;
  if (!explicit(ENV.DELEGATION_TOKEN)) {
    try {
      token = delegationTokenSync(scope);
    } catch (err) {
      diag.warn(`custody: no delegation token for a child process: ${(err as Error).message}`);
    }
  }
  put(ENV.DELEGATION_TOKEN, token);
  // the child acts through the delegation, not as this registered agent
  if (token) put(ENV.AGENT_CREDENTIAL, undefined);
  // a parent that has something to delegate but could not: the child must not act on a token of
  // its own (it would be wider than the delegation, and prove no parent)
  put(ENV.DELEGATION_UNAVAILABLE, token || explicit(ENV.DELEGATION_TOKEN) ? undefined : undelegatedReason(id));

  let ctx = context.active();
  if (ctx === ROOT_CONTEXT && runtime.rootContext) ctx = runtime.rootContext;
  const carrier = w3cCarrier(scope.withBaggage(ctx));
  put(ENV.TRACEPARENT, carrier[PROPAGATION.TRACEPARENT]);
  put(ENV.TRACESTATE, carrier[PROPAGATION.TRACESTATE]);
  put(ENV.BAGGAGE, carrier[PROPAGATION.BAGGAGE]);

  if (runtime.settings.propagateRegister) {
    const script = registerScript();
    const current = env.NODE_OPTIONS ?? '';
    if (script && !current.includes(script) && !/custody\/register/.test(current)) {
      const arg = /\s/.test(script) ? `--require "${script}"` : `--require ${script}`;
      env.NODE_OPTIONS = current ? `${current} ${arg}` : arg;
    }
  }
  return env;
}

// ---- remote callers (MCP _meta, HTTP headers) ----------------------------------------------------

/**
 * What to send to a remote tool server or sub-agent so it joins the trace and acts on this
 * instance's behalf: traceparent, tracestate, baggage (custody.sponsor_id, agent_instance_id, …)
 * and the delegation token, as HTTP headers.
 */
export async function propagationHeaders(): Promise<Record<string, string>> {
  const scope = currentScope();
  const runtime = getRuntime();
  let ctx = context.active();
  if (ctx === ROOT_CONTEXT && runtime.rootContext) ctx = runtime.rootContext;
  const headers = w3cCarrier(scope.withBaggage(ctx));
  const token = await delegationToken(scope);
  if (token) headers[PROPAGATION.HTTP_DELEGATION_TOKEN] = token;
  return headers;
}

const MAX_REMOTE_SCOPES = 1_000;
const remoteScopes = new Map<string, AgentScope>();

/**
 * The agent instance that serves a remote caller: this process's own when the caller is the agent
 * that started it, else one sub-agent instance per calling instance (its own audit chain).
 */
export function scopeForCaller(ctx: Context, delegation?: string): AgentScope | undefined {
  const baggage = propagation.getBaggage(ctx);
  const caller = baggage?.getEntry(BAGGAGE.AGENT_INSTANCE_ID)?.value;
  if (!caller) return undefined;
  const root = rootScope();
  if (caller === root.identity.agentInstanceId) return root;
  if (caller === root.identity.parentAgentId && (!delegation || delegation === root.identity.delegationToken)) return root;
  const key = `${caller}\u0000${delegation ?? ''}`;
  let scope = remoteScopes.get(key);
  if (scope === undefined) {
    const sponsor = baggage.getEntry(BAGGAGE.SPONSOR_ID)?.value ?? root.identity.sponsorId;
    const identity: AgentIdentity = {
      // the agent that started this process keeps talking to the same instance
      agentInstanceId: caller === root.identity.parentAgentId ? root.identity.agentInstanceId : randomUUID(),
      parentAgentId: caller,
    };
    if (sponsor) identity.sponsorId = sponsor;
    if (root.identity.role) identity.role = root.identity.role;
    if (root.identity.agentName) identity.agentName = root.identity.agentName;
    if (delegation) identity.delegationToken = delegation;
    scope = caller === root.identity.parentAgentId ? root.sharing(identity) : new AgentScope(identity, { parent: undefined });
    if (remoteScopes.size >= MAX_REMOTE_SCOPES) remoteScopes.delete(remoteScopes.keys().next().value!);
    remoteScopes.set(key, scope);
  }
  return scope;
}

/**
 * Runs `fn` as the handler of a remote caller's request: in the caller's trace, with its baggage,
 * as the agent instance that serves it (scopeForCaller). `carrier` holds traceparent, tracestate,
 * baggage and optionally the delegation token (HTTP header or MCP _meta key).
 */
export function runAsRemoteCallee<T>(carrier: Record<string, unknown>, fn: (ctx: Context) => T): T {
  const ctx = extractW3c(carrier, context.active());
  const raw = carrier[PROPAGATION.HTTP_DELEGATION_TOKEN] ?? carrier[PROPAGATION.MCP_DELEGATION_TOKEN];
  const scope = scopeForCaller(ctx, typeof raw === 'string' && raw ? raw : undefined);
  if (!scope) return context.with(ctx, () => fn(ctx));
  const scoped = scope.withBaggage(ctx);
  return runInScope(scope, () => context.with(scoped, () => fn(scoped)));
}
