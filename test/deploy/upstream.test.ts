import fs from 'node:fs';
import path from 'node:path';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { ROOT } from '../helpers/custody';

/**
 * deploy/ and the Collector configs checked against what upstream accepts: the CRDs' own
 * openAPIV3Schema (argo-rollouts AnalysisTemplate and Rollout, flagger Canary and MetricTemplate,
 * converted by schemas/extract.mjs with unknown keys refused), the Argo controller's metric
 * validation, and the Collector components' configuration.
 */

interface ArgoMetric {
  name: string;
  interval?: string;
  count?: number | string;
  failureLimit?: number | string;
  inconclusiveLimit?: number | string;
  consecutiveErrorLimit?: number | string;
  consecutiveSuccessLimit?: number | string;
}

interface ArgoTemplate {
  kind: string;
  metadata: { name: string };
  spec: { metrics: ArgoMetric[] };
}

const SCHEMAS = path.join(__dirname, 'schemas');
const docs = (file: string) => parseAllDocuments(fs.readFileSync(path.join(ROOT, file), 'utf8')).map((d) => d.toJS());
const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
const schema = (name: string) => ajv.compile(JSON.parse(fs.readFileSync(path.join(SCHEMAS, name), 'utf8')));
const VALIDATORS = {
  AnalysisTemplate: schema('argo-analysistemplate.schema.json'),
  Rollout: schema('argo-rollout.schema.json'),
  Canary: schema('flagger-canary.schema.json'),
  MetricTemplate: schema('flagger-metrictemplate.schema.json'),
};

const DEPLOY_FILES = [
  'deploy/argo/analysis-template-web.yaml',
  'deploy/argo/analysis-template-web-step.yaml',
  'deploy/argo/analysis-template-prometheus.yaml',
  'deploy/argo/analysis-template-prometheus-step.yaml',
  'deploy/argo/rollout.yaml',
  'deploy/flagger/metric-templates.yaml',
  'deploy/flagger/canary-analysis.yaml',
];

function schemaErrors(doc: { kind: keyof typeof VALIDATORS }): string[] {
  const validate = VALIDATORS[doc.kind];
  if (!validate) return [`no schema for kind ${String(doc.kind)}`];
  return validate(doc) ? [] : validate.errors!.map((e) => `${e.instancePath || '/'} ${e.message}${e.params && 'additionalProperty' in e.params ? ` '${e.params.additionalProperty}'` : ''}`);
}

// ---- argo-rollouts utils/analysis/factory.go ValidateMetric and Metric.EffectiveCount, v1.9/HEAD ----

const intValue = (v: number | string | undefined): number | undefined => (v === undefined || v === null ? undefined : typeof v === 'number' ? v : /^-?\d+$/.test(v) ? Number(v) : 0);

export function validateMetric(m: ArgoMetric): string | undefined {
  const count = intValue(m.count) ?? 0;
  const failureLimit = intValue(m.failureLimit) ?? 0;
  const consecutiveSuccessLimit = intValue(m.consecutiveSuccessLimit) ?? 0;
  const inconclusiveLimit = intValue(m.inconclusiveLimit) ?? 0;
  if (consecutiveSuccessLimit < 0) return 'consecutiveSuccessLimit must be >= 0';
  if (failureLimit < -1) return 'failureLimit must be >= 0, or -1 to be disabled';
  if (consecutiveSuccessLimit === 0 && failureLimit === -1) return 'failureLimit and consecutiveSuccessLimit cannot both be disabled';
  if (inconclusiveLimit < 0) return 'inconclusiveLimit must be >= 0';
  if ((intValue(m.consecutiveErrorLimit) ?? 0) < 0) return 'consecutiveErrorLimit must be >= 0';
  if (count > 0) {
    if (consecutiveSuccessLimit >= 0 && failureLimit >= 0 && count < failureLimit + consecutiveSuccessLimit) {
      return `count (${count}) must be >= failureLimit + consecutiveSuccessLimit (${failureLimit} + ${consecutiveSuccessLimit}) if both >= 0`;
    }
    if (consecutiveSuccessLimit >= 0 && failureLimit < 0 && count < consecutiveSuccessLimit) return 'count must be >= consecutiveSuccessLimit';
    if (count < inconclusiveLimit) return 'count must be >= inconclusiveLimit';
  }
  if (count > 1 && !m.interval) return 'interval must be specified when count > 1';
  if (m.interval && !/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(m.interval)) return `invalid interval string: ${m.interval}`;
  return undefined;
}

