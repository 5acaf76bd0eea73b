import { z } from 'zod';
import type { TokenClaims } from './claims';
import { maxTtlFor, roleRank, type TokenServiceConfig } from './config';
import { REFUSAL, refuse } from './errors';
import { boundInstanceId, instanceBelongsTo, instanceOwner } from './instance';
import type { AgentRecord } from './registry';
import { idString, optionalId, parseBody, toolList, ttlField } from './request';

/** POST /issue body (README "Tokens and agent registration"). */
export const issueRequestSchema = z.object({
  tool: optionalId,
  tools: toolList.optional(),
  sponsor_id: optionalId,
  agent_instance_id: optionalId,
  parent_agent_id: optionalId,
  role: optionalId,
  purpose: idString.pipe(z.string().max(1024)).optional(),
  ttl: ttlField.optional(),
});
export type IssueRequest = z.infer<typeof issueRequestSchema>;

export const parseIssueRequest = (body: unknown): IssueRequest => parseBody(issueRequestSchema, body);

/** Who asks: anyone (open mode, the body is trusted) or a registered agent proven by its credential. */
export type Requester = { kind: 'open' } | { kind: 'agent'; agent: AgentRecord };

export interface IssueContext {
  config: TokenServiceConfig;
  requester: Requester;
  /** Epoch ms. */
  now: number;
  newId: () => string;
  isSponsorOffboarded?: (sponsorId: string) => boolean;
}

/**
 * Decides an issuance: the claims of the token to sign, or a refusal. Pure but for `newId`.
 * A registered agent's sponsor, role, tools and maximum TTL come from its registration; the body may
 * only narrow them. A TTL above a maximum is refused, never shortened. Identity is issued, not
 * claimed: an issued token is a root token (parent_agent_id null; a parent comes only from token
 * exchange), and a registered agent's instance ids lie in its own namespace (instance.ts).
 */
