import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, type Store } from '../../../collector/store';
import type { Checkpointer } from '../../../collector/evidence/checkpoint';
import type { Finding } from '../../../collector/evidence/findings';
import { verifyAudit, type VerifyReport } from '../../../collector/evidence/verify';
import { sampleBucket } from '../../../common/audit-sample';
import { CLI, ROOT, tempDir } from '../../helpers/custody';
import { Scenario, auditRow, checkpointerFor, decisionRow, insert, minutesAgo, tokenRow, type Call } from '../../helpers/evidence';

/**
 * Completeness over crafted rows: first a small team's day that must verify clean (a sponsor, a
 * parent agent and its sub-agent, several tools, calls the plane denied, baseline calls), then
 * one call per way of running without authority, each of which must be reported as what it is.
 */
const dir = tempDir('custody-evidence-complete-');
const PERIOD = 60_000;
const base = minutesAgo(20);
let store: Store;
let cp: Checkpointer;
const s = new Scenario();

const verify = (): Promise<VerifyReport> =>
  verifyAudit({ store, journalDir: `${dir}/checkpoints`, journalRequired: true, localJwksFile: `${dir}/evidence/keys/jwks.json` });
const of = (r: VerifyReport, kind: Finding['kind']) => r.findings.filter((f) => f.kind === kind);

async function write(calls: { c: Call; audit?: Record<string, unknown>; decision?: Record<string, unknown> | null; token?: Record<string, unknown> | null }[]) {
  await insert(store, 'audit_events', calls.map(({ c, audit }) => auditRow(c, audit)));
  await insert(store, 'policy_decisions', calls.filter((x) => x.decision !== null).map(({ c, decision }) => decisionRow(c, decision ?? {})));
  await insert(store, 'token_events', calls.filter((x) => x.token !== null).map(({ c, token }) => tokenRow(c, token ?? {})));
}

beforeAll(async () => {
  store = await openStore({ dataDir: dir });
  ({ cp } = await checkpointerFor(store, dir));
});

