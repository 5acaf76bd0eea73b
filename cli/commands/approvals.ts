import { createHash, randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { CustodyError } from '../../common/errors';
import { JsonRequestError, fetchJson } from '../../common/json-client';
import { ENV } from '../../common/names';
import { safeText as t } from '../../common/terminal';
import { cliEnv, withClientOptions } from '../options';

/**
 * `custody approvals list [--json]`, `custody approvals approve|deny <id> [--reason R] [--as
 * PERSON]`, `custody approvals credential <person>`. The credential sent is the approver's own
 * ($CUSTODY_APPROVER_TOKEN), else the admin one ($CUSTODY_ADMIN_TOKEN), which must name the person
 * it acts for (--as). Exit codes: 0 done, 1 refused (not an approver, self-approval, already
 * answered, unknown id), 2 usage or connection error.
 */

interface Flags {
  url: string;
  json?: boolean;
  reason?: string;
  as?: string;
}

interface ApprovalItem {
  id: string;
  status: string;
  sponsor: string;
  agent: string;
  chain?: string[];
  tool: string;
  action: string;
  purpose: string | null;
  args?: Record<string, unknown>;
  rule_id?: string;
  expires_at?: string;
  can_answer?: boolean;
  decided_by?: string;
  decision_reason?: string;
  final?: { policy_decision_id: string; decision: string };
}

function credential(): string {
  const env = cliEnv(ENV.APPROVER_TOKEN, ENV.ADMIN_TOKEN);
  const c = env[ENV.APPROVER_TOKEN] ?? env[ENV.ADMIN_TOKEN];
  if (!c) throw new CustodyError('ERR_USAGE', `set ${ENV.APPROVER_TOKEN} (your approver credential) or ${ENV.ADMIN_TOKEN} with --as PERSON`);
  return c;
}

/** A refusal exits 1; a connection problem is an error (exit 2). */
async function call<T>(url: string, path: string, init: { method?: string; body?: unknown }): Promise<T | undefined> {
  let target: URL;
  try {
    target = new URL(path, url);
  } catch {
    throw new CustodyError('ERR_USAGE', `--url '${url}' is not a URL`);
  }
  try {
    return (await fetchJson<T>(target, { ...init, headers: { authorization: `Bearer ${credential()}` }, timeoutMs: 15_000 })).body;
  } catch (err) {
    if (err instanceof JsonRequestError && err.status >= 400 && err.status < 500) {
      process.stderr.write(`custody: refused (${err.status} ${t(err.apiError?.code ?? '')}): ${t(err.apiError?.message ?? err.text.slice(0, 200))}\n`);
      process.exitCode = 1;
      return undefined;
    }
    if (err instanceof JsonRequestError) throw new CustodyError('ERR_CONNECTION', `${target.origin}${path}: ${err.message}`);
    throw err;
  }
}

async function list(flags: Flags): Promise<void> {
  const q = flags.as ? `?as=${encodeURIComponent(flags.as)}` : '';
  const body = await call<{ approvals: ApprovalItem[] }>(flags.url, `/v1/approvals${q}`, {});
  if (!body) return;
  if (flags.json) return void process.stdout.write(`${JSON.stringify(body.approvals, null, 2)}\n`);
  if (!body.approvals.length) return void process.stdout.write('no pending approval requests\n');
  for (const a of body.approvals) {
    const args = Object.entries(a.args ?? {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ');
    process.stdout.write(
      `${t(a.id)}  sponsor ${t(a.sponsor)}  agent ${t([a.agent, ...(a.chain ?? [])].join(' <- '))}  ${t(a.tool)}.${t(a.action)}` +
        `${a.purpose ? `  purpose ${t(a.purpose)}` : ''}${args ? `  ${t(args)}` : ''}  expires ${t(a.expires_at ?? '')}${a.can_answer === false ? '  (not yours to answer)' : ''}\n`,
    );
  }
}

async function answer(verb: 'approve' | 'deny', id: string, flags: Flags): Promise<void> {
  const body = await call<ApprovalItem>(flags.url, `/v1/approvals/${encodeURIComponent(id)}/${verb}`, {
    method: 'POST',
    body: { ...(flags.reason ? { reason: flags.reason } : {}), ...(flags.as ? { as: flags.as } : {}) },
  });
  if (!body) return;
  if (flags.json) return void process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  process.stdout.write(`${t(body.id)} ${t(body.status)} by ${t(body.decided_by ?? '')}; decision ${t(body.final?.decision ?? '?')} ${t(body.final?.policy_decision_id ?? '')}\n`);
}

export function registerApprovalsCommands(program: Command): void {
  const group = program.command('approvals').description('human approval of tool calls (rules with effect: require_approval)');
  withClientOptions(group.command('list').description('the pending approval requests'))
    .option('--json', 'a JSON array of {id, sponsor, agent, tool, action, purpose, …}')
    .option('--as <person>', 'with the admin credential: whose view')
    .action((flags: Flags) => list(flags));
  for (const verb of ['approve', 'deny'] as const) {
    withClientOptions(group.command(verb).description(`${verb} a pending request`))
      .argument('<id>', 'the approval request id (apr_…)')
      .option('--reason <text>', 'why (recorded with the decision)')
      .option('--as <person>', 'with the admin credential: the person it acts for')
      .option('--json', 'print the answered request as JSON')
      .action((id: string, flags: Flags) => answer(verb, id, flags));
  }
  group
    .command('credential')
    .description("a new approver credential for a person, with the SHA-256 line for the policy's approvals.people")
    .argument('<person>', "the person's id")
    .action((person: string) => {
      const secret = `cap.${randomBytes(32).toString('base64url')}`;
      const hash = createHash('sha256').update(secret, 'utf8').digest('hex');
      process.stdout.write(`${secret}\n`);
      process.stderr.write(`give the first line to ${t(person)} (once); in the policy:\n  approvals:\n    people:\n      ${t(person)}: { roles: [], credential_sha256: ${hash} }\n`);
    });
}
