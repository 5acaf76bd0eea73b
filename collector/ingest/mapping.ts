import { validateAuditRow } from '../audit/schema';
import { sampleBucket } from '../../common/audit-sample';
import { ATTR, COHORT, SPAN, TABLE, TRUST, type Trust } from '../../common/names';
import { contentHash, FOREIGN_ATTR, recognise, type Convention, type Recognition } from './conventions';
import { findAttribute, type AnyValue, type Attributes, type KeyValue, type PbLong, type Resource, type Span } from '../otlp';

/**
 * Spans → table rows. Every span becomes an `otel_traces` row written the way the OpenTelemetry
 * Collector's ClickHouse exporter writes it (kind and status as pdata names them, attribute values
 * as pcommon's Value.AsString renders them), so readers of that schema work unchanged. Tool-call
 * spans also become `audit_events` rows; custody's own event spans (decision log, token events,
 * rollout changes) become rows of their tables.
 *
 * This is the ingest hot path: each span's attributes are walked once, building the attribute map
 * and picking the promoted columns in the same pass; rows are plain arrays in column order, turned
 * into JSONCompactEachRow text by a few large JSON.stringify calls (many small ones cost more than
 * the rows themselves).
 */

export const TRACE_COLUMNS = [
  'Timestamp', 'TraceId', 'SpanId', 'ParentSpanId', 'TraceState', 'SpanName', 'SpanKind', 'ServiceName',
  'ResourceAttributes', 'ScopeName', 'ScopeVersion', 'SpanAttributes', 'Duration', 'StatusCode', 'StatusMessage',
  'Events.Timestamp', 'Events.Name', 'Events.Attributes',
  'Links.TraceId', 'Links.SpanId', 'Links.TraceState', 'Links.Attributes',
] as const;

export const AUDIT_COLUMNS = [
  'timestamp', 'end_timestamp', 'trace_id', 'span_id', 'parent_span_id', 'service_name',
  'sponsor_id', 'agent_instance_id', 'parent_agent_id', 'agent_name', 'role', 'tool_id', 'tool_name',
  'action', 'purpose', 'request_hash', 'response_hash', 'policy_decision_id', 'decision', 'rule_id',
  'policy_latency_ms', 'policy_cached', 'enforced', 'cohort', 'status', 'error_type', 'token_jti',
  'tool_call_id', 'audit_seq', 'audit_prev_hash', 'duration_ns', 'attributes', 'trust', 'convention', 'audit_sampled',
] as const;

export const DECISION_COLUMNS = [
  'timestamp', 'policy_decision_id', 'decision', 'rule_id', 'reason', 'sponsor_id', 'agent_instance_id',
  'parent_agent_id', 'role', 'tool_id', 'action', 'purpose', 'cohort', 'enforced', 'token_jti', 'latency_ms',
  'trace_id', 'span_id', 'service_name', 'attributes',
] as const;

export const TOKEN_COLUMNS = [
  'timestamp', 'result', 'kind', 'code', 'jti', 'sponsor_id', 'agent_instance_id', 'parent_agent_id',
  'tool_id', 'role', 'ttl_seconds', 'expires_at', 'trace_id', 'span_id', 'service_name', 'attributes',
] as const;

export const ROLLOUT_COLUMNS = [
  'timestamp', 'from_percent', 'to_percent', 'reason', 'actor', 'trace_id', 'span_id', 'service_name', 'receipt',
] as const;

export const POLICY_EVENT_COLUMNS = [
  'timestamp', 'result', 'version', 'hash', 'source', 'error', 'receipt', 'trace_id', 'span_id', 'service_name',
] as const;

/** The tables ingest writes, with the columns of its rows, in order. */
export const INGEST_TABLES = {
  [TABLE.OTEL_TRACES]: TRACE_COLUMNS,
  [TABLE.AUDIT_EVENTS]: AUDIT_COLUMNS,
  [TABLE.POLICY_DECISIONS]: DECISION_COLUMNS,
  [TABLE.TOKEN_EVENTS]: TOKEN_COLUMNS,
  [TABLE.ROLLOUT_EVENTS]: ROLLOUT_COLUMNS,
  [TABLE.POLICY_EVENTS]: POLICY_EVENT_COLUMNS,
} as const;
export type IngestTable = keyof typeof INGEST_TABLES;

/** The format of the row bodies; see serializeRows. */
export const ROW_FORMAT = 'JSONCompactEachRow';

/**
 * Settings every ingest insert runs with: synchronous (the insert returns once its part is
 * written), timestamps read as `seconds.nanoseconds` whatever the server's default, and a batch
 * spanning many days may touch any number of partitions.
 */
export const INSERT_SETTINGS = {
  async_insert: 0,
  date_time_input_format: 'basic',
  max_partitions_per_insert_block: 0,
} as const;

/** Rows per JSON.stringify call: one call per row costs more than the rows themselves. */
const ROWS_PER_LINE = 64;

/**
 * Rows as a JSONCompactEachRow body: `[…],[…]` lines (the format takes commas between rows),
 * a newline every ROWS_PER_LINE rows so that the engine can parse in parallel.
 */
export function serializeRows(rows: readonly unknown[][]): string {
  if (rows.length <= ROWS_PER_LINE) return JSON.stringify(rows).slice(1, -1) + '\n';
  let out = '';
  for (let i = 0; i < rows.length; i += ROWS_PER_LINE) out += JSON.stringify(rows.slice(i, i + ROWS_PER_LINE)).slice(1, -1) + '\n';
  return out;
}

