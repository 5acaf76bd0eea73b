import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../common/log';
import type { CommonOptions } from '../../common/role';
import { ENV } from '../../common/names';
import type { Host } from '../host';
import { playScenario, type AgentReport, type ScenarioResult } from './scenario';

const count = (reports: AgentReport[], pred: (c: AgentReport['calls'][number]) => boolean): number =>
  reports.reduce((n, r) => n + r.calls.filter(pred).length + count(r.refunds ?? [], pred), 0);

/** Plays the seed scenario after `custody up` has started, then leaves custody serving. */
export async function playDemo(host: Host, options: CommonOptions, log: Logger): Promise<ScenarioResult | undefined> {
  const out = process.stdout;
  out.write('\nplaying the seed scenario (custody up --no-demo skips it) …\n');
  let result: ScenarioResult;
  try {
    result = await playScenario({ url: host.control.url, otlpUrl: options.otlpUrl, dataDir: options.dataDir, out, adminToken: host.env[ENV.ADMIN_TOKEN] });
  } catch (err) {
    log.error({ err }, 'the scenario failed; custody keeps serving');
    out.write(`\nthe scenario stopped: ${(err as Error).message}\ncustody keeps serving.\n`);
    return undefined;
  }
  const denied = (r: AgentReport[]) => count(r, (c) => c.code === 'ERR_POLICY_DENIED');
  const failedClosed = (r: AgentReport[]) => count(r, (c) => c.code === 'ERR_POLICY_UNAVAILABLE');
  const f = result.final;
  const lines = [
    '',
    'scenario done',
    `  support assistant   ${count(result.assistant, (c) => c.ok)} calls ran, ${denied(result.assistant)} denied (file-store is not support's), ${result.assistant[0]?.refunds?.length ?? 0} refunds by sub-agents`,
    `  customer agent      ${count([result.customer], (c) => c.ok)} ran, ${denied([result.customer])} denied (billing is not a user's)`,
    `  during the outage   ${failedClosed([result.duringOutage])} failed closed, ${count([result.duringOutage], (c) => c.ok)} ran once the plane was back`,
    `  without a sponsor   ${denied([result.unsponsored])} denied`,
    `  script w/o custody  ${count([result.rogue], (c) => !c.ok && /token_required/.test(c.message ?? ''))} refund refused by the billing API's guard (no custody token)`,
    `  fleet in shadow     ${count(result.fleet, (c) => c.ok)} ran unblocked (${result.fleet.length} agents)`,
    `  tool server saw     ${result.toolServerSaw.length} requests: no denied or failed-closed call reached it`,
    `  custody counted     ${f.calls} tool calls: ${f.allow} allowed, ${f.deny} denied, ${f.failClosed} failed closed`,
    `  rollout             ${f.rolloutPercent ?? 'unknown'} %${result.rolledBack ? ' (rolled back by the rollback job)' : ''}`,
    '',
    'look at',
    `  rollback status     ${host.control.url}/v1/rollback/status`,
    `  audit events        ${host.control.url}/v1/audit/events?sponsor=alice`,
    `  metrics             ${host.control.url}/metrics`,
    `  a chain of custody  custody audit trail <agent_instance_id> --url ${host.control.url}`,
    `  readiness           custody readiness --url ${host.control.url}`,
    '',
    `custody keeps serving: point your own agents at it with`,
    `  CUSTODY_URL=${host.control.url} OTEL_EXPORTER_OTLP_ENDPOINT=${options.otlpUrl} CUSTODY_SPONSOR_ID=<you> node --require custody/register agent.js`,
  ];
  out.write(lines.join('\n') + '\n');
  fs.writeFileSync(path.join(options.dataDir, 'demo-result.json'), JSON.stringify(result, null, 2));
  return result;
}
