import { randomUUID } from 'node:crypto';
import { readEnv, type EnvSource } from '../common/env';
import { DEFAULTS, ENV } from '../common/names';
import { boundInstanceId, credentialAgentId, isAgentId } from '../identity/instance';

/**
 * Who an agent instance is, as the enforcer and the token service need it. Read once from the
 * CUSTODY_* environment for the process (the root agent); sub-agents derive theirs (subagent.ts).
 */
export interface AgentIdentity {
  sponsorId?: string;
  agentInstanceId: string;
  parentAgentId?: string;
  role?: string;
  agentName?: string;
  /** Registered agents: sponsor and role then come from the registration. */
  credential?: string;
  /** A parent's token this instance exchanges for its own per-tool tokens. */
  delegationToken?: string;
  /**
   * Why the parent that started this instance could not give it a delegation token: then it
   * cannot prove its place in the chain, and must not act on a token of its own (which would
   * be wider than its parent's delegation), so its gated calls fail closed.
   */
  delegationUnavailable?: string;
}

/** Agent-side settings other than identity. */
export interface AgentSettings {
  /** Control API base URL. */
  url: string;
  /** Token service (CUSTODY_TOKEN_URL, else url). */
  tokenUrl: string;
  /** Policy plane (CUSTODY_POLICY_URL, else url). */
  policyUrl: string;
  captureContent: boolean;
  /** Inline JSON or a file path (see mapping.ts). */
  toolMap?: string;
  /** Tools a root agent hands its sub-agents; undefined: every tool it may call. */
  delegateTools?: string[];
  /** Whether node child processes are started with custody/register preloaded. */
  propagateRegister: boolean;
  /** Origins that outgoing HTTP from a tool call sends baggage and the call's token to (CUSTODY_TOOL_ORIGINS). */
  toolOrigins: readonly string[];
}

type Env = EnvSource;

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v ? v : undefined;
}

/** Truthy switch values: 1, true, yes, on (case-insensitive). */
export function flag(raw: string | undefined, fallback: boolean): boolean {
  if (raw === undefined || raw.trim() === '') return fallback;
  return /^(1|true|yes|on)$/i.test(raw.trim());
}

/**
 * The process's identity; a fresh agent_instance_id when CUSTODY_AGENT_INSTANCE_ID is unset. A
 * registered agent (credential, no delegation token) is a root instance in its own namespace
 * (`<agent_id>:<name>`, the only instances the token service issues it tokens for), and a parent
 * it did not get through a delegation token is not its to claim.
 */
export function readIdentity(env: Env, newId: () => string = randomUUID): AgentIdentity {
  const identity: AgentIdentity = { agentInstanceId: value(env, ENV.AGENT_INSTANCE_ID) ?? newId() };
  const set = (key: keyof AgentIdentity, name: string): void => {
    const v = value(env, name);
    if (v !== undefined) identity[key] = v;
  };
  set('sponsorId', ENV.SPONSOR_ID);
  set('parentAgentId', ENV.PARENT_AGENT_ID);
  set('role', ENV.ROLE);
  set('agentName', ENV.AGENT_NAME);
  set('credential', ENV.AGENT_CREDENTIAL);
  set('delegationToken', ENV.DELEGATION_TOKEN);
  if (!identity.delegationToken) set('delegationUnavailable', ENV.DELEGATION_UNAVAILABLE);
  if (identity.delegationToken) {
    // a registered agent's delegate is one of its instances too
    const owner = delegatedAgentId(identity.delegationToken);
    if (owner) identity.agentInstanceId = boundInstanceId(owner, identity.agentInstanceId);
  } else if (identity.credential) {
    const agentId = credentialAgentId(identity.credential);
    if (agentId) {
      identity.agentInstanceId = boundInstanceId(agentId, identity.agentInstanceId);
      delete identity.parentAgentId;
    }
  }
  return identity;
}

/** The registered agent a delegation token was issued under (claim agent_id), read without verifying: the token service verifies it. */
function delegatedAgentId(token: string): string | undefined {
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { agent_id?: unknown };
    return typeof claims.agent_id === 'string' && isAgentId(claims.agent_id) ? claims.agent_id : undefined;
  } catch {
    return undefined;
  }
}

/** `env`: the environment as the agent's edge (register, the manual API's first call) read it. */
export function readSettings(env: Env): AgentSettings {
  const tools = value(env, ENV.DELEGATE_TOOLS)
    ?.split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  const url = (value(env, ENV.URL) ?? DEFAULTS.URL).replace(/\/+$/, '');
  const settings: AgentSettings = {
    url,
    tokenUrl: (value(env, ENV.TOKEN_URL) ?? url).replace(/\/+$/, ''),
    policyUrl: (value(env, ENV.POLICY_URL) ?? url).replace(/\/+$/, ''),
    captureContent: flag(env[ENV.CAPTURE_CONTENT], false),
    propagateRegister: flag(env[ENV.PROPAGATE_REGISTER], true),
    // a bad origin stops the agent's start (ConfigError naming the variable): tokens must not go astray
    toolOrigins: readEnv(env, [ENV.TOOL_ORIGINS])[ENV.TOOL_ORIGINS] ?? [],
  };
  const toolMap = value(env, ENV.TOOL_MAP);
  if (toolMap !== undefined) settings.toolMap = toolMap;
  if (tools?.length) settings.delegateTools = tools;
  return settings;
}
