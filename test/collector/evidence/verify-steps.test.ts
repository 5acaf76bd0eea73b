import fs from 'node:fs';
import path from 'node:path';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { Findings } from '../../../collector/evidence/findings';
import { CheckpointJournal } from '../../../collector/evidence/journal';
import { reportChainBreak, trustedKeys } from '../../../collector/evidence/verify';
import { tempDir } from '../../helpers/custody';

/** The verifier's steps that need no store, each on its own. */
const dir = tempDir('custody-verify-steps-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function publicJwk(kid: string): Promise<JWK> {
  const { publicKey } = await generateKeyPair('EdDSA', { extractable: true });
  return { ...(await exportJWK(publicKey)), kid, alg: 'EdDSA' };
}

describe('keys', () => {
  it('a pinned set is the only one trusted, whatever the checkpoint directory publishes', async () => {
    const journal = new CheckpointJournal(path.join(dir, 'pinned'));
    journal.init();
    journal.publishKey(await publicJwk('published'));
    const findings = new Findings(10);
    const k = trustedKeys({ jwks: { keys: [await publicJwk('pinned')] }, journal, journalPresent: true }, findings, []);
    expect([...k.sources.keys()]).toEqual(['pinned']);
    expect(findings.total).toBe(0);
  });

  it('a key in the checkpoint directory the collector never had is a finding, not a trusted key', async () => {
    const journal = new CheckpointJournal(path.join(dir, 'local'));
    journal.init();
    const own = await publicJwk('own');
    journal.publishKey(own);
    journal.publishKey(await publicJwk('planted'));
    const localJwksFile = path.join(dir, 'local-jwks.json');
    fs.writeFileSync(localJwksFile, JSON.stringify({ keys: [own] }));
    const findings = new Findings(10);
    const k = trustedKeys({ localJwksFile, journal, journalPresent: true }, findings, []);
    expect([...k.sources.keys()]).toEqual(['own']);
    expect(findings.counts).toEqual({ key_unrecognised: 1 });
    expect(findings.listed[0]!.message).toMatch(/key planted is published/);
  });

  it('no key at all is said in a note', () => {
    const notes: string[] = [];
    const k = trustedKeys({ journalPresent: false }, new Findings(10), notes);
    expect(k.trusted.keys).toEqual([]);
    expect(notes.join()).toMatch(/no public keys found/);
  });
});

describe('calls: chain breaks', () => {
  it('each kind of break is named with the instance and seqs', () => {
    const findings = new Findings(10);
    const at = { agent_instance_id: 'a-1', span_id: 's', trace_id: 't' };
    reportChainBreak({ ...at, seq: 3, prev_seq: 0, kind: 'start' }, findings);
    reportChainBreak({ ...at, seq: 7, prev_seq: 4, kind: 'gap' }, findings);
    reportChainBreak({ ...at, seq: 8, prev_seq: 8, kind: 'duplicate' }, findings);
    reportChainBreak({ ...at, seq: 9, prev_seq: 8, kind: 'hash' }, findings);
    expect(findings.listed.map((f) => [f.kind, f.seq])).toEqual([['chain_start', 3], ['chain_gap', 7], ['chain_duplicate', 8], ['chain_break', 9]]);
    expect(findings.listed[1]!.message).toBe('agent instance a-1: calls 5 to 6 are missing between seq 4 and seq 7');
  });
});
