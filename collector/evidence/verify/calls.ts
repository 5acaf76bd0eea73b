import { TABLE } from '../../../common/names';
import type { Store } from '../../store';
import { chainBreaksSql, type ChainBreak } from '../chain';
import { problemsSql, reportProblem, totalsSql, type CompletenessOptions, type CompletenessTotals, type ListedCall, type ProblemRow } from '../completeness';
import type { Findings } from '../findings';
import type { ReceiptKeys } from '../../../common/receipt';
import { badReceiptsIn, receiptParams, rolloutHistory, type RolloutHistory } from './receipts';
import type { VerifyProgress } from './types';

export interface CallCheckOptions {
  store: Store;
  findings: Findings;
  maxListed: number;
  /** Calls per page (a range of agent instances). */
  pageRows: number;
  clockSkewMs: number;
  sinceMs?: number;
  progress: (p: VerifyProgress) => void;
  /** The policy plane's keys: with them, every executed gated call must carry a valid receipt. */
  receipts?: { keys: ReceiptKeys; graceMs: number };
}

export interface CallsReport {
  instances: number;
  chained_calls: number;
  unchained_calls: number;
  totals: CompletenessTotals;
  shadow: { would_deny: number; listed: ListedCall[] };
  blocked_without_sponsor: { calls: number; listed: ListedCall[] };
  /** Calls stored as sampled-out stubs, by tool. */
  sampled_out_by_tool: Record<string, number>;
  /** With receipts: distinct receipts verified, and rollout rows that carried none. */
  receipts?: { verified: number; rollout_states: number; unsigned_rollout_rows: number };
}

/** Findings for one agent instance's chain breaks (start, duplicate, gap, altered link). */
export function reportChainBreak(b: ChainBreak & { seq: string | number; prev_seq: string | number }, findings: Findings): void {
  const seq = Number(b.seq);
  const prevSeq = Number(b.prev_seq);
  const at = { agent_instance_id: b.agent_instance_id, seq, span_id: b.span_id, trace_id: b.trace_id };
  const who = `agent instance ${b.agent_instance_id || '(none)'}`;
  switch (b.kind) {
    case 'start':
      findings.add('chain_start', `${who}: its first stored call is seq ${seq}${seq === 1 ? ' but its prev_hash is not the genesis hash' : `, calls 1 to ${seq - 1} are missing`}`, at);
      break;
    case 'duplicate':
      findings.add('chain_duplicate', `${who}: seq ${seq} appears more than once (span ${b.span_id})`, at);
      break;
    case 'gap':
      findings.add('chain_gap', `${who}: calls ${prevSeq + 1} to ${seq - 1} are missing between seq ${prevSeq} and seq ${seq}`, at);
      break;
    default:
      findings.add('chain_break', `${who}: seq ${seq}'s prev_hash does not match the hash of seq ${prevSeq} (seq ${prevSeq} or seq ${seq} was altered)`, at);
  }
}

/**
 * Every agent instance's audit chain and the completeness of authorization of its calls, by
 * ranges of instances of about `pageRows` calls each (found by paging over the instances in order).
 */
