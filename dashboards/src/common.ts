import { ThresholdsConfigBuilder, ThresholdsMode, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import type { DataSourceRef } from '@grafana/grafana-foundation-sdk/common';

/** The datasources the provisioning files create (dashboards/provisioning/datasources.yaml). */
export const DATASOURCE = {
  PROMETHEUS: { type: 'prometheus', uid: 'custody-prometheus', name: 'custody Prometheus' },
  CLICKHOUSE: { type: 'grafana-clickhouse-datasource', uid: 'custody-clickhouse', name: 'custody ClickHouse' },
} as const;

/** Panels point at the dashboard's `datasource` variable, so another datasource of the type can be picked. */
export const DS_VAR = 'datasource';
export function dsRef(type: string): DataSourceRef {
  return { type, uid: `\${${DS_VAR}}` };
}

/** Green below `warn`, yellow from it, red from `crit` (Grafana steps start at their value). */
export function thresholdSteps(warn: number, crit?: number): ThresholdsConfigBuilder {
  const steps: { value: number | null; color: string }[] = [
    { value: null, color: 'green' },
    { value: warn, color: crit === undefined ? 'red' : 'yellow' },
  ];
  if (crit !== undefined) steps.push({ value: crit, color: 'red' });
  // Grafana's JSON uses null for the base step's value.
  return new ThresholdsConfigBuilder().mode(ThresholdsMode.Absolute).steps(steps as { value: number; color: string }[]);
}

/** Panel ids (the builder leaves them unset) in layout order, and an empty annotation list. */
export function finalize(dashboard: Dashboard): Dashboard {
  let id = 0;
  for (const panel of dashboard.panels ?? []) {
    (panel as { id?: number }).id = ++id;
    for (const inner of (panel as { panels?: { id?: number }[] }).panels ?? []) inner.id = ++id;
  }
  const annotations = (dashboard.annotations ?? {}) as { list?: unknown[] };
  dashboard.annotations = { ...annotations, list: annotations.list ?? [] } as Dashboard['annotations'];
  return dashboard;
}

/** The JSON written to dashboards/*.json: two-space indented, trailing newline, stable. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}
