import childProcess from 'node:child_process';
import path from 'node:path';
import { diag } from '@opentelemetry/api';
import { exchangeToken, issueToken, type ExchangeTokenParams, type IssueTokenBody, type ObtainedToken } from '../identity/client';
import { ENV } from '../common/names';
import { getRuntime } from './runtime';
import type { AgentScope } from './scope';

/**
 * The token an agent instance hands its sub-agents (in-process, child processes, MCP servers it
 * calls). A root agent gets it from POST /issue with `tools` = what it may delegate; a sub-agent
 * exchanges the token it received (POST /token, agent_instance_id = itself), so each hop names
 * its parent and the chain stays verifiable. Cached per instance until shortly before it expires.
 */
export interface DelegationRequest {
  kind: 'issue' | 'exchange';
  /** Token service. */
  url: string;
  /** Policy plane: an issue without tools delegates the policy's tools (GET /v1/policy). */
  policyUrl: string;
  issue?: IssueTokenBody;
  exchange?: ExchangeTokenParams;
  credential?: string;
  timeoutMs: number;
}

// Generous: a child started without its delegation token cannot prove its parent (its calls carry
// the parent only as its own claim), and on a busy machine the helper process alone can take seconds.
const TIMEOUT_MS = 5_000;
/** Renew a cached delegation token once less than this is left. */
const RENEW_MARGIN_MS = 30_000;
/** After a failure, do not ask again (nor warn again) for this long. */
const RETRY_AFTER_MS = 10_000;
/**
 * The same after a failed synchronous fetch: short, because every child process started
 * meanwhile goes without a token (and cannot prove its parent).
 */
const SYNC_RETRY_AFTER_MS = 1_000;
/** What a helper process may take to start, on top of the request's own timeout (a loaded machine). */
const HELPER_START_MS = 15_000;
// Taken before custody patches child_process: the helper must start without custody's environment.
const spawnSync = childProcess.spawnSync;

/**
 * Why a sub-agent of `id` goes without a delegation token when none could be had, or undefined
 * when `id` has nothing to delegate (no sponsor, credential or token of its own): then its
 * sub-agents are unsponsored anyway, and nothing is withheld from them.
 */
export function undelegatedReason(id: AgentScope['identity']): string | undefined {
  return id.delegationToken || id.sponsorId || id.credential ? 'the parent could not obtain a delegation token' : undefined;
}

/** What to ask the token service for, or why nothing can be asked. */
export function delegationRequest(scope: AgentScope, tools?: readonly string[]): DelegationRequest | string {
  const { tokenUrl: url, policyUrl } = getRuntime().settings;
  const id = scope.identity;
  if (id.delegationToken) {
    const exchange: ExchangeTokenParams = { subject_token: id.delegationToken, agent_instance_id: id.agentInstanceId };
    if (tools?.length) exchange.scope = [...tools];
    return { kind: 'exchange', url, policyUrl, exchange, timeoutMs: TIMEOUT_MS };
  }
  if (id.delegationUnavailable) return `its own parent could not delegate to it (${id.delegationUnavailable})`;
  if (!id.sponsorId && !id.credential) return 'no sponsor and no credential';
  const list = tools?.length ? [...tools] : defaultTools();
  // tool '' is filled in from the policy's tools when the request is made
  const issue: IssueTokenBody = { tool: list[0] ?? '', tools: list, agent_instance_id: id.agentInstanceId };
  if (!id.credential) {
    // open mode: the body speaks for the agent; registered mode: the registration does
    if (id.sponsorId) issue.sponsor_id = id.sponsorId;
    if (id.role) issue.role = id.role;
  }
  const request: DelegationRequest = { kind: 'issue', url, policyUrl, issue, timeoutMs: TIMEOUT_MS };
  if (id.credential) request.credential = id.credential;
  return request;
}

function defaultTools(): string[] {
  const runtime = getRuntime();
  if (runtime.settings.delegateTools?.length) return [...runtime.settings.delegateTools];
  const fromMap = new Set<string>();
  for (const entry of Object.values(runtime.toolMap ?? {})) fromMap.add(entry.tool);
  return [...fromMap];
}

