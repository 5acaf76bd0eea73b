import { ENV } from '../../common/names';
import { ARCHIVE_ALG, openKeyArchive, type KeyArchive } from '../../identity/key-archive';

export { readJwksFile } from '../../identity/key-archive';

/**
 * The collector's checkpoint signing keys (Ed25519): every key that ever signed a checkpoint stays
 * published, because checkpoints are verified for as long as the audit is kept. The private key
 * comes from $CUSTODY_AUDIT_SIGNING_KEY or is generated once under `<data-dir>/evidence/keys`.
 */
export const AUDIT_ALG = ARCHIVE_ALG;
export type AuditKeyRing = KeyArchive;

/** `key`: $CUSTODY_AUDIT_SIGNING_KEY, when set. */
export function openAuditKeyRing(options: { dir: string; key?: string | undefined }): Promise<AuditKeyRing> {
  return openKeyArchive({ ...options, envVar: ENV.AUDIT_SIGNING_KEY });
}