export async function verifyCalls(o: CallCheckOptions): Promise<CallsReport> {
  const { store, findings, maxListed } = o;
  const completeness: CompletenessOptions = {
    database: store.database,
    clockSkewMs: o.clockSkewMs,
    ...(o.sinceMs !== undefined ? { sinceMs: o.sinceMs } : {}),
    ...(o.receipts ? { receipts: { graceMs: o.receipts.graceMs } } : {}),
  };
  const history: RolloutHistory | undefined = o.receipts ? await rolloutHistory(store, o.receipts.keys, findings) : undefined;
  let receiptsVerified = 0;
  const [totalsRow] = await store.rows<Record<string, string | number>>(totalsSql(completeness));
  const totals: CompletenessTotals = {
    calls: Number(totalsRow?.calls ?? 0),
    executed: Number(totalsRow?.executed ?? 0),
    gated_executed: Number(totalsRow?.gated_executed ?? 0),
    blocked: Number(totalsRow?.blocked ?? 0),
    shadow: Number(totalsRow?.shadow ?? 0),
    missing_sponsor: Number(totalsRow?.missing_sponsor ?? 0),
    sampled_out: Number(totalsRow?.sampled_out ?? 0),
  };
  const sampledOutByTool: Record<string, number> = {};
  if (totals.sampled_out > 0) {
    const since = o.sinceMs === undefined ? '' : ` AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(o.sinceMs)}))`;
    for (const r of await store.rows<{ tool_id: string; calls: string; sampled_out: string }>(
      `SELECT tool_id, count() AS calls, countIf(audit_sampled) AS sampled_out FROM ${store.database}.${TABLE.AUDIT_EVENTS}
        WHERE 1${since} GROUP BY tool_id HAVING sampled_out > 0 ORDER BY tool_id`,
    )) sampledOutByTool[r.tool_id] = Number(r.sampled_out);
  }
  const sinceCond = o.sinceMs === undefined ? '' : ` AND timestamp >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(o.sinceMs)}))`;
  const [chainTotals] = await store.rows<{ chained: string; unchained: string }>(
    `SELECT countIf(audit_seq > 0) AS chained, countIf(audit_seq = 0) AS unchained FROM ${store.database}.${TABLE.AUDIT_EVENTS} WHERE 1${sinceCond}`,
  );
  const shadowDenies: ListedCall[] = [];
  let shadowDenyCount = 0;
  const blockedNoSponsor: ListedCall[] = [];
  let blockedNoSponsorCount = 0;
  let instances = 0;
  let callsChecked = 0;

  const runPage = async (lo: string, hi: string, calls: number) => {
    const params = { lo, hi };
    // the chains are checked in the store while the receipts' signatures are checked here
    const [breaks, found] = await Promise.all([
      store.rows<ChainBreak & { seq: string | number; prev_seq: string | number }>(
        chainBreaksSql(store.database, { lo, hi, ...(o.sinceMs !== undefined ? { sinceMs: o.sinceMs } : {}) }),
        params,
      ),
      o.receipts ? badReceiptsIn(store, o.receipts.keys, { lo, hi, ...(o.sinceMs !== undefined ? { sinceMs: o.sinceMs } : {}) }) : undefined,
    ]);
    for (const b of breaks) reportChainBreak(b, findings);
    let bad = new Map<string, string>();
    let extra = {};
    if (found) {
      bad = found.bad;
      receiptsVerified += found.distinct;
      extra = receiptParams(bad, history!);
    }
    for (const p of await store.rows<ProblemRow>(problemsSql(completeness), { ...params, ...extra })) {
      reportProblem(p, findings, {
        shadowDeny(c) {
          shadowDenyCount += 1;
          if (shadowDenies.length < maxListed) shadowDenies.push(c);
        },
        blockedWithoutSponsor(c) {
          blockedNoSponsorCount += 1;
          if (blockedNoSponsor.length < maxListed) blockedNoSponsor.push(c);
        },
      }, bad);
    }
    callsChecked += calls;
    o.progress({ phase: 'calls', done: callsChecked, total: totals.calls });
  };

  let after: string | undefined;
  let lo: string | undefined;
  let hi = '';
  let acc = 0;
  for (;;) {
    const page = await store.rows<{ id: string; n: string }>(
      `SELECT agent_instance_id AS id, count() AS n FROM ${store.database}.${TABLE.AUDIT_EVENTS}
        WHERE ${after === undefined ? '1' : 'agent_instance_id > {after:String}'}${sinceCond}
        GROUP BY id ORDER BY id LIMIT 10000
        SETTINGS optimize_aggregation_in_order = 1`,
      after === undefined ? undefined : { after },
    );
    for (const r of page) {
      const n = Number(r.n);
      if (lo !== undefined && acc + n > o.pageRows) {
        await runPage(lo, hi, acc);
        lo = undefined;
        acc = 0;
      }
      lo ??= r.id;
      hi = r.id;
      acc += n;
      instances += 1;
    }
    if (page.length < 10000) break;
    after = page[page.length - 1]!.id;
  }
  if (lo !== undefined) await runPage(lo, hi, acc);

  return {
    instances,
    chained_calls: Number(chainTotals?.chained ?? 0),
    unchained_calls: Number(chainTotals?.unchained ?? 0),
    totals,
    shadow: { would_deny: shadowDenyCount, listed: shadowDenies },
    blocked_without_sponsor: { calls: blockedNoSponsorCount, listed: blockedNoSponsor },
    sampled_out_by_tool: sampledOutByTool,
    ...(history ? { receipts: { verified: receiptsVerified, rollout_states: history.ms.length, unsigned_rollout_rows: history.unsigned } } : {}),
  };
}
