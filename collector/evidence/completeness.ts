import { sampleBucketSql } from '../../common/audit-sample';
import { ATTR, COHORT, DECISION, POLICY_ERROR_TYPE, TABLE } from '../../common/names';
import type { Findings } from './findings';

/**
 * Completeness: every executed tool call was authorized from outside the agent. A call counts as
 * executed unless it failed because the policy plane denied it or could not be reached
 * (error.type policy_denied / policy_unavailable: the tool never ran). For each executed, gated
 * call the decision log must hold an allow decision with the call's decision id, for the same
 * sponsor, instance, parent, tool and action, made before the tool ran; and the token events must
 * hold the issuance of the call's token (its jti) to the same sponsor, instance and tool, issued
 * before the call and not expired at its start.
 *
 * "Before the tool ran": the decision is made inside the call's span, during the policy check,
 * so it may be stamped up to the check's latency after the span starts; a clock-skew allowance
 * (default 1 s) covers agent and plane clocks that differ.
 *
 * Shadow calls (the baseline cohort, or a check made with enforced=false) were not gated by
 * design: they are counted and listed apart, with those the plane would have denied, never
 * reported as self-authorized. A call with no check at all (no decision, no decision id) is gated
 * like any other: that is exactly a self-authorized call. Every call without a sponsor is listed:
 * as a finding when it ran, apart when custody refused it.
 *
 * Receipts (when the policy plane's keys are at hand): an executed, gated call must carry the
 * plane's signed receipt (custody.policy.receipt) of an allow for exactly that call: the same
 * decision id, sponsor, instance, parent, tool, action and token, decided before the tool ran and
 * used before the token expired. Rows anyone can write prove nothing; the receipt cannot be made
 * without the plane's key. Signatures are checked in JavaScript (verify/receipts.ts), once per
 * distinct receipt; what they say is compared here. A call claiming the baseline cohort (shadow)
 * must be in that cohort under a signed rollout in force at some moment of the `graceMs` before it
 * (agents act on a rollout they read up to that long ago), or carry a receipt that says the plane
 * did not enforce it.
 *
 * Sampled-out calls (stubs, common/audit-sample.ts) keep no attributes, so no receipt: each must
 * instead be an allow in the decision log whose plane granted a rate in (0, 1) to a tool that is
 * neither high- nor critical-risk, with the call's bucket past that rate, and must have run
 * successfully with a sponsor. Any other stub is a finding (`sample_unlawful`): nothing the plane
 * denied, no error and no unsponsored call can hide as a stub.
 *
 * What this proves: the token event is the token service's own record of issuing that jti for
 * that sponsor, instance and tool, and the decision row is the plane's record of allowing it
 * (the plane verified the token's signature when it decided). Both are sealed into the signed
 * checkpoints like the calls, so none can be added or edited afterwards without showing. The
 * token itself is not stored, so its signature is not re-verified here.
 */

export interface CompletenessOptions {
  database: string;
  /** Only calls that started at or after this (epoch ms). */
  sinceMs?: number;
  clockSkewMs: number;
  /** Check receipts and cohort claims; queries then take the params of `receiptParams`. */
  receipts?: { graceMs: number };
}

/** Query parameters of the receipt checks: receipts whose signature failed, the signed rollout (times ascending). */
export interface ReceiptParams {
  bad_receipts: string[];
  rollout_ms: number[];
  rollout_percent: number[];
}

const since = (o: CompletenessOptions, column = 'timestamp') =>
  o.sinceMs === undefined ? '1' : `${column} >= fromUnixTimestamp64Milli(toInt64(${Math.trunc(o.sinceMs)}))`;

export const EXECUTED = `NOT (status = 'error' AND error_type IN ('${POLICY_ERROR_TYPE.DENIED}', '${POLICY_ERROR_TYPE.UNAVAILABLE}'))`;
const SHADOW = `(cohort = '${COHORT.BASELINE}' OR (NOT enforced AND (decision != '' OR policy_decision_id != '')))`;

export interface CompletenessTotals {
  calls: number;
  executed: number;
  gated_executed: number;
  blocked: number;
  shadow: number;
  missing_sponsor: number;
  /** Calls stored as sampled-out stubs. */
  sampled_out: number;
}

