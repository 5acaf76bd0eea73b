import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, HttpError } from '../common/errors';
import { maxTtlFor, roleRank, type TokenServiceConfig } from './config';
import { REFUSAL, refuse } from './errors';
import { optionalId, parseBody, toolList, ttlField } from './request';
import { indexRevocations, revocationSchema, type Revocation, type RevocationIndex } from './revocation';

/** A registered agent as the admin API shows it: never the credential, never its hash. */
export interface AgentRecord {
  agent_id: string;
  name: string;
  sponsor_id: string;
  role: string;
  tools: string[];
  max_ttl_seconds: number;
  status: 'active' | 'revoked';
  /** Epoch ms. */
  created_at: number;
  created_by: string;
  credential_issued_at: number;
  /** Names the current credential in the tokens issued with it (claim credential_id), never reveals it. */
  credential_id: string;
  revoked_at?: number;
  revoked_reason?: string;
}

interface StoredAgent extends Omit<AgentRecord, 'credential_id'> {
  /** SHA-256 (hex) of the credential's secret part. */
  credential_hash: string;
}

interface StoredRegistry {
  version: 1;
  agents: StoredAgent[];
  offboarded_sponsors: Record<string, { at: number; reason: string }>;
  /** Every offboarding and revocation, oldest first (the revocation feed); kept after a reinstatement. */
  revocations?: Revocation[];
}

/** The credential is shown once, at registration or rotation: `cag.<agent_id>.<secret>`. */
export interface IssuedCredential {
  agent: AgentRecord;
  credential: string;
}

export const registerAgentSchema = z.object({
  sponsor_id: optionalId,
  name: optionalId,
  role: optionalId,
  tools: toolList.optional(),
  max_ttl_seconds: ttlField.optional(),
});
export type RegisterAgentInput = z.infer<typeof registerAgentSchema>;

export interface AgentRegistry {
  /** Where it is kept; undefined when in memory only. */
  readonly file: string | undefined;
  register(input: unknown, actor?: string): Promise<IssuedCredential>;
  /** The active agent this credential proves, or a 401 refusal. */
  authenticate(credential: string): AgentRecord;
  get(agentId: string): AgentRecord | undefined;
  list(filter?: { sponsor_id?: string; status?: 'active' | 'revoked' }): AgentRecord[];
  /** A new credential; the old one stops working at once. */
  rotate(agentId: string): Promise<IssuedCredential>;
  revoke(agentId: string, reason?: string): Promise<AgentRecord>;
  /** The sponsor leaves: every agent they sponsor is revoked, and no new one may be registered or issued for them. */
  offboardSponsor(sponsorId: string, reason?: string): Promise<{ sponsor_id: string; revoked: AgentRecord[] }>;
  reinstateSponsor(sponsorId: string): Promise<void>;
  isSponsorOffboarded(sponsorId: string): boolean;
  isAgentActive(agentId: string): boolean;
  /** The revocations, indexed; the same object until the next change. */
  revocations(): RevocationIndex;
  /** The list as stored, oldest first. */
  revocationList(): readonly Revocation[];
}

export interface RegistryOptions {
  config: TokenServiceConfig;
  /** JSON file the registry persists to (written atomically); omitted: memory only. */
  file?: string;
  now?: () => number;
}

const CREDENTIAL_PREFIX = 'cag';
const hashSecret = (secret: string) => crypto.createHash('sha256').update(secret).digest('hex');

/** A stable, non-secret name for a credential: derived from its hash, so nothing new is stored. */
const credentialIdOf = (credentialHash: string) => crypto.createHash('sha256').update(`credential-id:${credentialHash}`).digest('hex').slice(0, 16);

function publicRecord(a: StoredAgent): AgentRecord {
  const { credential_hash: hash, ...rest } = a;
  return { ...structuredClone(rest), credential_id: credentialIdOf(hash) };
}

async function writeAtomically(file: string, data: string): Promise<void> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  const fh = await fs.promises.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
}

