import { z } from 'zod';
import type { ActorClaim, TokenClaims } from './claims';
import { maxTtlFor, roleRank, type TokenServiceConfig } from './config';
import { REFUSAL, refuse } from './errors';
import { boundInstanceId, instanceBelongsTo, instanceOwner } from './instance';
import { idString, optionalId, parseBody, toolList, ttlField } from './request';

/** RFC 8693 identifiers. */
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const ACCEPTED_TYPES = [JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE];

/** POST /token body: RFC 8693 §2.1 parameters, plus custody's agent_instance_id, purpose, ttl, role. */
export const exchangeRequestSchema = z.object({
  grant_type: optionalId,
  subject_token: z.string().max(16_384, 'is too long').optional(),
  subject_token_type: optionalId,
  requested_token_type: optionalId,
  /** The tool the new token is for; must be among the subject's `tools`. */
  audience: optionalId,
  /** Space-separated tools the new token may in turn be exchanged for; a subset of the subject's. */
  scope: toolList.optional(),
  agent_instance_id: optionalId,
  purpose: idString.pipe(z.string().max(1024)).optional(),
  ttl: ttlField.optional(),
  /** A lower role than the subject's, to narrow further. */
  role: optionalId,
});
export type ExchangeRequest = z.infer<typeof exchangeRequestSchema> & { subject_token: string };

export function parseExchangeRequest(body: unknown): ExchangeRequest {
  const req = parseBody(exchangeRequestSchema, body);
  if (!req.grant_type) throw refuse(REFUSAL.INVALID_REQUEST, "field 'grant_type' is required");
  if (req.grant_type !== TOKEN_EXCHANGE_GRANT) {
    throw refuse(REFUSAL.UNSUPPORTED_GRANT_TYPE, `grant_type must be ${TOKEN_EXCHANGE_GRANT}`);
  }
  if (!req.subject_token) throw refuse(REFUSAL.INVALID_REQUEST, "field 'subject_token' is required");
  if (!req.subject_token_type) throw refuse(REFUSAL.INVALID_REQUEST, "field 'subject_token_type' is required");
  if (!ACCEPTED_TYPES.includes(req.subject_token_type)) {
    throw refuse(REFUSAL.INVALID_REQUEST, `subject_token_type must be ${JWT_TOKEN_TYPE}`);
  }
  if (req.requested_token_type && !ACCEPTED_TYPES.includes(req.requested_token_type)) {
    throw refuse(REFUSAL.INVALID_REQUEST, `requested_token_type must be ${JWT_TOKEN_TYPE}`);
  }
  return req as ExchangeRequest;
}

export interface ExchangeContext {
  config: TokenServiceConfig;
  /** Epoch ms. */
  now: number;
  newId: () => string;
}

/**
 * Derives a delegate's token from its parent's (already verified) token: same sponsor, the parent
 * as actor, never wider (tools, role), never longer-lived, never deeper than the limit. Pure but
 * for `newId`. A TTL the parent cannot cover is refused, not shortened.
 */
