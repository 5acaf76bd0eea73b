import { hashValue } from '../../common/canonical';
import { MCP_METHOD, SCOPE_NAME, SEMCONV } from '../../instrumentation/semconv';
import { SPAN_KIND, type AnyValue, type Span } from '../otlp';

/**
 * The tool-call conventions ingest recognises, and how each one's span maps to the audit row's
 * tool and content fields. Identity (sponsor, instance, parent, role) is convention-free: the
 * `custody.*` attributes of the span, else of its resource (OTEL_RESOURCE_ATTRIBUTES), apply to
 * every convention alike.
 */

/** audit_events.convention: which convention recorded the call. */
export const CONVENTION = {
  /** OpenTelemetry GenAI `execute_tool` spans, custody's own included. */
  GEN_AI: 'gen_ai',
  /** OpenTelemetry MCP semantic conventions: `mcp.method.name=tools/call`. */
  MCP: 'mcp',
  /** Arize OpenInference: `openinference.span.kind=TOOL`. */
  OPENINFERENCE: 'openinference',
  /** OpenLLMetry (Traceloop): `traceloop.span.kind=tool`. */
  OPENLLMETRY: 'openllmetry',
} as const;
export type Convention = (typeof CONVENTION)[keyof typeof CONVENTION];

/** Attribute names of the other conventions, as their libraries emit them. */
export const FOREIGN_ATTR = {
  OPENINFERENCE_SPAN_KIND: 'openinference.span.kind',
  OPENINFERENCE_TOOL_NAME: 'tool.name',
  OPENINFERENCE_TOOL_CALL_ID: 'tool_call.id',
  OPENINFERENCE_INPUT: 'input.value',
  OPENINFERENCE_OUTPUT: 'output.value',
  TRACELOOP_SPAN_KIND: 'traceloop.span.kind',
  TRACELOOP_ENTITY_NAME: 'traceloop.entity.name',
  TRACELOOP_ENTITY_INPUT: 'traceloop.entity.input',
  TRACELOOP_ENTITY_OUTPUT: 'traceloop.entity.output',
  MCP_METHOD_NAME: SEMCONV.MCP_METHOD_NAME,
  GEN_AI_TOOL_CALL_ARGUMENTS: 'gen_ai.tool.call.arguments',
  GEN_AI_TOOL_CALL_RESULT: 'gen_ai.tool.call.result',
} as const;

const OPENINFERENCE_TOOL = 'TOOL';
const TRACELOOP_TOOL = 'tool';

/** Why a span that looks like a tool call got no audit row (custody_tool_spans_unmapped_total's `reason`). */
export const UNMAPPED_REASON = {
  /** The convention marks a tool call but names no tool. */
  MISSING_TOOL_NAME: 'missing_tool_name',
  /** A tool name with no convention's tool-call marker (no operation, span kind or MCP method). */
  NO_TOOL_CALL_MARKER: 'no_tool_call_marker',
} as const;
export type UnmappedReason = (typeof UNMAPPED_REASON)[keyof typeof UNMAPPED_REASON];

/** The values a recognition reads, picked from the span in the mapping's single attribute pass. */
export interface ConventionInputs {
  operation: AnyValue | null | undefined;
  genAiToolName: AnyValue | null | undefined;
  mcpMethod: AnyValue | null | undefined;
  oiKind: AnyValue | null | undefined;
  oiToolName: AnyValue | null | undefined;
  tlKind: AnyValue | null | undefined;
  tlEntityName: AnyValue | null | undefined;
}

export type Recognition =
  | { call: true; convention: Convention; tool: string }
  /** `unmapped`: it looks like a tool call, and why it got no audit row. */
  | { call: false; unmapped?: { convention: Convention | 'none'; reason: UnmappedReason } };

const NOT_A_CALL: Recognition = { call: false };

const str = (v: AnyValue | null | undefined): string => (v && typeof v.stringValue === 'string' ? v.stringValue : '');

/**
 * Which convention, if any, records `span` as a tool call, and the tool it names. `namedCall` is
 * the span's name being `execute_tool …` (GenAI). Checked in order: GenAI (MCP when it also
 * carries the MCP method), MCP, OpenInference, OpenLLMetry.
 *
 * custody's own MCP server span (SERVER kind, custody's scope, no gen_ai.operation.name) is the
 * callee's side of a call its client side already records: it is not a second call.
 */
export function recognise(span: Pick<Span, 'name' | 'kind' | 'scope'>, namedCall: boolean, v: ConventionInputs): Recognition {
  const mcp = str(v.mcpMethod) === MCP_METHOD.TOOLS_CALL;
  if (namedCall || str(v.operation) === 'execute_tool') {
    // the GenAI tool is read by the row itself (custody.tool_id, gen_ai.tool.name, the span name)
    return { call: true, convention: mcp ? CONVENTION.MCP : CONVENTION.GEN_AI, tool: '' };
  }
  if (mcp) {
    if (span.kind === SPAN_KIND.SERVER && span.scope.name === SCOPE_NAME) return NOT_A_CALL;
    const prefix = `${MCP_METHOD.TOOLS_CALL} `;
    const tool = str(v.genAiToolName) || (span.name.startsWith(prefix) ? span.name.slice(prefix.length).trim() : '');
    if (!tool) return { call: false, unmapped: { convention: CONVENTION.MCP, reason: UNMAPPED_REASON.MISSING_TOOL_NAME } };
    return { call: true, convention: CONVENTION.MCP, tool };
  }
  const oiKind = str(v.oiKind);
  if (oiKind && oiKind.toUpperCase() === OPENINFERENCE_TOOL) {
    const tool = str(v.oiToolName);
    if (!tool) return { call: false, unmapped: { convention: CONVENTION.OPENINFERENCE, reason: UNMAPPED_REASON.MISSING_TOOL_NAME } };
    return { call: true, convention: CONVENTION.OPENINFERENCE, tool };
  }
  const tlKind = str(v.tlKind);
  if (tlKind && tlKind.toLowerCase() === TRACELOOP_TOOL) {
    const tool = str(v.tlEntityName);
    if (!tool) return { call: false, unmapped: { convention: CONVENTION.OPENLLMETRY, reason: UNMAPPED_REASON.MISSING_TOOL_NAME } };
    return { call: true, convention: CONVENTION.OPENLLMETRY, tool };
  }
  // a GenAI tool name alone: a tool-call span that forgot its operation (OpenInference's and
  // OpenLLMetry's other span kinds may carry `tool.name` for what a model was offered)
  if (str(v.genAiToolName) && !oiKind && !tlKind) {
    return { call: false, unmapped: { convention: 'none', reason: UNMAPPED_REASON.NO_TOOL_CALL_MARKER } };
  }
  return NOT_A_CALL;
}

/**
 * `custody.request_hash` / `custody.response_hash` for content another convention recorded as
 * text: SHA-256 of the canonical JSON of the value it holds when that text is JSON (so that the
 * same arguments hash alike whatever their key order), else of the text as a JSON string. '' when
 * there is no content.
 */
export function contentHash(v: AnyValue | null | undefined): string {
  const s = str(v);
  if (!s) return '';
  const c = s.charCodeAt(0);
  // only objects, arrays and strings can be JSON worth parsing here; anything else is text
  if (c === 123 /* { */ || c === 91 /* [ */ || c === 34 /* " */) {
    try {
      return hashValue(JSON.parse(s));
    } catch {
      /* text that merely starts like JSON */
    }
  }
  return hashValue(s);
}