const storedSchema = z.object({
  version: z.literal(1),
  agents: z.array(
    z.object({
      agent_id: z.string(),
      name: z.string(),
      sponsor_id: z.string(),
      role: z.string(),
      tools: z.array(z.string()),
      max_ttl_seconds: z.number(),
      status: z.enum(['active', 'revoked']),
      created_at: z.number(),
      created_by: z.string(),
      credential_issued_at: z.number(),
      revoked_at: z.number().optional(),
      revoked_reason: z.string().optional(),
      credential_hash: z.string().regex(/^[0-9a-f]{64}$/),
    }),
  ),
  offboarded_sponsors: z.record(z.string(), z.object({ at: z.number(), reason: z.string() })),
  revocations: z.array(revocationSchema).optional(),
});

function readStored(file: string): StoredRegistry {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, agents: [], offboarded_sponsors: {} };
    throw new ConfigError(`${file}: cannot read the agent registry: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${file}: the agent registry is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  const parsed = storedSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(`${file}: the agent registry is damaged at '${issue.path.join('.')}': ${issue.message}`);
  }
  // the validated JSON itself: zod would rebuild records by assignment, losing a `__proto__` key
  return json as StoredRegistry;
}

/**
 * Registered agents and their credentials (only hashes are kept), persisted as one JSON file under
 * the data directory. Writes are serialized and atomic (temp file + rename).
 */
export function openAgentRegistry(options: RegistryOptions): AgentRegistry {
  const { config, file } = options;
  const now = options.now ?? Date.now;
  const state: StoredRegistry = file ? readStored(file) : { version: 1, agents: [], offboarded_sponsors: {} };
  const byId = new Map(state.agents.map((a) => [a.agent_id, a]));
  // A Map, not an object: sponsor ids are user input ('__proto__').
  const offboarded = new Map(Object.entries(state.offboarded_sponsors));
  // A registry written before revocations were listed: what it says is revoked, as of when.
  const revocations: Revocation[] = state.revocations ?? [
    ...[...offboarded].map(([sponsor_id, o]): Revocation => ({ kind: 'sponsor', sponsor_id, revoked_at: o.at })),
    ...state.agents.filter((a) => a.status === 'revoked').map((a): Revocation => ({ kind: 'agent', agent_id: a.agent_id, revoked_at: a.revoked_at ?? 0 })),
  ];
  let index = indexRevocations(revocations);
  const revoked = (...entries: Revocation[]) => {
    revocations.push(...entries);
    index = indexRevocations(revocations);
  };
  let writing: Promise<void> = Promise.resolve();

  const persist = () => {
    if (!file) return Promise.resolve();
    const snapshot = JSON.stringify({ version: 1, agents: state.agents, offboarded_sponsors: Object.fromEntries(offboarded), revocations }, null, 2);
    writing = writing.catch(() => undefined).then(() => writeAtomically(file, snapshot));
    return writing;
  };
  const find = (agentId: string) => {
    const a = byId.get(agentId);
    if (!a) throw new HttpError(404, 'agent_not_found', `no agent '${agentId}'`);
    return a;
  };
  const newCredential = (agent: StoredAgent) => {
    const secret = crypto.randomBytes(32).toString('base64url');
    agent.credential_hash = hashSecret(secret);
    agent.credential_issued_at = now();
    return `${CREDENTIAL_PREFIX}.${agent.agent_id}.${secret}`;
  };

  return {
    file,
    async register(body, actor = 'admin') {
      const input = parseBody(registerAgentSchema, body);
      if (!input.sponsor_id) throw refuse(REFUSAL.SPONSOR_REQUIRED, 'sponsor_id is required: the human who answers for this agent');
      if (offboarded.has(input.sponsor_id)) {
        throw new HttpError(409, REFUSAL.SPONSOR_OFFBOARDED, `sponsor '${input.sponsor_id}' has been offboarded`);
      }
      if (!input.role) throw refuse(REFUSAL.INVALID_REQUEST, `field 'role' is required (one of ${config.roleOrder.join(', ')})`);
      if (roleRank(config.roleOrder, input.role) === undefined) {
        throw refuse(REFUSAL.ROLE_NOT_SUPPORTED, `role '${input.role}' is not one of ${config.roleOrder.join(', ')}`);
      }
      if (!input.tools?.length) throw refuse(REFUSAL.INVALID_REQUEST, "field 'tools' is required: the tools the agent may ask tokens for");
      const unsupported = input.tools.find((t) => !config.supported_tools.includes(t));
      if (unsupported) {
        throw refuse(REFUSAL.TOOL_NOT_SUPPORTED, `tool '${unsupported}' is not supported (supported: ${config.supported_tools.join(', ')})`);
      }
      const roleMax = maxTtlFor(config, input.role);
      if (input.max_ttl_seconds !== undefined && input.max_ttl_seconds > roleMax) {
        throw refuse(REFUSAL.TTL_TOO_LONG, `max_ttl_seconds ${input.max_ttl_seconds} is above the maximum for role '${input.role}' (${roleMax} s)`);
      }
      const agentId = `agt_${crypto.randomBytes(9).toString('base64url').replace(/[-_]/g, 'x')}`;
      const agent: StoredAgent = {
        agent_id: agentId,
        name: input.name || agentId,
        sponsor_id: input.sponsor_id,
        role: input.role,
        tools: input.tools,
        max_ttl_seconds: input.max_ttl_seconds ?? roleMax,
        status: 'active',
        created_at: now(),
        created_by: actor,
        credential_issued_at: 0,
        credential_hash: '',
      };
      const credential = newCredential(agent);
      state.agents.push(agent);
      byId.set(agentId, agent);
      await persist();
      return { agent: publicRecord(agent), credential };
    },
    authenticate(credential) {
      const parts = credential.split('.');
      const agent = parts.length === 3 && parts[0] === CREDENTIAL_PREFIX ? byId.get(parts[1]!) : undefined;
      const given = Buffer.from(hashSecret(parts[2] ?? ''), 'hex');
      const expected = Buffer.from(agent?.credential_hash || '0'.repeat(64), 'hex');
      const matches = crypto.timingSafeEqual(given, expected) && agent !== undefined;
      if (!matches) throw refuse(REFUSAL.INVALID_CREDENTIAL, 'the agent credential is not valid', 401);
      if (agent.status !== 'active') throw refuse(REFUSAL.INVALID_CREDENTIAL, `agent ${agent.agent_id} has been revoked`, 401);
      return publicRecord(agent);
    },
    get: (agentId) => {
      const a = byId.get(agentId);
      return a ? publicRecord(a) : undefined;
    },
    list: (filter = {}) =>
      state.agents
        .filter((a) => (filter.sponsor_id === undefined || a.sponsor_id === filter.sponsor_id) && (filter.status === undefined || a.status === filter.status))
        .map(publicRecord),
    async rotate(agentId) {
      const agent = find(agentId);
      if (agent.status !== 'active') throw new HttpError(409, 'agent_revoked', `agent ${agentId} has been revoked`);
      const old = credentialIdOf(agent.credential_hash);
      const credential = newCredential(agent);
      // the old credential's tokens go with it
      revoked({ kind: 'credential', agent_id: agentId, credential_id: old, revoked_at: agent.credential_issued_at });
      await persist();
      return { agent: publicRecord(agent), credential };
    },
    async revoke(agentId, reason = 'revoked') {
      const agent = find(agentId);
      if (agent.status === 'active') {
        agent.status = 'revoked';
        agent.revoked_at = now();
        agent.revoked_reason = reason;
        revoked({ kind: 'agent', agent_id: agentId, revoked_at: agent.revoked_at });
        await persist();
      }
      return publicRecord(agent);
    },
    async offboardSponsor(sponsorId, reason = 'sponsor offboarded') {
      const revokedAgents: AgentRecord[] = [];
      const at = now();
      offboarded.set(sponsorId, { at, reason });
      for (const agent of state.agents) {
        if (agent.sponsor_id !== sponsorId || agent.status !== 'active') continue;
        agent.status = 'revoked';
        agent.revoked_at = at;
        agent.revoked_reason = reason;
        revokedAgents.push(publicRecord(agent));
      }
      revoked({ kind: 'sponsor', sponsor_id: sponsorId, revoked_at: at }, ...revokedAgents.map((a): Revocation => ({ kind: 'agent', agent_id: a.agent_id, revoked_at: at })));
      await persist();
      return { sponsor_id: sponsorId, revoked: revokedAgents };
    },
    async reinstateSponsor(sponsorId) {
      if (!offboarded.delete(sponsorId)) return;
      await persist();
    },
    isSponsorOffboarded: (sponsorId) => offboarded.has(sponsorId),
    isAgentActive: (agentId) => byId.get(agentId)?.status === 'active',
    revocations: () => index,
    revocationList: () => revocations,
  };
}
