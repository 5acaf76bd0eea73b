import {
  HeatmapCalculationBucketConfigBuilder,
  HeatmapCalculationMode,
  HeatmapCalculationOptionsBuilder,
  ScaleDistribution,
  ScaleDistributionConfigBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  DashboardBuilder,
  PanelBuilder,
  DatasourceVariableBuilder,
  QueryVariableBuilder,
  RowBuilder,
  TextBoxVariableBuilder,
  VariableRefresh,
  VariableSort,
  type Dashboard,
  type GridPos,
} from '@grafana/grafana-foundation-sdk/dashboard';
import { PanelBuilder as HeatmapBuilder } from '@grafana/grafana-foundation-sdk/heatmap';
import { PanelBuilder as NodeGraphBuilder } from '@grafana/grafana-foundation-sdk/nodegraph';
import { PanelBuilder as TableBuilder } from '@grafana/grafana-foundation-sdk/table';
import { PanelBuilder as TimeseriesBuilder } from '@grafana/grafana-foundation-sdk/timeseries';
import { DATABASE, POLICY_ERROR_TYPE, SPAN, TABLE, THRESHOLDS } from '../../common/names';
import { ClickHouseQueryBuilder, dedent, type ClickHouseQueryType } from './clickhouse';
import { DATASOURCE, DS_VAR, dsRef, finalize, thresholdSteps } from './common';

/**
 * "Chain of custody": who authorized what, from the audit tables on the ClickHouse datasource
 * (grafana-clickhouse-datasource). Template variables sponsor, agent and tool narrow every panel
 * through the plugin's $__conditionalAll, which drops the filter when "All" is selected.
 */

const ds = dsRef(DATASOURCE.CLICKHOUSE.type);
const at = (x: number, y: number, w: number, h: number): GridPos => ({ x, y, w, h });
const AUDIT = `${DATABASE}.${TABLE.AUDIT_EVENTS}`;
const DECISIONS = `${DATABASE}.${TABLE.POLICY_DECISIONS}`;
const TRACES = `${DATABASE}.${TABLE.OTEL_TRACES}`;
export const DASHBOARD_UID = 'custody-chain-of-custody';

const cond = (column: string, variable: string) => `$__conditionalAll(${column} IN (\${${variable}:singlequote}), $${variable})`;
const SPONSOR = cond('sponsor_id', 'sponsor');
const AGENT = cond('agent_instance_id', 'agent');
const TOOL = cond('tool_id', 'tool');
/** A call belongs to the selected agents when the agent made it or is the parent of the agent that did. */
const AGENT_OR_PARENT = `(${AGENT} OR ${cond('parent_agent_id', 'agent')})`;
const FAILED_CLOSED = `(decision = 'error' OR error_type = '${POLICY_ERROR_TYPE.UNAVAILABLE}')`;

function ch(sql: string, type: ClickHouseQueryType = 'table', refId = 'A'): ClickHouseQueryBuilder {
  return new ClickHouseQueryBuilder(sql, type).datasource(ds).refId(refId);
}

function variable(name: string, label: string, sql: string): QueryVariableBuilder {
  const query = dedent(sql);
  return new QueryVariableBuilder(name)
    .label(label)
    .datasource(ds)
    .query(query)
    .definition(query)
    .refresh(VariableRefresh.OnTimeRangeChanged)
    .sort(VariableSort.AlphabeticalAsc)
    .multi(true)
    .includeAll(true)
    .current({ text: 'All', value: '$__all' });
}

const traceLink = {
  title: 'Open this trace',
  url: `/d/${DASHBOARD_UID}/chain-of-custody?var-trace_id=\${__value.raw}&\${__url_time_range}`,
};

const logBuckets = () =>
  new HeatmapCalculationBucketConfigBuilder()
    .mode(HeatmapCalculationMode.Count)
    .scale(new ScaleDistributionConfigBuilder().type(ScaleDistribution.Log).log(2));

