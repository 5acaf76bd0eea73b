import fs from 'node:fs';
import path from 'node:path';
import { JSONPath } from 'jsonpath-plus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ROOT, eventually, startCustody, tempDir, type RunningCustody } from '../helpers/custody';
import { hasPrometheus, instant, startPrometheus, type RunningPrometheus } from '../helpers/prometheus';
import { calls, decisions, seedStore } from '../helpers/rollback';

/**
 * The rollback consumers in deploy/ (Argo Rollouts AnalysisTemplates, Flagger MetricTemplates)
 * judged on real output: GET /v1/rollback/status of a real `custody up` for the web provider, and
 * a real Prometheus scraping it for the Prometheus variants.
 *
 * How Argo judges a measurement (argo-rollouts metricproviders/webmetric and utils/evaluate): the
 * k8s JSONPath (`{...}`) is applied to the JSON body and the first result taken (a scalar when it
 * is one value); the conditions are expr-lang expressions over `result`; failure wins, then
 * success; with both conditions set and neither true the measurement is Inconclusive. The
 * conditions in deploy/ are simple comparisons of `result` or `result[0]` with literals joined by
 * `||`/`&&`, which `evalCondition` below evaluates exactly; anything else makes the test fail.
 * Flagger fails a check whose value is outside thresholdRange or whose query returns nothing.
 */

type Phase = 'Successful' | 'Failed' | 'Inconclusive' | 'Error';

interface ArgoMetric {
  name: string;
  successCondition?: string;
  failureCondition?: string;
  provider: { web?: { url: string; jsonPath: string }; prometheus?: { query: string } };
}

const docs = (file: string) => parseAllDocuments(fs.readFileSync(path.join(ROOT, 'deploy', file), 'utf8')).map((d) => d.toJS());
const argoWeb = docs('argo/analysis-template-web.yaml')[0].spec.metrics as ArgoMetric[];
const argoProm = docs('argo/analysis-template-prometheus.yaml')[0].spec.metrics as ArgoMetric[];
const flaggerTemplates = Object.fromEntries(
  docs('flagger/metric-templates.yaml').map((d: { metadata: { name: string }; spec: { query: string } }) => [d.metadata.name, d.spec.query]),
);
const flaggerCanary = docs('flagger/canary-analysis.yaml')[0].spec.analysis.metrics as { name: string; templateRef: { name: string }; thresholdRange: { min?: number; max?: number } }[];

/** expr-lang, restricted to what the templates use: `result`/`result[N]` <op> literal, with || and &&. */
export function evalCondition(condition: string, result: unknown): boolean {
  return condition.split('||').some((alt) =>
    alt.split('&&').every((term) => {
      const m = /^\s*result(?:\[(\d+)\])?\s*(==|!=|<=|>=|<|>)\s*("(?:[^"\\]|\\.)*"|true|false|-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$/.exec(term);
      if (!m) throw new Error(`condition '${term.trim()}' is outside the evaluated subset`);
      const left = m[1] !== undefined ? (result as unknown[])[Number(m[1])] : result;
      if (m[1] !== undefined && left === undefined) throw new Error(`index out of range: ${term.trim()}`);
      const right: unknown = m[3]!.startsWith('"') ? JSON.parse(m[3]!) : m[3] === 'true' ? true : m[3] === 'false' ? false : Number(m[3]);
      switch (m[2]) {
        case '==':
          return left === right;
        case '!=':
          return left !== right;
        default:
          if (typeof left !== 'number' || typeof right !== 'number') throw new Error(`ordering a non-number: ${term.trim()}`);
          return m[2] === '<' ? left < right : m[2] === '<=' ? left <= right : m[2] === '>' ? left > right : left >= right;
      }
    }),
  );
}

/** argo-rollouts utils/evaluate EvaluateResult. */
export function argoPhase(metric: ArgoMetric, result: unknown): Phase {
  let success = metric.successCondition ? evalCondition(metric.successCondition, result) : false;
  let failure = metric.failureCondition ? evalCondition(metric.failureCondition, result) : false;
  if (!metric.successCondition && !metric.failureCondition) return 'Successful';
  if (metric.successCondition && !metric.failureCondition) failure = !success;
  if (!metric.successCondition && metric.failureCondition) success = !failure;
  if (failure) return 'Failed';
  if (!success) return 'Inconclusive';
  return 'Successful';
}

