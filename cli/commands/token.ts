import fs from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { decodeJwt } from 'jose';
import { createLogger } from '../../common/log';
import { safeText as t } from '../../common/terminal';
import { ENV } from '../../common/names';
import {
  endpoint,
  exchangeToken,
  issueToken,
  jwksUrl,
  requestJson,
  type IssueTokenBody,
  type ObtainedToken,
} from '../../identity/client';
import { TokenError, TokenRequestError } from '../../identity/errors';
import type { AgentRecord, IssuedCredential } from '../../identity/registry';
import { startTokenServiceRole } from '../../identity/role';
import { createTokenVerifier } from '../../identity/verify';
import { closeOnSignals, startHost } from '../host';
import { cliEnv, commonOptions, serverEnv, withClientOptions, withServerOptions, type ServerFlags } from '../options';

/**
 * `custody token-service`, `custody token issue|exchange|verify|keys`, `custody agent …` and
 * `custody sponsor …`. Exit codes: 0 done, 1 refused (the service said no, or the token does not
 * verify), 2 usage or connection error.
 */

/** A --ttl value: whole seconds, more than 0. */
export const seconds = (v: string): number => {
  if (!/^\d+$/.test(v) || Number(v) <= 0) throw new InvalidArgumentError(`'${v}' is not a whole number of seconds`);
  return Number(v);
};
/** A comma- or space-separated list flag. */
export const list = (v: string): string[] => v.split(/[\s,]+/).filter(Boolean);

/** A refusal exits 1 with the service's code; anything else propagates (exit 2). */
async function refusalsExit1(run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if ((err instanceof TokenRequestError && err.code === 'ERR_TOKEN_REFUSED') || err instanceof TokenError) {
      process.stderr.write(`custody: refused: ${err instanceof TokenError ? `${err.code}: ` : ''}${t(err.message)}\n`);
      process.exitCode = 1;
      return;
    }
    throw err;
  }
}

function printToken(t: ObtainedToken, json: boolean | undefined): void {
  if (json) {
    process.stdout.write(`${JSON.stringify({ token: t.token, expires_at: new Date(t.expiresAt).toISOString(), claims: t.claims }, null, 2)}\n`);
    return;
  }
  // the token alone on stdout (TOKEN=$(custody token issue …)); a summary for people on stderr
  process.stdout.write(`${t.token}\n`);
  const c = t.claims;
  process.stderr.write(
    `token for '${c.tool}' (may be exchanged for: ${c.tools.join(', ')}), sponsor ${c.sponsor_id ?? '(none)'}, ` +
      `agent ${c.agent_instance_id}${c.role ? `, role ${c.role}` : ''}, expires ${new Date(t.expiresAt).toISOString()} (${c.ttl_seconds} s)\n`,
  );
}

function adminHeaders(): Record<string, string> {
  const token = cliEnv(ENV.ADMIN_TOKEN)[ENV.ADMIN_TOKEN];
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function admin<T>(url: string, path: string, method: 'GET' | 'POST', body?: unknown): Promise<T> {
  return requestJson<T>(endpoint(url, path), { method, headers: adminHeaders(), ...(body !== undefined ? { body } : {}) }, { timeoutMs: 10_000 });
}

function agentLine(a: AgentRecord): string {
  const revokedAt = new Date(a.revoked_at ?? 0);
  const state = a.status === 'active' ? 'active' : `revoked ${Number.isNaN(revokedAt.getTime()) ? t(a.revoked_at) : revokedAt.toISOString()} (${t(a.revoked_reason ?? '')})`;
  return `${t(a.agent_id)}  ${t(a.name)}  sponsor ${t(a.sponsor_id)}  role ${t(a.role)}  tools ${t((a.tools ?? []).join(','))}  max ttl ${t(a.max_ttl_seconds)}s  ${state}`;
}

function printCredential(r: IssuedCredential, json: boolean | undefined, verb: string): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
    return;
  }
  process.stderr.write(`${verb} ${agentLine(r.agent)}\nThe credential is shown once; give it to the agent as ${ENV.AGENT_CREDENTIAL}:\n`);
  process.stdout.write(`${r.credential}\n`);
}

function readToken(value: string): string {
  return (value === '-' ? fs.readFileSync(0, 'utf8') : value).trim();
}