/**
 * JSONCompactEachRow bodies (see serializeRows), per table; tables without rows are absent.
 * Buffers: held outside the JS heap while they wait for their insert, so garbage collection does
 * not copy them around.
 */
export type TableRows = Partial<Record<IngestTable, Buffer>>;

export interface MappedSpans {
  readonly rows: TableRows;
  /** Rows per table. */
  readonly counts: Partial<Record<IngestTable, number>>;
  /** Tool calls by `tool\0decision\0cohort` (the custody_tool_calls_total labels). */
  readonly toolCalls: Map<string, number>;
  /** Tool calls stored without a sponsor: the signal the rules watch. */
  readonly missingSponsor: number;
  /** Tool calls by the convention that recorded them. */
  readonly conventions: Map<Convention, number>;
  /** Spans that look like tool calls but got no audit row, by `convention\0reason`. */
  readonly unmapped: Map<string, number>;
  /** Spans named as a service's record (decision, token event, rollout change) from another source: kept in otel_traces only. */
  readonly untrustedRecords: number;
  /** Tool calls stored as sampled-out stubs, by tool. */
  readonly sampledOut: Map<string, number>;
  /** Tool calls marked sampled out that may not be (kept whole instead), by reason. */
  readonly sampleRefused: Map<string, number>;
  readonly spans: number;
  /** Bytes in all bodies, for the writer's memory bound. */
  readonly bytes: number;
}

// ---------------------------------------------------------------------------------------------
// attribute values

// pdata's SpanKind.String() and StatusCode.String(), which the ClickHouse exporter writes.
const KIND_NAMES = ['Unspecified', 'Internal', 'Server', 'Client', 'Producer', 'Consumer'];
const STATUS_NAMES = ['Unset', 'Ok', 'Error'];
const AUDIT_STATUS = ['unset', 'ok', 'error'];

const NS_PER_S = 1_000_000_000n;

/** Nanoseconds as `seconds.nanoseconds`: read exactly by DateTime64(9) whatever the server's timezone. */
export function nsText(ns: bigint): string {
  const s = ns / NS_PER_S;
  const f = Number(ns - s * NS_PER_S);
  return `${s}.${f < 100_000_000 ? String(f).padStart(9, '0') : f}`;
}

