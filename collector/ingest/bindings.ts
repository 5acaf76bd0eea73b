import type { Logger } from '../../common/log';
import { ATTR, SPAN, TABLE } from '../../common/names';
import { findAttribute, type Span } from '../otlp';
import type { Store } from '../store';
import type { Binding, BindingLookup } from './auth';
import { attrString, claimedIdentity } from './mapping';

/**
 * Which agent instances the token service bound tokens to, and under what: learned from the token
 * service's own records as they are stored (only the service writes token events), and for
 * instances not seen since this collector started, read back from `token_events`. Bounded; an
 * instance not found is asked again at most every `missRetryMs`.
 */
export interface BindingIndex extends BindingLookup {
  learn(instance: string, binding: Binding): void;
  /** Makes `get` answer for these instances and their ancestors, reading the store for unknown ones. */
  load(instances: Iterable<string>): Promise<void>;
}

export interface BindingIndexOptions {
  store?: Pick<Store, 'client' | 'database'>;
  log?: Logger;
  maxEntries?: number;
  missRetryMs?: number;
  now?: () => number;
}

const MAX_DEPTH = 16;
const BATCH = 500;

export function createBindingIndex(options: BindingIndexOptions = {}): BindingIndex {
  const maxEntries = options.maxEntries ?? 200_000;
  const missRetryMs = options.missRetryMs ?? 2_000;
  const now = options.now ?? Date.now;
  const known = new Map<string, Binding>();
  const misses = new Map<string, number>();

  function learn(instance: string, binding: Binding): void {
    if (!instance) return;
    if (known.size >= maxEntries) known.clear();
    const had = known.get(instance);
    // the first binding is the instance's origin; later tokens for it say the same or less
    if (!had || (!had.agentId && binding.agentId)) known.set(instance, binding);
    misses.delete(instance);
  }

  async function fetch(ids: string[]): Promise<void> {
    const store = options.store;
    if (!store || ids.length === 0) return;
    try {
      const rs = await store.client.query({
        query: `SELECT agent_instance_id AS instance, any(sponsor_id) AS sponsor, any(parent_agent_id) AS parent,
                  max(attributes['${ATTR.AGENT_ID}']) AS agent_id
                FROM ${store.database}.${TABLE.TOKEN_EVENTS}
                WHERE result = 'issued' AND agent_instance_id IN {ids:Array(String)}
                GROUP BY agent_instance_id`,
        query_params: { ids },
        format: 'JSONEachRow',
      });
      const rows = await rs.json<{ instance: string; sponsor: string; parent: string; agent_id: string }>();
      for (const r of rows) learn(r.instance, { sponsor: r.sponsor, parent: r.parent, agentId: r.agent_id });
    } catch (err) {
      options.log?.warn({ err: (err as Error).message }, 'cannot read token bindings; spans of unknown instances are stored unverified');
    }
    const t = now();
    for (const id of ids) if (!known.has(id)) misses.set(id, t);
    if (misses.size > maxEntries) misses.clear();
  }

  return {
    get: (instance) => known.get(instance),
    learn,
    async load(instances) {
      let frontier = [...new Set(instances)].filter(Boolean);
      for (let depth = 0; depth < MAX_DEPTH && frontier.length; depth++) {
        const t = now();
        const unknown = frontier.filter((id) => !known.has(id) && !((misses.get(id) ?? -Infinity) > t - missRetryMs));
        for (let i = 0; i < unknown.length; i += BATCH) await fetch(unknown.slice(i, i + BATCH));
        frontier = frontier.map((id) => known.get(id)?.parent ?? '').filter(Boolean);
      }
    },
  };
}

/** Learns the instances that the token service's own token events (issued ones) bind. */
export function learnFromTokenEvents(index: Pick<BindingIndex, 'learn'>, spans: readonly Span[]): void {
  for (const span of spans) {
    if (span.name !== SPAN.TOKEN_ISSUE || attrString(findAttribute(span.attributes, ATTR.TOKEN_RESULT)) !== 'issued') continue;
    const id = claimedIdentity(span);
    index.learn(id.instance, { sponsor: id.sponsor, parent: id.parent, agentId: attrString(findAttribute(span.attributes, ATTR.AGENT_ID)) });
  }
}
