import { describe, expect, it } from 'vitest';
import { validateAuditRow } from '../../../collector/audit/schema';
import { registry } from '../../../common/metrics';

const good = {
  timestamp: '2026-11-21T10:00:00.123456789Z',
  trace_id: '0af7651916cd43dd8448eb211c80319c',
  span_id: 'b7ad6b7169203331',
  sponsor_id: 'alice',
  agent_instance_id: 'assistant-1',
  parent_agent_id: '',
  tool_id: 'billing',
  action: 'refund',
  purpose: 'ticket 4711',
  request_hash: 'a'.repeat(64),
  response_hash: '',
  policy_decision_id: '01JDX0000000000000000000',
  decision: 'allow',
  enforced: true,
  cohort: 'canary',
  status: 'ok',
};

async function violationCount(field: string): Promise<number> {
  const metric = await registry.getSingleMetric('custody_audit_schema_violations_total')!.get();
  return metric.values.find((v) => v.labels.field === field)?.value ?? 0;
}

describe('audit-log-schema.json', () => {
  it('accepts a complete audit row', () => {
    expect(validateAuditRow(good)).toEqual([]);
  });

  it('names each violating field once and counts it', async () => {
    const before = await violationCount('sponsor_id');
    const found = validateAuditRow({ ...good, sponsor_id: '', decision: 'maybe', request_hash: 'xyz' });
    expect(found.map((v) => v.field).sort()).toEqual(['decision', 'request_hash', 'sponsor_id']);
    expect(await violationCount('sponsor_id')).toBe(before + 1);
  });

  it('reports a missing required field by name', () => {
    const { policy_decision_id: _omit, ...row } = good;
    expect(validateAuditRow(row).map((v) => v.field)).toEqual(['policy_decision_id']);
  });
});

describe('the collector checks every tool-call span against the schema', () => {
  it('counts the fields a stored audit row violates, and still maps the row', async () => {
    const { decodeJson } = await import('../../../collector/otlp');
    const { mapSpans } = await import('../../../collector/ingest/mapping');
    const attrs = (o: Record<string, string>) => Object.entries(o).map(([key, v]) => ({ key, value: { stringValue: v } }));
    const span = (id: number, a: Record<string, string>) => ({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: id.toString(16).padStart(16, '0'),
      name: 'execute_tool billing.refund',
      startTimeUnixNano: String(BigInt(Date.now()) * 1_000_000n),
      endTimeUnixNano: String(BigInt(Date.now() + 2) * 1_000_000n),
      attributes: attrs({ 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'billing.refund', 'custody.tool_id': 'billing', 'custody.action': 'refund', ...a }),
    });
    const body = JSON.stringify({
      resourceSpans: [{ resource: { attributes: [] }, scopeSpans: [{ spans: [
        span(1, { 'custody.sponsor_id': 'alice', 'custody.agent_instance_id': 'a1', 'custody.policy.decision': 'allow', 'custody.rollout.cohort': 'canary' }),
        span(2, { 'custody.agent_instance_id': 'a2', 'custody.policy.decision': 'allow', 'custody.request_hash': 'not-a-hash' }),
      ] }] }],
    });
    const sponsorBefore = await violationCount('sponsor_id');
    const hashBefore = await violationCount('request_hash');
    const decisionBefore = await violationCount('decision');
    const mapped = mapSpans(decodeJson(body).spans);
    expect(mapped.counts.audit_events).toBe(2);
    expect(mapped.missingSponsor).toBe(1);
    expect(await violationCount('sponsor_id')).toBe(sponsorBefore + 1);
    expect(await violationCount('request_hash')).toBe(hashBefore + 1);
    expect(await violationCount('decision')).toBe(decisionBefore);
  });
});
