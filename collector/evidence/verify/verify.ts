import { verifyPolicyEvents } from './policy';
import { TABLE } from '../../../common/names';
import type { Store } from '../../store';
import { Findings } from '../findings';
import { CheckpointJournal } from '../journal';
import { countRows } from '../periods';
import { verifyCalls } from './calls';
import { walkCheckpoints } from './checkpoints';
import { trustedKeys } from './keys';
import { PeriodVerifier } from './periods';
import { planeKeys } from './receipts';
import { verifyApprovals } from './approvals';
import { iso, type VerifyOptions, type VerifyReport, type Walked } from './types';

/**
 * `custody audit verify`, offline: the stored rows against the signed checkpoints (both copies,
 * their signatures, their hash chain, every period's Merkle root), every agent instance's audit
 * chain, and the completeness of authorization. Work is done in pages (batches of periods,
 * ranges of agent instances), with hashing inside ClickHouse, so memory stays flat however much
 * is stored; findings are counted in full and listed up to a cap per kind.
 *
 * The steps, each in its own module: keys (which checkpoint keys to trust), checkpoints (the
 * chain over both copies), periods (the rows against each sealed period), calls (chains and
 * completeness).
 */
export async function verifyAudit(options: VerifyOptions): Promise<VerifyReport> {
  const { store } = options;
  const now = options.nowMs ?? Date.now();
  const pageRows = options.pageRows ?? 200_000;
  const maxListed = options.maxListedPerKind ?? 200;
  const progress = options.onProgress ?? (() => undefined);
  const findings = new Findings(maxListed);
  const notes: string[] = [];
  const retentionDays = options.retentionDays ?? (await tableRetentionDays(store)) ?? 90;
  const sinceMs = options.sinceMs;

  const journal = options.journalDir ? new CheckpointJournal(options.journalDir) : undefined;
  const journalPresent = !!journal && journal.exists();
  const keys = trustedKeys({ ...pick(options), ...(journal ? { journal } : {}), journalPresent }, findings, notes);

  if (journal && !journalPresent && options.journalRequired) {
    findings.add('journal_missing', `the checkpoint directory ${journal.dir} does not exist: the copies outside the database cannot be compared (pass --checkpoints DIR)`, { file: journal.dir });
  }
  if (journalPresent) for (const s of journal!.list().strays) findings.add('journal_stray_file', `${journal!.dir}/${s} is not a checkpoint file`, { file: `${journal!.dir}/${s}` });

  const periods = new PeriodVerifier({
    store,
    findings,
    notes,
    maxListed,
    pageRows,
    expiredBefore: now - retentionDays * 86_400_000,
    retentionDays,
    ...(sinceMs !== undefined ? { sinceMs } : {}),
    progress,
  });
  let anchoredAt: number | undefined;
  const walk = await walkCheckpoints({ store, ...(journal ? { journal } : {}), journalPresent, trusted: keys.trusted, findings }, async (w, count) => {
    if (count % 1000 === 0) progress({ phase: 'checkpoints', done: count });
    if (options.expectHead !== undefined && w.signed.checkpoint_hash === options.expectHead) anchoredAt = w.signed.checkpoint.seq;
    await periods.accept(w);
  });
  await periods.flush();
  progress({ phase: 'checkpoints', done: walk.count, total: walk.count });
  periods.reportWrittenWhileStopped();

  const anchor = checkAnchor(options, walk.last, anchoredAt, findings);

  // rows outside every checkpoint; the youngest are pending: the checkpointer seals a period once a period plus the lag have passed
  const END = 8_640_000_000_000;
  const pendingFrom = now - (options.pendingMs ?? 75_000);
  let unsealedAfter = 0;
  let pending = 0;
  const { first, last } = walk;
  if (first && last) {
    if (first.signed.checkpoint.seq === 1 && (sinceMs === undefined || sinceMs < first.start)) {
      await periods.reportUnsealed({ start: 0, end: first.start }, 'before the first checkpoint');
    }
    unsealedAfter = await countRows(store, last.end, END);
    pending = unsealedAfter ? await countRows(store, Math.max(last.end, pendingFrom), END) : 0;
    if (unsealedAfter > pending) notes.push(`${unsealedAfter - pending} rows were written after the last checkpoint (${last.signed.checkpoint.period_end}) and are not sealed yet`);
  } else {
    const n = await countRows(store, 0, pendingFrom);
    pending = await countRows(store, pendingFrom, END);
    if (n) findings.add('no_checkpoints', `${n} evidence rows are stored but there is no checkpoint: nothing vouches for them (was the checkpointer off?)`);
  }
  if (pending) notes.push(`${pending} rows written since ${iso(pendingFrom)} are pending, not yet sealed (the checkpointer seals a period once a period plus the lag have passed)`);

  const plane = planeKeys(options);
  if (!plane) notes.push('no policy-plane keys found: decision receipts and cohort claims were not checked (pass --policy-jwks FILE, the set from GET /v1/policy/jwks.json, or --data-dir)');
  else if (!plane.keys.size) notes.push(`the policy-plane key set (${plane.source}) holds no Ed25519 key: no receipt can verify`);
  const skew = options.clockSkewMs ?? 1000;
  const calls = await verifyCalls({
    store,
    findings,
    maxListed,
    pageRows,
    clockSkewMs: skew,
    ...(sinceMs !== undefined ? { sinceMs } : {}),
    progress,
    ...(plane ? { receipts: { keys: plane.keys, graceMs: options.cohortGraceMs ?? 35_000 + skew } } : {}),
  });
  const approvals = await verifyApprovals(store, findings, { receiptsChecked: !!plane, ...(sinceMs !== undefined ? { sinceMs } : {}) });
  const policy = await verifyPolicyEvents(store, findings, plane?.keys, sinceMs);
  if (!policy.events) notes.push('no policy changes recorded (stored before custody recorded them): the policy versions of decisions were not checked');
  if (calls.receipts?.unsigned_rollout_rows) {
    notes.push(`${calls.receipts.unsigned_rollout_rows} rollout changes carry no receipt (written before receipts, or not by the plane): not used to prove cohorts`);
  }

  const head = last ? { seq: last.signed.checkpoint.seq, checkpoint_hash: last.signed.checkpoint_hash, period_end: last.signed.checkpoint.period_end } : undefined;
  return {
    ok: findings.total === 0,
    checked: {
      checkpoints: walk.count,
      periods_verified: periods.periodsVerified,
      rows_verified: periods.rowsVerified,
      rows_unsealed_after_last: unsealedAfter,
      rows_pending: pending,
      instances: calls.instances,
      chained_calls: calls.chained_calls,
      unchained_calls: calls.unchained_calls,
      calls: calls.totals,
    },
    ...(head ? { head } : {}),
    ...(anchor ? { anchor } : {}),
    keys: [...keys.sources.entries()].map(([kid, v]) => ({ kid, source: v.source })),
    receipts: {
      checked: !!plane,
      keys: plane?.keys.kids() ?? [],
      ...(plane ? { source: plane.source } : {}),
      verified: calls.receipts?.verified ?? 0,
      rollout_states: calls.receipts?.rollout_states ?? 0,
      unsigned_rollout_rows: calls.receipts?.unsigned_rollout_rows ?? 0,
    },
    findings: findings.listed,
    counts: findings.counts,
    not_listed: findings.notListed,
    shadow: { calls: calls.totals.shadow, would_deny: calls.shadow.would_deny, listed: calls.shadow.listed },
    blocked_without_sponsor: calls.blocked_without_sponsor,
    approvals,
    sampled_out: { calls: calls.totals.sampled_out, by_tool: calls.sampled_out_by_tool },
    policy,
    notes,
  };
}

