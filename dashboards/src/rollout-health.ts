import {
  BigValueColorMode,
  BigValueGraphMode,
  BigValueTextMode,
  GraphThresholdsStyleConfigBuilder,
  GraphThresholdsStyleMode,
  LegendDisplayMode,
  LegendPlacement,
  LineInterpolation,
  ReduceDataOptionsBuilder,
  VizLegendOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  CustomVariableBuilder,
  DashboardBuilder,
  DatasourceVariableBuilder,
  RowBuilder,
  type Dashboard,
  type GridPos,
  type ValueMapping,
  MappingType,
} from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesBuilder } from '@grafana/grafana-foundation-sdk/timeseries';
import { METRIC, THRESHOLDS } from '../../common/names';
import { DATASOURCE, DS_VAR, dsRef, finalize, thresholdSteps } from './common';

/**
 * "Rollout health": the rollback rules against their thresholds, the rollout percent, decisions,
 * latency, token issuance and ingest, from custody's /metrics on a Prometheus datasource.
 */

const ds = dsRef(DATASOURCE.PROMETHEUS.type);
const COHORT = 'cohort=~"$cohort"';
const at = (x: number, y: number, w: number, h: number): GridPos => ({ x, y, w, h });

function prom(expr: string, legend: string, refId = 'A'): DataqueryBuilder {
  return new DataqueryBuilder().datasource(ds).expr(expr).legendFormat(legend).range().refId(refId);
}

const legend = () => new VizLegendOptionsBuilder().showLegend(true).displayMode(LegendDisplayMode.Table).placement(LegendPlacement.Bottom).calcs(['lastNotNull', 'max']);

/**
 * A rule gauge with its threshold drawn as a dashed line: one series per cohort (`max by (cohort)`:
 * every collector computes the same value from the shared store, whatever job or instance scrapes
 * it), or one series for an unlabelled gauge (`legendText`).
 */
function rulePanel(title: string, description: string, expr: string, unit: string, warn: number, crit: number | undefined, pos: GridPos, legendText?: string) {
  return new TimeseriesBuilder()
    .title(title)
    .description(description)
    .datasource(ds)
    .gridPos(pos)
    .unit(unit)
    .min(0)
    .thresholds(thresholdSteps(warn, crit))
    .thresholdsStyle(new GraphThresholdsStyleConfigBuilder().mode(GraphThresholdsStyleMode.DashedAndArea))
    .legend(legend())
    .withTarget(legendText ? prom(`max(${expr})`, legendText) : prom(`max by (cohort) (${expr})`, '{{cohort}}'));
}

const breachedMappings: ValueMapping[] = [
  { type: MappingType.ValueToText, options: { '0': { text: 'OK', color: 'green', index: 0 }, '1': { text: 'BREACHED', color: 'red', index: 1 } } },
];

const lastValue = () => new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false);

