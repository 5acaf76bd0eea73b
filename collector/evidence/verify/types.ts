import type { PolicyReport } from './policy';
import type { JSONWebKeySet } from 'jose';
import type { Store } from '../../store';
import type { CompletenessTotals, ListedCall } from '../completeness';
import type { Finding, FindingKind } from '../findings';
import type { SignedCheckpoint } from '../record';

export interface VerifyProgress {
  phase: 'checkpoints' | 'periods' | 'calls';
  done: number;
  total?: number;
}

export interface VerifyOptions {
  store: Store;
  /** The checkpoint directory; `journalRequired` makes its absence a finding. */
  journalDir?: string;
  journalRequired?: boolean;
  /** Trusted public keys; when given, the only ones accepted. */
  jwks?: JSONWebKeySet;
  /** The collector's own key set file (<data-dir>/evidence/keys/jwks.json), if at hand. */
  localJwksFile?: string;
  /** The policy plane's receipt keys; when given, the only ones accepted. */
  policyJwks?: JSONWebKeySet;
  /** The plane's own key set file (<data-dir>/policy/keys/jwks.json), if at hand. Without plane keys receipts are not checked. */
  localPolicyJwksFile?: string;
  /** How long before a shadow call a rollout still counts as in force for it (agents act on the rollout they read; default 35 s + clock skew). */
  cohortGraceMs?: number;
  /** Rows written less than this long before now are pending (a period plus the lag: not sealed yet by design). Default 75 s. */
  pendingMs?: number;
  /** A head anchored outside custody (an external log, a WORM bucket): the chain must reach it. */
  expectHead?: string;
  expectSeq?: number;
  /** Verify periods, chains and calls from this time on (epoch ms); the checkpoint chain is always walked whole. */
  sinceMs?: number;
  nowMs?: number;
  clockSkewMs?: number;
  maxListedPerKind?: number;
  /** Rows per page (periods batch, instance range). */
  pageRows?: number;
  /** Audit retention; removed rows older than this are expired, not findings. Default: the table's TTL. */
  retentionDays?: number;
  onProgress?: (p: VerifyProgress) => void;
}

export interface VerifyReport {
  ok: boolean;
  checked: {
    checkpoints: number;
    periods_verified: number;
    rows_verified: number;
    rows_unsealed_after_last: number;
    /** Rows younger than a period plus the lag, not sealed yet: pending, not a finding. */
    rows_pending: number;
    instances: number;
    chained_calls: number;
    unchained_calls: number;
    calls: CompletenessTotals;
  };
  head?: { seq: number; checkpoint_hash: string; period_end: string };
  /** The anchored head asked for, and whether the chain reaches it. */
  anchor?: { expected_head?: string; expected_seq?: number; found: boolean };
  keys: { kid: string; source: string }[];
  /** The policy plane's receipts: whether they were checked, with which keys, how many distinct ones were verified. */
  receipts: { checked: boolean; keys: string[]; source?: string; verified: number; rollout_states: number; unsigned_rollout_rows: number };
  findings: Finding[];
  counts: Partial<Record<FindingKind, number>>;
  not_listed: number;
  shadow: { calls: number; would_deny: number; listed: ListedCall[] };
  /** Calls that waited for a human: how many were approved (by whom, as their signed decisions say), denied, expired. */
  approvals: { approved: number; by: Record<string, number>; denied: number; expired: number };
  /** Calls without a sponsor that custody refused: listed, not findings. */
  blocked_without_sponsor: { calls: number; listed: ListedCall[] };
  /** Policy loads and refused reloads, each checked against the plane's receipt; the decisions checked to name a loaded version. */
  policy: PolicyReport;
  /** Calls stored as sampled-out stubs (chained and proven against the decision log), by tool. */
  sampled_out: { calls: number; by_tool: Record<string, number> };
  notes: string[];
}

/** A checkpoint accepted on the walk, with its period in epoch ms. */
export interface Walked {
  signed: SignedCheckpoint;
  start: number;
  end: number;
  /** Where the copy used came from. */
  from: 'table' | 'file';
}

export const iso = (ms: number): string => new Date(ms).toISOString();
export const msOf = (text: string): number => Date.parse(text);

/** Where a checkpoint's findings point. */
export const where = (w: Walked) => ({
  checkpoint_seq: w.signed.checkpoint.seq,
  period_start: w.signed.checkpoint.period_start,
  period_end: w.signed.checkpoint.period_end,
});