export function totalsSql(o: CompletenessOptions): string {
  return `SELECT count() AS calls, countIf(${EXECUTED}) AS executed, countIf(${EXECUTED} AND NOT ${SHADOW}) AS gated_executed,
      countIf(NOT ${EXECUTED}) AS blocked, countIf(${EXECUTED} AND ${SHADOW}) AS shadow, countIf(sponsor_id = '') AS missing_sponsor,
      countIf(audit_sampled) AS sampled_out
    FROM ${o.database}.${TABLE.AUDIT_EVENTS} WHERE ${since(o)}`;
}

/**
 * The calls of the instances in [lo, hi] that fail a check or are shadow calls the plane would
 * have denied, with what was found for each.
 */
export function problemsSql(o: CompletenessOptions): string {
  const a = `${o.database}.${TABLE.AUDIT_EVENTS}`;
  const page = `agent_instance_id >= {lo:String} AND agent_instance_id <= {hi:String} AND ${since(o)}`;
  const skew = Math.max(0, Math.trunc(o.clockSkewMs));
  const grace = Math.max(0, Math.trunc(o.receipts?.graceMs ?? 0));
  const receiptCols = o.receipts
    ? `a.receipt AS receipt, a.receipt != '' AS r_found, has({bad_receipts:Array(String)}, a.receipt) AS r_bad,
      tryBase64URLDecode(arrayElement(splitByChar('.', a.receipt), 2)) AS r_json,
      JSONExtractString(r_json, 'decision') AS r_decision, JSONExtractInt(r_json, 'time') AS r_ms,
      JSONExtractInt(r_json, 'token_exp') AS r_token_exp, JSONExtractBool(r_json, 'enforced') AS r_enforced,
      arrayFilter(x -> x != '', [
        if(JSONExtractString(r_json, 'id') != a.policy_decision_id, 'decision id', ''),
        if(JSONExtractString(r_json, 'sponsor_id') != a.sponsor_id, 'sponsor', ''),
        if(JSONExtractString(r_json, 'agent_instance_id') != a.agent_instance_id, 'instance', ''),
        if(JSONExtractString(r_json, 'parent_agent_id') != a.parent_agent_id, 'parent', ''),
        if(JSONExtractString(r_json, 'tool_id') != a.tool_id, 'tool', ''),
        if(JSONExtractString(r_json, 'action') != a.action, 'action', ''),
        if(JSONExtractString(r_json, 'token_jti') != a.token_jti, 'token', '')]) AS r_diff,
      r_found AND r_ms > ran_by AS r_late,
      r_found AND r_token_exp > 0 AND r_token_exp * 1000 + ${skew} < a.ms AS r_expired,
      r_found AND NOT r_bad AND length(r_diff) = 0 AND NOT r_late AND NOT r_expired AS r_for_call,
      a.stub OR (r_for_call AND r_decision = '${DECISION.ALLOW}') AS receipt_ok,
      reinterpretAsUInt32(reverse(substring(SHA256(a.agent_instance_id), 1, 4))) / 4294967296 * 100 AS bucket,
      arrayLastIndex(t -> t <= a.ms - ${grace}, {rollout_ms:Array(Int64)}) AS r_k0,
      arrayFilter((p, t, i) -> i = r_k0 OR (t > a.ms - ${grace} AND t <= a.ms), {rollout_percent:Array(Float64)}, {rollout_ms:Array(Int64)},
        arrayEnumerate({rollout_ms:Array(Int64)})) AS in_force,
      length(in_force) > 0 AS rollout_known, arrayMin(in_force) AS rollout_min,
      (rollout_known AND bucket >= rollout_min) OR (r_for_call AND NOT r_enforced) AS shadow_ok`
    : `'' AS receipt, 0 AS r_found, 0 AS r_bad, '' AS r_decision, [] AS r_diff, 0 AS r_late, 0 AS r_expired, 1 AS receipt_ok,
      0 AS rollout_known, 0 AS rollout_min, 1 AS shadow_ok`;
  return `SELECT * FROM (
    SELECT a.agent_instance_id AS agent_instance_id, a.audit_seq AS seq, a.trace_id AS trace_id, a.span_id AS span_id,
      a.ms AS ms, a.sponsor_id AS sponsor_id, a.tool_id AS tool_id, a.action AS action, a.cohort AS cohort,
      a.decision AS call_decision, a.policy_decision_id AS policy_decision_id, a.token_jti AS token_jti,
      a.executed AS executed, a.shadow AS shadow,
      d.id != '' AS d_found, d.decision AS d_decision, d.ms AS d_ms,
      arrayFilter(x -> x != '', [
        if(d.sponsor_id != a.sponsor_id, 'sponsor', ''), if(d.agent_instance_id != a.agent_instance_id, 'instance', ''),
        if(d.parent_agent_id != a.parent_agent_id, 'parent', ''), if(d.tool_id != a.tool_id, 'tool', ''),
        if(d.action != a.action, 'action', '')]) AS d_diff,
      t.jti != '' AS t_found, t.ms AS t_ms, t.exp_ms AS t_exp_ms,
      arrayFilter(x -> x != '', [
        if(t.sponsor_id != a.sponsor_id, 'sponsor', ''), if(t.agent_instance_id != a.agent_instance_id, 'instance', ''),
        if(t.tool_id != a.tool_id, 'tool', '')]) AS t_diff,
      a.ms + toInt64(ceil(a.policy_latency_ms)) + a.approval_wait_ms + ${skew} AS ran_by,
      d_found AND d.ms > ran_by AS d_late,
      t_found AND t.ms > ran_by AS t_late,
      t_found AND t.exp_ms > 0 AND t.exp_ms + ${skew} < a.ms AS t_expired,
      d_found AND d.decision = '${DECISION.ALLOW}' AND length(d_diff) = 0 AND NOT d_late AS decision_ok,
      t_found AND length(t_diff) = 0 AND NOT t_late AND NOT t_expired AS token_ok,
      a.executed AND NOT a.shadow AND (a.decision IN ('${DECISION.DENY}', '${DECISION.ERROR}') OR (d_found AND d.decision != '${DECISION.ALLOW}')) AS deny_executed,
      a.executed AND a.shadow AND (a.decision = '${DECISION.DENY}' OR (d_found AND d.decision = '${DECISION.DENY}')) AS shadow_deny,
      a.stub AS stub,
      a.stub AND NOT (d_found AND d.decision = '${DECISION.ALLOW}' AND d.sample_rate > 0 AND d.sample_rate < 1
        AND d.risk NOT IN ('high', 'critical') AND a.bucket >= d.sample_rate AND a.status = 'ok' AND a.error_type = ''
        AND a.sponsor_id != '') AS stub_bad,
      d.sample_rate AS d_sample_rate, d.risk AS d_risk,
      ${receiptCols}
    FROM (
      SELECT agent_instance_id, audit_seq, trace_id, span_id, toUnixTimestamp64Milli(timestamp) AS ms, policy_latency_ms,
        toInt64(ceil(toFloat64OrZero(attributes['${ATTR.APPROVAL_WAIT_MS}']))) AS approval_wait_ms,
        sponsor_id, parent_agent_id, tool_id, action, cohort, decision, policy_decision_id, token_jti,
        ${EXECUTED} AS executed, ${SHADOW} AS shadow, status, error_type, audit_sampled AS stub, ${sampleBucketSql()} AS bucket${o.receipts ? `, attributes['${ATTR.POLICY_RECEIPT}'] AS receipt` : ''}
      FROM ${a} WHERE ${page}
    ) AS a
    LEFT JOIN (
      SELECT policy_decision_id AS id, decision, toUnixTimestamp64Milli(timestamp) AS ms,
        sponsor_id, agent_instance_id, parent_agent_id, tool_id, action,
        toFloat64OrZero(attributes['${ATTR.AUDIT_SAMPLE_RATE}']) AS sample_rate, attributes['${ATTR.TOOL_RISK}'] AS risk
      FROM ${o.database}.${TABLE.POLICY_DECISIONS}
      WHERE policy_decision_id IN (SELECT policy_decision_id FROM ${a} WHERE ${page} AND policy_decision_id != '')
      ORDER BY timestamp LIMIT 1 BY policy_decision_id
    ) AS d ON a.policy_decision_id = d.id
    LEFT JOIN (
      SELECT jti, toUnixTimestamp64Milli(timestamp) AS ms, toUnixTimestamp64Milli(expires_at) AS exp_ms,
        sponsor_id, agent_instance_id, tool_id
      FROM ${o.database}.${TABLE.TOKEN_EVENTS}
      WHERE result = 'issued' AND jti IN (SELECT token_jti FROM ${a} WHERE ${page} AND token_jti != '')
      ORDER BY timestamp LIMIT 1 BY jti
    ) AS t ON a.token_jti = t.jti
  )
  WHERE sponsor_id = '' OR deny_executed OR shadow_deny OR stub_bad
    OR (executed AND NOT shadow AND (NOT decision_ok OR NOT token_ok OR NOT receipt_ok))
    OR (executed AND shadow AND NOT shadow_ok)
  ORDER BY agent_instance_id, ms, span_id
  SETTINGS join_use_nulls = 0`;
}

