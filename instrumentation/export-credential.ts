import { onTokenObtained } from '../identity/client';
import type { AgentIdentity } from './identity';

/** Keep binding telemetry with a token this long past its expiry (the collector allows 300 s). */
const STALE_AFTER_EXPIRY_MS = 240_000;

/**
 * What custody/register sends as `Authorization: Bearer …` with its spans, so that the collector
 * can tell them from anyone else's: the latest custody token issued to this process's own agent
 * instance (it proves the sponsor and the instance, and the collector accepts its sub-agents'
 * spans under it), else the agent's registration credential, else the delegation token it was
 * started with. Nothing until one of them exists: the spans are then stored as unverified (open
 * mode) or refused (registered mode).
 */
export function exportCredential(identity: Pick<AgentIdentity, 'agentInstanceId' | 'credential' | 'delegationToken'>, now: () => number = Date.now): () => string | undefined {
  let latest: { token: string; expiresAt: number } | undefined;
  onTokenObtained((t) => {
    if (t.claims.agent_instance_id === identity.agentInstanceId && (!latest || t.expiresAt >= latest.expiresAt)) {
      latest = { token: t.token, expiresAt: t.expiresAt };
    }
  });
  return () => {
    if (latest && latest.expiresAt + STALE_AFTER_EXPIRY_MS > now()) return latest.token;
    return identity.credential ?? identity.delegationToken ?? latest?.token;
  };
}