function msText(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${s}.${String(ms - s * 1000).padStart(3, '0')}`;
}

function longText(l: PbLong): string {
  // high is 0 or -1 for everything that fits in 32 bits: the common case
  if ((l.high === 0 && l.low >= 0) || (l.high === -1 && l.low < 0)) return String(l.low);
  const n = l.high * 4294967296 + (l.low >>> 0);
  return Number.isSafeInteger(n) ? String(n) : String((BigInt(l.high) << 32n) | BigInt(l.low >>> 0));
}

function intText(v: PbLong | number | string): string {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? String(v) : BigInt(v).toString();
  if (typeof v === 'string') return (v.length > 1 && v[0] === '0') || v.startsWith('-0') ? BigInt(v).toString() : v;
  return longText(v);
}

function doubleOf(v: number | string): number {
  return typeof v === 'number' ? v : Number(v);
}

function bytesText(b: Uint8Array | string): string {
  if (typeof b === 'string') return b;
  return (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)).toString('base64');
}

/** A value as JSON of its raw form (how pcommon's AsString renders slices and maps). */
function rawJson(v: AnyValue | null | undefined): string {
  if (!v) return 'null';
  if (v.stringValue != null) return JSON.stringify(v.stringValue);
  if (v.intValue != null) return intText(v.intValue);
  if (v.boolValue != null) return v.boolValue ? 'true' : 'false';
  if (v.doubleValue != null) {
    const d = doubleOf(v.doubleValue);
    return Number.isFinite(d) ? String(d) : 'null';
  }
  if (v.arrayValue != null) return `[${(v.arrayValue.values ?? []).map(rawJson).join(',')}]`;
  if (v.kvlistValue != null) {
    // Go's encoding/json writes map keys sorted; a repeated key keeps its last value
    const byKey = new Map<string, AnyValue | null | undefined>();
    for (const kv of v.kvlistValue.values ?? []) byKey.set(kv.key ?? '', kv.value);
    const keys = [...byKey.keys()].sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${rawJson(byKey.get(k))}`).join(',')}}`;
  }
  if (v.bytesValue != null) return JSON.stringify(bytesText(v.bytesValue));
  return 'null';
}

/** A value as a Map(String, String) value: pcommon's Value.AsString(). */
export function attrString(v: AnyValue | null | undefined): string {
  if (!v) return '';
  if (v.stringValue != null) return v.stringValue;
  if (v.intValue != null) return intText(v.intValue);
  if (v.boolValue != null) return v.boolValue ? 'true' : 'false';
  if (v.doubleValue != null) return String(doubleOf(v.doubleValue));
  if (v.arrayValue != null || v.kvlistValue != null) return rawJson(v);
  if (v.bytesValue != null) return bytesText(v.bytesValue);
  return '';
}

function numberOf(v: AnyValue | null | undefined): number {
  if (!v) return 0;
  let n = 0;
  if (v.doubleValue != null) n = doubleOf(v.doubleValue);
  else if (v.intValue != null) n = Number(intText(v.intValue));
  else if (v.stringValue != null && v.stringValue.trim() !== '') n = Number(v.stringValue);
  return Number.isFinite(n) ? n : 0;
}

function boolOf(v: AnyValue | null | undefined): boolean {
  return !!v && (v.boolValue === true || v.stringValue === 'true');
}

/** A whole number in [0, max], or 0. */
function uintOf(v: AnyValue | null | undefined, max: number): number {
  const n = numberOf(v);
  return n >= 0 && n <= max ? Math.floor(n) : 0;
}

// ---------------------------------------------------------------------------------------------
// promoted attributes: one slot per attribute key that has a column somewhere

const SLOT_KEYS = [
  ATTR.GEN_AI_OPERATION_NAME, ATTR.GEN_AI_TOOL_NAME, ATTR.GEN_AI_TOOL_CALL_ID, ATTR.GEN_AI_AGENT_ID, ATTR.GEN_AI_AGENT_NAME,
  ATTR.ERROR_TYPE, ATTR.SPONSOR_ID, ATTR.AGENT_INSTANCE_ID, ATTR.PARENT_AGENT_ID, ATTR.ROLE, ATTR.TOOL_ID, ATTR.ACTION,
  ATTR.PURPOSE, ATTR.REQUEST_HASH, ATTR.RESPONSE_HASH, ATTR.POLICY_DECISION_ID, ATTR.POLICY_DECISION, ATTR.POLICY_RULE_ID,
  ATTR.POLICY_REASON, ATTR.POLICY_LATENCY_MS, ATTR.POLICY_CACHED, ATTR.ENFORCED, ATTR.ROLLOUT_COHORT, ATTR.TOKEN_JTI,
  ATTR.AUDIT_SEQ, ATTR.AUDIT_PREV_HASH, ATTR.TOKEN_RESULT, ATTR.TOKEN_KIND, ATTR.TOKEN_REFUSAL_CODE,
  ATTR.TOKEN_TTL_SECONDS, ATTR.TOKEN_EXPIRES_AT, ATTR.ROLLOUT_FROM_PERCENT, ATTR.ROLLOUT_TO_PERCENT,
  ATTR.ROLLOUT_REASON, ATTR.ROLLOUT_ACTOR, ATTR.ROLLOUT_RECEIPT, ATTR.AUDIT_SAMPLED, ATTR.AUDIT_SAMPLE_RATE,
  ATTR.POLICY_CHANGE_RESULT, ATTR.POLICY_VERSION, ATTR.POLICY_HASH, ATTR.POLICY_SOURCE, ATTR.POLICY_CHANGE_ERROR, ATTR.POLICY_CHANGE_RECEIPT,
  // Baggage copied onto spans (e.g. by a baggage span processor) may carry a `baggage.` prefix.
  `baggage.${ATTR.SPONSOR_ID}`, `baggage.${ATTR.AGENT_INSTANCE_ID}`, `baggage.${ATTR.PARENT_AGENT_ID}`,
  // the other conventions' tool-call attributes (conventions.ts); they stay in the attributes map too
  FOREIGN_ATTR.MCP_METHOD_NAME, FOREIGN_ATTR.OPENINFERENCE_SPAN_KIND, FOREIGN_ATTR.OPENINFERENCE_TOOL_NAME,
  FOREIGN_ATTR.OPENINFERENCE_TOOL_CALL_ID, FOREIGN_ATTR.OPENINFERENCE_INPUT, FOREIGN_ATTR.OPENINFERENCE_OUTPUT,
  FOREIGN_ATTR.TRACELOOP_SPAN_KIND, FOREIGN_ATTR.TRACELOOP_ENTITY_NAME, FOREIGN_ATTR.TRACELOOP_ENTITY_INPUT,
  FOREIGN_ATTR.TRACELOOP_ENTITY_OUTPUT, FOREIGN_ATTR.GEN_AI_TOOL_CALL_ARGUMENTS, FOREIGN_ATTR.GEN_AI_TOOL_CALL_RESULT,
] as const;
type SlotKey = (typeof SLOT_KEYS)[number];
const SLOT = new Map<string, number>(SLOT_KEYS.map((k, i) => [k, i]));
const slot = (k: SlotKey): number => SLOT.get(k)!;

type Slots = (AnyValue | null | undefined)[];

const S = {
  OPERATION: slot(ATTR.GEN_AI_OPERATION_NAME),
  TOOL_NAME: slot(ATTR.GEN_AI_TOOL_NAME),
  TOOL_CALL_ID: slot(ATTR.GEN_AI_TOOL_CALL_ID),
  GEN_AI_AGENT_ID: slot(ATTR.GEN_AI_AGENT_ID),
  AGENT_NAME: slot(ATTR.GEN_AI_AGENT_NAME),
  ERROR_TYPE: slot(ATTR.ERROR_TYPE),
  SPONSOR: slot(ATTR.SPONSOR_ID),
  INSTANCE: slot(ATTR.AGENT_INSTANCE_ID),
  PARENT: slot(ATTR.PARENT_AGENT_ID),
  ROLE: slot(ATTR.ROLE),
  TOOL_ID: slot(ATTR.TOOL_ID),
  ACTION: slot(ATTR.ACTION),
  PURPOSE: slot(ATTR.PURPOSE),
  REQUEST_HASH: slot(ATTR.REQUEST_HASH),
  RESPONSE_HASH: slot(ATTR.RESPONSE_HASH),
  DECISION_ID: slot(ATTR.POLICY_DECISION_ID),
  DECISION: slot(ATTR.POLICY_DECISION),
  RULE_ID: slot(ATTR.POLICY_RULE_ID),
  REASON: slot(ATTR.POLICY_REASON),
  LATENCY: slot(ATTR.POLICY_LATENCY_MS),
  CACHED: slot(ATTR.POLICY_CACHED),
  ENFORCED: slot(ATTR.ENFORCED),
  COHORT: slot(ATTR.ROLLOUT_COHORT),
  JTI: slot(ATTR.TOKEN_JTI),
  SEQ: slot(ATTR.AUDIT_SEQ),
  PREV_HASH: slot(ATTR.AUDIT_PREV_HASH),
  TOKEN_RESULT: slot(ATTR.TOKEN_RESULT),
  TOKEN_KIND: slot(ATTR.TOKEN_KIND),
  TOKEN_CODE: slot(ATTR.TOKEN_REFUSAL_CODE),
  TOKEN_TTL: slot(ATTR.TOKEN_TTL_SECONDS),
  TOKEN_EXPIRES: slot(ATTR.TOKEN_EXPIRES_AT),
  FROM_PERCENT: slot(ATTR.ROLLOUT_FROM_PERCENT),
  TO_PERCENT: slot(ATTR.ROLLOUT_TO_PERCENT),
  ROLLOUT_REASON: slot(ATTR.ROLLOUT_REASON),
  ROLLOUT_ACTOR: slot(ATTR.ROLLOUT_ACTOR),
  ROLLOUT_RECEIPT: slot(ATTR.ROLLOUT_RECEIPT),
  SAMPLED: slot(ATTR.AUDIT_SAMPLED),
  SAMPLE_RATE: slot(ATTR.AUDIT_SAMPLE_RATE),
  POLICY_RESULT: slot(ATTR.POLICY_CHANGE_RESULT),
  POLICY_VERSION: slot(ATTR.POLICY_VERSION),
  POLICY_HASH: slot(ATTR.POLICY_HASH),
  POLICY_SOURCE: slot(ATTR.POLICY_SOURCE),
  POLICY_ERROR: slot(ATTR.POLICY_CHANGE_ERROR),
  POLICY_RECEIPT: slot(ATTR.POLICY_CHANGE_RECEIPT),
  SPONSOR_BAGGAGE: slot(`baggage.${ATTR.SPONSOR_ID}`),
  INSTANCE_BAGGAGE: slot(`baggage.${ATTR.AGENT_INSTANCE_ID}`),
  PARENT_BAGGAGE: slot(`baggage.${ATTR.PARENT_AGENT_ID}`),
  MCP_METHOD: slot(FOREIGN_ATTR.MCP_METHOD_NAME),
  OI_KIND: slot(FOREIGN_ATTR.OPENINFERENCE_SPAN_KIND),
  OI_TOOL_NAME: slot(FOREIGN_ATTR.OPENINFERENCE_TOOL_NAME),
  OI_TOOL_CALL_ID: slot(FOREIGN_ATTR.OPENINFERENCE_TOOL_CALL_ID),
  OI_INPUT: slot(FOREIGN_ATTR.OPENINFERENCE_INPUT),
  OI_OUTPUT: slot(FOREIGN_ATTR.OPENINFERENCE_OUTPUT),
  TL_KIND: slot(FOREIGN_ATTR.TRACELOOP_SPAN_KIND),
  TL_NAME: slot(FOREIGN_ATTR.TRACELOOP_ENTITY_NAME),
  TL_INPUT: slot(FOREIGN_ATTR.TRACELOOP_ENTITY_INPUT),
  TL_OUTPUT: slot(FOREIGN_ATTR.TRACELOOP_ENTITY_OUTPUT),
  TOOL_ARGUMENTS: slot(FOREIGN_ATTR.GEN_AI_TOOL_CALL_ARGUMENTS),
  TOOL_RESULT: slot(FOREIGN_ATTR.GEN_AI_TOOL_CALL_RESULT),
};

/** Which slots a table turns into columns; the other attributes go to its `attributes` map. */
function promoted(...slots: number[]): boolean[] {
  const mask = new Array<boolean>(SLOT_KEYS.length).fill(false);
  for (const s of slots) mask[s] = true;
  return mask;
}
const IDENTITY = [S.SPONSOR, S.SPONSOR_BAGGAGE, S.INSTANCE, S.GEN_AI_AGENT_ID, S.INSTANCE_BAGGAGE, S.PARENT, S.PARENT_BAGGAGE];
const AUDIT_PROMOTED = promoted(
  ...IDENTITY, S.OPERATION, S.TOOL_NAME, S.TOOL_CALL_ID, S.AGENT_NAME, S.ERROR_TYPE, S.ROLE, S.TOOL_ID, S.ACTION,
  S.PURPOSE, S.REQUEST_HASH, S.RESPONSE_HASH, S.DECISION_ID, S.DECISION, S.RULE_ID, S.LATENCY, S.CACHED, S.ENFORCED,
  S.COHORT, S.JTI, S.SEQ, S.PREV_HASH,
);
const DECISION_PROMOTED = promoted(
  ...IDENTITY, S.DECISION_ID, S.DECISION, S.RULE_ID, S.REASON, S.ROLE, S.TOOL_ID, S.ACTION, S.PURPOSE, S.COHORT,
  S.ENFORCED, S.JTI, S.LATENCY,
);
const TOKEN_PROMOTED = promoted(
  ...IDENTITY, S.TOKEN_RESULT, S.TOKEN_KIND, S.TOKEN_CODE, S.JTI, S.TOOL_ID, S.ROLE, S.TOKEN_TTL, S.TOKEN_EXPIRES,
);

const text = (slots: Slots, s: number): string => attrString(slots[s]);

/** The first non-empty of the span's slots, else of the same keys on the resource. */
function firstOf(slots: Slots, resource: Resource, ...order: number[]): string {
  for (const s of order) {
    const v = attrString(slots[s]);
    if (v) return v;
  }
  for (const s of order) {
    const v = attrString(findAttribute(resource.attributes, SLOT_KEYS[s]!));
    if (v) return v;
  }
  return '';
}

// ---------------------------------------------------------------------------------------------
// rows

const enum Kind {
  Other,
  ToolCall,
  Decision,
  Token,
  Rollout,
  PolicyChange,
}

/** Named `execute_tool` or `execute_tool {tool}`: the GenAI tool-call span name. */
function isNamedToolCall(n: string): boolean {
  const p = SPAN.TOOL_CALL_PREFIX;
  return n.startsWith(p) && (n.length === p.length || n.charCodeAt(p.length) === 32);
}

/** A GenAI tool call: named `execute_tool …` or marked gen_ai.operation.name=execute_tool. */
export function isToolCall(span: Pick<Span, 'name' | 'attributes'>): boolean {
  if (isNamedToolCall(span.name)) return true;
  return findAttribute(span.attributes, ATTR.GEN_AI_OPERATION_NAME)?.stringValue === SPAN.TOOL_CALL_OPERATION;
}

/** The kind a span's name alone gives it; attributes may still make it a tool call (see recognise). */
function kindByName(name: string): Kind {
  if (isNamedToolCall(name)) return Kind.ToolCall;
  switch (name) {
    case SPAN.POLICY_DECISION:
      return Kind.Decision;
    case SPAN.TOKEN_ISSUE:
      return Kind.Token;
    case SPAN.ROLLOUT_CHANGE:
      return Kind.Rollout;
    case SPAN.POLICY_CHANGE:
      return Kind.PolicyChange;
  }
  return Kind.Other;
}

function recogniseSpan(span: Span, kind: Kind, slots: Slots): Recognition {
  return recognise(span, kind === Kind.ToolCall, {
    operation: slots[S.OPERATION],
    genAiToolName: slots[S.TOOL_NAME],
    mcpMethod: slots[S.MCP_METHOD],
    oiKind: slots[S.OI_KIND],
    oiToolName: slots[S.OI_TOOL_NAME],
    tlKind: slots[S.TL_KIND],
    tlEntityName: slots[S.TL_NAME],
  });
}

/** A string map for a Map(String, String) column; `__proto__` is an ordinary key here. */
type StringMap = Record<string, string>;

function setKey(out: StringMap, key: string, value: string): void {
  if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, configurable: true, writable: true });
  else out[key] = value;
}

/**
 * One pass over the span's attributes: fills `slots` with the promoted values and returns the
 * attribute map, and (with a mask) the map of what the mask leaves unpromoted.
 */
function walk(attrs: Attributes, slots: Slots, mask: readonly boolean[] | undefined): [all: StringMap, rest: StringMap] {
  const all: StringMap = {};
  const rest: StringMap = {};
  for (let i = 0; i < attrs.length; i++) {
    const kv: KeyValue = attrs[i]!;
    const key = kv.key ?? '';
    // only the collector says who wrote a span
    if (key === ATTR.INGEST_TRUST) continue;
    const value = attrString(kv.value);
    setKey(all, key, value);
    const s = SLOT.get(key);
    if (s !== undefined) slots[s] = kv.value;
    if (mask && (s === undefined || !mask[s])) setKey(rest, key, value);
  }
  return [all, rest];
}

/** The attributes a mask leaves unpromoted, for a span whose kind its attributes decided. */
function restOf(attrs: Attributes, mask: readonly boolean[]): StringMap {
  const rest: StringMap = {};
  for (let i = 0; i < attrs.length; i++) {
    const kv: KeyValue = attrs[i]!;
    const key = kv.key ?? '';
    if (key === ATTR.INGEST_TRUST) continue;
    const s = SLOT.get(key);
    if (s === undefined || !mask[s]) setKey(rest, key, attrString(kv.value));
  }
  return rest;
}

function mapOf(attrs: Attributes): StringMap {
  const out: StringMap = {};
  for (const kv of attrs) setKey(out, kv.key ?? '', attrString(kv.value));
  return out;
}

const resourceMaps = new WeakMap<Resource, StringMap>();
function resourceMap(resource: Resource): StringMap {
  let m = resourceMaps.get(resource);
  if (m === undefined) resourceMaps.set(resource, (m = mapOf(resource.attributes)));
  return m;
}

const EMPTY: never[] = [];

function traceRow(span: Span, start: string, duration: string, attributes: StringMap): unknown[] {
  const ev = span.events;
  const lk = span.links;
  return [
    start, span.traceId, span.spanId, span.parentSpanId, span.traceState, span.name, KIND_NAMES[span.kind] ?? '',
    span.resource.serviceName, resourceMap(span.resource), span.scope.name, span.scope.version, attributes, duration,
    STATUS_NAMES[span.statusCode] ?? '', span.statusMessage,
    ev.length ? ev.map((e) => nsText(e.timeNs)) : EMPTY,
    ev.length ? ev.map((e) => e.name) : EMPTY,
    ev.length ? ev.map((e) => mapOf(e.attributes)) : EMPTY,
    lk.length ? lk.map((l) => l.traceId) : EMPTY,
    lk.length ? lk.map((l) => l.spanId) : EMPTY,
    lk.length ? lk.map((l) => l.traceState) : EMPTY,
    lk.length ? lk.map((l) => mapOf(l.attributes)) : EMPTY,
  ];
}

/**
 * The tool an audit row is about: custody's id, else the tool the convention names (GenAI: the
 * tool name, else the span name's).
 */
function toolIdOf(span: Span, slots: Slots, rec: ToolCallRecognition): string {
  return (
    text(slots, S.TOOL_ID) ||
    rec.tool ||
    text(slots, S.TOOL_NAME) ||
    (isNamedToolCall(span.name) ? span.name.slice(SPAN.TOOL_CALL_PREFIX.length + 1) : '')
  );
}

type ToolCallRecognition = Extract<Recognition, { call: true }>;

/** custody's hash, else the hash of the content the convention recorded. */
function hashOf(slots: Slots, custody: number, rec: ToolCallRecognition, request: boolean): string {
  const own = text(slots, custody);
  if (own) return own;
  switch (rec.convention) {
    case 'openinference':
      return contentHash(slots[request ? S.OI_INPUT : S.OI_OUTPUT]);
    case 'openllmetry':
      return contentHash(slots[request ? S.TL_INPUT : S.TL_OUTPUT]);
    default:
      return contentHash(slots[request ? S.TOOL_ARGUMENTS : S.TOOL_RESULT]);
  }
}

interface Counts {
  toolCalls: Map<string, number>;
  missingSponsor: number;
  conventions: Map<Convention, number>;
  unmapped: Map<string, number>;
}

function auditRow(
  span: Span,
  slots: Slots,
  start: string,
  duration: string,
  rest: StringMap,
  counts: Counts,
  trust: Trust,
  rec: ToolCallRecognition,
): unknown[] {
  const r = span.resource;
  const tool = toolIdOf(span, slots, rec);
  const sponsor = firstOf(slots, r, S.SPONSOR, S.SPONSOR_BAGGAGE);
  const decision = text(slots, S.DECISION);
  const cohort = text(slots, S.COHORT);
  if (!sponsor) counts.missingSponsor++;
  const key = `${tool}\0${decision}\0${cohort}`;
  counts.toolCalls.set(key, (counts.toolCalls.get(key) ?? 0) + 1);
  counts.conventions.set(rec.convention, (counts.conventions.get(rec.convention) ?? 0) + 1);
  return [
    start, nsText(span.endNs), span.traceId, span.spanId, span.parentSpanId, r.serviceName, sponsor,
    firstOf(slots, r, S.INSTANCE, S.GEN_AI_AGENT_ID, S.INSTANCE_BAGGAGE), firstOf(slots, r, S.PARENT, S.PARENT_BAGGAGE),
    text(slots, S.AGENT_NAME), firstOf(slots, r, S.ROLE), tool, text(slots, S.TOOL_NAME) || tool, text(slots, S.ACTION),
    text(slots, S.PURPOSE), hashOf(slots, S.REQUEST_HASH, rec, true), hashOf(slots, S.RESPONSE_HASH, rec, false),
    text(slots, S.DECISION_ID), decision, text(slots, S.RULE_ID), numberOf(slots[S.LATENCY]), boolOf(slots[S.CACHED]),
    boolOf(slots[S.ENFORCED]), cohort, AUDIT_STATUS[span.statusCode] ?? 'unset', text(slots, S.ERROR_TYPE), text(slots, S.JTI),
    text(slots, S.TOOL_CALL_ID) || text(slots, S.OI_TOOL_CALL_ID), uintOf(slots[S.SEQ], Number.MAX_SAFE_INTEGER),
    text(slots, S.PREV_HASH), duration, rest, trust, rec.convention, false,
  ];
}

// --- audit sampling (common/audit-sample.ts) -----------------------------------------------------
const COL = Object.fromEntries(AUDIT_COLUMNS.map((c, i) => [c, i])) as Record<(typeof AUDIT_COLUMNS)[number], number>;
/** Columns a sampled-out stub does not keep: everything that is neither chained nor counted by the rules. */
const STUB_CLEARED = ['parent_span_id', 'agent_name', 'purpose', 'tool_call_id'] as const;

/**
 * Why a call marked sampled out must be kept whole, or '' when it may become a stub: only an
 * allowed, successful, sponsored, chained call with a decision id, a granted rate and a bucket
 * past that rate. An agent cannot hide a deny, an error or an unsponsored call behind the mark.
 */
function stubRefusal(span: Span, slots: Slots, row: unknown[]): string {
  if (row[COL.decision] !== 'allow') return 'not_allowed';
  if (row[COL.status] === 'error' || row[COL.error_type] !== '') return 'error';
  if (row[COL.sponsor_id] === '') return 'missing_sponsor';
  if (row[COL.policy_decision_id] === '' || !row[COL.audit_seq]) return 'unchained';
  if (row[COL.cohort] !== COHORT.CANARY && row[COL.cohort] !== COHORT.BASELINE) return 'unmanaged';
  const rate = numberOf(slots[S.SAMPLE_RATE]);
  if (!(rate > 0 && rate < 1)) return 'no_rate';
  if (sampleBucket(span.traceId, span.spanId) < rate) return 'in_sample';
  return '';
}

/** The stub of a sampled-out call: the chain fields and what the rules count, no attributes. */
function toStub(row: unknown[]): void {
  for (const c of STUB_CLEARED) row[COL[c]] = '';
  row[COL.tool_name] = row[COL.tool_id];
  row[COL.attributes] = {};
  row[COL.audit_sampled] = true;
}

function decisionRow(span: Span, slots: Slots, start: string, rest: StringMap): unknown[] {
  const r = span.resource;
  return [
    start, text(slots, S.DECISION_ID), text(slots, S.DECISION), text(slots, S.RULE_ID), text(slots, S.REASON),
    firstOf(slots, r, S.SPONSOR, S.SPONSOR_BAGGAGE), firstOf(slots, r, S.INSTANCE, S.GEN_AI_AGENT_ID, S.INSTANCE_BAGGAGE),
    firstOf(slots, r, S.PARENT, S.PARENT_BAGGAGE), text(slots, S.ROLE), text(slots, S.TOOL_ID), text(slots, S.ACTION),
    text(slots, S.PURPOSE), text(slots, S.COHORT), boolOf(slots[S.ENFORCED]), text(slots, S.JTI), numberOf(slots[S.LATENCY]),
    span.traceId, span.spanId, r.serviceName, rest,
  ];
}

// DateTime64(3) holds years up to 2299
const MAX_EXPIRES_MS = 10_413_792_000_000;

function tokenRow(span: Span, slots: Slots, start: string, rest: StringMap): unknown[] {
  const r = span.resource;
  const expires = numberOf(slots[S.TOKEN_EXPIRES]);
  return [
    start, text(slots, S.TOKEN_RESULT), text(slots, S.TOKEN_KIND), text(slots, S.TOKEN_CODE), text(slots, S.JTI),
    firstOf(slots, r, S.SPONSOR, S.SPONSOR_BAGGAGE), firstOf(slots, r, S.INSTANCE, S.GEN_AI_AGENT_ID, S.INSTANCE_BAGGAGE),
    firstOf(slots, r, S.PARENT, S.PARENT_BAGGAGE), text(slots, S.TOOL_ID), text(slots, S.ROLE),
    uintOf(slots[S.TOKEN_TTL], 4_294_967_295), msText(expires > 0 && expires < MAX_EXPIRES_MS ? Math.floor(expires) : 0),
    span.traceId, span.spanId, r.serviceName, rest,
  ];
}

function rolloutRow(span: Span, slots: Slots, start: string): unknown[] {
  return [
    start, numberOf(slots[S.FROM_PERCENT]), numberOf(slots[S.TO_PERCENT]), text(slots, S.ROLLOUT_REASON),
    text(slots, S.ROLLOUT_ACTOR), span.traceId, span.spanId, span.resource.serviceName, text(slots, S.ROLLOUT_RECEIPT),
  ];
}

function policyEventRow(span: Span, slots: Slots, start: string): unknown[] {
  return [
    start, text(slots, S.POLICY_RESULT), text(slots, S.POLICY_VERSION), text(slots, S.POLICY_HASH), text(slots, S.POLICY_SOURCE),
    text(slots, S.POLICY_ERROR), text(slots, S.POLICY_RECEIPT), span.traceId, span.spanId, span.resource.serviceName,
  ];
}

// Which attributes become columns, per kind of span; none for spans whose row has no attribute map.
const MASKS: Record<Kind, readonly boolean[] | undefined> = {
  [Kind.Other]: undefined,
  [Kind.ToolCall]: AUDIT_PROMOTED,
  [Kind.Decision]: DECISION_PROMOTED,
  [Kind.Token]: TOKEN_PROMOTED,
  [Kind.Rollout]: undefined,
  [Kind.PolicyChange]: undefined,
};

/**
 * Counts the row's violations of audit-log-schema.json per field on /metrics. The row is stored
 * whatever they are: a missing sponsor is the signal, not noise to drop.
 */
function checkAuditSchema(span: Span, row: unknown[]): void {
  const event: Record<string, unknown> = {};
  for (let i = 0; i < AUDIT_COLUMNS.length; i++) event[AUDIT_COLUMNS[i]!] = row[i];
  event.timestamp = new Date(Number(span.startNs / 1_000_000n)).toISOString();
  delete event.end_timestamp;
  delete event.attributes;
  delete event.trust;
  delete event.audit_sampled;
  event.duration_ns = Number(event.duration_ns);
  validateAuditRow(event);
}

/**
 * What a span claims about who made it, by the audit row's precedence: span attributes, then
 * baggage copied onto the span, then the resource.
 */
export function claimedIdentity(span: Span): { sponsor: string; instance: string; parent: string } {
  const pick = (...keys: string[]) => {
    for (const k of keys) {
      const v = attrString(findAttribute(span.attributes, k));
      if (v) return v;
    }
    for (const k of keys) {
      const v = attrString(findAttribute(span.resource.attributes, k));
      if (v) return v;
    }
    return '';
  };
  return {
    sponsor: pick(ATTR.SPONSOR_ID, `baggage.${ATTR.SPONSOR_ID}`),
    instance: pick(ATTR.AGENT_INSTANCE_ID, ATTR.GEN_AI_AGENT_ID, `baggage.${ATTR.AGENT_INSTANCE_ID}`),
    parent: pick(ATTR.PARENT_AGENT_ID, `baggage.${ATTR.PARENT_AGENT_ID}`),
  };
}

/**
 * Maps decoded spans to the rows of every table they belong in. `trust` says who could have
 * written them (one value for all, or one per span; default `service`, for custody's own
 * reporters): a span named as a service's record (decision log, token event, rollout change) goes
 * to that service's table only when its trust is `service`, and otherwise is kept in otel_traces
 * alone. Tool calls carry their trust in `audit_events.trust`; every span not written by a
 * service carries it in otel_traces as SpanAttributes['custody.ingest.trust'].
 */
export function mapSpans(spans: readonly Span[], trust: Trust | readonly Trust[] = TRUST.SERVICE): MappedSpans {
  const byTable: Partial<Record<IngestTable, unknown[][]>> = {};
  const add = (table: IngestTable, row: unknown[]) => (byTable[table] ??= []).push(row);
  const counts: Counts = { toolCalls: new Map(), missingSponsor: 0, conventions: new Map(), unmapped: new Map() };
  const slots: Slots = new Array(SLOT_KEYS.length);
  let untrustedRecords = 0;
  const sampledOut = new Map<string, number>();
  const sampleRefused = new Map<string, number>();
  for (let i = 0; i < spans.length; i++) {
    const span = spans[i]!;
    const t: Trust = typeof trust === 'string' ? trust : (trust[i] ?? TRUST.UNVERIFIED);
    slots.fill(undefined);
    const named = kindByName(span.name);
    const mask = MASKS[named];
    let [all, rest] = walk(span.attributes, slots, mask);
    // tool-call conventions are told by attributes: known only after the walk
    const rec = named === Kind.Other || named === Kind.ToolCall || slots[S.OPERATION] ? recogniseSpan(span, named, slots) : undefined;
    let kind = rec?.call ? Kind.ToolCall : named === Kind.ToolCall ? Kind.Other : named;
    if (rec && !rec.call && rec.unmapped) {
      const key = `${rec.unmapped.convention}\0${rec.unmapped.reason}`;
      counts.unmapped.set(key, (counts.unmapped.get(key) ?? 0) + 1);
    }
    if (t !== TRUST.SERVICE && (kind === Kind.Decision || kind === Kind.Token || kind === Kind.Rollout || kind === Kind.PolicyChange)) {
      kind = Kind.Other;
      untrustedRecords++;
    }
    if (MASKS[kind] !== mask && MASKS[kind]) rest = restOf(span.attributes, MASKS[kind]!);
    if (t !== TRUST.SERVICE) setKey(all, ATTR.INGEST_TRUST, t);
    const start = nsText(span.startNs);
    // a string: ClickHouse reads UInt64 from JSON strings, and a bigint has no JSON form
    const duration = String(span.endNs - span.startNs);
    if (kind === Kind.ToolCall) {
      const row = auditRow(span, slots, start, duration, rest, counts, t, rec as ToolCallRecognition);
      const refusal = boolOf(slots[S.SAMPLED]) ? stubRefusal(span, slots, row) : undefined;
      if (refusal) sampleRefused.set(refusal, (sampleRefused.get(refusal) ?? 0) + 1);
      if (refusal === '') {
        // sampled out: the stub alone, no otel_traces row
        toStub(row);
        const tool = row[COL.tool_id] as string;
        sampledOut.set(tool, (sampledOut.get(tool) ?? 0) + 1);
      } else {
        add(TABLE.OTEL_TRACES, traceRow(span, start, duration, all));
        checkAuditSchema(span, row);
      }
      add(TABLE.AUDIT_EVENTS, row);
      continue;
    }
    add(TABLE.OTEL_TRACES, traceRow(span, start, duration, all));
    if (kind === Kind.Decision) add(TABLE.POLICY_DECISIONS, decisionRow(span, slots, start, rest));
    else if (kind === Kind.Token) add(TABLE.TOKEN_EVENTS, tokenRow(span, slots, start, rest));
    else if (kind === Kind.Rollout) add(TABLE.ROLLOUT_EVENTS, rolloutRow(span, slots, start));
    else if (kind === Kind.PolicyChange) add(TABLE.POLICY_EVENTS, policyEventRow(span, slots, start));
  }
  const rows: TableRows = {};
  const rowCounts: Partial<Record<IngestTable, number>> = {};
  let bytes = 0;
  for (const table of Object.keys(byTable) as IngestTable[]) {
    const body = Buffer.from(serializeRows(byTable[table]!));
    rows[table] = body;
    rowCounts[table] = byTable[table]!.length;
    bytes += body.length;
  }
  return { rows, counts: rowCounts, toolCalls: counts.toolCalls, missingSponsor: counts.missingSponsor, conventions: counts.conventions, unmapped: counts.unmapped, untrustedRecords, sampledOut, sampleRefused, spans: spans.length, bytes };
}