export interface ProblemRow {
  agent_instance_id: string;
  seq: string | number;
  trace_id: string;
  span_id: string;
  ms: string | number;
  sponsor_id: string;
  tool_id: string;
  action: string;
  cohort: string;
  call_decision: string;
  policy_decision_id: string;
  token_jti: string;
  executed: number | boolean;
  shadow: number | boolean;
  d_found: number;
  d_decision: string;
  d_ms: string | number;
  d_diff: string[];
  t_found: number;
  t_ms: string | number;
  t_exp_ms: string | number;
  t_diff: string[];
  d_late: number | boolean;
  t_late: number | boolean;
  t_expired: number | boolean;
  decision_ok: number | boolean;
  token_ok: number | boolean;
  deny_executed: number | boolean;
  shadow_deny: number | boolean;
  receipt: string;
  r_found: number | boolean;
  r_bad: number | boolean;
  r_decision: string;
  r_diff: string[];
  r_late: number | boolean;
  r_expired: number | boolean;
  receipt_ok: number | boolean;
  rollout_known: number | boolean;
  rollout_min: number | string;
  shadow_ok: number | boolean;
  stub: number | boolean;
  stub_bad: number | boolean;
  d_sample_rate: number | string;
  d_risk: string;
}

const iso = (v: string | number) => new Date(Number(v)).toISOString();

