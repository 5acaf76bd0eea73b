import type { Builder, Dataquery } from '@grafana/grafana-foundation-sdk/cog';
import type { DataSourceRef } from '@grafana/grafana-foundation-sdk/common';

/**
 * A query for grafana-clickhouse-datasource (v4), which the foundation SDK does not ship: the raw
 * SQL editor's model as the plugin defines it (its QueryType and Format enums). `format` is the
 * backend's sqlutil format (0 time series, 1 table, 2 logs, 3 trace). `pluginVersion` marks the
 * query as a v4 one: without it the plugin's editor takes it for a v3 query and migrates it.
 */
export const CLICKHOUSE_TYPE = 'grafana-clickhouse-datasource';
export const CLICKHOUSE_PLUGIN_VERSION = '4.20.0';

export type ClickHouseQueryType = 'table' | 'timeseries' | 'traces' | 'logs';

const FORMAT: Record<ClickHouseQueryType, number> = { timeseries: 0, table: 1, logs: 2, traces: 3 };

export interface ClickHouseQuery extends Dataquery {
  refId?: string;
  hide?: boolean;
  datasource?: DataSourceRef;
  pluginVersion: string;
  editorType: 'sql';
  queryType: ClickHouseQueryType;
  format: number;
  rawSql: string;
}

export class ClickHouseQueryBuilder implements Builder<Dataquery> {
  private readonly internal: ClickHouseQuery;

  constructor(rawSql: string, queryType: ClickHouseQueryType = 'table') {
    this.internal = {
      pluginVersion: CLICKHOUSE_PLUGIN_VERSION,
      editorType: 'sql',
      queryType,
      format: FORMAT[queryType],
      rawSql: dedent(rawSql),
      _implementsDataqueryVariant() {},
    };
  }

  build(): ClickHouseQuery {
    return this.internal;
  }

  refId(refId: string): this {
    this.internal.refId = refId;
    return this;
  }

  datasource(ref: DataSourceRef): this {
    this.internal.datasource = ref;
    return this;
  }
}

/** SQL is written indented in the source; the dashboards carry it flush left. */
export function dedent(sql: string): string {
  const lines = sql.replace(/^\n+|\s+$/g, '').split('\n');
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => /^ */.exec(l)![0].length));
  return lines.map((l) => l.slice(indent)).join('\n');
}
