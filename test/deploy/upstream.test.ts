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
 * validation, and the Collector components' own config.schema.yaml files (opentelemetry-collector
 * and -contrib, converted by schemas/extract-otelcol.mjs with unknown keys refused).
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

// ---- the Collector configs ----

type Section = 'extensions' | 'receivers' | 'processors' | 'exporters';
interface CollectorConfig {
  extensions?: Record<string, unknown>;
  receivers: Record<string, unknown>;
  processors?: Record<string, unknown>;
  exporters: Record<string, unknown>;
  connectors?: Record<string, unknown>;
  service: { extensions?: string[]; pipelines: Record<string, { receivers: string[]; processors?: string[]; exporters: string[] }> };
}

const componentSchemas = JSON.parse(fs.readFileSync(path.join(SCHEMAS, 'otelcol-components.schema.json'), 'utf8')) as {
  $id: string;
  components: Record<Section, Record<string, object>>;
};
ajv.addSchema(componentSchemas);
const componentValidators = Object.fromEntries(
  (Object.entries(componentSchemas.components) as [Section, Record<string, object>][]).map(([section, byType]) => [
    section,
    Object.fromEntries(Object.keys(byType).map((type) => [type, ajv.compile({ $ref: `${componentSchemas.$id}#/components/${section}/${type}` })])),
  ]),
) as Record<Section, Record<string, ReturnType<typeof ajv.compile>>>;

const SIEMS = { elasticsearch: ['ELASTICSEARCH_URL'], splunk: ['SPLUNK_HEC_URL', 'SPLUNK_HEC_TOKEN'], datadog: ['DD_API_KEY', 'DD_SITE'] } as const;
const COLLECTOR_FILES = ['otel-config.yaml', ...Object.keys(SIEMS).map((s) => `deploy/collector/otel-config.${s}.yaml`)];

/** What the Collector checks before it starts: every component's config, every reference, every defined component used. */
function collectorErrors(config: CollectorConfig): string[] {
  const errors: string[] = [];
  const allowedTop = new Set(['extensions', 'receivers', 'processors', 'exporters', 'connectors', 'service']);
  for (const key of Object.keys(config)) if (!allowedTop.has(key)) errors.push(`unknown top-level key '${key}'`);
  for (const section of ['extensions', 'receivers', 'processors', 'exporters'] as Section[]) {
    for (const [id, cfg] of Object.entries(config[section] ?? {})) {
      const type = id.split('/')[0]!;
      const validate = componentValidators[section][type];
      if (!validate) {
        errors.push(`${section}::${id}: unknown type '${type}'`);
        continue;
      }
      // an empty component (`debug:`) is the component's defaults
      if (!validate(cfg ?? {})) errors.push(...validate.errors!.map((e) => `${section}::${id}${e.instancePath} ${e.message}${'additionalProperty' in e.params ? ` '${e.params.additionalProperty}'` : ''}`));
    }
  }
  const used: Record<Section, Set<string>> = { extensions: new Set(config.service.extensions ?? []), receivers: new Set(), processors: new Set(), exporters: new Set() };
  for (const [name, p] of Object.entries(config.service.pipelines)) {
    if (!/^traces(\/.+)?$/.test(name)) errors.push(`pipeline ${name}: custody's pipelines are traces pipelines`);
    for (const [section, ids] of [['receivers', p.receivers], ['processors', p.processors ?? []], ['exporters', p.exporters]] as [Section, string[]][]) {
      if (section !== 'processors' && ids.length === 0) errors.push(`pipeline ${name}: no ${section}`);
      for (const id of ids) {
        used[section].add(id);
        if (!(id in (config[section] ?? {}))) errors.push(`pipeline ${name}: ${section} ${id} is not defined`);
      }
    }
  }
  for (const id of used.extensions) if (!(id in (config.extensions ?? {}))) errors.push(`service extension ${id} is not defined`);
  // the Collector builds (and validates) every configured exporter; one defined for an absent SIEM stops it
  for (const section of ['receivers', 'processors', 'exporters'] as Section[]) {
    for (const id of Object.keys(config[section] ?? {})) if (!used[section].has(id)) errors.push(`${section} ${id} is defined but in no pipeline`);
  }
  // a sending queue's storage is an extension the service runs
  for (const [id, cfg] of Object.entries(config.exporters)) {
    const storage = (cfg as { sending_queue?: { storage?: string } }).sending_queue?.storage;
    if (storage && !used.extensions.has(storage)) errors.push(`exporters::${id}: storage ${storage} is not a running extension`);
  }
  return errors;
}

/** The environment variables a config needs: `${env:NAME}` without a default, in its values (comments do not count). */
function envOf(file: string): string[] {
  const found = new Set<string>();
  const walk = (v: unknown): void => {
    if (typeof v === 'string') {
      for (const m of v.matchAll(/\$\{env:([A-Z0-9_]+)(:-[^}]*)?\}/g)) if (!m[2]) found.add(m[1]!);
    } else if (v && typeof v === 'object') {
      Object.values(v).forEach(walk);
    }
  };
  walk(parse(fs.readFileSync(path.join(ROOT, file), 'utf8')));
  return [...found].sort();
}