/** The web provider: JSONPath in braces, the first result (a scalar when single). */
function webResult(jsonPath: string, body: unknown): unknown {
  const m = /^\{(.*)\}$/.exec(jsonPath.trim());
  if (!m) throw new Error(`jsonPath '${jsonPath}' is not in k8s {…} form`);
  const found = JSONPath({ path: m[1]!, json: body as object, wrap: true }) as unknown[];
  if (found.length === 0) throw new Error(`jsonPath ${jsonPath} found nothing`);
  return found.length === 1 ? found[0] : found;
}

async function argoWebVerdicts(custody: RunningCustody): Promise<{ status: { action: string }; phases: Record<string, Phase> }> {
  const phases: Record<string, Phase> = {};
  let status: { action: string } | undefined;
  for (const metric of argoWeb) {
    const url = metric.provider.web!.url.replace('{{args.custody-url}}', custody.url).replace('{{args.window}}', '15m');
    const res = await fetch(url);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { action: string };
    status ??= body;
    phases[metric.name] = argoPhase(metric, webResult(metric.provider.web!.jsonPath, body));
  }
  return { status: status!, phases };
}

async function prometheusVerdicts(prom: RunningPrometheus): Promise<{ argo: Record<string, Phase>; flagger: Record<string, boolean> }> {
  const argo: Record<string, Phase> = {};
  for (const metric of argoProm) {
    // the template's own argument defaults, as the Argo controller substitutes them
    const samples = await instant(prom.url, metric.provider.prometheus!.query.replaceAll('{{args.window}}', '15m').replaceAll('{{args.min-sample}}', '100'));
    // Argo's Prometheus provider: a vector becomes []float64; an empty one cannot be indexed (an Error measurement)
    argo[metric.name] = samples.length === 0 ? 'Error' : argoPhase(metric, samples.map((s) => s.value));
  }
  const flagger: Record<string, boolean> = {};
  for (const m of flaggerCanary) {
    const query = flaggerTemplates[m.templateRef.name];
    expect(query, m.templateRef.name).toBeTruthy();
    const samples = await instant(prom.url, query!);
    const v = samples[0]?.value;
    flagger[m.name] = v !== undefined && (m.thresholdRange.min === undefined || v >= m.thresholdRange.min) && (m.thresholdRange.max === undefined || v <= m.thresholdRange.max);
  }
  return { argo, flagger };
}

interface Scenario {
  name: string;
  rows: () => Record<string, unknown[]>;
  action: string;
  web: Record<string, Phase>;
  prom: Record<string, Phase>;
  flagger: Record<string, boolean>;
}

const ok = { 'custody-missing-sponsor': 'Successful', 'custody-policy-error-rate': 'Successful', 'custody-policy-latency-p95': 'Successful' } as const;
const allPass = { 'custody-rollback-rules': true, 'custody-missing-sponsor-ratio': true, 'custody-policy-error-rate': true, 'custody-policy-latency-p95-ms': true };