export function rolloutHealth(): Dashboard {
  const t = THRESHOLDS;
  const dashboard = new DashboardBuilder('Rollout health')
    .uid('custody-rollout-health')
    .description('custody policy gate rollout: the rollback rules against their thresholds, the rollout percent, decisions, tokens and ingest.')
    .tags(['custody', 'rollout'])
    .editable()
    .refresh('30s')
    .time({ from: 'now-6h', to: 'now' })
    .timezone('browser')
    .withVariable(
      new DatasourceVariableBuilder(DS_VAR).label('Prometheus').type('prometheus').current({ text: DATASOURCE.PROMETHEUS.name, value: DATASOURCE.PROMETHEUS.uid }),
    )
    .withVariable(
      new CustomVariableBuilder('cohort')
        .label('Cohort')
        .values('canary,baseline,unmanaged,fleet')
        .multi(true)
        .includeAll(true)
        .allValue('.*')
        .current({ text: 'canary', value: 'canary' }),
    )

    .withRow(new RowBuilder('Rollback rules (over the collector\'s rolling window)').gridPos(at(0, 0, 24, 1)))
    .withPanel(
      new StatBuilder()
        .title('Rollback rules, canary')
        .description('1 while a rule is breached in the canary cohort: the rollback job sets the rollout to 0 on it.')
        .datasource(ds)
        .gridPos(at(0, 1, 6, 8))
        .mappings(breachedMappings)
        .thresholds(thresholdSteps(1))
        .colorMode(BigValueColorMode.Background)
        .graphMode(BigValueGraphMode.None)
        .reduceOptions(lastValue())
        .withTarget(prom(`max by (rule) (${METRIC.ROLLBACK_RULE_BREACHED}{cohort="canary"})`, '{{rule}}').instant()),
    )
    .withPanel(
      rulePanel(
        'Missing sponsor_id',
        `Tool calls without a sponsor / tool calls, per cohort; "unmanaged" is agents custody does not manage (other instrumentations, gateways), "fleet" all of them: the rule judges the fleet. Rollback and alert above ${t.missing_sponsor_ratio * 100} %.`,
        `${METRIC.MISSING_SPONSOR_RATIO}{${COHORT}}`,
        'percentunit',
        t.missing_sponsor_ratio,
        undefined,
        at(6, 1, 6, 8),
      ),
    )
    .withPanel(
      rulePanel(
        'Policy error rate',
        `Decisions that failed (the enforcer failed closed) / plane calls. Rollback above ${t.policy_error_rate * 100} %.`,
        `${METRIC.POLICY_ERROR_RATE}{${COHORT}}`,
        'percentunit',
        t.policy_error_rate,
        undefined,
        at(12, 1, 6, 8),
      ),
    )
    .withPanel(
      rulePanel(
        'Policy latency p95',
        `Alert above ${t.alert_policy_latency_p95_ms} ms, rollback above ${t.policy_latency_p95_ms} ms.`,
        `${METRIC.POLICY_LATENCY_P95_SECONDS}{${COHORT}}`,
        's',
        t.alert_policy_latency_p95_ms / 1000,
        t.policy_latency_p95_ms / 1000,
        at(18, 1, 6, 8),
      ),
    )

    .withRow(new RowBuilder('Rollout').gridPos(at(0, 9, 24, 1)))
    .withPanel(
      new StatBuilder()
        .title('Rollout now')
        .description('Share of agents whose calls the policy gate enforces (the canary cohort).')
        .datasource(ds)
        .gridPos(at(0, 10, 4, 5))
        .unit('percent')
        .min(0)
        .max(100)
        .graphMode(BigValueGraphMode.Area)
        .reduceOptions(lastValue())
        .withTarget(prom(`max(${METRIC.ROLLOUT_PERCENT})`, 'rollout')),
    )
    .withPanel(
      new StatBuilder()
        .title('Canary scope')
        .description("Which calls the canary can take (the policy's rollout.scope): only those whose attribute has one of these values; * when every instance can be canary.")
        .datasource(ds)
        .gridPos(at(0, 15, 4, 3))
        .textMode(BigValueTextMode.Name)
        .graphMode(BigValueGraphMode.None)
        .reduceOptions(lastValue())
        .withTarget(prom(`max by (attribute, values) (${METRIC.ROLLOUT_SCOPE_INFO})`, '{{attribute}} {{values}}')),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Rollout percent over time')
        .description('10 → 30 → 60 → 100 after healthy periods; a drop to 0 is a rollback.')
        .datasource(ds)
        .gridPos(at(4, 10, 12, 8))
        .unit('percent')
        .min(0)
        .max(100)
        .lineInterpolation(LineInterpolation.StepAfter)
        .withTarget(prom(`max(${METRIC.ROLLOUT_PERCENT})`, 'rollout %')),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Rollback watch')
        .description('Rollout changes made by the rollback job, and its errors (it cannot see the plane: nothing is protected).')
        .datasource(ds)
        .gridPos(at(16, 10, 8, 8))
        .unit('short')
        .min(0)
        .withTarget(prom(`sum by (action) (increase(${METRIC.ROLLBACK_WATCH_CHANGES_TOTAL}[$__rate_interval]))`, '{{action}}'))
        .withTarget(prom(`sum by (reason) (increase(${METRIC.ROLLBACK_WATCH_ERRORS_TOTAL}[$__rate_interval]))`, 'error {{reason}}', 'B')),
    )

    .withRow(new RowBuilder('Decisions').gridPos(at(0, 18, 24, 1)))
    .withPanel(
      new TimeseriesBuilder()
        .title('Tool calls by decision')
        .datasource(ds)
        .gridPos(at(0, 19, 8, 8))
        .unit('reqps')
        .min(0)
        .withTarget(prom(`sum by (decision) (rate(${METRIC.TOOL_CALLS_TOTAL}{${COHORT}}[$__rate_interval]))`, '{{decision}}')),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Tool calls by tool and decision')
        .datasource(ds)
        .gridPos(at(8, 19, 8, 8))
        .unit('reqps')
        .min(0)
        .legend(legend())
        .withTarget(prom(`sum by (tool, decision) (rate(${METRIC.TOOL_CALLS_TOTAL}{${COHORT}}[$__rate_interval]))`, '{{tool}} {{decision}}')),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Decision latency (policy plane)')
        .description(`Plane-side evaluation time. Target p95 < ${t.alert_policy_latency_p95_ms} ms.`)
        .datasource(ds)
        .gridPos(at(16, 19, 8, 8))
        .unit('s')
        .min(0)
        .thresholds(thresholdSteps(t.alert_policy_latency_p95_ms / 1000, t.policy_latency_p95_ms / 1000))
        .thresholdsStyle(new GraphThresholdsStyleConfigBuilder().mode(GraphThresholdsStyleMode.Dashed))
        .withTarget(prom(`histogram_quantile(0.5, sum by (le) (rate(${METRIC.POLICY_DECISION_DURATION_SECONDS}_bucket[$__rate_interval])))`, 'p50'))
        .withTarget(prom(`histogram_quantile(0.95, sum by (le) (rate(${METRIC.POLICY_DECISION_DURATION_SECONDS}_bucket[$__rate_interval])))`, 'p95', 'B'))
        .withTarget(prom(`histogram_quantile(0.99, sum by (le) (rate(${METRIC.POLICY_DECISION_DURATION_SECONDS}_bucket[$__rate_interval])))`, 'p99', 'C')),
    )

    .withRow(new RowBuilder('Tokens and ingest').gridPos(at(0, 27, 24, 1)))
    .withPanel(
      rulePanel(
        'Token issuance failures',
        `Refused / requested tokens. Alert above ${t.token_issue_failure_ratio * 100} %.`,
        METRIC.TOKEN_ISSUE_FAILURE_RATIO,
        'percentunit',
        t.token_issue_failure_ratio,
        undefined,
        at(0, 28, 6, 8),
        'refused / requested',
      ),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Tokens by result')
        .datasource(ds)
        .gridPos(at(6, 28, 6, 8))
        .unit('reqps')
        .min(0)
        .withTarget(prom(`sum by (result) (rate(${METRIC.TOKENS_ISSUED_TOTAL}[$__rate_interval]))`, '{{result}}')),
    )
    .withPanel(
      new TimeseriesBuilder()
        .title('Spans ingested and rejected')
        .description('OTLP spans the collector stored, and those it refused, by reason.')
        .datasource(ds)
        .gridPos(at(12, 28, 8, 8))
        .unit('reqps')
        .min(0)
        .withTarget(prom(`sum(rate(${METRIC.SPANS_INGESTED_TOTAL}[$__rate_interval]))`, 'ingested'))
        .withTarget(prom(`sum by (reason) (rate(${METRIC.SPANS_REJECTED_TOTAL}[$__rate_interval]))`, 'rejected {{reason}}', 'B')),
    )
    .withPanel(
      new StatBuilder()
        .title('Scrape up')
        .description("custody's /metrics answering Prometheus: the lowest `up` of the targets, in any scrape job, that exposed custody_* metrics in the last hour.")
        .datasource(ds)
        .gridPos(at(20, 28, 4, 8))
        .mappings([{ type: MappingType.ValueToText, options: { '0': { text: 'DOWN', color: 'red', index: 0 }, '1': { text: 'UP', color: 'green', index: 1 } } }])
        .thresholds(thresholdSteps(1))
        .colorMode(BigValueColorMode.Background)
        .graphMode(BigValueGraphMode.None)
        .reduceOptions(lastValue())
        .withTarget(prom(
            // the targets exposing custody_* now, or in the last hour (a target that went down has no series left)
            'min(up and on (job, instance) (count by (job, instance) ({__name__=~"custody_.+"}) or max_over_time(count by (job, instance) ({__name__=~"custody_.+"})[1h:15s])))',
            'up',
          )),
    )
    .build();
  return finalize(dashboard);
}
