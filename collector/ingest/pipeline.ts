import type { Logger } from '../../common/log';
import { counter } from '../../common/metrics';
import { METRIC, TRUST, type Trust } from '../../common/names';
import { IngestAuthError, verdictFor, type IngestAuth, type IngestPrincipal } from './auth';
import { createBindingIndex, learnFromTokenEvents, type BindingIndex } from './bindings';
import { claimedIdentity, mapSpans } from './mapping';
import { GRPC_CODE, OtlpDecodeError, OtlpHttpError, decodeJson, decodeProtobuf, type DecodedRequest, type Span, type WireFormat } from '../otlp';
import { StoreWriteError } from '../store';
import { RowsRefusedError, WriteRefusedError, type BatchWriter } from './writer';

/**
 * What every OTLP transport does with an export request once it holds its bytes: authenticate,
 * decode, judge each span's trust, map to rows, write, wait for the write to be durable, count.
 * The transports (receiver.ts for HTTP, grpc.ts for gRPC) only read bytes and answer; failures
 * come out as OtlpHttpError, which carries both the HTTP status and the gRPC code.
 */
export interface PipelineOptions {
  writer: BatchWriter;
  log: Logger;
  /** Who may send spans and how far each is believed (see auth.ts). Without one, every request is accepted and its spans stored as unverified. */
  auth?: IngestAuth;
  /** The token service's bindings of agent instances, for agent credentials and custody tokens. */
  bindings?: BindingIndex;
  /** How long a request waits for its rows to be stored before a 503. Default 30 s. */
  writeTimeoutMs?: number;
}

/** The OTLP signals custody answers but does not store. */
export type DroppedSignal = 'metrics' | 'logs';

export interface ExportOutcome {
  /** Spans refused (partial_success.rejected_spans) and why. */
  readonly rejectedCount: number;
  readonly message: string;
}

export interface IngestPipeline {
  /** The principal of a request's `authorization` value; 401/UNAUTHENTICATED when it is required and missing or wrong. */
  /** `peer`: the claims of the sender's client certificate (mTLS), taken when no Authorization is sent. */
  principalOf(authorization: string | undefined, peer?: () => unknown): Promise<IngestPrincipal>;
  /** Stores one ExportTraceServiceRequest; resolves once its rows are durable. */
  ingest(body: Buffer, format: WireFormat, principal: IngestPrincipal): Promise<ExportOutcome>;
  /** Counts an export request of a signal that is answered and dropped. */
  dropped(signal: DroppedSignal): void;
}

// Bounded label values: tool names come from clients.
const MAX_TOOL_LABELS = 500;

