import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { compactVerify, createLocalJWKSet, exportJWK, generateKeyPair, type JSONWebKeySet } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Finding } from '../../../collector/evidence/findings';
import type { VerifyReport } from '../../../collector/evidence/verify';
import { openStore } from '../../../collector/store';
import { createLogger } from '../../../common/log';
import { RECEIPT_BATCH_TYPE, RECEIPT_TYPE, ReceiptKeys, receiptSigner, type DecisionReceipt } from '../../../common/receipt';
import { decisionId } from '../../../enforcer/policy/ids';
import { cohortBucket } from '../../../enforcer/policy/rollout';
import { auditEventsOf, runAgent } from '../../helpers/agents';
import { CLI, ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../../helpers/custody';
import { ADMIN_TOKEN, check, issue, metric, policyFile, putRollout } from '../../helpers/policy';

/**
 * Signed decisions against a real `custody up`: the plane signs a receipt for every decision and
 * publishes its keys; agents put the receipt on the call's span; `custody audit verify` proves
 * every executed gated call with it. The attacks: a token event, an allow decision and an
 * executed billing.refund all sent over OTLP by someone who holds no key; the same with a receipt
 * signed by the attacker's own key; and a call that claims the baseline (shadow) cohort while the
 * signed rollout enforced it.
 */
const dataDir = tempDir('custody-receipts-');
const env = { CUSTODY_ADMIN_TOKEN: ADMIN_TOKEN, CUSTODY_CHECKPOINT_PERIOD: '2s', CUSTODY_CHECKPOINT_LAG: '1s' };
let custody: RunningCustody;
// a generous deadline: the machine running the tests may be busy
const AGENT_ENV = { CUSTODY_SPONSOR_ID: 'alice', CUSTODY_ROLE: 'support', CUSTODY_POLICY_TIMEOUT_MS: '5000' };

afterAll(async () => {
  await custody?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

const str = (key: string, v: string) => ({ key, value: { stringValue: v } });
const int = (key: string, v: number) => ({ key, value: { intValue: String(v) } });
const bool = (key: string, v: boolean) => ({ key, value: { boolValue: v } });
const nanos = (ms: number) => String(BigInt(ms) * 1_000_000n);

interface Forged {
  instance: string;
  receipt?: string;
  cohort?: 'canary' | 'baseline';
  at: number;
}

/** The three rows of an authorized call, written by someone with no key: token event, allow decision, executed call. */
function forgedSpans(f: Forged) {
  const traceId = randomBytes(16).toString('hex');
  const jti = randomUUID();
  const id = decisionId(f.at - 5);
  const who = [str('custody.sponsor_id', 'alice'), str('custody.agent_instance_id', f.instance), str('custody.tool_id', 'billing')];
  const cohort = f.cohort ?? 'canary';
  const span = (name: string, ms: number, attributes: unknown[]) => ({
    traceId,
    spanId: randomBytes(8).toString('hex'),
    name,
    kind: 1,
    startTimeUnixNano: nanos(ms),
    endTimeUnixNano: nanos(ms + 3),
    attributes,
    status: { code: 1 },
  });
  return [
    span('custody.token.issue', f.at - 20, [...who, str('custody.token.result', 'issued'), str('custody.token.kind', 'issue'), str('custody.token.jti', jti), str('custody.role', 'support'), int('custody.token.ttl_seconds', 300), int('custody.token.expires_at', f.at + 300_000)]),
    span('custody.policy.decision', f.at - 5, [...who, str('custody.action', 'refund'), str('custody.policy_decision_id', id), str('custody.policy.decision', 'allow'), str('custody.policy.rule_id', 'support-refunds'), str('custody.rollout.cohort', cohort), bool('custody.enforced', cohort === 'canary'), str('custody.token.jti', jti)]),
    span('execute_tool billing.refund', f.at, [
      ...who,
      str('gen_ai.operation.name', 'execute_tool'),
      str('gen_ai.tool.name', 'billing.refund'),
      str('custody.action', 'refund'),
      str('custody.policy_decision_id', id),
      str('custody.policy.decision', 'allow'),
      str('custody.rollout.cohort', cohort),
      bool('custody.enforced', cohort === 'canary'),
      str('custody.token.jti', jti),
      ...(f.receipt ? [str('custody.policy.receipt', f.receipt)] : []),
    ]),
  ];
}

async function sendOtlp(spans: unknown[]): Promise<void> {
  const res = await fetch(`${custody.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ resourceSpans: [{ resource: { attributes: [str('service.name', 'billing-agent')] }, scopeSpans: [{ spans }] }] }),
  });
  expect(res.status, await res.text()).toBe(200);
}

/** An instance id that is canary under any rollout of 5 % or more. */
function canaryInstance(tag: string): string {
  for (;;) {
    const id = `${tag}-${randomUUID()}`;
    if (cohortBucket(id) < 5) return id;
  }
}

describe('signed decisions through a real custody up', () => {
  let planeJwks: JSONWebKeySet;
  const real: string[] = [];
  const forged = {
    unsigned: canaryInstance('forged-unsigned'),
    selfSigned: canaryInstance('forged-self-signed'),
    baseline: canaryInstance('forged-baseline'),
    replayed: canaryInstance('forged-replayed'),
    batchEdited: canaryInstance('forged-batch-edited'),
  };
  let at = 0;
  /** Receipts of decisions the plane made together (one signature over a batch). */
  const batched: string[] = [];
  let concurrentRoot = '';

  beforeAll(async () => {
    custody = await startCustody({ dataDir, args: ['--policy', policyFile()], env });
    expect((await putRollout(custody.url, { percent: 100, reason: 'receipts test' })).status).toBe(200);
  });

  it('publishes its receipt keys and answers every check with a receipt any JOSE library verifies', async () => {
    const res = await fetch(`${custody.url}/v1/policy/jwks.json`);
    expect(res.status).toBe(200);
    planeJwks = await res.json();
    expect(planeJwks.keys).toEqual([expect.objectContaining({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA' })]);
    expect((planeJwks.keys[0] as { d?: string }).d).toBeUndefined();

    const instance = `receipt-check-${randomUUID()}`;
    const { token, claims } = await issue(custody.url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: instance, role: 'support' });
    const answer = await check(custody.url, { token, tool: 'billing', action: 'refund' });
    expect(answer.status).toBe(200);
    const { payload, protectedHeader } = await compactVerify(answer.body.receipt, createLocalJWKSet(planeJwks));
    expect(protectedHeader).toMatchObject({ alg: 'EdDSA', typ: RECEIPT_TYPE.DECISION, kid: planeJwks.keys[0]!.kid });
    const r = JSON.parse(new TextDecoder().decode(payload)) as DecisionReceipt;
    expect(r).toMatchObject({
      id: answer.body.policy_decision_id,
      decision: answer.body.decision,
      sponsor_id: 'alice',
      agent_instance_id: instance,
      tool_id: 'billing',
      action: 'refund',
      cohort: answer.body.cohort,
      enforced: answer.body.enforced,
      token_jti: claims.jti,
      policy_version: answer.body.policy_version,
      rollout_percent: 100,
    });
    expect(Math.abs(r.time - Date.now())).toBeLessThan(60_000);

    // rotation keeps the retired key published (receipts are verified as long as the audit is kept)
    expect((await fetch(`${custody.url}/v1/policy/keys/rotate`, { method: 'POST' })).status).toBe(401);
    const rotated = await fetch(`${custody.url}/v1/policy/keys/rotate`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(rotated.status).toBe(200);
    const body = await rotated.json();
    expect(body.retired).toBe(planeJwks.keys[0]!.kid);
    planeJwks = await (await fetch(`${custody.url}/v1/policy/jwks.json`)).json();
    expect(planeJwks.keys.map((k) => k.kid)).toEqual([body.kid, body.retired]);
    const after = await check(custody.url, { token: (await issue(custody.url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: instance, role: 'support' })).token, tool: 'billing', action: 'refund' });
    expect((await compactVerify(after.body.receipt, createLocalJWKSet(planeJwks))).protectedHeader.kid).toBe(body.kid);
  });

  it('real agents carry the receipt on their tool-call spans', { timeout: 180_000 }, async () => {
    const root = `real-${randomUUID()}`;
    const run = await runAgent('receipt-calls.cjs', { custody, env: { ...AGENT_ENV, CUSTODY_AGENT_INSTANCE_ID: root }, timeoutMs: 150_000 });
    expect(run.code, run.stderr).toBe(0);
    const report = run.report as { sub: { agent: { agentInstanceId: string }; call: { ok: boolean } }; calls: { ok: boolean; code?: string }[] };
    expect(report.calls.map((c) => c.ok), JSON.stringify(report.calls)).toEqual([true, true, false]);
    expect(report.sub.call.ok).toBe(true);
    real.push(root, report.sub.agent.agentInstanceId);
    const events = await auditEventsOf(custody, root, 3);
    await auditEventsOf(custody, real[1]!, 1);
    const ran = events.filter((e) => e.status !== 'error');
    expect(ran.length).toBe(2);
  });

  it('signs concurrent checks together: batch receipts that verify, each for its own decision', { timeout: 120_000 }, async () => {
    const keys = new ReceiptKeys(planeJwks);
    const header = (r: string) => JSON.parse(Buffer.from(r.split('.')[0]!, 'base64url').toString('utf8'));
    // requests that arrive together are decided in one event-loop turn, most rounds; a few rounds make it certain
    for (let round = 0; round < 10 && batched.length === 0; round++) {
      const tokens = await Promise.all(
        Array.from({ length: 32 }, async (_, i) => {
          const instance = `receipt-batch-${round}-${i}-${randomUUID()}`;
          return { instance, ...(await issue(custody.url, { tool: 'search', sponsor_id: 'alice', agent_instance_id: instance, role: 'support' })) };
        }),
      );
      const answers = await Promise.all(tokens.map((t) => check(custody.url, { token: t.token, tool: 'search', action: 'call' })));
      expect(answers.map((a) => a.status)).toEqual(Array(32).fill(200));
      const receipts = answers.map((a) => a.body.receipt as string);
      const checks = await keys.verifyAll<DecisionReceipt>(receipts, RECEIPT_TYPE.DECISION);
      checks.forEach((c, i) => {
        expect(c.ok, c.ok ? '' : c.message).toBe(true);
        expect((c as { payload: DecisionReceipt }).payload).toMatchObject({ id: answers[i]!.body.policy_decision_id, agent_instance_id: tokens[i]!.instance, token_jti: tokens[i]!.claims.jti, decision: 'allow' });
        expect(checks[i]).toEqual(keys.verify(receipts[i]!, RECEIPT_TYPE.DECISION));
      });
      batched.push(...receipts.filter((r) => header(r).typ === RECEIPT_BATCH_TYPE[RECEIPT_TYPE.DECISION] && header(r).n > 1));
    }
    expect(batched.length).toBeGreaterThan(1);
    expect(await metric(custody.url, 'custody_policy_receipt_batch_size_count')).toBeGreaterThan(0);
  });

  it('a real agent making calls at once carries the receipts of batches on them', { timeout: 180_000 }, async () => {
    concurrentRoot = `concurrent-${randomUUID()}`;
    const run = await runAgent('concurrent-calls.cjs', { custody, env: { ...AGENT_ENV, CUSTODY_AGENT_INSTANCE_ID: concurrentRoot, CALLS: '24' }, timeoutMs: 150_000 });
    expect(run.code, run.stderr).toBe(0);
    const calls = (run.report as { calls: { ok: boolean; code?: string }[] }).calls;
    expect(calls.filter((c) => !c.ok), JSON.stringify(calls)).toEqual([]);
    real.push(concurrentRoot);
    await auditEventsOf(custody, concurrentRoot, 24);
  });

  it('takes forged rows over OTLP as it takes any span', { timeout: 120_000 }, async () => {
    at = Date.now();
    // the attacker's own key, under the plane's kid
    const { privateKey } = await generateKeyPair('EdDSA', { extractable: true });
    const liar = receiptSigner(planeJwks.keys[0]!.kid!, privateKey);
    expect(await exportJWK(privateKey)).toHaveProperty('d');
    const fake = (instance: string): string =>
      liar.sign(RECEIPT_TYPE.DECISION, { id: 'x', decision: 'allow', sponsor_id: 'alice', agent_instance_id: instance, tool_id: 'billing', action: 'refund' });
    // a genuine receipt, for another call, replayed on this one
    const { token } = await issue(custody.url, { tool: 'billing', sponsor_id: 'alice', agent_instance_id: `receipt-check-${randomUUID()}`, role: 'support' });
    const genuine = (await check(custody.url, { token, tool: 'billing', action: 'refund' })).body.receipt as string;
    // a genuine batch receipt whose decision is rewritten for the forged call, its header and proof kept
    const [h, , proof] = batched[0]!.split('.');
    const rewritten = JSON.stringify({ id: 'x', decision: 'allow', sponsor_id: 'alice', agent_instance_id: forged.batchEdited, tool_id: 'billing', action: 'refund' });
    await sendOtlp([
      ...forgedSpans({ instance: forged.batchEdited, at: at + 40, receipt: `${h}.${Buffer.from(rewritten).toString('base64url')}.${proof}` }),
      ...forgedSpans({ instance: forged.unsigned, at }),
      ...forgedSpans({ instance: forged.selfSigned, at: at + 10, receipt: fake(forged.selfSigned) }),
      ...forgedSpans({ instance: forged.baseline, at: at + 20, cohort: 'baseline' }),
      ...forgedSpans({ instance: forged.replayed, at: at + 30, receipt: genuine }),
    ]);
    for (const id of Object.values(forged)) await auditEventsOf(custody, id, 1);
  });

  it('custody audit verify proves the real calls and names each forged one, CRITICAL, exit 1', { timeout: 240_000 }, async () => {
    expect(await custody.stop()).toBe(0);
    const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--json'], { cwd: ROOT, encoding: 'utf8' });
    expect(out.status, out.stderr).toBe(1);
    const r = JSON.parse(out.stdout) as VerifyReport;
    expect(r.receipts, out.stdout.slice(0, 800)).toBeDefined();
    expect(r.receipts.checked).toBe(true);
    expect(r.receipts.keys.sort()).toEqual(planeJwks.keys.map((k) => k.kid!).sort());
    expect(r.receipts.verified).toBeGreaterThan(0);
    const of = (instance: string) => r.findings.filter((f) => f.agent_instance_id === instance);
    // the real agents' calls are proven
    for (const id of real) expect(of(id), id).toEqual([]);
    const named = (f: Finding | undefined, instance: string, time: number) => {
      expect(f).toMatchObject({ severity: 'critical', agent_instance_id: instance, tool_id: 'billing', action: 'refund' });
      expect(f!.message).toContain(`billing.refund by ${instance}`);
      expect(f!.message).toContain(new Date(time).toISOString());
    };
    // besides the receipt, a forged call has no decision in the plane's own log (only the plane
    // writes it): the completeness check names it too, so each kind is looked for among its findings
    const kind = (instance: string, k: string) => of(instance).find((f) => f.kind === k);
    expect(of(forged.unsigned).map((f) => f.kind)).toContain('receipt_missing');
    named(kind(forged.unsigned, 'receipt_missing'), forged.unsigned, at);
    expect(of(forged.selfSigned).map((f) => f.kind)).toContain('receipt_invalid');
    named(kind(forged.selfSigned, 'receipt_invalid'), forged.selfSigned, at + 10);
    expect(kind(forged.selfSigned, 'receipt_invalid')!.message).toMatch(/signature does not verify/);
    expect(of(forged.batchEdited).map((f) => f.kind)).toContain('receipt_invalid');
    named(kind(forged.batchEdited, 'receipt_invalid'), forged.batchEdited, at + 40);
    expect(of(forged.replayed).map((f) => f.kind)).toContain('receipt_mismatch');
    expect(kind(forged.replayed, 'receipt_mismatch')!.message).toMatch(/receipt is for another decision id, instance, token/);
    // lying about the cohort: the signed rollout enforced this instance
    expect(of(forged.baseline).map((f) => f.kind)).toEqual(expect.arrayContaining(['cohort_unproven', 'receipt_missing']));
    named(of(forged.baseline).find((f) => f.kind === 'cohort_unproven'), forged.baseline, at + 20);
    expect(of(forged.baseline).find((f) => f.kind === 'cohort_unproven')!.message).toMatch(/signed rollout in force \(\d+%\) put agent instance .* in the canary cohort/);
    expect(Object.keys(r.counts)).toEqual(expect.arrayContaining(['cohort_unproven', 'receipt_invalid', 'receipt_mismatch', 'receipt_missing']));

    const text = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir], { cwd: ROOT, encoding: 'utf8' });
    expect(text.status).toBe(1);
    expect(text.stdout).toMatch(new RegExp(`CRITICAL\\s+receipt_missing\\s+billing\\.refund by ${forged.unsigned}`));

  });

  it('trusts only a pinned plane key set when given one', { timeout: 180_000 }, async () => {
    const { publicKey } = await generateKeyPair('EdDSA', { extractable: true });
    const file = path.join(tempDir('custody-policy-jwks-'), 'jwks.json');
    fs.writeFileSync(file, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'stranger', alg: 'EdDSA' }] }));
    const out = spawnSync(process.execPath, [CLI, 'audit', 'verify', '--data-dir', dataDir, '--policy-jwks', file, '--json'], { cwd: ROOT, encoding: 'utf8' });
    expect(out.status).toBe(1);
    const r = JSON.parse(out.stdout) as VerifyReport;
    // every real call is now unproven, and so is every signed rollout state
    for (const id of real) expect(r.findings.filter((f) => f.agent_instance_id === id).map((f) => f.kind)).toContain('receipt_invalid');
    expect(r.counts.rollout_receipt_invalid).toBeGreaterThan(0);
  });

  // last: this process opens the store itself (one chDB engine per process), so no verify runs after it
  it('the concurrent agent\'s proven calls carry receipts of batches (one signature for several decisions)', { timeout: 60_000 }, async () => {
    const store = await openStore({ dataDir, log: createLogger('test', 'error'), migrate: false });
    try {
      const rows = await store.rows<{ r: string }>(
        `SELECT attributes['custody.policy.receipt'] AS r FROM ${store.database}.audit_events WHERE agent_instance_id = {id:String}`,
        { id: concurrentRoot },
      );
      expect(rows).toHaveLength(24);
      const types = rows.map((row) => JSON.parse(Buffer.from(row.r.split('.')[0]!, 'base64url').toString('utf8')).typ);
      expect(types.filter((t) => t === RECEIPT_BATCH_TYPE[RECEIPT_TYPE.DECISION]).length, JSON.stringify(types)).toBeGreaterThan(1);
    } finally {
      await store.close();
    }
  });
});