export function decideExchange(subject: TokenClaims, req: ExchangeRequest, ctx: ExchangeContext): TokenClaims {
  const { config } = ctx;
  const depth = subject.depth + 1;
  if (depth > config.delegation.max_depth) {
    throw refuse(REFUSAL.DEPTH_EXCEEDED, `delegation depth ${depth} exceeds the limit of ${config.delegation.max_depth}`);
  }
  const scope = req.scope?.length ? req.scope : undefined;
  const outside = (scope ?? []).filter((t) => !subject.tools.includes(t));
  if (outside.length) {
    throw refuse(REFUSAL.INVALID_TARGET, `scope '${outside[0]}' is not among the subject token's tools (${subject.tools.join(', ')})`);
  }
  if (req.audience !== undefined) {
    if (!subject.tools.includes(req.audience)) {
      throw refuse(REFUSAL.INVALID_TARGET, `audience '${req.audience}' is not among the subject token's tools (${subject.tools.join(', ')})`);
    }
    if (scope && !scope.includes(req.audience)) {
      throw refuse(REFUSAL.INVALID_TARGET, `audience '${req.audience}' is not in the requested scope (${scope.join(' ')})`);
    }
  }
  const tools = scope ?? (req.audience !== undefined ? [req.audience] : [...subject.tools]);
  const tool = req.audience ?? (tools.includes(subject.tool) ? subject.tool : tools[0]!);
  const unsupported = tools.find((t) => !config.supported_tools.includes(t));
  if (unsupported) throw refuse(REFUSAL.INVALID_TARGET, `tool '${unsupported}' is no longer supported`);

  let role = subject.role;
  if (req.role !== undefined && req.role !== subject.role) {
    const asked = roleRank(config.roleOrder, req.role);
    if (asked === undefined) throw refuse(REFUSAL.INVALID_SCOPE, `role '${req.role}' is not one of ${config.roleOrder.join(', ')}`);
    const held = roleRank(config.roleOrder, subject.role);
    if (held === undefined || asked > held) {
      throw refuse(REFUSAL.INVALID_SCOPE, `role '${req.role}' is above the subject token's role '${subject.role ?? '(none)'}'`);
    }
    role = req.role;
  }

  const iat = Math.floor(ctx.now / 1000);
  const remaining = subject.exp - iat;
  if (remaining <= 0) throw refuse(REFUSAL.INVALID_GRANT, 'the subject token has expired');
  const roleMax = maxTtlFor(config, role);
  if (req.ttl !== undefined && req.ttl > roleMax) {
    throw refuse(REFUSAL.TTL_TOO_LONG, `ttl ${req.ttl} s is above the maximum${role !== undefined ? ` for role '${role}'` : ''} (${roleMax} s)`);
  }
  if (req.ttl !== undefined && req.ttl > remaining) {
    throw refuse(REFUSAL.TTL_TOO_LONG, `ttl ${req.ttl} s would outlive the subject token, which expires in ${remaining} s`);
  }
  const ttl = req.ttl ?? Math.min(config.default_ttl_seconds, roleMax, remaining);

  const instance = delegateInstance(subject, req, ctx.newId);
  if (instance === subject.agent_instance_id) {
    throw refuse(REFUSAL.INVALID_REQUEST, 'agent_instance_id must be the delegate\'s, not the subject token\'s own');
  }
  const act: ActorClaim = {
    sub: subject.sub,
    tools: [...subject.tools],
    ...(subject.role !== undefined ? { role: subject.role } : {}),
    exp: subject.exp,
    ...(subject.act ? { act: subject.act } : {}),
  };
  const purpose = req.purpose || subject.purpose;
  return {
    iss: config.issuer,
    sub: instance,
    aud: tool,
    iat,
    nbf: iat,
    exp: iat + ttl,
    jti: ctx.newId(),
    ...(subject.sponsor_id !== undefined ? { sponsor_id: subject.sponsor_id } : {}),
    agent_instance_id: instance,
    parent_agent_id: subject.agent_instance_id,
    tool,
    tools,
    ...(role !== undefined ? { role } : {}),
    ...(purpose ? { purpose } : {}),
    ttl_seconds: ttl,
    depth,
    act,
    ...(subject.agent_id !== undefined ? { agent_id: subject.agent_id } : {}),
    ...(subject.credential_id !== undefined ? { credential_id: subject.credential_id } : {}),
  };
}

/** A registered agent's delegates stay in its namespace; an open-mode delegate may not enter one. */
function delegateInstance(subject: TokenClaims, req: ExchangeRequest, newId: () => string): string {
  const asked = req.agent_instance_id;
  if (subject.agent_id !== undefined) {
    if (asked === undefined) return boundInstanceId(subject.agent_id, newId());
    if (!instanceBelongsTo(subject.agent_id, asked)) {
      throw refuse(
        REFUSAL.INSTANCE_NOT_BOUND,
        `a delegate of agent ${subject.agent_id} is one of its instances ('${subject.agent_id}:<name>'), not '${asked}'`,
        403,
      );
    }
    return asked;
  }
  const owner = asked !== undefined ? instanceOwner(asked) : undefined;
  if (owner !== undefined) throw refuse(REFUSAL.INSTANCE_NOT_BOUND, `instance '${asked}' belongs to registered agent ${owner}`, 403);
  return asked ?? newId();
}
