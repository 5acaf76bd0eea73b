import { describe, expect, it } from 'vitest';
import { validateAuditRow } from '../collector/audit-schema';
import { registry } from '../common/metrics';

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