/** Why a call's receipt does not prove it was allowed. */
function receiptFinding(r: ProblemRow, call: string, bad: ReadonlyMap<string, string>): ['receipt_missing' | 'receipt_invalid' | 'receipt_mismatch', string] {
  const head = `${call} cannot be proven authorized`;
  if (!Number(r.r_found)) return ['receipt_missing', `${head}: it carries no receipt from the policy plane`];
  if (Number(r.r_bad)) return ['receipt_invalid', `${head}: its receipt is not the plane's (${bad.get(r.receipt) ?? 'its signature does not verify'})`];
  const why: string[] = [];
  if (r.r_diff.length) why.push(`the receipt is for another ${r.r_diff.join(', ')}`);
  if (r.r_decision !== DECISION.ALLOW) why.push(`the receipt says '${r.r_decision || '(nothing)'}'`);
  if (Number(r.r_late)) why.push('the receipt was signed after the call started');
  if (Number(r.r_expired)) why.push("the call started after the receipt's token expired");
  return ['receipt_mismatch', `${head}: ${why.join('; ') || 'its receipt does not match it'}`];
}

export interface ListedCall {
  agent_instance_id: string;
  seq: number;
  tool_id: string;
  action: string;
  policy_decision_id: string;
  time: string;
}

/**
 * Turns one problem row into findings. Apart, not findings: shadow calls the plane would have
 * denied, and calls without a sponsor that custody refused (enforcement doing its job).
 */