afterAll(async () => {
  await store?.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('a small team\'s day', () => {
  it('verifies clean: sponsor, parent and sub-agent, denied calls that did not run, baseline calls', async () => {
    const t0 = base + 1000;
    const parent = [0, 1, 2].map((i) => s.call({ instance: 'support-1', ts: t0 + i * 3000, tool: i === 1 ? 'search' : 'billing', action: i === 1 ? 'query' : 'refund' }));
    const child = [0, 1].map((i) => s.call({ instance: 'support-1.refunds', parent: 'support-1', ts: t0 + 10_000 + i * 3000 }));
    const denied = s.call({ instance: 'support-1', ts: t0 + 20_000, tool: 'file-store', action: 'delete' });
    const baseline = [0, 1].map((i) => s.call({ instance: 'support-2', ts: t0 + 25_000 + i * 3000, cohort: 'baseline' }));
    const blockedByOutage = s.call({ instance: 'support-2', ts: t0 + 35_000 });
    await write([
      ...parent.map((c) => ({ c })),
      ...child.map((c) => ({ c })),
      // the plane denied it and the tool never ran; no token was issued for a tool outside the role
      { c: denied, audit: { decision: 'deny', status: 'error', error_type: 'policy_denied' }, decision: { decision: 'deny' }, token: null },
      ...baseline.map((c) => ({ c, audit: { decision: 'allow' } })),
      // fail closed: the plane was unreachable, no decision, the call refused
      { c: blockedByOutage, audit: { decision: 'error', policy_decision_id: '', status: 'error', error_type: 'policy_unavailable' }, decision: null },
    ]);
    await cp.seal(base, base + PERIOD, 'periodic');
    const r = await verify();
    expect(r.findings).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.checked.calls).toEqual({ calls: 9, executed: 7, gated_executed: 5, blocked: 2, shadow: 2, missing_sponsor: 0, sampled_out: 0 });
    expect(r.shadow).toEqual({ calls: 2, would_deny: 0, listed: [] });
  });

  it('custody audit verify says CLEAN and exits 0; a pinned key set; usage errors exit 2', async () => {
    await store.close();
    const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir], { cwd: ROOT, encoding: 'utf8' });
    expect(out.status, out.stderr + out.stdout).toBe(0);
    expect(out.stdout).toMatch(/result: CLEAN/);
    expect(out.stdout).toMatch(/calls\s+9: 7 executed \(5 gated, 2 shadow\), 2 blocked/);

    // trusting only a pinned key set: the collector's own passes, a stranger's fails every checkpoint
    const pinned = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir, '--jwks', `${dir}/evidence/keys/jwks.json`], { cwd: ROOT, encoding: 'utf8' });
    expect(pinned.status, pinned.stdout).toBe(0);
    const stranger = await generateKeyPair('EdDSA', { extractable: true });
    const strangerJwks = `${tempDir('custody-jwks-')}/jwks.json`;
    fs.writeFileSync(strangerJwks, JSON.stringify({ keys: [{ ...(await exportJWK(stranger.publicKey)), kid: 'stranger', alg: 'EdDSA' }] }));
    const wrong = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dir, '--jwks', strangerJwks, '--json'], { cwd: ROOT, encoding: 'utf8' });
    expect(wrong.status).toBe(1);
    expect((JSON.parse(wrong.stdout) as VerifyReport).counts).toEqual({ checkpoint_unknown_key: 1 });

    // usage errors exit 2 with a message naming what was wrong
    const usage = (args: string[], message: RegExp) => {
      const r = spawnSync(process.execPath, [CLI, 'audit', 'verify', ...args], { cwd: ROOT, encoding: 'utf8' });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(message);
    };
    usage(['--data-dir', `${dir}/nowhere`], /no custody store at/);
    usage(['--data-dir', dir, '--since', 'last tuesday'], /--since 'last tuesday' is neither a duration/);
    usage(['--data-dir', dir, '--checkpoints', `${dir}/nowhere`], /--checkpoints .*no such directory/);
    usage(['--data-dir', dir, '--jwks', `${dir}/nowhere.json`], /cannot read a JWK set/);
    usage(['--clickhouse-url', 'http://127.0.0.1:1/'], /cannot reach ClickHouse/);
    store = await openStore({ dataDir: dir });
    ({ cp } = await checkpointerFor(store, dir));
  });
});