const scenarios: Scenario[] = [
  {
    name: 'healthy canary: advance',
    // enough calls for every rule to be settled healthy at 95 % confidence
    rows: () => ({ audit_events: calls(3000, Date.now()), policy_decisions: decisions(3000, Date.now()) }),
    action: 'advance',
    web: { 'custody-rollback-action': 'Successful', ...ok },
    prom: { 'custody-rules-breached': 'Successful', 'custody-policy-latency-p95-ms': 'Successful' },
    flagger: allPass,
  },
  {
    name: '5 % of calls without a sponsor: rollback',
    rows: () => ({ audit_events: calls(300, Date.now(), (i) => (i % 20 === 0 ? { sponsor_id: '' } : {})), policy_decisions: decisions(300, Date.now()) }),
    action: 'rollback',
    web: { 'custody-rollback-action': 'Failed', ...ok, 'custody-missing-sponsor': 'Failed' },
    prom: { 'custody-rules-breached': 'Failed', 'custody-policy-latency-p95-ms': 'Successful' },
    // rows seeded into the store never pass the tool-call counter: the per-rule gates see thin traffic and
    // hold (deploy/: a minimum sample before they judge), and the rules' own verdict fails the check
    flagger: { ...allPass, 'custody-rollback-rules': false },
  },
  {
    name: 'p95 at 250 ms (over the alert, under the rollback line): hold',
    rows: () => ({ audit_events: calls(3000, Date.now()), policy_decisions: decisions(3000, Date.now(), (i) => ({ latency_ms: i % 10 === 0 ? 250 : 5 })) }),
    action: 'hold',
    web: { 'custody-rollback-action': 'Inconclusive', ...ok },
    prom: { 'custody-rules-breached': 'Successful', 'custody-policy-latency-p95-ms': 'Successful' },
    flagger: allPass,
  },
  {
    name: 'p95 at 400 ms: rollback',
    rows: () => ({ audit_events: calls(300, Date.now()), policy_decisions: decisions(300, Date.now(), (i) => ({ latency_ms: i % 10 === 0 ? 400 : 5 })) }),
    action: 'rollback',
    web: { 'custody-rollback-action': 'Failed', ...ok, 'custody-policy-latency-p95': 'Failed' },
    // as above: the p95 gate waits for its minimum sample, the rules' verdict fails the analysis
    prom: { 'custody-rules-breached': 'Failed', 'custody-policy-latency-p95-ms': 'Successful' },
    flagger: { ...allPass, 'custody-rollback-rules': false },
  },
  {
    name: 'no canary calls yet: insufficient_data',
    rows: () => ({ audit_events: [] }),
    action: 'insufficient_data',
    web: { 'custody-rollback-action': 'Inconclusive', ...ok },
    // a quiet canary holds: below the minimum sample the per-rule gates read 0 (deploy/), nothing fails
    prom: { 'custody-rules-breached': 'Successful', 'custody-policy-latency-p95-ms': 'Successful' },
    flagger: allPass,
  },
];

describe('expr-lang subset and Argo phases', () => {
  it('evaluates the comparisons faithfully and refuses what it does not know', () => {
    expect(evalCondition('result == "advance"', 'advance')).toBe(true);
    expect(evalCondition('result == "advance" || result == "hold"', 'hold')).toBe(true);
    expect(evalCondition('result[0] >= 1', [1])).toBe(true);
    expect(evalCondition('result[0] <= 300 && result[0] > 0', [301])).toBe(false);
    expect(evalCondition('result == false', false)).toBe(true);
    expect(() => evalCondition('len(result) > 0', [1])).toThrow(/outside the evaluated subset/);
    expect(argoPhase({ name: 'x', successCondition: 'result == 1', failureCondition: 'result == 2', provider: {} }, 3)).toBe('Inconclusive');
    expect(argoPhase({ name: 'x', successCondition: 'result == 1', provider: {} }, 3)).toBe('Failed');
  });
});

for (const s of scenarios) {
  describe(`rollback consumers: ${s.name}`, () => {
    let custody: RunningCustody;
    let prom: RunningPrometheus | undefined;

    beforeAll(async () => {
      const dataDir = tempDir('custody-consumers-');
      seedStore(dataDir, s.rows());
      custody = await startCustody({ dataDir, env: { CUSTODY_ROLLBACK_WATCH: 'off' } });
    });
    afterAll(async () => {
      await prom?.stop();
      await custody?.stop();
    });

    it('Argo Rollouts web provider on GET /v1/rollback/status', async () => {
      const { status, phases } = await argoWebVerdicts(custody);
      expect(status.action).toBe(s.action);
      expect(phases).toEqual(s.web);
    });

    it.skipIf(!hasPrometheus)('Argo Rollouts Prometheus variant and Flagger MetricTemplates (apt-get install prometheus)', async () => {
      prom = await startPrometheus({ targets: [new URL(custody.url).host] });
      await eventually(async () => (await instant(prom!.url, 'custody_rollback_rule_breached')).length > 0, 20_000);
      const { argo, flagger } = await prometheusVerdicts(prom);
      expect(argo).toEqual(s.prom);
      expect(flagger).toEqual(s.flagger);
    });
  });
}

describe('the docs carry the same templates as deploy/', () => {
  it('docs/rollback-consumers.md embeds every deploy/ file verbatim', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs/rollback-consumers.md'), 'utf8');
    for (const file of ['argo/analysis-template-web.yaml', 'argo/analysis-template-prometheus.yaml', 'flagger/metric-templates.yaml', 'flagger/canary-analysis.yaml']) {
      expect(doc, file).toContain(fs.readFileSync(path.join(ROOT, 'deploy', file), 'utf8').trim());
    }
  });
});
