import fs from 'node:fs';
import type { JSONWebKeySet, JWK } from 'jose';
import { canonicalJson } from '../../../common/canonical';
import type { Findings } from '../findings';
import type { CheckpointJournal } from '../journal';
import { readJwksFile } from '../keys';

export interface KeySources {
  /** The keys checkpoints are verified with. */
  trusted: JSONWebKeySet;
  /** Where each trusted key came from, by kid. */
  sources: Map<string, { jwk: JWK; source: string }>;
}

/**
 * The checkpoint keys to trust: the pinned set when given (and nothing else); otherwise the
 * collector's own key set file, and the keys published in the checkpoint directory. A key
 * published there that the collector never had is a finding when the collector's set is at hand.
 */
export function trustedKeys(
  o: { jwks?: JSONWebKeySet; localJwksFile?: string; journal?: CheckpointJournal; journalPresent: boolean },
  findings: Findings,
  notes: string[],
): KeySources {
  const sources = new Map<string, { jwk: JWK; source: string }>();
  if (o.jwks) {
    for (const k of o.jwks.keys) if (k.kid) sources.set(k.kid, { jwk: k, source: 'pinned' });
  } else {
    const local = o.localJwksFile && fs.existsSync(o.localJwksFile) ? readJwksFile(o.localJwksFile) : undefined;
    for (const k of local?.keys ?? []) if (k.kid) sources.set(k.kid, { jwk: k, source: o.localJwksFile! });
    if (o.journalPresent && o.journal) {
      const journal = o.journal;
      const { jwks, problems } = journal.keys();
      for (const p of problems) findings.add('journal_stray_file', `unreadable key file ${p}`);
      for (const k of jwks.keys) {
        const known = sources.get(k.kid!);
        if (!known) {
          if (local) findings.add('key_unrecognised', `key ${k.kid} is published in ${journal.keysDir} but is not one of the collector's keys (${o.localJwksFile})`, { file: `${journal.keysDir}/${k.kid}.json` });
          else sources.set(k.kid!, { jwk: k, source: journal.keysDir });
        } else if (canonicalJson({ ...known.jwk, kid: k.kid }) !== canonicalJson({ ...k })) {
          findings.add('key_unrecognised', `key ${k.kid} in ${journal.keysDir} differs from the collector's key with that kid`, { file: `${journal.keysDir}/${k.kid}.json` });
        }
      }
    }
  }
  const trusted: JSONWebKeySet = { keys: [...sources.values()].map((v) => v.jwk) };
  if (!trusted.keys.length) notes.push('no public keys found: pass --jwks FILE (the set published at /v1/audit/keys) or --data-dir');
  return { trusted, sources };
}