describe('calls that ran without authority', () => {
  const c: Record<string, Call> = {};
  let r: VerifyReport;
  beforeAll(async () => {
    const t0 = base + PERIOD + 1000;
    const at = (i: number) => t0 + i * 2000;
    const names = ['noDecision', 'lateDecision', 'otherTool', 'self', 'deny', 'blocked', 'noSponsor', 'shadowDeny', 'expired', 'noJti', 'otherInstance', 'blockedNoSponsor'];
    names.forEach((n, i) => (c[n] = s.call({ instance: `agent-${n}`, ts: at(i), ...(n === 'noSponsor' || n === 'blockedNoSponsor' ? { sponsor: '' } : {}), ...(n === 'shadowDeny' ? { cohort: 'baseline' } : {}) })));
    await write([
      { c: c.noDecision!, decision: null },
      { c: c.lateDecision!, decision: { timestamp: new Date(c.lateDecision!.ts + 10_000).toISOString() } },
      { c: c.otherTool!, token: { tool_id: 'search' } },
      { c: c.self!, audit: { policy_decision_id: '', decision: '', token_jti: '', enforced: false, cohort: '' }, decision: null, token: null },
      { c: c.deny!, audit: { decision: 'deny' }, decision: { decision: 'deny' } },
      { c: c.blocked!, audit: { decision: 'deny', status: 'error', error_type: 'policy_denied' }, decision: { decision: 'deny' } },
      { c: c.noSponsor! },
      { c: c.shadowDeny!, audit: { decision: 'deny' }, decision: { decision: 'deny', enforced: false } },
      { c: c.expired!, token: { timestamp: new Date(c.expired!.ts - 400_000).toISOString(), expires_at: new Date(c.expired!.ts - 100_000).toISOString() } },
      { c: c.noJti!, audit: { token_jti: '' }, token: null },
      { c: c.otherInstance!, decision: { agent_instance_id: 'someone-else' } },
      { c: c.blockedNoSponsor!, audit: { decision: 'deny', status: 'error', error_type: 'policy_denied' }, decision: { decision: 'deny' } },
    ]);
    await cp.seal(base + PERIOD, base + 2 * PERIOD, 'periodic');
    r = await verify();
  });

  const one = (kind: Finding['kind'], name: string) => {
    const call = c[name]!;
    const found = of(r, kind).filter((f) => f.agent_instance_id === call.instance);
    expect(found, `${kind} for ${name}: ${JSON.stringify(r.findings.filter((f) => f.agent_instance_id === call.instance))}`).toEqual([
      expect.objectContaining({ seq: call.seq, span_id: call.span, trace_id: call.trace, tool_id: call.tool }),
    ]);
    return found[0]!;
  };
  const only = (name: string, kinds: Finding['kind'][]) =>
    expect(r.findings.filter((f) => f.agent_instance_id === c[name]!.instance).map((f) => f.kind).sort()).toEqual([...kinds].sort());

  it('an executed call whose decision is not in the decision log', () => {
    expect(one('decision_missing', 'noDecision').message).toMatch(/is not in the decision log/);
    only('noDecision', ['decision_missing']);
  });

  it('a decision made after the call started', () => {
    expect(one('decision_after_call', 'lateDecision').message).toMatch(/after the call started/);
    only('lateDecision', ['decision_after_call']);
  });

  it('a token issued for another tool', () => {
    expect(one('token_mismatch', 'otherTool').message).toMatch(/issued for another tool/);
    only('otherTool', ['token_mismatch']);
  });

  it('a call with neither decision nor token: self-authorized, the worst finding', () => {
    const f = one('self_authorized', 'self');
    expect(f.severity).toBe('critical');
    expect(f.reasons).toEqual(['no policy_decision_id on the call', 'no token jti on the call']);
    only('self', ['self_authorized']);
  });

  it('a deny that ran anyway; a deny that was obeyed is not reported', () => {
    expect(one('deny_executed', 'deny').severity).toBe('critical');
    only('deny', ['deny_executed']);
    only('blocked', []);
  });

  it('every missing sponsor: a finding when the call ran, listed apart when custody refused it', () => {
    expect(one('missing_sponsor', 'noSponsor').severity).toBe('high');
    only('noSponsor', ['missing_sponsor']);
    only('blockedNoSponsor', []);
    expect(r.blocked_without_sponsor).toEqual({ calls: 1, listed: [expect.objectContaining({ agent_instance_id: c.blockedNoSponsor!.instance, seq: 1 })] });
    expect(r.checked.calls.missing_sponsor).toBe(2);
  });

  it('baseline calls the plane would have denied are listed apart, not as findings', () => {
    only('shadowDeny', []);
    expect(r.shadow.would_deny).toBe(1);
    expect(r.shadow.listed).toEqual([expect.objectContaining({ agent_instance_id: c.shadowDeny!.instance, seq: 1, policy_decision_id: c.shadowDeny!.decisionId })]);
  });

  it('an expired token, a missing token, a decision for another instance', () => {
    one('token_expired', 'expired');
    only('expired', ['token_expired']);
    one('token_missing', 'noJti');
    only('noJti', ['token_missing']);
    expect(one('decision_mismatch', 'otherInstance').message).toMatch(/for another instance/);
    only('otherInstance', ['decision_mismatch']);
  });

  it('the rest of the store stays clean', () => {
    expect(r.findings.filter((f) => f.agent_instance_id?.startsWith('support-'))).toEqual([]);
    expect(r.findings.filter((f) => f.checkpoint_seq !== undefined)).toEqual([]);
    expect(r.ok).toBe(false);
  });
});

