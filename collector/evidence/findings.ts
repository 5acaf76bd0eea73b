/**
 * What `custody audit verify` reports. Every finding names where it is: the checkpoint and period,
 * the table and row, or the agent instance and seq. A self-authorized call is the worst.
 */
export type Severity = 'critical' | 'high' | 'medium';

export const FINDING_KINDS = {
  // checkpoints (tamper evidence)
  checkpoint_signature_invalid: { severity: 'critical', about: 'a checkpoint whose signature does not verify' },
  checkpoint_unknown_key: { severity: 'critical', about: 'a checkpoint signed by a key not in the trusted key set' },
  checkpoint_copies_differ: { severity: 'critical', about: 'the table and file copies of a checkpoint differ' },
  checkpoint_file_missing: { severity: 'critical', about: 'a checkpoint in the table has no file in the checkpoint directory' },
  checkpoint_row_missing: { severity: 'critical', about: 'a checkpoint file has no row in custody.audit_checkpoints' },
  checkpoint_unreadable: { severity: 'critical', about: 'a stored checkpoint cannot be parsed' },
  checkpoint_chain_broken: { severity: 'critical', about: 'the checkpoint hash chain or the sequence of periods is broken' },
  journal_missing: { severity: 'critical', about: 'the checkpoint directory is missing' },
  journal_stray_file: { severity: 'medium', about: 'a file in the checkpoint directory that is not a checkpoint' },
  key_unrecognised: { severity: 'high', about: 'a key published in the checkpoint directory that the collector never had' },
  no_checkpoints: { severity: 'high', about: 'audit rows exist but nothing was ever sealed' },
  anchor_missing: { severity: 'critical', about: 'the checkpoint chain does not reach the head anchored outside custody' },
  // periods and rows
  period_altered: { severity: 'critical', about: 'a sealed period whose rows no longer match its checkpoint' },
  row_altered: { severity: 'critical', about: 'a sealed row changed' },
  row_removed: { severity: 'critical', about: 'a sealed row is gone' },
  row_inserted: { severity: 'critical', about: 'a row inside a sealed period that was not sealed' },
  rows_unsealed: { severity: 'critical', about: 'rows written where no checkpoint covers them (before the first, or in a gap)' },
  leaf_index_altered: { severity: 'high', about: 'a checkpoint\'s leaf index no longer matches its root, so rows cannot be named' },
  rows_written_while_stopped: { severity: 'high', about: 'rows written after a clean shutdown and before the next start' },
  // per-instance chains
  chain_break: { severity: 'critical', about: 'a call\'s prev_hash does not match the call before it' },
  chain_gap: { severity: 'critical', about: 'calls missing from an instance\'s chain' },
  chain_duplicate: { severity: 'high', about: 'two calls with the same seq in one instance' },
  chain_start: { severity: 'high', about: 'an instance\'s chain does not start at seq 1' },
  // completeness
  self_authorized: { severity: 'critical', about: 'an executed call with neither an allow decision nor an issued token' },
  deny_executed: { severity: 'critical', about: 'a call denied (or not decided) by the policy plane that ran anyway' },
  decision_missing: { severity: 'high', about: 'an executed call with no decision in the decision log' },
  decision_mismatch: { severity: 'high', about: 'the decision names another identity, tool or action' },
  decision_after_call: { severity: 'high', about: 'the decision was made after the call started' },
  token_missing: { severity: 'high', about: 'an executed call with no token' },
  token_unknown: { severity: 'high', about: 'the call\'s token was never issued by the token service' },
  token_mismatch: { severity: 'high', about: 'the token was issued to another sponsor, instance or tool' },
  token_after_call: { severity: 'high', about: 'the token was issued after the call started' },
  token_expired: { severity: 'high', about: 'the token had expired when the call started' },
  missing_sponsor: { severity: 'high', about: 'a call that ran without a sponsor' },
  sample_unlawful: { severity: 'critical', about: 'a call stored as a sampled-out stub that may never be sampled (not an allow with a granted rate, high-risk, failed, unsponsored, or inside the sample)' },
  // receipts (the policy plane's signatures)
  receipt_missing: { severity: 'critical', about: 'an executed gated call without the policy plane\'s receipt' },
  receipt_invalid: { severity: 'critical', about: 'a call whose receipt is not signed by the policy plane' },
  receipt_mismatch: { severity: 'critical', about: 'a call whose receipt is for another call, or not an allow' },
  cohort_unproven: { severity: 'critical', about: 'a call claiming the shadow cohort that the signed rollout put in the enforced one' },
  rollout_receipt_invalid: { severity: 'critical', about: 'a rollout change whose receipt is not signed by the policy plane' },
  approval_unproven: { severity: 'critical', about: 'an approved call whose signed decision does not name the same approval and approver' },
  // policy changes
  policy_receipt_invalid: { severity: 'critical', about: 'a policy load or refused reload whose receipt is not the policy plane\'s, or says something else' },
  policy_version_unknown: { severity: 'high', about: 'decisions naming a policy version that no recorded policy load put in force' },
} as const satisfies Record<string, { severity: Severity; about: string }>;

export type FindingKind = keyof typeof FINDING_KINDS;

export interface Finding {
  kind: FindingKind;
  severity: Severity;
  message: string;
  checkpoint_seq?: number;
  period_start?: string;
  period_end?: string;
  file?: string;
  table?: string;
  row_key?: string;
  row?: string;
  agent_instance_id?: string;
  seq?: number;
  trace_id?: string;
  span_id?: string;
  tool_id?: string;
  action?: string;
  policy_decision_id?: string;
  token_jti?: string;
  /** For completeness findings: what each check found. */
  reasons?: string[];
}

/**
 * Findings, counted in full and listed up to a cap per kind, so that a store with a million bad
 * rows is still verified in constant memory.
 */
export class Findings {
  readonly listed: Finding[] = [];
  readonly counts: Partial<Record<FindingKind, number>> = {};
  notListed = 0;

  constructor(private readonly maxPerKind: number) {}

  add(kind: FindingKind, message: string, where: Omit<Finding, 'kind' | 'severity' | 'message'> = {}, severity?: Severity): void {
    const n = (this.counts[kind] ?? 0) + 1;
    this.counts[kind] = n;
    if (n > this.maxPerKind) {
      this.notListed += 1;
      return;
    }
    this.listed.push({ kind, severity: severity ?? FINDING_KINDS[kind].severity, message, ...where });
  }

  /** Counts `n` more findings of a kind without listing them. */
  count(kind: FindingKind, n: number): void {
    if (n <= 0) return;
    this.counts[kind] = (this.counts[kind] ?? 0) + n;
    this.notListed += n;
  }

  get total(): number {
    return Object.values(this.counts).reduce((a, b) => a + (b ?? 0), 0);
  }
}
