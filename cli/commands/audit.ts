import { Command, InvalidArgumentError, Option } from 'commander';
import type { AgentNode, AgentSummary, AuditEvent, AuditTrail } from '../../collector/audit/queries';
import { safeJson, safeLines, safeText as t } from '../../common/terminal';
import { ControlApiError, getJson } from '../control-client';
import { addAuditVerify } from './audit-verify';
import { withClientOptions } from '../options';

/**
 * `custody audit trail <agent_instance_id>`: the chain of custody of one agent instance, from
 * GET /v1/audit/trail, as an indented tree (sponsor → ancestors → the instance → its sub-agents,
 * each with its calls and their decision ids) or as JSON. Exit 0 found, 1 unknown instance,
 * 2 usage or connection error.
 */

interface TrailFlags {
  url: string;
  json?: boolean;
  depth?: number;
  calls?: number;
}

function describeAgent(a: AgentSummary): string {
  const bits = [a.role ? `role ${t(a.role)}` : '', a.agent_name ? `name ${t(a.agent_name)}` : '', a.sponsor_id ? `sponsor ${t(a.sponsor_id)}` : 'no sponsor_id'];
  bits.push(a.call_count === 1 ? '1 call' : `${t(a.call_count)} calls`);
  return `${t(a.agent_instance_id)}  (${bits.filter(Boolean).join(', ')})`;
}

function describeCall(c: AuditEvent): string {
  const parts = [t(c.timestamp), `${t(c.tool_id)}${c.action ? `.${t(c.action)}` : ''}`];
  if (c.purpose) parts.push(`purpose=${t(c.purpose)}`);
  parts.push(c.decision ? t(c.decision) : 'no policy check');
  if (c.policy_decision_id) parts.push(`decision_id=${t(c.policy_decision_id)}`);
  if (c.rule_id) parts.push(`rule=${t(c.rule_id)}`);
  if (c.approval_status) {
    const by = c.approval_approver ? ` by ${t(c.approval_approver)}` : '';
    parts.push(`approval ${t(c.approval_status)}${by}${c.approval_reason ? ` (${t(c.approval_reason)})` : ''}`);
  }
  if (c.args_disclosed) parts.push(`args disclosed: ${t(c.args_disclosed)}`);
  parts.push(`status=${c.status ? t(c.status) : 'unset'}${c.error_type ? ` (${t(c.error_type)})` : ''}`);
  return parts.join('  ');
}

/** The trail as text: one line per agent and per call, children indented under their parent. */
export function formatTrail(trail: AuditTrail): string {
  const out: string[] = [`sponsor ${trail.sponsor_id != null ? t(trail.sponsor_id) : '(none: no sponsor_id anywhere in the chain)'}`];
  let indent = '';
  for (const a of trail.ancestors) {
    out.push(`${indent}└─ ${describeAgent(a)}`);
    indent += '   ';
  }
  const walk = (node: AgentNode, prefix: string, last: boolean, self: boolean) => {
    out.push(`${prefix}${last ? '└─ ' : '├─ '}${describeAgent(node)}${self ? '  ◀ this instance' : ''}`);
    const inner = prefix + (last ? '   ' : '│  ');
    const items = node.calls.length + node.children.length + (node.calls_truncated ? 1 : 0);
    let i = 0;
    if (node.calls_truncated) {
      i += 1;
      out.push(`${inner}├─ … ${t(node.call_count - node.calls.length)} earlier calls not shown`);
    }
    for (const c of node.calls) {
      i += 1;
      out.push(`${inner}${i === items ? '└─ ' : '├─ '}${describeCall(c)}`);
      // the tool's side: its guard checked the call's token (reported by the tool's process)
      for (const side of c.tool_side ?? []) {
        out.push(`${inner}${i === items ? '   ' : '│  '}   ↳ tool side: ${t(side.service)} custody.guard ${t(side.decision)}${side.error_type ? ` (${t(side.error_type)})` : ''}`);
      }
    }
    for (const child of node.children) {
      i += 1;
      walk(child, inner, i === items, false);
    }
  };
  walk(trail.agent, indent, true, true);
  if (trail.truncated) out.push('(sub-agents beyond the depth or size limit are not shown; see --depth)');
  return out.join('\n') + '\n';
}

async function trail(id: string, flags: TrailFlags): Promise<void> {
  const q = new URLSearchParams();
  if (flags.depth !== undefined) q.set('depth', String(flags.depth));
  if (flags.calls !== undefined) q.set('calls', String(flags.calls));
  const path = `/v1/audit/trail/${encodeURIComponent(id)}${q.size ? `?${q}` : ''}`;
  let body: AuditTrail;
  try {
    ({ body } = await getJson<AuditTrail>(flags.url, path));
  } catch (err) {
    if (err instanceof ControlApiError && err.status === 404) {
      process.stderr.write(`custody: no agent instance '${t(id)}' in the audit\n`);
      process.exitCode = 1;
      return;
    }
    throw err;
  }
  process.stdout.write(flags.json ? `${safeJson(body, 2)}\n` : safeLines(formatTrail(body)));
}

function intOption(flag: string, description: string, max: number): Option {
  return new Option(flag, description).argParser((v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < 1 || n > max) throw new InvalidArgumentError(`'${v}' must be a whole number from 1 to ${max}`);
    return n;
  });
}

function addTrail(group: Command): void {
  withClientOptions(group.command('trail').description('the chain of custody of one agent instance: sponsor, parents, sub-agents, every call'))
    .argument('<agent_instance_id>', 'the agent instance (gen_ai.agent.id)')
    .option('--json', 'print the trail as JSON')
    .addOption(intOption('--depth <levels>', 'levels of sub-agents to show (default 10)', 20))
    .addOption(intOption('--calls <n>', 'most recent calls shown per agent (default 1000)', 10_000))
    .action((id: string, flags: TrailFlags) => trail(id, flags));
}

/**
 * The `audit` command group on its own (for embedding); errors throw CommanderError like the
 * main program's.
 */
export function auditCommand(): Command {
  const group = new Command('audit').description('chain-of-custody queries and audit verification').exitOverride().showHelpAfterError();
  addTrail(group);
  addAuditVerify(group);
  return group;
}

/** Adds `audit trail` to the program, joining a `audit` group another module created first. */
export function registerAuditCommands(program: Command): Command {
  const group = program.commands.find((c) => c.name() === 'audit') ?? program.command('audit').description('chain-of-custody queries and audit verification');
  addTrail(group);
  addAuditVerify(group);
  return group;
}