export function createIngestPipeline(options: PipelineOptions): IngestPipeline {
  const { writer } = options;
  const writeTimeoutMs = options.writeTimeoutMs ?? 30_000;
  const auth = options.auth;
  const bindings = options.bindings ?? createBindingIndex();

  const ingested = counter({ name: METRIC.SPANS_INGESTED_TOTAL, help: 'Spans stored' });
  const rejected = counter<'reason'>({ name: METRIC.SPANS_REJECTED_TOTAL, help: 'Spans refused, by reason', labelNames: ['reason'] });
  const toolCalls = counter<'tool' | 'decision' | 'cohort'>({
    name: METRIC.TOOL_CALLS_TOTAL,
    help: 'Tool calls stored, by tool, policy decision and rollout cohort',
    labelNames: ['tool', 'decision', 'cohort'],
  });
  const unverified = counter<'reason'>({
    name: METRIC.SPANS_UNVERIFIED_TOTAL,
    help: 'Spans stored but not taken for what they claim, by reason: no credential (open mode), an identity the credential does not prove, a service record sent by someone else',
    labelNames: ['reason'],
  });
  const byConvention = counter<'convention'>({
    name: METRIC.TOOL_CALLS_BY_CONVENTION_TOTAL,
    help: 'Tool calls stored, by the tracing convention that recorded them (gen_ai, mcp, openinference, openllmetry)',
    labelNames: ['convention'],
  });
  const unmappedSpans = counter<'convention' | 'reason'>({
    name: METRIC.TOOL_SPANS_UNMAPPED_TOTAL,
    help: 'Spans that look like tool calls but got no audit event (kept in otel_traces only), by convention and reason',
    labelNames: ['convention', 'reason'],
  });
  const droppedSignals = counter<'signal'>({
    name: METRIC.OTLP_SIGNALS_DROPPED_TOTAL,
    help: 'OTLP export requests of signals custody does not store (metrics, logs): answered with success and dropped, by signal',
    labelNames: ['signal'],
  });
  const sampledOutCalls = counter<'tool'>({
    name: METRIC.AUDIT_SAMPLED_OUT_TOTAL,
    help: 'Tool calls stored as sampled-out stubs (chained and counted, no attributes), by tool',
    labelNames: ['tool'],
  });
  const sampleRefusedCalls = counter<'reason'>({
    name: METRIC.AUDIT_SAMPLE_REFUSED_TOTAL,
    help: 'Tool calls marked sampled out that may never be (a deny, an error, no sponsor, no granted rate, inside the sample): stored whole, by reason',
    labelNames: ['reason'],
  });
  const seenTools = new Set<string>();

  async function principalOf(authorization: string | undefined, peer?: () => unknown): Promise<IngestPrincipal> {
    if (!auth) return { kind: 'anonymous', reason: 'no_credential' };
    try {
      return await auth.authenticate(authorization, peer);
    } catch (err) {
      if (err instanceof IngestAuthError) {
        throw new OtlpHttpError(401, GRPC_CODE.UNAUTHENTICATED, 'unauthorized', err.message, { 'WWW-Authenticate': 'Bearer' });
      }
      throw err;
    }
  }

  /**
   * Each span's trust: one value for the request, unless an agent credential or a custody token
   * sent it, when each span's claimed identity is checked against what the credential proves.
   */
  async function trustOf(principal: IngestPrincipal, spans: readonly Span[]): Promise<{ trust: Trust | Trust[]; mismatched: number }> {
    if (principal.kind !== 'agent' && principal.kind !== 'token') return { trust: verdictFor(principal, { sponsor: '', instance: '', parent: '' }, bindings).trust, mismatched: 0 };
    const claims = spans.map(claimedIdentity);
    await bindings.load(claims.map((c) => c.instance));
    let mismatched = 0;
    const trust = claims.map((c) => {
      const v = verdictFor(principal, c, bindings);
      if (v.reason === 'identity_mismatch') mismatched++;
      return v.trust;
    });
    return { trust, mismatched };
  }

  function countToolCalls(calls: Map<string, number>): void {
    for (const [key, n] of calls) {
      const [tool = '', decision = '', cohort = ''] = key.split('\0');
      let label = tool || 'unknown';
      if (!seenTools.has(label)) {
        if (seenTools.size < MAX_TOOL_LABELS) seenTools.add(label);
        else label = 'other';
      }
      toolCalls.inc({ tool: label, decision: decision || 'none', cohort: cohort || 'none' }, n);
    }
  }

  async function waitForWrite(promise: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new WriteRefusedError(503, `storage did not confirm the write within ${writeTimeoutMs} ms; retry later`, 5)),
            writeTimeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Decodes and maps one request. Only the row buffers and a few counts leave this function: the
   * decoded spans die here instead of living on while the rows wait for their insert, which would
   * have them copied into the old generation and cost full collections.
   */
  async function receive(body: Buffer, format: WireFormat, principal: IngestPrincipal) {
    let decoded: DecodedRequest;
    try {
      decoded = format === 'protobuf' ? decodeProtobuf(body) : decodeJson(body.toString('utf8'));
    } catch (err) {
      if (err instanceof OtlpDecodeError) throw new OtlpHttpError(400, GRPC_CODE.INVALID_ARGUMENT, 'invalid_request', err.message);
      throw err;
    }
    const { trust, mismatched } = await trustOf(principal, decoded.spans);
    // token events the service wrote: the instances they bind, for later agent spans
    if (trust === TRUST.SERVICE) learnFromTokenEvents(bindings, decoded.spans);
    const { rows, counts, spans, toolCalls, untrustedRecords, conventions, unmapped, sampledOut, sampleRefused } = mapSpans(decoded.spans, trust);
    const { rejected: refused, rejectedCount, rejectionMessages } = decoded;
    const message = rejectedCount
      ? `${rejectedCount} span(s) rejected: ${rejectionMessages.join('; ')}${rejectedCount > rejectionMessages.length ? '; …' : ''}`
      : '';
    const flagged: [string, number][] = [
      [principal.kind === 'anonymous' ? principal.reason : 'no_credential', principal.kind === 'anonymous' ? spans : 0],
      ['identity_mismatch', mismatched],
      ['service_record_from_other_source', untrustedRecords],
    ];
    return { write: { rows, counts }, spans, toolCalls, conventions, unmapped, sampledOut, sampleRefused, refused, rejectedCount, message, flagged };
  }

  async function ingest(body: Buffer, format: WireFormat, principal: IngestPrincipal): Promise<ExportOutcome> {
    if (!writer.available) {
      throw new OtlpHttpError(503, GRPC_CODE.UNAVAILABLE, 'storage_unavailable', 'storage is unavailable; retry later', { 'Retry-After': '5' });
    }
    const { write, spans, toolCalls, conventions, unmapped, sampledOut, sampleRefused, refused, rejectedCount, message, flagged } = await receive(body, format, principal);
    try {
      await waitForWrite(writer.write(write));
    } catch (err) {
      if (err instanceof WriteRefusedError) {
        rejected.inc({ reason: err.status === 429 ? 'queue_full' : 'storage_unavailable' }, spans);
        throw new OtlpHttpError(
          err.status,
          err.status === 429 ? GRPC_CODE.RESOURCE_EXHAUSTED : GRPC_CODE.UNAVAILABLE,
          err.status === 429 ? 'overloaded' : 'storage_unavailable',
          err.message,
          { 'Retry-After': String(err.retryAfterSeconds) },
        );
      }
      if (err instanceof RowsRefusedError) {
        // the rows of this request, not the storage: a retry would fail the same way (OTLP: 400 is not retried)
        rejected.inc({ reason: 'storage_refused' }, spans);
        throw new OtlpHttpError(400, GRPC_CODE.INVALID_ARGUMENT, 'rows_refused', `${spans} span(s) not stored: ${err.message}`);
      }
      if (err instanceof StoreWriteError) {
        rejected.inc({ reason: 'storage_refused' }, spans);
        throw new OtlpHttpError(500, GRPC_CODE.INTERNAL, 'storage_refused', 'the spans could not be stored');
      }
      throw err;
    }
    ingested.inc(spans);
    countToolCalls(toolCalls);
    for (const [convention, n] of conventions) byConvention.inc({ convention }, n);
    for (const [key, n] of unmapped) {
      const [convention = '', reason = ''] = key.split('\0');
      unmappedSpans.inc({ convention, reason }, n);
    }
    for (const [tool, n] of sampledOut) sampledOutCalls.inc({ tool: seenTools.has(tool) ? tool : 'other' }, n);
    for (const [reason, n] of sampleRefused) sampleRefusedCalls.inc({ reason }, n);
    for (const [reason, n] of refused) rejected.inc({ reason }, n);
    for (const [reason, n] of flagged) if (n > 0) unverified.inc({ reason }, n);
    return { rejectedCount, message };
  }

  return { principalOf, ingest, dropped: (signal) => droppedSignals.inc({ signal }) };
}