export function chainOfCustody(): Dashboard {
  const missingSponsor = THRESHOLDS.missing_sponsor_ratio;
  const dashboard = new DashboardBuilder('Chain of custody')
    .uid(DASHBOARD_UID)
    .description('Who authorized which agent to call which tool: sponsors, agents and sub-agents, decisions, and the traces behind them.')
    .tags(['custody', 'audit'])
    .editable()
    .refresh('1m')
    .time({ from: 'now-24h', to: 'now' })
    .timezone('browser')
    .withVariable(
      new DatasourceVariableBuilder(DS_VAR).label('ClickHouse').type(DATASOURCE.CLICKHOUSE.type).current({ text: DATASOURCE.CLICKHOUSE.name, value: DATASOURCE.CLICKHOUSE.uid }),
    )
    .withVariable(
      variable(
        'sponsor',
        'Sponsor',
        `
        SELECT DISTINCT sponsor_id
        FROM ${AUDIT}
        WHERE $__timeFilter(timestamp) AND sponsor_id != ''
        ORDER BY sponsor_id
        LIMIT 1000`,
      ),
    )
    .withVariable(
      variable(
        'agent',
        'Agent instance',
        `
        SELECT DISTINCT agent_instance_id
        FROM ${AUDIT}
        WHERE $__timeFilter(timestamp) AND ${SPONSOR}
        ORDER BY agent_instance_id
        LIMIT 1000`,
      ),
    )
    .withVariable(
      variable(
        'tool',
        'Tool',
        `
        SELECT DISTINCT tool_id
        FROM ${AUDIT}
        WHERE $__timeFilter(timestamp) AND tool_id != ''
        ORDER BY tool_id
        LIMIT 1000`,
      ),
    )
    .withVariable(new TextBoxVariableBuilder('trace_id').label('Trace ID').defaultValue(''))

    .withRow(new RowBuilder('Calls').gridPos(at(0, 0, 24, 1)))
    .withPanel(
      new TableBuilder()
        .title('Calls by sponsor and tool')
        .description('Every tool call with its human sponsor; "(missing)" are calls no sponsor vouched for.')
        .datasource(ds)
        .gridPos(at(0, 1, 12, 9))
        .withTarget(
          ch(`
            SELECT
              if(sponsor_id = '', '(missing)', sponsor_id) AS sponsor,
              tool_id AS tool,
              count() AS calls,
              countIf(decision = 'allow') AS allowed,
              countIf(decision = 'deny') AS denied,
              countIf(${FAILED_CLOSED}) AS failed_closed,
              uniqExact(agent_instance_id) AS agents
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            GROUP BY sponsor, tool
            ORDER BY calls DESC, sponsor, tool
            LIMIT 500`),
        ),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Calls by tool')
        .datasource(ds)
        .gridPos(at(12, 1, 12, 9))
        .unit('short')
        .min(0)
        .withTarget(
          ch(
            `
            SELECT $__timeInterval(timestamp) AS time, tool_id AS tool, count() AS calls
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            GROUP BY time, tool
            ORDER BY time`,
            'timeseries',
          ),
        ),
    )

    .withRow(new RowBuilder('Refused calls').gridPos(at(0, 10, 24, 1)))
    .withPanel(
      new TimeseriesBuilder()
        .title('Denied and failed-closed over time')
        .description('Denied: the policy said no. Failed closed: the plane could not answer (error or timeout) and the enforcer refused the call.')
        .datasource(ds)
        .gridPos(at(0, 11, 8, 9))
        .unit('short')
        .min(0)
        .withTarget(
          ch(
            `
            SELECT $__timeInterval(timestamp) AS time,
              countIf(decision = 'deny') AS denied,
              countIf(${FAILED_CLOSED}) AS failed_closed
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            GROUP BY time
            ORDER BY time`,
            'timeseries',
          ),
        ),
    )
    .withPanel(
      new TableBuilder()
        .title('Denied and failed-closed calls')
        .description('Most recent first. enforced = false: the baseline (shadow) cohort, where the decision was only recorded.')
        .datasource(ds)
        .gridPos(at(8, 11, 16, 9))
        .overrideByName('trace_id', [{ id: 'links', value: [traceLink] }])
        .withTarget(
          ch(`
            SELECT
              timestamp AS time,
              if(sponsor_id = '', '(missing)', sponsor_id) AS sponsor,
              agent_instance_id AS agent,
              parent_agent_id AS parent,
              tool_id AS tool,
              action,
              if(${FAILED_CLOSED}, 'failed_closed', decision) AS outcome,
              rule_id,
              error_type,
              cohort,
              enforced,
              policy_decision_id,
              trace_id
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp)
              AND (decision IN ('deny', 'error') OR error_type IN ('${POLICY_ERROR_TYPE.DENIED}', '${POLICY_ERROR_TYPE.UNAVAILABLE}'))
              AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            ORDER BY timestamp DESC
            LIMIT 200`),
        ),
    )

    .withRow(new RowBuilder('Agents and sub-agents').gridPos(at(0, 20, 24, 1)))
    .withPanel(
      new NodeGraphBuilder()
        .title('Agent → sub-agent tree')
        .description('Each node an agent instance (main stat: its tool calls), each edge a parent that spawned a sub-agent.')
        .datasource(ds)
        .gridPos(at(0, 21, 14, 12))
        .withTarget(
          ch(
            `
            SELECT
              id,
              anyIf(name, name != '') AS title,
              anyIf(sponsor, sponsor != '') AS subtitle,
              sum(calls) AS mainstat
            FROM (
              SELECT agent_instance_id AS id, agent_name AS name, sponsor_id AS sponsor, 1 AS calls
              FROM ${AUDIT}
              WHERE $__timeFilter(timestamp) AND ${SPONSOR} AND ${AGENT_OR_PARENT} AND ${TOOL}
              UNION ALL
              SELECT parent_agent_id AS id, '' AS name, sponsor_id AS sponsor, 0 AS calls
              FROM ${AUDIT}
              WHERE $__timeFilter(timestamp) AND parent_agent_id != '' AND ${SPONSOR} AND ${AGENT_OR_PARENT} AND ${TOOL}
            )
            GROUP BY id
            ORDER BY id
            LIMIT 1000`,
            'table',
            'nodes',
          ),
        )
        .withTarget(
          ch(
            `
            SELECT
              concat(parent_agent_id, '/', agent_instance_id) AS id,
              parent_agent_id AS source,
              agent_instance_id AS target,
              count() AS mainstat
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND parent_agent_id != '' AND ${SPONSOR} AND ${AGENT_OR_PARENT} AND ${TOOL}
            GROUP BY source, target
            ORDER BY source, target
            LIMIT 1000`,
            'table',
            'edges',
          ),
        ),
    )
    .withPanel(
      new TableBuilder()
        .title('Sub-agents and their sponsors')
        .description('A sub-agent carries its parent\'s sponsor; more than one sponsor for one agent is worth a look.')
        .datasource(ds)
        .gridPos(at(14, 21, 10, 12))
        .withTarget(
          ch(`
            SELECT
              parent_agent_id AS parent,
              agent_instance_id AS agent,
              any(agent_name) AS name,
              arrayStringConcat(arraySort(groupUniqArray(sponsor_id)), ', ') AS sponsors,
              arrayStringConcat(arraySort(groupUniqArray(tool_id)), ', ') AS tools,
              count() AS calls,
              min(timestamp) AS first_call,
              max(timestamp) AS last_call
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND parent_agent_id != '' AND ${SPONSOR} AND ${AGENT_OR_PARENT} AND ${TOOL}
            GROUP BY parent, agent
            ORDER BY first_call
            LIMIT 500`),
        ),
    )

    .withRow(new RowBuilder('Missing sponsor').gridPos(at(0, 33, 24, 1)))
    .withPanel(
      new TimeseriesBuilder()
        .title('Missing sponsor ratio')
        .description(`Calls without sponsor_id / calls. Alert and rollback above ${missingSponsor * 100} %.`)
        .datasource(ds)
        .gridPos(at(0, 34, 8, 9))
        .unit('percentunit')
        .min(0)
        .thresholds(thresholdSteps(missingSponsor))
        .withTarget(
          ch(
            `
            SELECT $__timeInterval(timestamp) AS time, countIf(sponsor_id = '') / count() AS missing_sponsor_ratio
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND ${AGENT} AND ${TOOL}
            GROUP BY time
            ORDER BY time`,
            'timeseries',
          ),
        ),
    )
    .withPanel(
      new TableBuilder()
        .title('Missing sponsor: offending instances')
        .description('The agent instances whose calls carried no sponsor, worst first, with an example trace.')
        .datasource(ds)
        .gridPos(at(8, 34, 16, 9))
        .overrideByName('example_trace', [{ id: 'links', value: [traceLink] }])
        .withTarget(
          ch(`
            SELECT
              agent_instance_id AS agent,
              any(agent_name) AS name,
              any(service_name) AS service,
              any(parent_agent_id) AS parent,
              countIf(sponsor_id = '') AS missing,
              count() AS calls,
              round(missing / calls, 4) AS missing_ratio,
              arrayStringConcat(arraySort(groupUniqArrayIf(tool_id, sponsor_id = '')), ', ') AS tools,
              minIf(timestamp, sponsor_id = '') AS first_missing,
              maxIf(timestamp, sponsor_id = '') AS last_missing,
              anyIf(trace_id, sponsor_id = '') AS example_trace
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND ${AGENT} AND ${TOOL}
            GROUP BY agent
            HAVING missing > 0
            ORDER BY missing DESC, agent
            LIMIT 200`),
        ),
    )

    .withRow(new RowBuilder('Decisions').gridPos(at(0, 43, 24, 1)))
    .withPanel(
      new HeatmapBuilder()
        .title('Decision latency')
        .description('Policy plane latency of every decision that asked the plane (cached decisions left out), in ms.')
        .datasource(ds)
        .gridPos(at(0, 44, 12, 9))
        .calculate(true)
        .calculation(new HeatmapCalculationOptionsBuilder().yBuckets(logBuckets()))
        .withTarget(
          ch(
            `
            SELECT timestamp AS time, policy_latency_ms AS latency_ms
            FROM ${AUDIT}
            WHERE $__timeFilter(timestamp) AND decision != '' AND NOT policy_cached AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            ORDER BY time
            LIMIT 100000`,
            'timeseries',
          ),
        ),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Decisions by result (decision log)')
        .datasource(ds)
        .gridPos(at(12, 44, 12, 9))
        .unit('short')
        .min(0)
        .withTarget(
          ch(
            `
            SELECT $__timeInterval(timestamp) AS time, decision, count() AS decisions
            FROM ${DECISIONS}
            WHERE $__timeFilter(timestamp) AND ${SPONSOR} AND ${AGENT} AND ${TOOL}
            GROUP BY time, decision
            ORDER BY time`,
            'timeseries',
          ),
        ),
    )

    .withRow(new RowBuilder('Traces').gridPos(at(0, 53, 24, 1)))
    .withPanel(
      new TableBuilder()
        .title('Tool-call spans')
        .description(`The ${TABLE.OTEL_TRACES} rows behind the audit: click a trace id to open the whole trace below.`)
        .datasource(ds)
        .gridPos(at(0, 54, 24, 9))
        .overrideByName('trace_id', [{ id: 'links', value: [traceLink] }])
        .withTarget(
          ch(`
            SELECT
              Timestamp AS time,
              TraceId AS trace_id,
              SpanName AS span,
              ServiceName AS service,
              SpanAttributes['custody.sponsor_id'] AS sponsor,
              SpanAttributes['custody.agent_instance_id'] AS agent,
              SpanAttributes['custody.parent_agent_id'] AS parent,
              SpanAttributes['custody.tool_id'] AS tool,
              SpanAttributes['custody.policy.decision'] AS decision,
              round(Duration / 1e6, 3) AS duration_ms,
              StatusCode AS status
            FROM ${TRACES}
            WHERE $__timeFilter(Timestamp)
              AND SpanAttributes['gen_ai.operation.name'] = '${SPAN.TOOL_CALL_OPERATION}'
              AND ${cond("SpanAttributes['custody.sponsor_id']", 'sponsor')}
              AND ${cond("SpanAttributes['custody.agent_instance_id']", 'agent')}
              AND ${cond("SpanAttributes['custody.tool_id']", 'tool')}
            ORDER BY Timestamp DESC
            LIMIT 200`),
        ),
    )
    .withPanel(
      new PanelBuilder()
        .type('traces')
        .title('Trace $trace_id')
        .description('Every span of the trace picked in the Trace ID variable (or by a trace link).')
        .datasource(ds)
        .gridPos(at(0, 63, 24, 10))
        .withTarget(
          ch(
            `
            SELECT
              TraceId AS traceID,
              SpanId AS spanID,
              ParentSpanId AS parentSpanID,
              ServiceName AS serviceName,
              SpanName AS operationName,
              toUnixTimestamp64Milli(Timestamp) AS startTime,
              Duration / 1000000 AS duration,
              arrayMap(key -> map('key', key, 'value', SpanAttributes[key]), mapKeys(SpanAttributes)) AS tags,
              arrayMap(key -> map('key', key, 'value', ResourceAttributes[key]), mapKeys(ResourceAttributes)) AS serviceTags
            FROM ${TRACES}
            WHERE TraceId = '\${trace_id}'
              AND Timestamp >= (SELECT min(Start) FROM ${DATABASE}.otel_traces_trace_id_ts WHERE TraceId = '\${trace_id}')
              AND Timestamp <= (SELECT max(End) + 1 FROM ${DATABASE}.otel_traces_trace_id_ts WHERE TraceId = '\${trace_id}')
            ORDER BY Timestamp
            LIMIT 1000`,
            'traces',
          ),
        ),
    )

    .withRow(new RowBuilder('Policy').gridPos(at(0, 73, 24, 1)))
    .withPanel(
      new TableBuilder()
        .title('Policy changes')
        .description(
          `Every policy load and refused reload (${TABLE.POLICY_EVENTS}, written by the policy plane only, each with its signed receipt), and the decisions in the time range that name each version. A refused file keeps the version before it in force. \`custody audit verify\` checks the receipts, and that every decision names a loaded version.`,
        )
        .datasource(ds)
        .gridPos(at(0, 74, 24, 8))
        .withTarget(
          ch(`
            SELECT p.timestamp AS time, toString(p.result) AS result, p.version AS version, substring(p.hash, 1, 12) AS hash,
              p.source AS source, p.error AS error, d.n AS decisions_in_range
            FROM ${DATABASE}.${TABLE.POLICY_EVENTS} AS p
            LEFT JOIN (
              SELECT attributes['custody.policy.version'] AS version, count() AS n FROM ${DECISIONS}
              WHERE $__timeFilter(timestamp) GROUP BY version
            ) AS d ON p.version = d.version
            WHERE $__timeFilter(p.timestamp)
            ORDER BY p.timestamp DESC
            LIMIT 500`),
        ),
    )
    .build();
  return finalize(dashboard);
}
