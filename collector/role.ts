import type { RoleContext, RunningRole } from '../common/role';
import { openStore } from './store';
import { mountRules } from './rollback-status';
import { mountAudit } from './audit-routes';
import { startCheckpointer } from './evidence/checkpoint';

/** The collector role: the store, the OTLP receiver, rules and audit queries. */
export async function startCollectorRole(ctx: RoleContext): Promise<RunningRole> {
  const { options, log } = ctx;
  const store = await openStore(
    options.clickhouseUrl ? { url: options.clickhouseUrl, log } : { dataDir: options.dataDir, log },
  );
  ctx.addReadinessCheck('storage', () => store.ping());
  mountRules(ctx, store);
  mountAudit(ctx, store);
  const checkpointer = await startCheckpointer(ctx, store);
  return {
    name: 'collector',
    banner: [`storage       ${store.kind} (${store.location})`, ...checkpointer.banner],
    // the checkpointer seals the open period, so it stops after ingest and before the store
    close: async () => {
      await checkpointer.close();
      await store.close();
    },
  };
}