export function registerTokenCommands(program: Command): void {
  withServerOptions(program.command('token-service').description('the token service alone: /issue, /token, the JWKS, agent registration')).action(
    async (flags: ServerFlags) => {
      const env = serverEnv();
      const log = createLogger('custody', env[ENV.LOG_LEVEL]);
      const host = await startHost(commonOptions(flags, env), [startTokenServiceRole], log, env);
      closeOnSignals(host);
      const lines = ['custody token-service listening', `  control API   ${host.control.url}`];
      for (const role of host.roles) for (const line of role.banner ?? []) lines.push(`  ${line}`);
      process.stdout.write(lines.join('\n') + '\n');
    },
  );

  const token = program.command('token').description('ask the token service for tokens, check them');

  withClientOptions(token.command('issue').description('asks the token service for a token (POST /issue)'))
    .requiredOption('--tool <tool>', 'the tool the token is for')
    .option('--sponsor <sponsor_id>', 'the human sponsor (registered agents: taken from the registration)')
    .option('--ttl <seconds>', 'lifetime; above the maximum is refused', seconds)
    .option('--role <role>', 'role (open mode; a registered agent may only ask a lower one)')
    .option('--purpose <purpose>', 'why the token is needed')
    .option('--tools <tools>', 'tools the token may be exchanged for (comma-separated), for a delegation token', list)
    .option('--agent-instance-id <id>', 'the agent instance (default: a new one)')
    .option('--credential <credential>', `the agent credential (default $${ENV.AGENT_CREDENTIAL})`)
    .option('--json', 'print the token and its claims as JSON')
    .action((f) =>
      refusalsExit1(async () => {
        const body: IssueTokenBody = {
          tool: f.tool,
          ...(f.sponsor ? { sponsor_id: f.sponsor } : {}),
          ...(f.ttl ? { ttl: f.ttl } : {}),
          ...(f.role ? { role: f.role } : {}),
          ...(f.purpose ? { purpose: f.purpose } : {}),
          ...(f.tools ? { tools: f.tools } : {}),
          ...(f.agentInstanceId ? { agent_instance_id: f.agentInstanceId } : {}),
        };
        const credential = f.credential ?? cliEnv(ENV.AGENT_CREDENTIAL)[ENV.AGENT_CREDENTIAL];
        printToken(await issueToken(f.url, body, { timeoutMs: 10_000, ...(credential ? { credential } : {}) }), f.json);
      }),
    );

  withClientOptions(token.command('exchange').description("derives a sub-agent's token from its parent's (POST /token, RFC 8693)"))
    .requiredOption('--subject-token <token>', "the parent's token ('-' reads stdin)")
    .option('--audience <tool>', 'the tool the new token is for')
    .option('--scope <tools>', 'tools the new token may in turn be exchanged for (comma-separated)', list)
    .option('--agent-instance-id <id>', 'the sub-agent instance (default: a new one)')
    .option('--ttl <seconds>', 'lifetime; never beyond the parent token', seconds)
    .option('--purpose <purpose>', 'why the token is needed')
    .option('--json', 'print the token and its claims as JSON')
    .action((f) =>
      refusalsExit1(async () => {
        const t = await exchangeToken(
          f.url,
          {
            subject_token: readToken(f.subjectToken),
            ...(f.audience ? { audience: f.audience } : {}),
            ...(f.scope ? { scope: f.scope } : {}),
            ...(f.agentInstanceId ? { agent_instance_id: f.agentInstanceId } : {}),
            ...(f.ttl ? { ttl: f.ttl } : {}),
            ...(f.purpose ? { purpose: f.purpose } : {}),
          },
          { timeoutMs: 10_000 },
        );
        printToken(t, f.json);
      }),
    );

  withClientOptions(token.command('verify').description("verifies a token against the service's JWKS, as a tool would"))
    .argument('<token>', "the token ('-' reads stdin)")
    .option('--tool <tool>', 'the tool it must be for (audience)')
    .option('--issuer <issuer>', "the issuer to expect (default: the token's own, trusting the JWKS at --url)")
    .action((value: string, f) =>
      refusalsExit1(async () => {
        const t = readToken(value);
        let issuer = f.issuer as string | undefined;
        if (!issuer) {
          try {
            issuer = String(decodeJwt(t).iss ?? '');
          } catch {
            issuer = '(unreadable)';
          }
        }
        const verifier = createTokenVerifier({ issuer, jwks: jwksUrl(f.url), timeoutMs: 10_000 });
        const claims = await verifier.verify(t, f.tool ? { audience: f.tool } : {});
        process.stdout.write(`${JSON.stringify(claims, null, 2)}\n`);
      }),
    );

  const keys = token.command('keys').description('the signing keys (admin API: $CUSTODY_ADMIN_TOKEN)');
  withClientOptions(keys.command('list').description('the current and retired signing keys')).action((f) =>
    refusalsExit1(async () => {
      process.stdout.write(`${JSON.stringify(await admin(f.url, '/v1/tokens/keys', 'GET'), null, 2)}\n`);
    }),
  );
  withClientOptions(keys.command('rotate').description('a new signing key; the old one stays in the JWKS until its last token expires')).action((f) =>
    refusalsExit1(async () => {
      process.stdout.write(`${JSON.stringify(await admin(f.url, '/v1/tokens/keys/rotate', 'POST', {}), null, 2)}\n`);
    }),
  );

  const agent = program.command('agent').description('register agents and manage their credentials (admin API: $CUSTODY_ADMIN_TOKEN)');
  withClientOptions(agent.command('register').description('registers an agent for a sponsor; prints its credential once'))
    .requiredOption('--sponsor <sponsor_id>', 'the human who answers for the agent')
    .requiredOption('--role <role>', 'its role')
    .requiredOption('--tools <tools>', 'the tools it may ask tokens for (comma-separated)', list)
    .option('--max-ttl <seconds>', "its maximum token lifetime (default: the role's)", seconds)
    .option('--name <name>', 'a name for people')
    .option('--json', 'print the registration and credential as JSON')
    .action((f) =>
      refusalsExit1(async () => {
        const body = {
          sponsor_id: f.sponsor,
          role: f.role,
          tools: f.tools,
          ...(f.maxTtl ? { max_ttl_seconds: f.maxTtl } : {}),
          ...(f.name ? { name: f.name } : {}),
        };
        printCredential(await admin<IssuedCredential>(f.url, '/v1/agents', 'POST', body), f.json, 'registered');
      }),
    );
  withClientOptions(agent.command('list').description('registered agents'))
    .option('--sponsor <sponsor_id>', 'only this sponsor\'s')
    .option('--status <status>', 'active or revoked')
    .option('--json', 'JSON')
    .action((f) =>
      refusalsExit1(async () => {
        const q = new URLSearchParams({ ...(f.sponsor ? { sponsor_id: f.sponsor } : {}), ...(f.status ? { status: f.status } : {}) });
        const { agents } = await admin<{ agents: AgentRecord[] }>(f.url, `/v1/agents${q.size ? `?${q}` : ''}`, 'GET');
        process.stdout.write(f.json ? `${JSON.stringify(agents, null, 2)}\n` : agents.map((a) => `${agentLine(a)}\n`).join(''));
      }),
    );
  withClientOptions(agent.command('show').description('one registered agent'))
    .argument('<agent_id>')
    .action((id: string, f) =>
      refusalsExit1(async () => {
        process.stdout.write(`${JSON.stringify(await admin(f.url, `/v1/agents/${encodeURIComponent(id)}`, 'GET'), null, 2)}\n`);
      }),
    );
  withClientOptions(agent.command('rotate').description('a new credential for the agent; the old one stops working at once'))
    .argument('<agent_id>')
    .option('--json', 'JSON')
    .action((id: string, f) =>
      refusalsExit1(async () => {
        printCredential(await admin<IssuedCredential>(f.url, `/v1/agents/${encodeURIComponent(id)}/rotate`, 'POST', {}), f.json, 'rotated');
      }),
    );
  withClientOptions(agent.command('revoke').description('revokes the agent: its credential stops working and its tokens cannot be exchanged'))
    .argument('<agent_id>')
    .option('--reason <reason>', 'why')
    .action((id: string, f) =>
      refusalsExit1(async () => {
        const { agent: a } = await admin<{ agent: AgentRecord }>(f.url, `/v1/agents/${encodeURIComponent(id)}/revoke`, 'POST', f.reason ? { reason: f.reason } : {});
        process.stdout.write(`${agentLine(a)}\n`);
      }),
    );

  const sponsor = program.command('sponsor').description('the sponsor lifecycle (admin API: $CUSTODY_ADMIN_TOKEN)');
  withClientOptions(sponsor.command('offboard').description('the sponsor leaves: revokes every agent they sponsor, refuses new tokens in their name, and has the policy plane deny their live ones'))
    .argument('<sponsor_id>')
    .option('--reason <reason>', 'why')
    .action((id: string, f) =>
      refusalsExit1(async () => {
        const r = await admin<{ revoked: AgentRecord[] }>(f.url, `/v1/sponsors/${encodeURIComponent(id)}/offboard`, 'POST', f.reason ? { reason: f.reason } : {});
        process.stdout.write(
          `sponsor ${id} offboarded; ${r.revoked.length} agent(s) revoked; tokens issued in their name are denied from now on\n${r.revoked.map((a) => `${agentLine(a)}\n`).join('')}`,
        );
      }),
    );
  withClientOptions(sponsor.command('reinstate').description('lets an offboarded sponsor sponsor agents again (revoked agents, and tokens issued before the offboarding, stay revoked)'))
    .argument('<sponsor_id>')
    .action((id: string, f) =>
      refusalsExit1(async () => {
        await admin(f.url, `/v1/sponsors/${encodeURIComponent(id)}/reinstate`, 'POST', {});
        process.stdout.write(`sponsor ${id} reinstated\n`);
      }),
    );
}