describe('the Collector configs', () => {
  for (const file of COLLECTOR_FILES) {
    it(`${file}: every component's config as the Collector defines it, every reference resolved, nothing unused`, () => {
      const config = parse(fs.readFileSync(path.join(ROOT, file), 'utf8')) as CollectorConfig;
      expect(collectorErrors(config)).toEqual([]);
    });
  }

  it('each SIEM file needs only its own SIEM settings; the root file needs none', () => {
    expect(envOf('otel-config.yaml')).toEqual([]);
    for (const [siem, vars] of Object.entries(SIEMS)) expect(envOf(`deploy/collector/otel-config.${siem}.yaml`), siem).toEqual([...vars].sort());
  });

  it('custody gets every span from an on-disk queue; the SIEM pipeline cannot make agents resend', () => {
    for (const file of COLLECTOR_FILES) {
      const config = parse(fs.readFileSync(path.join(ROOT, file), 'utf8')) as CollectorConfig;
      const custody = config.service.pipelines['traces/custody']!;
      // nothing that samples or holds acknowledged spans in memory before custody's queue
      expect(custody.processors ?? [], file).toEqual(['memory_limiter']);
      expect(custody.exporters).toEqual(['otlphttp/custody']);
      const exporter = config.exporters['otlphttp/custody'] as { sending_queue: { enabled: boolean; storage: string }; retry_on_failure: { max_elapsed_time: string } };
      expect(exporter.sending_queue).toMatchObject({ enabled: true, storage: 'file_storage/queue' });
      expect(exporter.retry_on_failure.max_elapsed_time).toBe('0s');
      expect((config.extensions!['file_storage/queue'] as { fsync: boolean }).fsync).toBe(true);
      const siem = config.service.pipelines['traces/siem'];
      if (file === 'otel-config.yaml') {
        expect(siem).toBeUndefined();
        continue;
      }
      // tail_sampling first: it buffers what it is given and never returns an error to the shared receiver
      expect(siem!.processors![0]).toMatch(/^tail_sampling(\/|$)/);
      expect(siem!.processors).not.toContain('memory_limiter');
      expect(siem!.exporters).toHaveLength(1);
      expect((config.exporters[siem!.exporters[0]!] as { sending_queue: { storage: string } }).sending_queue.storage).toBe('file_storage/queue');
    }
  });

  it("the components' schemas refuse a misspelled key and a wrong type, at any depth", () => {
    const config = parse(fs.readFileSync(path.join(ROOT, 'deploy/collector/otel-config.datadog.yaml'), 'utf8')) as CollectorConfig;
    const custody = config.exporters['otlphttp/custody'] as { sending_queue: Record<string, unknown>; retry_on_failure: Record<string, unknown> };
    custody.sending_queue.storge = 'file_storage/queue';
    custody.retry_on_failure.max_elapsed_time = 'forever';
    const sampling = config.processors!['tail_sampling/siem'] as { num_traces: unknown; policies: Record<string, unknown>[] };
    sampling.num_traces = '50000';
    sampling.policies[0]!.string_atribute = sampling.policies[0]!.string_attribute;
    (config.exporters['datadog/siem'] as { traces: Record<string, unknown> }).traces.span_name_as_resource = true;
    (config.extensions!['file_storage/queue'] as Record<string, unknown>).fsync = 'yes';
    expect(collectorErrors(config).sort()).toEqual(
      [
        "exporters::otlphttp/custody/sending_queue must NOT have additional properties 'storge'",
        'exporters::otlphttp/custody/retry_on_failure/max_elapsed_time must match pattern "^[-+]?(0|(\\d+(\\.\\d*)?|\\.\\d+)(ns|us|µs|ms|s|m|h))+$"',
        "exporters::datadog/siem/traces must NOT have additional properties 'span_name_as_resource'",
        'processors::tail_sampling/siem/num_traces must be integer',
        "processors::tail_sampling/siem/policies/0 must NOT have additional properties 'string_atribute'",
        'extensions::file_storage/queue/fsync must be boolean',
      ].sort(),
    );
  });

  it("the files' commented-out settings are valid once uncommented", () => {
    for (const file of COLLECTOR_FILES) {
      const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
      const uncommented = text.replace(/^(\s*)# (headers: .*)$/m, '$1$2');
      expect(uncommented, file).not.toBe(text);
      const config = parse(uncommented) as CollectorConfig;
      expect((config.exporters['otlphttp/custody'] as { headers: object }).headers, file).toEqual({ Authorization: 'Bearer ${env:CUSTODY_INGEST_TOKEN}' });
      expect(collectorErrors(config), file).toEqual([]);
    }
  });

  it('the old single file, with every SIEM defined, is refused as the Collector refused it', () => {
    const config = parse(fs.readFileSync(path.join(ROOT, 'deploy/collector/otel-config.elasticsearch.yaml'), 'utf8')) as CollectorConfig;
    const splunk = parse(fs.readFileSync(path.join(ROOT, 'deploy/collector/otel-config.splunk.yaml'), 'utf8')) as CollectorConfig;
    config.exporters['splunk_hec/siem'] = splunk.exporters['splunk_hec/siem'];
    expect(collectorErrors(config)).toEqual(['exporters splunk_hec/siem is defined but in no pipeline']);
    (config.exporters['splunk_hec/siem'] as Record<string, unknown>).sourcetyp = 'x';
    expect(collectorErrors(config)).toContain("exporters::splunk_hec/siem must NOT have additional properties 'sourcetyp'");
  });
});