/** Count, or 1 when neither count nor interval is set, or undefined: runs indefinitely. */
const effectiveCount = (m: ArgoMetric): number | undefined => intValue(m.count) ?? (m.interval ? undefined : 1);

/** pkg/apis/rollouts/validation/validation_references.go: what the controller says of a template used as step analysis. */
export function stepAnalysisErrors(template: ArgoTemplate): string[] {
  return template.spec.metrics
    .filter((m) => effectiveCount(m) === undefined)
    .map((m) => `AnalysisTemplate ${template.metadata.name} has metric ${m.name} which runs indefinitely. Invalid value for count: <nil>`);
}

const templates = DEPLOY_FILES.filter((f) => f.includes('analysis-template')).map((f) => docs(f)[0] as ArgoTemplate);
const templateByName = new Map(templates.map((t) => [t.metadata.name, t]));

describe('deploy/ against the upstream CRD schemas', () => {
  for (const file of DEPLOY_FILES) {
    it(file, () => {
      const all = docs(file);
      expect(all.length).toBeGreaterThan(0);
      for (const doc of all) expect(schemaErrors(doc), `${file} ${doc.kind}/${doc.metadata?.name}`).toEqual([]);
    });
  }

  it('the schemas refuse what the API server would drop or refuse', () => {
    const template = structuredClone(templates[0]!) as unknown as { spec: { metrics: Record<string, unknown>[] } };
    template.spec.metrics[0]!.inconclusiveLimt = 3;
    expect(schemaErrors(template as never).join()).toMatch(/additional properties 'inconclusiveLimt'/);
    const canary = structuredClone(docs('deploy/flagger/canary-analysis.yaml')[0]);
    canary.spec.analysis.threshold = 'two';
    expect(schemaErrors(canary).join()).toMatch(/analysis\/threshold must be number/);
    expect(schemaErrors({ ...canary, apiVersion: 'flagger.app/v1alpha1' }).join()).toMatch(/apiVersion must be equal to constant/);
  });
});

describe("the Argo controller's checks", () => {
  it('every template passes ValidateMetric', () => {
    for (const t of templates) for (const m of t.spec.metrics) expect(validateMetric(m), `${t.metadata.name}/${m.name}`).toBeUndefined();
  });

  it('the step templates end (every metric has a count); the background ones run for the whole rollout', () => {
    for (const t of templates) {
      const step = t.metadata.name.endsWith('-step');
      expect(stepAnalysisErrors(t).length === 0, t.metadata.name).toBe(step);
    }
  });

  it('the Rollout uses step templates as step analysis and a background template as background analysis', () => {
    const rollout = docs('deploy/argo/rollout.yaml')[0];
    const steps = rollout.spec.strategy.canary.steps as { setWeight?: number; analysis?: { templates: { templateName: string }[] } }[];
    const stepNames = steps.flatMap((s) => s.analysis?.templates.map((t) => t.templateName) ?? []);
    expect(stepNames.length).toBeGreaterThanOrEqual(3);
    // an analysis after every setWeight but the last
    expect(steps.filter((s) => s.setWeight !== undefined && s.setWeight < 100).length).toBe(stepNames.length);
    for (const name of stepNames) {
      const t = templateByName.get(name);
      expect(t, name).toBeDefined();
      expect(stepAnalysisErrors(t!)).toEqual([]);
    }
    for (const { templateName } of rollout.spec.strategy.canary.analysis.templates as { templateName: string }[]) {
      expect(templateByName.get(templateName), templateName).toBeDefined();
    }
  });

  it('catches what the controller rejects: a background template as step analysis, limits past count', () => {
    const background = templateByName.get('custody-rollback-rules')!;
    expect(stepAnalysisErrors(background)).toContain(
      'AnalysisTemplate custody-rollback-rules has metric custody-rollback-action which runs indefinitely. Invalid value for count: <nil>',
    );
    expect(validateMetric({ name: 'x', interval: '1m', count: 2, inconclusiveLimit: 3 })).toBe('count must be >= inconclusiveLimit');
    expect(validateMetric({ name: 'x', count: 5 })).toBe('interval must be specified when count > 1');
    expect(validateMetric({ name: 'x', interval: 'a minute' })).toMatch(/invalid interval/);
    expect(effectiveCount({ name: 'x' })).toBe(1);
  });
});