describe('sampled-out stubs', () => {
  const c: Record<string, Call> = {};
  let r: VerifyReport;
  beforeAll(async () => {
    const t0 = base + 2 * PERIOD + 1000;
    const names = ['lawful', 'lawfulShadow', 'deny', 'highRisk', 'noRate', 'inSample', 'failed', 'noDecision'];
    names.forEach((n, i) => (c[n] = s.call({ instance: `stub-${n}`, ts: t0 + i * 2000, tool: 'search', action: 'query', ...(n === 'lawfulShadow' ? { cohort: 'baseline' } : {}) })));
    // a rate the call's bucket is past (sampled out), or one it is under (inside the sample)
    const past = (x: Call) => sampleBucket(x.trace, x.span) / 2;
    const under = (x: Call) => Math.min(0.999, (1 + sampleBucket(x.trace, x.span)) / 2);
    const stub = { attributes: {}, purpose: '', audit_sampled: true };
    const granted = (x: Call, rate: number, over: Record<string, unknown> = {}) => ({
      attributes: { 'custody.audit.sample_rate': String(rate), 'custody.tool.risk': 'low' },
      ...over,
    });
    await write([
      { c: c.lawful!, audit: stub, decision: granted(c.lawful!, past(c.lawful!)) },
      { c: c.lawfulShadow!, audit: { ...stub, decision: 'allow' }, decision: granted(c.lawfulShadow!, past(c.lawfulShadow!), { enforced: false }) },
      // the agent says allow; the plane's decision log says deny
      { c: c.deny!, audit: stub, decision: { decision: 'deny' } },
      { c: c.highRisk!, audit: stub, decision: { attributes: { 'custody.audit.sample_rate': '0.5', 'custody.tool.risk': 'high' } } },
      { c: c.noRate!, audit: stub },
      { c: c.inSample!, audit: stub, decision: granted(c.inSample!, under(c.inSample!)) },
      { c: c.failed!, audit: { ...stub, status: 'error', error_type: 'TypeError' }, decision: granted(c.failed!, past(c.failed!)) },
      { c: c.noDecision!, audit: stub, decision: null },
    ]);
    await cp.seal(base + 2 * PERIOD, base + 3 * PERIOD, 'periodic');
    r = await verify();
  });
  const kinds = (name: string) => r.findings.filter((f) => f.agent_instance_id === c[name]!.instance).map((f) => f.kind).sort();

  it('a stub the plane sampled verifies clean, enforced or shadow, and is counted per tool', () => {
    expect(kinds('lawful')).toEqual([]);
    expect(kinds('lawfulShadow')).toEqual([]);
    expect(r.sampled_out).toEqual({ calls: 8, by_tool: { search: 8 } });
    expect(r.checked.calls.sampled_out).toBe(8);
  });

  it.each([
    ['deny', /the plane's decision was 'deny'/],
    ['highRisk', /the tool is high-risk/],
    ['noRate', /granted no sampling rate/],
    ['inSample', /inside the sample/],
    ['failed', /inside the sample, failed, or has no sponsor/],
  ])('a stub that may not be one is a critical finding: %s', (name, message) => {
    expect(kinds(name)).toContain('sample_unlawful');
    const f = r.findings.find((x) => x.agent_instance_id === c[name]!.instance && x.kind === 'sample_unlawful')!;
    expect(f.severity).toBe('critical');
    expect(f.message).toMatch(message);
  });

  it('a stub without a decision is both unproven and unlawful', () => {
    expect(kinds('noDecision')).toEqual(['decision_missing', 'sample_unlawful']);
  });
});
