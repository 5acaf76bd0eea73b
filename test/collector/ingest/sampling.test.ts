import { describe, expect, it } from 'vitest';
import { isSampledOut, sampleBucket } from '../../../common/audit-sample';
import { AUDIT_COLUMNS, mapSpans } from '../../../collector/ingest/mapping';
import { decodeJson } from '../../../collector/otlp';
import { hex, jsonBody, jsonSpan } from '../../helpers/otlp-bodies';

/**
 * The collector's side of audit sampling: a tool call the agent marks sampled out becomes a stub
 * (its chain fields and what the rules count, no attributes, no otel_traces row) only when it may
 * be one; a deny, an error, an unsponsored, unchained or unmanaged call, one without a granted
 * rate or one inside the sample is stored whole and counted by reason.
 */
const RATE = 0.25;

/** Ids whose bucket is past (out) or under (in) the rate. */
function ids(out: boolean): { traceId: string; spanId: string } {
  for (;;) {
    const traceId = hex(16);
    const spanId = hex(8);
    if (isSampledOut(traceId, spanId, RATE) === out) return { traceId, spanId };
  }
}

function call(over: Record<string, string | number | boolean | undefined> = {}, out = true) {
  const attrs: Record<string, string | number | boolean | undefined> = {
    'gen_ai.operation.name': 'execute_tool',
    'custody.tool_id': 'search',
    'custody.action': 'call',
    'custody.sponsor_id': 'alice',
    'custody.agent_instance_id': 'agent-1',
    'custody.purpose': 'ticket 7',
    'custody.policy.decision': 'allow',
    'custody.policy_decision_id': 'dec-1',
    'custody.rollout.cohort': 'canary',
    'custody.audit.seq': 3,
    'custody.audit.prev_hash': 'a'.repeat(64),
    'custody.request_hash': 'b'.repeat(64),
    'custody.audit.sampled': true,
    'custody.audit.sample_rate': RATE,
    ...over,
  };
  const attributes = Object.entries(attrs)
    .filter(([, v]) => v !== undefined)
    .map(([key, v]) => ({
      key,
      value: typeof v === 'boolean' ? { boolValue: v } : typeof v === 'number' ? (Number.isInteger(v) ? { intValue: String(v) } : { doubleValue: v }) : { stringValue: v },
    }));
  return jsonSpan('execute_tool search', { ...ids(out), attributes, ...(over.error ? { status: { code: 2 } } : {}) });
}

function map(spans: object[]) {
  const mapped = mapSpans(decodeJson(jsonBody(spans)).spans, 'verified');
  const audit = (mapped.rows.audit_events?.toString().trim().split('\n') ?? [])
    .flatMap((line) => JSON.parse(`[${line}]`) as unknown[][])
    .map((row) => Object.fromEntries(AUDIT_COLUMNS.map((c, i) => [c, row[i]])) as Record<string, unknown>);
  return { mapped, audit };
}

describe('sampleBucket', () => {
  it('is uniform enough: 10,000 random ids at 1 % keep about 100', () => {
    let kept = 0;
    for (let i = 0; i < 10_000; i++) if (!isSampledOut(hex(16), hex(8), 0.01)) kept++;
    expect(kept).toBeGreaterThan(50);
    expect(kept).toBeLessThan(150);
  });

  it('keeps every call without a rate in (0, 1)', () => {
    for (const rate of [undefined, 0, 1, 2, -1]) expect(isSampledOut(hex(16), hex(8), rate)).toBe(false);
    const b = sampleBucket('00'.repeat(16), '00'.repeat(8));
    expect(b).toBeGreaterThanOrEqual(0);
    expect(b).toBeLessThan(1);
  });
});

describe('a call marked sampled out', () => {
  it('becomes a stub when it may: no attributes, no purpose, no otel_traces row, counted per tool', () => {
    const { mapped, audit } = map([call()]);
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({ audit_sampled: true, attributes: {}, purpose: '', decision: 'allow', cohort: 'canary', sponsor_id: 'alice', audit_seq: 3 });
    expect(mapped.rows.otel_traces).toBeUndefined();
    expect(mapped.sampledOut).toEqual(new Map([['search', 1]]));
    expect(mapped.sampleRefused.size).toBe(0);
  });

  it.each([
    ['not_allowed', { 'custody.policy.decision': 'deny' }, true],
    ['not_allowed', { 'custody.policy.decision': 'error' }, true],
    ['error', { 'error.type': 'TypeError' }, true],
    ['missing_sponsor', { 'custody.sponsor_id': undefined }, true],
    ['unchained', { 'custody.audit.seq': undefined }, true],
    ['unchained', { 'custody.policy_decision_id': undefined }, true],
    ['unmanaged', { 'custody.rollout.cohort': 'unmanaged' }, true],
    ['no_rate', { 'custody.audit.sample_rate': undefined }, true],
    ['no_rate', { 'custody.audit.sample_rate': 1 }, true],
    ['in_sample', {}, false],
  ] as const)('is stored whole when %s (%j)', (reason, over, out) => {
    const { mapped, audit } = map([call(over, out)]);
    expect(audit).toHaveLength(1);
    expect(audit[0]!.audit_sampled).toBe(false);
    expect((audit[0]!.attributes as Record<string, string>)['custody.audit.sampled']).toBe('true');
    expect(mapped.counts.otel_traces).toBe(1);
    expect(mapped.sampleRefused).toEqual(new Map([[reason, 1]]));
    expect(mapped.sampledOut.size).toBe(0);
  });

  it('an unmarked call is stored whole and counted nowhere', () => {
    const { mapped, audit } = map([call({ 'custody.audit.sampled': undefined })]);
    expect(audit[0]!.audit_sampled).toBe(false);
    expect(mapped.counts.otel_traces).toBe(1);
    expect(mapped.sampleRefused.size + mapped.sampledOut.size).toBe(0);
  });
});
