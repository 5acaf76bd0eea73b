import { ENV } from '../common/names';
import type { RoleContext, RunningRole } from '../common/role';
import { openStore } from './store';
import { startIngest } from './ingest/receiver';
import { mountRules } from './rules/status';
import { mountAudit, mountAuditReadGuard } from './audit/routes';
import { startCheckpointer } from './evidence/checkpoint';

/** The collector role: the store, the OTLP receiver, rules and audit queries. */
export async function startCollectorRole(ctx: RoleContext): Promise<RunningRole> {
  const { options, log } = ctx;
  const days = ctx.env[ENV.AUDIT_RETENTION_DAYS];
  const retention = days !== undefined ? { retentionDays: days } : {};
  // a server may come up after the collector: its migrations run in the background meanwhile
  const store = await openStore(
    options.clickhouseUrl
      ? { url: options.clickhouseUrl, log, migrate: 'background', ...retention, ...(options.clickhouseCluster ? { cluster: options.clickhouseCluster } : {}) }
      : { dataDir: options.dataDir, log, ...retention },
  );
  ctx.addReadinessCheck('storage', async () => store.migrated && (await store.ping()));
  // before any audit route (the checkpointer mounts some)
  const auditRead = mountAuditReadGuard(ctx);
  // before ingest: the checkpointer seals the time since its last checkpoint, when nothing could write
  const checkpointer = await startCheckpointer(ctx, store);
  const ingest = await startIngest(ctx, store);
  mountRules(ctx, store);
  mountAudit(ctx, store);
  return {
    name: 'collector',
    banner: [
      ...ingest.banner,
      `storage       ${store.kind} (${store.location})`,
      ...checkpointer.banner,
      `audit API     ${auditRead.open ? 'open to anyone who can reach this port (loopback)' : `reads need ${ENV.AUDIT_READER_TOKEN} or ${ENV.ADMIN_TOKEN}`}`,
    ],
    // the checkpointer seals the open period, so it stops after ingest and before the store
    close: async () => {
      await ingest.close();
      await checkpointer.close();
      await store.close();
    },
  };
}