export function decideIssue(req: IssueRequest, ctx: IssueContext): TokenClaims {
  const { config, requester } = ctx;
  if (!req.tool) throw refuse(REFUSAL.INVALID_REQUEST, "field 'tool' is required");
  if (req.parent_agent_id !== undefined) {
    throw refuse(
      REFUSAL.PARENT_REQUIRES_EXCHANGE,
      "field 'parent_agent_id' is not accepted: a sub-agent's token comes from exchanging its parent's token (POST /token, RFC 8693)",
    );
  }
  const instance = issuedInstance(req, requester, ctx.newId);
  const tools = [...new Set([req.tool, ...(req.tools ?? [])])];
  const unsupported = tools.filter((t) => !config.supported_tools.includes(t));
  if (unsupported.length) {
    throw refuse(REFUSAL.TOOL_NOT_SUPPORTED, `tool '${unsupported[0]}' is not supported (supported: ${config.supported_tools.join(', ')})`);
  }

  let sponsor: string | undefined;
  let role: string | undefined;
  let ceiling: number;
  if (requester.kind === 'agent') {
    const agent = requester.agent;
    const notRegistered = tools.filter((t) => !agent.tools.includes(t));
    if (notRegistered.length) {
      throw refuse(REFUSAL.TOOL_NOT_ALLOWED, `agent ${agent.agent_id} is not registered for tool '${notRegistered[0]}' (registered: ${agent.tools.join(', ')})`, 403);
    }
    if (req.sponsor_id !== undefined && req.sponsor_id !== agent.sponsor_id) {
      throw refuse(REFUSAL.SPONSOR_MISMATCH, `agent ${agent.agent_id} is sponsored by '${agent.sponsor_id}', not '${req.sponsor_id}'`, 403);
    }
    sponsor = agent.sponsor_id;
    role = agent.role;
    const registered = roleRank(config.roleOrder, agent.role);
    if (registered === undefined) {
      throw refuse(REFUSAL.ROLE_NOT_SUPPORTED, `agent ${agent.agent_id}'s role '${agent.role}' is no longer one of ${config.roleOrder.join(', ')}`, 403);
    }
    if (req.role !== undefined && req.role !== agent.role) {
      const asked = roleRank(config.roleOrder, req.role);
      if (asked === undefined) throw refuse(REFUSAL.ROLE_NOT_SUPPORTED, `role '${req.role}' is not one of ${config.roleOrder.join(', ')}`);
      if (asked > registered) {
        throw refuse(REFUSAL.ROLE_NOT_ALLOWED, `agent ${agent.agent_id} is registered with role '${agent.role}', below '${req.role}'`, 403);
      }
      role = req.role;
    }
    ceiling = Math.min(maxTtlFor(config, role), agent.max_ttl_seconds);
  } else {
    sponsor = req.sponsor_id;
    role = req.role ?? config.default_role;
    if (role !== undefined && roleRank(config.roleOrder, role) === undefined) {
      throw refuse(REFUSAL.ROLE_NOT_SUPPORTED, `role '${role}' is not one of ${config.roleOrder.join(', ')}`);
    }
    ceiling = maxTtlFor(config, role);
  }
  if (sponsor === undefined && config.require_sponsor) {
    throw refuse(REFUSAL.SPONSOR_REQUIRED, 'sponsor_id is required: every token names the human who authorized it');
  }
  if (sponsor !== undefined && ctx.isSponsorOffboarded?.(sponsor)) {
    throw refuse(REFUSAL.SPONSOR_OFFBOARDED, `sponsor '${sponsor}' has been offboarded`, 403);
  }

  if (req.ttl !== undefined && req.ttl > ceiling) {
    const whose = requester.kind === 'agent' ? ` for agent ${requester.agent.agent_id}` : role !== undefined ? ` for role '${role}'` : '';
    throw refuse(REFUSAL.TTL_TOO_LONG, `ttl ${req.ttl} s is above the maximum${whose} (${ceiling} s)`);
  }
  const ttl = req.ttl ?? Math.min(config.default_ttl_seconds, ceiling);
  const iat = Math.floor(ctx.now / 1000);
  return {
    iss: config.issuer,
    sub: instance,
    aud: req.tool,
    iat,
    nbf: iat,
    exp: iat + ttl,
    jti: ctx.newId(),
    ...(sponsor !== undefined ? { sponsor_id: sponsor } : {}),
    agent_instance_id: instance,
    parent_agent_id: null,
    tool: req.tool,
    tools,
    ...(role !== undefined ? { role } : {}),
    ...(req.purpose ? { purpose: req.purpose } : {}),
    ttl_seconds: ttl,
    depth: 0,
    ...(requester.kind === 'agent' ? { agent_id: requester.agent.agent_id, credential_id: requester.agent.credential_id } : {}),
  };
}

/**
 * The instance the token is for: a registered agent's must be in its namespace (generated there
 * when the body names none); in open mode any id but one inside a registered agent's namespace.
 */
function issuedInstance(req: IssueRequest, requester: Requester, newId: () => string): string {
  const asked = req.agent_instance_id;
  if (requester.kind === 'agent') {
    const agentId = requester.agent.agent_id;
    if (asked === undefined) return boundInstanceId(agentId, newId());
    if (!instanceBelongsTo(agentId, asked)) {
      throw refuse(
        REFUSAL.INSTANCE_NOT_BOUND,
        `agent ${agentId} may name only its own instances ('${agentId}' or '${agentId}:<name>'), not '${asked}'`,
        403,
      );
    }
    return asked;
  }
  const owner = asked !== undefined ? instanceOwner(asked) : undefined;
  if (owner !== undefined) {
    throw refuse(REFUSAL.INSTANCE_NOT_BOUND, `instance '${asked}' belongs to registered agent ${owner}: ask with its credential`, 403);
  }
  return asked ?? newId();
}
