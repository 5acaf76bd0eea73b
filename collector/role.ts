import type { RoleContext, RunningRole } from '../common/role';
import { openStore } from './store';

/** The collector role: the store, the OTLP receiver, rules and audit queries. */
export async function startCollectorRole(ctx: RoleContext): Promise<RunningRole> {
  const { options, log } = ctx;
  const store = await openStore(
    options.clickhouseUrl ? { url: options.clickhouseUrl, log } : { dataDir: options.dataDir, log },
  );
  ctx.addReadinessCheck('storage', () => store.ping());
  return {
    name: 'collector',
    banner: [`storage       ${store.kind} (${store.location})`],
    close: () => store.close(),
  };
}
