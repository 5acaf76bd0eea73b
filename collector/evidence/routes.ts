import type { Request, Response } from 'express';
import type { JWK } from 'jose';
import { SCOPE, credentialsFromEnv, requireScope } from '../../common/credentials';
import { CustodyError, HttpError } from '../../common/errors';
import { queryInt } from '../../common/http';
import { TABLE } from '../../common/names';
import type { RoleContext } from '../../common/role';
import type { Store } from '../store';
import type { CheckpointJournal } from './journal';
import type { AuditKeyRing } from './keys';

export const EVIDENCE_PATHS = {
  KEYS: '/v1/audit/keys',
  WELL_KNOWN_KEYS: '/.well-known/custody-audit-jwks.json',
  ROTATE: '/v1/audit/keys/rotate',
  CHECKPOINTS: '/v1/audit/checkpoints',
} as const;

/**
 * GET /v1/audit/keys and /.well-known/custody-audit-jwks.json: the checkpoint signing keys, current
 * and retired (an auditor pins this set and passes it to `custody audit verify --jwks`).
 * GET /v1/audit/checkpoints?limit=N: the latest checkpoints, newest first (anchor the latest hash
 * somewhere else to make the chain's head tamper-evident too).
 * POST /v1/audit/keys/rotate (Authorization: Bearer $CUSTODY_ADMIN_TOKEN): a new signing key.
 */
export function mountEvidenceRoutes(ctx: RoleContext, deps: { store: Store; keys: AuditKeyRing; journal: CheckpointJournal }): void {
  const { control } = ctx;
  const { store, keys, journal } = deps;
  const jwks = (_req: Request, res: Response) => {
    res.set('Cache-Control', 'public, max-age=60').json(keys.jwks());
  };
  control.get(EVIDENCE_PATHS.KEYS, jwks);
  control.get(EVIDENCE_PATHS.WELL_KNOWN_KEYS, jwks);

  control.get(EVIDENCE_PATHS.CHECKPOINTS, async (req, res, next) => {
    try {
      const limit = queryInt(req.query as Record<string, unknown>, 'limit', 1, 1000) ?? 20;
      const rows = await store.rows<{ body: string; checkpoint_hash: string; signature: string }>(
        `SELECT body, checkpoint_hash, signature FROM ${store.database}.${TABLE.AUDIT_CHECKPOINTS} ORDER BY seq DESC LIMIT ${limit}`,
      );
      res.json({ checkpoints: rows.map((r) => ({ checkpoint: JSON.parse(r.body), checkpoint_hash: r.checkpoint_hash, signature: r.signature })) });
    } catch (err) {
      next(err);
    }
  });

  const admin = requireScope(SCOPE.ADMIN, credentialsFromEnv(ctx.env), {
    what: 'audit key rotations',
    disabled: { status: 403, code: 'admin_disabled' },
  });
  control.post(EVIDENCE_PATHS.ROTATE, admin, async (_req, res, next) => {
    try {
      let rotated;
      try {
        rotated = await keys.rotate();
      } catch (err) {
        if (err instanceof CustodyError) throw new HttpError(409, err.code, err.message);
        throw err;
      }
      journal.publishKey(keys.current().publicJwk as JWK);
      res.json({ ...rotated, keys: keys.jwks().keys });
    } catch (err) {
      next(err);
    }
  });
}
