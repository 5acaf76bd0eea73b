import { describe, expect, it } from 'vitest';
import { hashValue } from '../../../common/canonical';
import { AUDIT_COLUMNS, mapSpans } from '../../../collector/ingest/mapping';
import { contentHash, recognise } from '../../../collector/ingest/conventions';
import { decodeJson } from '../../../collector/otlp';
import { SPAN_KIND } from '../../../collector/otlp/span';
import { dropAttribute, firstSpan, fixtureRequest, type JsonRequest } from '../../helpers/conventions';

function auditRows(req: JsonRequest) {
  const mapped = mapSpans(decodeJson(JSON.stringify(req)).spans, 'unverified');
  const body = mapped.rows.audit_events;
  const rows = body
    ? body
        .toString()
        .trim()
        .split('\n')
        .flatMap((line) => JSON.parse(`[${line}]`) as unknown[][])
        .map((row) => Object.fromEntries(AUDIT_COLUMNS.map((c, i) => [c, row[i]])) as Record<string, unknown>)
    : [];
  return { rows, mapped };
}

describe('tool-call conventions at ingest', () => {
  it('maps an OpenInference TOOL span: tool, hashes of its input and output, identity from the resource', () => {
    const { rows, mapped } = auditRows(fixtureRequest('openinference-langchain-python'));
    expect(rows).toHaveLength(1);
    const r = rows[0]!;
    expect(r).toMatchObject({
      convention: 'openinference',
      tool_id: 'lookup_order',
      tool_name: 'lookup_order',
      sponsor_id: 'carol@example.com',
      agent_instance_id: 'py-agent-1',
      parent_agent_id: '',
      role: 'support',
      decision: '',
      status: 'ok',
      service_name: 'py-support-agent',
      trust: 'unverified',
    });
    // the same arguments hash alike whatever their key order or spacing
    expect(r.request_hash).toBe(hashValue({ order_id: 'A-1001' }));
    expect(r.response_hash).toBe(hashValue({ status: 'shipped' }));
    // the convention's own attributes stay with the row
    expect((r.attributes as Record<string, string>)['openinference.span.kind']).toBe('TOOL');
    expect(mapped.conventions.get('openinference')).toBe(1);
    expect(mapped.missingSponsor).toBe(0);
  });

  it('maps an OpenLLMetry tool span, and counts its missing sponsor like a GenAI one', () => {
    const { rows, mapped } = auditRows(fixtureRequest('openllmetry-python'));
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ convention: 'openllmetry', tool_id: 'refund', sponsor_id: '', status: 'unset' });
    expect(rows[0]!.request_hash).toBe(hashValue({ args: [], kwargs: { order_id: 'A-1001', amount: 25 } }));
    expect(rows[0]!.response_hash).toBe(hashValue({ refunded: true }));
    expect(mapped.missingSponsor).toBe(1);
    expect([...mapped.toolCalls.keys()]).toEqual(['refund\0\0']);
  });

  it('maps an MCP tools/call client span without gen_ai.operation.name; one naming no tool is counted as unmapped', () => {
    const { rows, mapped } = auditRows(fixtureRequest('mcp-semconv'));
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      convention: 'mcp',
      tool_id: 'get_weather',
      sponsor_id: 'dave@example.com',
      agent_instance_id: 'py-mcp-1',
      parent_agent_id: 'py-orchestrator-1',
      role: 'support',
    });
    expect([...mapped.unmapped]).toEqual([['mcp\0missing_tool_name', 1]]);
    // every span is kept in otel_traces
    expect(mapped.counts.otel_traces).toBe(2);
  });

  it('a span-level custody attribute wins over the resource, for every convention', () => {
    const req = fixtureRequest('openinference-langchain-python');
    firstSpan(req).attributes!.push({ key: 'custody.sponsor_id', value: { stringValue: 'span-level@example.com' } });
    expect(auditRows(req).rows[0]!.sponsor_id).toBe('span-level@example.com');
  });

  it('counts tool spans that name no tool, and tool names with no tool-call marker, by convention and reason', () => {
    const oi = fixtureRequest('openinference-langchain-python');
    dropAttribute(firstSpan(oi), 'tool.name');
    const tl = fixtureRequest('openllmetry-python');
    dropAttribute(firstSpan(tl), 'traceloop.entity.name');
    const bare = fixtureRequest('mcp-semconv');
    dropAttribute(firstSpan(bare), 'mcp.method.name');
    bare.resourceSpans[0]!.scopeSpans[0]!.spans.length = 1;
    const merged: JsonRequest = { resourceSpans: [...oi.resourceSpans, ...tl.resourceSpans, ...bare.resourceSpans] };
    const { rows, mapped } = auditRows(merged);
    expect(rows).toHaveLength(0);
    expect(Object.fromEntries(mapped.unmapped)).toEqual({
      'openinference\0missing_tool_name': 1,
      'openllmetry\0missing_tool_name': 1,
      'none\0no_tool_call_marker': 1,
    });
  });

  it('keeps GenAI spans as they were, and marks MCP ones that also carry the GenAI operation as mcp', () => {
    const span = { name: 'execute_tool search', kind: SPAN_KIND.INTERNAL, scope: { name: 'custody', version: '1' } };
    const none = { operation: undefined, genAiToolName: undefined, mcpMethod: undefined, oiKind: undefined, oiToolName: undefined, tlKind: undefined, tlEntityName: undefined };
    expect(recognise(span, true, none)).toEqual({ call: true, convention: 'gen_ai', tool: '' });
    const server = { name: 'tools/call search', kind: SPAN_KIND.SERVER, scope: { name: 'mcp-python', version: '' } };
    expect(recognise(server, false, { ...none, operation: { stringValue: 'execute_tool' }, mcpMethod: { stringValue: 'tools/call' } })).toEqual({ call: true, convention: 'mcp', tool: '' });
    // custody's own MCP server span is the callee's side of a call its client already records
    const own = { ...server, scope: { name: 'custody', version: '1' } };
    expect(recognise(own, false, { ...none, mcpMethod: { stringValue: 'tools/call' }, genAiToolName: { stringValue: 'search' } })).toEqual({ call: false });
    // other OpenInference kinds are not tool calls, and are not counted
    expect(recognise({ ...server, name: 'ChatOpenAI' }, false, { ...none, oiKind: { stringValue: 'LLM' } })).toEqual({ call: false });
  });

  it('hashes text content that is not JSON as a JSON string', () => {
    expect(contentHash({ stringValue: 'what is the weather in Paris?' })).toBe(hashValue('what is the weather in Paris?'));
    expect(contentHash({ stringValue: '{not json' })).toBe(hashValue('{not json'));
    expect(contentHash(undefined)).toBe('');
  });
});
