import os from 'node:os';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { createLogger } from '../../common/log';
import { policyPlaneRole, type PolicyPlaneOptions } from '../../enforcer/plane/role';
import { isPlaneWorker, startPlanePrimary, workerMetrics } from '../plane-workers';
import { readPolicyFile, type Policy } from '../../enforcer/policy/compile';
import { decide } from '../../enforcer/policy/decide';
import { discloseArgs } from '../../enforcer/policy/args';
import { toolPolicy } from '../../enforcer/policy/compile';
import { resolveToolName } from '../../enforcer/policy/tool-map';
import { ENV } from '../../common/names';
import { closeOnSignals, startHost } from '../host';
import { commonOptions, serverEnv, withServerOptions, type ServerFlags } from '../options';

interface PlaneFlags extends ServerFlags {
  tokenUrl?: string;
  tokenIssuer?: string;
  stateUrl?: string;
  workers: number;
}

interface EvalFlags {
  role?: string;
  sponsor: string;
  instance: string;
  tool: string;
  action?: string;
  purpose?: string;
  depth?: string;
  args?: Record<string, unknown>;
  json?: boolean;
}

/** --args: a JSON object of the call's argument fields (only those the tool discloses count). */
function argsOption(v: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch {
    throw new InvalidArgumentError(`'${v}' is not JSON: give an object such as '{"amount": 500}'`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidArgumentError('expected a JSON object of argument fields');
  return parsed as Record<string, unknown>;
}

/** `custody policy-plane` (the role alone), `custody policy check FILE` and `custody policy eval FILE`. */
export function registerPolicyCommands(program: Command): void {
  withServerOptions(program.command('policy-plane').description('the policy plane alone: /v1/check, the rollout, hot reload of --policy'))
    .option('--token-url <url>', `token service whose JWKS verifies tokens (default $${ENV.TOKEN_URL}, $${ENV.URL} or http://127.0.0.1:8080)`)
    .option('--token-issuer <issuer>', `tokens' issuer (default $${ENV.TOKEN_ISSUER} or the token service configuration's issuer)`)
    .option('--state-url <url>', `run as a replica of the plane at <url>: its rollout and single-use token claims (or $${ENV.STATE_URL})`)
    .addOption(
      new Option('--workers <n>', "worker processes sharing the port and one state; 'auto': one per core")
        .default(1)
        .argParser((v) => {
          if (v === 'auto') return os.availableParallelism();
          const n = Number(v);
          if (!/^\d+$/.test(v) || n < 1 || n > 256) throw new InvalidArgumentError(`'${v}' is not a worker count (1-256, or auto)`);
          return n;
        }),
    )
    .action(async (flags: PlaneFlags) => {
      const env = serverEnv();
      const log = createLogger('custody', env[ENV.LOG_LEVEL]);
      const options = commonOptions(flags, env);
      const planeOptions: PolicyPlaneOptions = {
        ...(flags.tokenUrl ? { tokenUrl: flags.tokenUrl } : {}),
        ...(flags.tokenIssuer ? { tokenIssuer: flags.tokenIssuer } : {}),
        ...(flags.stateUrl ? { stateUrl: flags.stateUrl } : {}),
      };
      if (isPlaneWorker()) {
        // a worker: a replica of the primary's state (CUSTODY_STATE_URL), on the shared port, printing nothing
        const host = await startHost(options, [policyPlaneRole(planeOptions)], log, env, { metrics: workerMetrics() });
        closeOnSignals(host);
        return;
      }
      if (flags.workers > 1) {
        const primary = await startPlanePrimary(flags.workers, options, planeOptions, log, env);
        const lines = ['custody policy-plane listening', `  control API   ${primary.url}`, ...primary.banner.map((l) => `  ${l}`)];
        process.stdout.write(lines.join('\n') + '\n');
        return;
      }
      const host = await startHost(options, [policyPlaneRole(planeOptions)], log, env);
      closeOnSignals(host);
      const lines = ['custody policy-plane listening', `  control API   ${host.control.url}`];
      for (const r of host.roles) for (const line of r.banner ?? []) lines.push(`  ${line}`);
      process.stdout.write(lines.join('\n') + '\n');
    });

  const policy = program.command('policy').description('work with policy-config.yaml files');

  policy
    .command('check')
    .description('validate a policy file; exit 0 valid, 1 refused (the reason names file, line and field)')
    .argument('<file>', 'policy-config.yaml')
    .option('--json', 'print a JSON summary')
    .action((file: string, flags: { json?: boolean }) => {
      let p: Policy;
      try {
        p = readPolicyFile(file);
      } catch (err) {
        process.stderr.write(`${(err as Error).message}\n`);
        process.exitCode = 1;
        return;
      }
      const summary = {
        file: p.source,
        valid: true,
        version: p.version,
        hash: p.hash,
        rules: p.ruleCount,
        tools: [...p.knownTools].sort(),
        tool_map: p.toolMap.size,
        rollout: p.rollout,
      };
      if (flags.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      else {
        process.stdout.write(
          `${p.source}: valid (version ${p.version}, ${p.ruleCount} rules, tools ${summary.tools.join(', ') || 'none'}, ` +
            `${p.toolMap.size} tool_map entries, rollout ${p.rollout.percent}%)\n`,
        );
      }
    });

  policy
    .command('eval')
    .description('what the policy decides for one call; exit 0 allow, 1 deny, 3 pending (a person must approve), 2 bad file or usage')
    .argument('<file>', 'policy-config.yaml')
    .requiredOption('--tool <tool>', 'policy tool, `tool.action`, or a framework name from tool_map')
    .option('--action <action>', 'action (default: from --tool)')
    .option('--role <role>', 'the caller\'s role')
    .option('--sponsor <id>', 'sponsor id', 'cli')
    .option('--instance <id>', 'agent instance id', 'cli')
    .option('--purpose <purpose>', 'stated purpose')
    .option('--depth <n>', 'delegation depth', '0')
    .addOption(new Option('--args <json>', 'the call\'s arguments as a JSON object (only the fields the tool discloses are seen)').argParser(argsOption))
    .option('--json', 'print the decision as JSON')
    .action((file: string, flags: EvalFlags) => {
      const p = readPolicyFile(file);
      const ref = flags.action ? { tool: flags.tool, action: flags.action } : resolveToolName(flags.tool, p.toolMap);
      const d = decide(
        {
          identity: { sponsorId: flags.sponsor, agentInstanceId: flags.instance, role: flags.role, delegationDepth: Number(flags.depth) },
          tool: ref.tool,
          action: ref.action,
          purpose: flags.purpose,
          args: flags.args ? discloseArgs(flags.args, toolPolicy(p, ref.tool).discloseArgs) : undefined,
        },
        p,
        { now: Date.now() },
      );
      const a = d.approval;
      const approval = a ? { approvers: { sponsor: a.sponsor, people: [...a.people], roles: [...a.roles] }, approval_timeout_s: a.timeoutMs / 1000 } : undefined;
      if (flags.json) process.stdout.write(JSON.stringify({ tool: ref.tool, action: ref.action, decision: d.decision, rule_id: d.rule_id, reason: d.reason, ...(approval ? { approval } : {}) }) + '\n');
      else process.stdout.write(`${d.decision} ${ref.tool}.${ref.action} (rule ${d.rule_id}): ${d.reason}${approval ? `; approvers ${JSON.stringify(approval.approvers)}, waits up to ${approval.approval_timeout_s} s` : ''}\n`);
      process.exitCode = d.decision === 'allow' ? 0 : d.decision === 'pending' ? 3 : 1;
    });
}
