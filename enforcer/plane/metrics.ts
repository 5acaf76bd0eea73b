import { counter, gauge, histogram } from '../../common/metrics';
import { METRIC } from '../../common/names';

/**
 * The policy plane's metrics, on the process's one registry (so `custody up` shows them on its
 * /metrics). Metric updates never fail a request: telemetry fails open.
 */
export function planeMetrics() {
  const decisionDuration = histogram({
    name: METRIC.POLICY_DECISION_DURATION_SECONDS,
    help: 'Time the policy plane took to decide a /v1/check (token verification and rule evaluation), seconds',
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1],
  });
  const decisions = counter<'decision' | 'tool'>({
    name: METRIC.POLICY_DECISIONS_TOTAL,
    help: 'Policy decisions by result (allow, deny, error) and tool; tools the policy does not name count as "other"',
    labelNames: ['decision', 'tool'],
  });
  const reloadErrors = counter({
    name: METRIC.POLICY_RELOAD_ERRORS_TOTAL,
    help: 'Policy files refused on reload (the last good policy stays in force)',
    // every worker reads the same file: a refused file counts once
    aggregator: 'max',
  });
  const version = gauge<'version' | 'hash'>({
    name: METRIC.POLICY_VERSION,
    help: 'The policy in force: value = how many policies this process has loaded, labelled with its version and hash',
    labelNames: ['version', 'hash'],
  });
  const receiptBatchSize = histogram({
    name: METRIC.POLICY_RECEIPT_BATCH_SIZE,
    help: 'Decision receipts signed under one signature (the decisions made in one event-loop turn)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
  });
  const approvalsPending = gauge({ name: METRIC.APPROVALS_PENDING, help: 'Tool calls waiting for a human approval' });
  const approvals = counter<'status'>({ name: METRIC.APPROVALS_TOTAL, help: 'Approval requests by outcome (requested, approved, denied, expired)', labelNames: ['status'] });
  const webhookFailures = counter({ name: METRIC.APPROVAL_WEBHOOK_FAILURES_TOTAL, help: 'Approval-request webhooks that failed or timed out (the request itself stands)' });
  const rolloutPercent = gauge({ name: METRIC.ROLLOUT_PERCENT, help: 'Percent of agent instances in the canary (enforced) cohort' });
  const rolloutScope = gauge<'attribute' | 'values'>({
    name: METRIC.ROLLOUT_SCOPE_INFO,
    help: "The canary's scope (the policy's rollout.scope): 1 per attribute, labelled with the values that put a call in it; attribute=\"*\", values=\"*\" when every instance can be canary",
    labelNames: ['attribute', 'values'],
    aggregator: 'max',
  });

  const safely = (fn: () => void) => {
    try {
      fn();
    } catch {
      /* a metric registered elsewhere with other labels must not break a decision */
    }
  };
  return {
    decided(decision: string, tool: string, seconds: number): void {
      safely(() => decisionDuration.observe(seconds));
      safely(() => decisions.inc({ decision, tool }));
    },
    receiptBatch(size: number): void {
      safely(() => receiptBatchSize.observe(size));
    },
    reloadFailed(): void {
      safely(() => reloadErrors.inc());
    },
    loaded(generation: number, policyVersion: string, hash: string, scope?: Readonly<Record<string, readonly string[]>>): void {
      safely(() => {
        version.reset();
        version.set({ version: policyVersion, hash: hash.slice(0, 12) }, generation);
      });
      safely(() => {
        rolloutScope.reset();
        if (!scope) rolloutScope.set({ attribute: '*', values: '*' }, 1);
        else for (const [attribute, values] of Object.entries(scope)) rolloutScope.set({ attribute, values: values.join('|') }, 1);
      });
    },
    approval(status: string, pending: number): void {
      safely(() => approvals.inc({ status }));
      safely(() => approvalsPending.set(pending));
    },
    webhookFailed(): void {
      safely(() => webhookFailures.inc());
    },
    rollout(percent: number): void {
      safely(() => rolloutPercent.set(percent));
    },
  };
}

export type PlaneMetrics = ReturnType<typeof planeMetrics>;