/**
 * The chain must reach a head anchored outside custody: the checkpoint with that hash (and seq)
 * must be on it. Deleting the last checkpoints, with their rows and files, leaves a chain that
 * verifies on its own; only an anchor kept elsewhere shows what is missing.
 */
function checkAnchor(o: VerifyOptions, last: Walked | undefined, anchoredAt: number | undefined, findings: Findings): VerifyReport['anchor'] {
  if (o.expectHead === undefined && o.expectSeq === undefined) return undefined;
  const end = last ? `the chain ends at checkpoint ${last.signed.checkpoint.seq} (${last.signed.checkpoint_hash})` : 'there is no checkpoint';
  let found = true;
  if (o.expectHead !== undefined) {
    if (anchoredAt === undefined) {
      found = false;
      findings.add('anchor_missing', `the anchored head ${o.expectHead} is not on the checkpoint chain: ${end}; checkpoints after it were removed or rewritten`);
    } else if (o.expectSeq !== undefined && anchoredAt !== o.expectSeq) {
      found = false;
      findings.add('anchor_missing', `the anchored head ${o.expectHead} is checkpoint ${anchoredAt} on the chain, not ${o.expectSeq}`, { checkpoint_seq: anchoredAt });
    }
  } else if (!last || last.signed.checkpoint.seq < o.expectSeq!) {
    found = false;
    findings.add('anchor_missing', `checkpoint ${o.expectSeq} was anchored but ${end}: the checkpoints after it were removed`);
  }
  return { ...(o.expectHead !== undefined ? { expected_head: o.expectHead } : {}), ...(o.expectSeq !== undefined ? { expected_seq: o.expectSeq } : {}), found };
}

function pick(o: Pick<VerifyOptions, 'jwks' | 'localJwksFile'>): { jwks?: VerifyOptions['jwks']; localJwksFile?: string } {
  return { ...(o.jwks ? { jwks: o.jwks } : {}), ...(o.localJwksFile ? { localJwksFile: o.localJwksFile } : {}) };
}

async function tableRetentionDays(store: Store): Promise<number | undefined> {
  const [r] = await store.rows<{ engine_full: string }>(`SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}`, {
    db: store.database,
    t: TABLE.AUDIT_EVENTS,
  });
  const m = r ? /toIntervalDay\((\d+)\)/.exec(r.engine_full) : null;
  return m ? Number(m[1]) : undefined;
}
