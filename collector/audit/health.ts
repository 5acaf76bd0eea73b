import { TABLE } from '../../common/names';
import type { Store } from '../store';

/**
 * How complete the recent audit is, and how long it is kept: what the readiness checklist asks of
 * the audit (sponsor and parent present in ≥ 99.9 % of events, 90-day retention).
 */
export interface AuditHealth {
  window_s: number;
  events: number;
  /** Share of the window's tool calls that name a sponsor; null with no calls. */
  sponsor_present_ratio: number | null;
  /** Calls made under an exchanged (delegated) token: the sub-agents' calls. */
  subagent_calls: number;
  /**
   * Share of sub-agent calls that name their parent agent. A root agent started by its sponsor has
   * no parent to record, so only calls under a delegated token are counted; null with none.
   */
  parent_present_ratio: number | null;
  /** The audit_events TTL in days, read from the table itself; null when it has none. */
  retention_days: number | null;
}

export async function auditHealth(store: Store, options: { windowS: number; now?: number }): Promise<AuditHealth> {
  const db = store.database;
  const from = Math.floor(((options.now ?? Date.now()) - options.windowS * 1000) / 1000);
  const [counts, delegated, table] = await Promise.all([
    store.client
      .query({
        query: `SELECT count() AS events, countIf(sponsor_id != '') AS sponsored
                FROM ${db}.${TABLE.AUDIT_EVENTS} WHERE timestamp >= toDateTime64({from:UInt32}, 9)`,
        query_params: { from },
        format: 'JSONEachRow',
      })
      .then((r) => r.json<{ events: string; sponsored: string }>()),
    store.client
      .query({
        query: `SELECT count() AS calls, countIf(parent_agent_id != '') AS with_parent
                FROM ${db}.${TABLE.AUDIT_EVENTS}
                WHERE timestamp >= toDateTime64({from:UInt32}, 9) AND token_jti != ''
                  AND token_jti IN (SELECT jti FROM ${db}.${TABLE.TOKEN_EVENTS}
                                    WHERE kind = 'exchange' AND result = 'issued' AND timestamp >= toDateTime64({from:UInt32}, 9) - INTERVAL 1 HOUR)`,
        query_params: { from },
        format: 'JSONEachRow',
      })
      .then((r) => r.json<{ calls: string; with_parent: string }>()),
    store.client
      .query({
        query: `SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}`,
        query_params: { db, table: TABLE.AUDIT_EVENTS },
        format: 'JSONEachRow',
      })
      .then((r) => r.json<{ engine_full: string }>()),
  ]);
  const events = Number(counts[0]?.events ?? 0);
  const sub = Number(delegated[0]?.calls ?? 0);
  const ttl = /TTL\s+toDateTime\(timestamp\)\s*\+\s*toIntervalDay\((\d+)\)/.exec(table[0]?.engine_full ?? '');
  return {
    window_s: options.windowS,
    events,
    sponsor_present_ratio: events ? Number(counts[0]!.sponsored) / events : null,
    subagent_calls: sub,
    parent_present_ratio: sub ? Number(delegated[0]!.with_parent) / sub : null,
    retention_days: ttl ? Number(ttl[1]) : null,
  };
}