export function reportProblem(
  r: ProblemRow,
  findings: Findings,
  lists: { shadowDeny(c: ListedCall): void; blockedWithoutSponsor(c: ListedCall): void },
  /** Why each receipt whose signature failed was refused. */
  badReceipts: ReadonlyMap<string, string> = new Map(),
): void {
  const where = {
    agent_instance_id: r.agent_instance_id,
    seq: Number(r.seq),
    trace_id: r.trace_id,
    span_id: r.span_id,
    tool_id: r.tool_id,
    action: r.action,
    ...(r.policy_decision_id ? { policy_decision_id: r.policy_decision_id } : {}),
    ...(r.token_jti ? { token_jti: r.token_jti } : {}),
  };
  const call = `${r.tool_id}${r.action ? `.${r.action}` : ''} by ${r.agent_instance_id || '(no instance)'}${Number(r.seq) ? ` #${r.seq}` : ''} at ${iso(r.ms)}`;
  const executed = !!Number(r.executed);
  const shadow = !!Number(r.shadow);
  const listed: ListedCall = { agent_instance_id: r.agent_instance_id, seq: Number(r.seq), tool_id: r.tool_id, action: r.action, policy_decision_id: r.policy_decision_id, time: iso(r.ms) };
  if (!executed) {
    if (!r.sponsor_id) lists.blockedWithoutSponsor(listed);
    return;
  }
  if (!r.sponsor_id) findings.add('missing_sponsor', `${call}: no sponsor_id, and the call ran`, where);
  if (Number(r.stub_bad)) {
    const why = !Number(r.d_found)
      ? `its decision ${r.policy_decision_id || '(none)'} is not in the decision log`
      : r.d_decision !== DECISION.ALLOW
        ? `the plane's decision was '${r.d_decision}'`
        : !(Number(r.d_sample_rate) > 0 && Number(r.d_sample_rate) < 1)
          ? 'the plane granted no sampling rate'
          : r.d_risk === 'high' || r.d_risk === 'critical'
            ? `the tool is ${r.d_risk}-risk`
            : 'it is inside the sample, failed, or has no sponsor';
    findings.add('sample_unlawful', `${call}: stored as a sampled-out stub, but ${why}`, where);
  }
  if (shadow) {
    if (Number(r.shadow_deny)) lists.shadowDeny(listed);
    if (!Number(r.shadow_ok)) {
      const why = Number(r.rollout_known)
        ? `the signed rollout in force (${Number(r.rollout_min)}%) put agent instance ${r.agent_instance_id || '(none)'} in the canary cohort, where calls are enforced`
        : 'no signed rollout was in force then';
      findings.add('cohort_unproven', `${call}: claims to have run in shadow (cohort '${r.cohort || '(none)'}', not enforced), but ${why}`, where);
      if (!Number(r.receipt_ok)) findings.add(...receiptFinding(r, call, badReceipts), where);
    }
    return;
  }
  if (!Number(r.receipt_ok)) findings.add(...receiptFinding(r, call, badReceipts), where);
  if (Number(r.deny_executed)) {
    const what = r.d_found && r.d_decision !== DECISION.ALLOW ? r.d_decision : r.call_decision;
    findings.add('deny_executed', `${call}: the policy decision was '${what}' and the call ran anyway`, where);
  }
  const decisionProblems: [Parameters<Findings['add']>[0], string][] = [];
  if (!r.policy_decision_id) decisionProblems.push(['decision_missing', 'no policy_decision_id on the call']);
  else if (!Number(r.d_found)) decisionProblems.push(['decision_missing', `decision ${r.policy_decision_id} is not in the decision log`]);
  else {
    if (r.d_diff.length) decisionProblems.push(['decision_mismatch', `decision ${r.policy_decision_id} is for another ${r.d_diff.join(', ')}`]);
    if (Number(r.d_late)) decisionProblems.push(['decision_after_call', `decision ${r.policy_decision_id} was made at ${iso(r.d_ms)}, after the call started`]);
  }
  const tokenProblems: [Parameters<Findings['add']>[0], string][] = [];
  if (!r.token_jti) tokenProblems.push(['token_missing', 'no token jti on the call']);
  else if (!Number(r.t_found)) tokenProblems.push(['token_unknown', `token ${r.token_jti} was never issued by the token service`]);
  else {
    if (r.t_diff.length) tokenProblems.push(['token_mismatch', `token ${r.token_jti} was issued for another ${r.t_diff.join(', ')}`]);
    if (Number(r.t_late)) tokenProblems.push(['token_after_call', `token ${r.token_jti} was issued at ${iso(r.t_ms)}, after the call started`]);
    if (Number(r.t_expired)) tokenProblems.push(['token_expired', `token ${r.token_jti} expired at ${iso(r.t_exp_ms)}, before the call`]);
  }
  const decisionOk = !!Number(r.decision_ok);
  const tokenOk = !!Number(r.token_ok);
  if (!decisionOk && !tokenOk) {
    const reasons = [...decisionProblems, ...tokenProblems].map(([, m]) => m);
    if (!decisionProblems.length) reasons.unshift(`decision ${r.policy_decision_id} was '${r.d_decision}'`);
    findings.add('self_authorized', `${call}: executed with neither an allow decision nor an issued token (${reasons.join('; ')})`, { ...where, reasons });
    return;
  }
  for (const [kind, message] of [...decisionProblems, ...tokenProblems]) findings.add(kind, `${call}: ${message}`, where);
}
