/**
 * Agent instance ids of registered agents are bound to the agent: `<agent_id>` itself or
 * `<agent_id>:<anything>`. The token service issues tokens for a registered agent only inside its
 * own namespace, and nobody else (open mode included) may name an instance inside one, so an
 * instance id alone says which registration answers for it. Pure: no imports, so the agent-side
 * register hook can use it before anything else loads.
 */

/** `agt_` + letters and digits: the ids the registry hands out. */
const AGENT_ID = /^agt_[A-Za-z0-9]+$/;
const NAMESPACED = /^(agt_[A-Za-z0-9]+)(?::|$)/;
export const INSTANCE_SEPARATOR = ':';

export const isAgentId = (s: string): boolean => AGENT_ID.test(s);

/** The registered agent whose namespace holds this instance id, if any. */
export function instanceOwner(instance: string): string | undefined {
  return NAMESPACED.exec(instance)?.[1];
}

/** True when the instance id is the agent's own or one under `<agent_id>:`. */
export function instanceBelongsTo(agentId: string, instance: string): boolean {
  return instance === agentId || instance.startsWith(`${agentId}${INSTANCE_SEPARATOR}`);
}

/** The agent's instance id for a local name: `name` when already bound to the agent, else `<agent_id>:<name>`. */
export function boundInstanceId(agentId: string, name: string): string {
  return instanceBelongsTo(agentId, name) ? name : `${agentId}${INSTANCE_SEPARATOR}${name}`;
}

/** The agent id a credential (`cag.<agent_id>.<secret>`) names; undefined when it is not one. */
export function credentialAgentId(credential: string): string | undefined {
  const parts = credential.split('.');
  return parts.length === 3 && parts[0] === 'cag' && isAgentId(parts[1]!) ? parts[1] : undefined;
}