export async function performDelegation(request: DelegationRequest): Promise<ObtainedToken> {
  const options = { timeoutMs: request.timeoutMs, ...(request.credential ? { credential: request.credential } : {}) };
  if (request.kind === 'exchange') return exchangeToken(request.url, request.exchange!, options);
  let issue = request.issue!;
  if (!issue.tools?.length) {
    const tools = await policyTools(request.policyUrl, request.timeoutMs);
    if (!tools.length) throw new Error(`no tools to delegate: set ${ENV.DELEGATE_TOOLS}, a tool map, or give the policy a 'tools' table`);
    issue = { ...issue, tool: tools[0]!, tools };
  }
  return issueToken(request.url, issue, options);
}

/** The tools the policy in force declares (GET /v1/policy `tools`). */
async function policyTools(policyUrl: string, timeoutMs: number): Promise<string[]> {
  const res = await fetch(`${policyUrl}/v1/policy`, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`GET ${policyUrl}/v1/policy answered ${res.status}`);
  const body = (await res.json()) as { tools?: Record<string, unknown> };
  return body.tools && typeof body.tools === 'object' ? Object.keys(body.tools) : [];
}

function failedRecently(scope: AgentScope, now = Date.now()): boolean {
  const failedAt = scope.delegation?.failedAt;
  return failedAt !== undefined && now - failedAt < (scope.delegation?.retryAfterMs ?? RETRY_AFTER_MS);
}

function fresh(scope: AgentScope, now = Date.now()): string | undefined {
  const d = scope.delegation;
  return d?.token && d.expiresAt !== undefined && d.expiresAt - now > RENEW_MARGIN_MS ? d.token : undefined;
}

/**
 * The token `scope` hands its sub-agents; undefined (with a diag warning) when none can be had —
 * the sub-agent then still carries sponsor and parent, and its calls fail closed if the policy
 * needs more.
 */
export async function delegationToken(scope: AgentScope, tools?: readonly string[]): Promise<string | undefined> {
  if (!tools) {
    const cached = fresh(scope);
    if (cached) return cached;
    if (scope.delegation?.pending) return scope.delegation.pending;
    if (failedRecently(scope)) return undefined;
  }
  const request = delegationRequest(scope, tools);
  if (typeof request === 'string') {
    if (!tools) scope.delegation = { failedAt: Date.now() };
    diag.warn(`custody: agent ${scope.identity.agentInstanceId} cannot delegate: ${request}`);
    return undefined;
  }
  const pending = performDelegation(request).then(
    (got) => {
      if (!tools) scope.delegation = { token: got.token, expiresAt: got.expiresAt };
      return got.token;
    },
    (err: unknown) => {
      if (!tools) scope.delegation = { failedAt: Date.now() };
      diag.warn(`custody: agent ${scope.identity.agentInstanceId} could not obtain a delegation token: ${(err as Error).message}`);
      return undefined;
    },
  );
  if (!tools) scope.delegation = { pending };
  return pending;
}

/**
 * The same, synchronously, for child_process calls (which cannot wait): the cached token, else
 * one fetched by a short-lived helper process.
 */
export function delegationTokenSync(scope: AgentScope): string | undefined {
  const cached = fresh(scope);
  if (cached || failedRecently(scope)) return cached;
  const request = delegationRequest(scope);
  if (typeof request === 'string') {
    scope.delegation = { failedAt: Date.now() };
    diag.warn(`custody: agent ${scope.identity.agentInstanceId} cannot delegate: ${request}`);
    return undefined;
  }
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const helper = path.join(__dirname, 'delegate-helper.js');
  const out = spawnSync(process.execPath, [helper], {
    input: JSON.stringify(request),
    env,
    timeout: request.timeoutMs + HELPER_START_MS,
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  try {
    const answer = JSON.parse(out.stdout) as { token?: string; expiresAt?: number; error?: string };
    if (answer.token && answer.expiresAt) {
      scope.delegation = { token: answer.token, expiresAt: answer.expiresAt };
      return answer.token;
    }
    diag.warn(`custody: agent ${scope.identity.agentInstanceId} could not obtain a delegation token: ${answer.error ?? 'no token'}`);
    scope.delegation = { failedAt: Date.now(), retryAfterMs: SYNC_RETRY_AFTER_MS };
  } catch {
    scope.delegation = { failedAt: Date.now(), retryAfterMs: SYNC_RETRY_AFTER_MS };
    diag.warn(`custody: agent ${scope.identity.agentInstanceId} could not obtain a delegation token: ${out.error?.message ?? out.stderr ?? 'helper failed'}`);
  }
  return undefined;
}
