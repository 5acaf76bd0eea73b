import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { listen, type Listening } from '../../common/http';
import type { Logger } from '../../common/log';
import { counter } from '../../common/metrics';
import { credentialsFromEnv } from '../../common/credentials';
import type { CustodyEnv } from '../../common/env';
import { SERVICE, type RoleContext } from '../../common/role';
import { jwksUrl } from '../../identity/client';
import { loadTokenConfig, type TokenServiceConfig } from '../../identity/config';
import { isLoopback, type TokenKeysService } from '../../identity/role';
import { createTokenVerifier, type TokenVerifier } from '../../identity/verify';
import { DEFAULTS, ENV, METRIC, TRUST, type Trust } from '../../common/names';
import {
  IngestAuthError,
  TOKEN_GRACE_SECONDS,
  createIngestAuth,
  verdictFor,
  type AgentCredentialChecker,
  type IngestAuth,
  type IngestPrincipal,
} from './auth';
import { createServiceSink } from './sink';
import { createBindingIndex, learnFromTokenEvents, type BindingIndex } from './bindings';
import { claimedIdentity, mapSpans } from './mapping';
import {
  GRPC_CODE,
  OtlpDecodeError,
  OtlpHttpError,
  decodeJson,
  decodeProtobuf,
  encodeExportResponse,
  encodeStatus,
  type DecodedRequest,
  type Span,
  type WireFormat,
} from '../otlp';
import { StoreWriteError, type Store } from '../store';
import { RowsRefusedError, WriteRefusedError, createBatchWriter, type BatchWriter } from './writer';

/**
 * The OTLP/HTTP trace receiver: `POST /v1/traces`, protobuf or JSON, optionally gzip. Answers as
 * the OTLP/HTTP spec says: 200 with an ExportTraceServiceResponse (partial_success when spans were
 * refused) in the request's encoding; 4xx/5xx with a google.rpc.Status (the JSON form also carries
 * custody's `{"error":{"code","message"}}`); 429/503 with Retry-After when it cannot take more.
 * A 200 is sent only once the request's rows are inserted.
 */
export interface ReceiverOptions {
  host: string;
  port: number;
  writer: BatchWriter;
  log: Logger;
  /**
   * Who may send spans and how far each is believed (see auth.ts). Without one, every request is
   * accepted and its spans stored as unverified.
   */
  auth?: IngestAuth;
  /** The token service's bindings of agent instances, for agent credentials and custody tokens. */
  bindings?: BindingIndex;
  /** Largest body, compressed and decompressed, in bytes. Default 16 MiB. */
  maxBodyBytes?: number;
  /** How long a request waits for its rows to be stored before a 503. Default 30 s. */
  writeTimeoutMs?: number;
}

export const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;
export const TRACES_PATH = '/v1/traces';
/**
 * The other OTLP/HTTP signals: answered with success (an empty Export…ServiceResponse), counted
 * and dropped, so that a stock SDK exporting everything to one endpoint works unchanged.
 */
export const DROPPED_SIGNAL_PATHS: Readonly<Record<string, 'metrics' | 'logs'>> = { '/v1/metrics': 'metrics', '/v1/logs': 'logs' };

const gunzip = promisify(zlib.gunzip);
const inflate = promisify(zlib.inflate);

// Bounded label values: tool names come from clients.
const MAX_TOOL_LABELS = 500;

export function createOtlpHandler(options: Omit<ReceiverOptions, 'host' | 'port'>) {
  const { writer, log } = options;
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const writeTimeoutMs = options.writeTimeoutMs ?? 30_000;
  const auth = options.auth;
  const bindings = options.bindings ?? createBindingIndex();
  // how much of an unwanted body is read and dropped before the connection is cut instead
  const discardLimit = Math.max(4 * maxBody, 64 * 1024 * 1024);

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
  const dropped = counter<'signal'>({
    name: METRIC.OTLP_SIGNALS_DROPPED_TOTAL,
    help: 'OTLP export requests of signals custody does not store (metrics, logs): answered with success and dropped, by signal',
    labelNames: ['signal'],
  });
  const requests = counter<'code'>({ name: METRIC.INGEST_REQUESTS_TOTAL, help: 'OTLP export requests, by HTTP status', labelNames: ['code'] });
  const seenTools = new Set<string>();

  async function principalOf(req: IncomingMessage): Promise<IngestPrincipal> {
    if (!auth) return { kind: 'anonymous', reason: 'no_credential' };
    try {
      return await auth.authenticate(req.headers.authorization);
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

  function formatOf(req: IncomingMessage): WireFormat | undefined {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type === 'application/x-protobuf' || type === 'application/protobuf') return 'protobuf';
    if (type === 'application/json') return 'json';
    return undefined;
  }

  /**
   * Reads the body up to the limit. Past it (or when the declared length is already past it) the
   * rest is read and dropped rather than left unread: a client still writing its body when the
   * connection closes would see a broken pipe instead of the 413.
   */
  function readBody(req: IncomingMessage): Promise<Buffer> {
    const declared = Number(req.headers['content-length']);
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let over = declared > maxBody;
      req.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBody) over = true;
        if (over) {
          chunks.length = 0;
          // never read forever: past this the connection is cut
          if (size > discardLimit) req.destroy();
        } else {
          chunks.push(chunk);
        }
      });
      req.once('end', () => {
        if (over) reject(tooLarge(`request body${declared > maxBody ? ` of ${declared} bytes` : ''} is over the ${maxBody}-byte limit`));
        else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      });
      req.once('error', reject);
      req.once('close', () => reject(new OtlpHttpError(400, GRPC_CODE.INVALID_ARGUMENT, 'invalid_request', 'request aborted')));
    });
  }

  async function decompress(req: IncomingMessage, body: Buffer): Promise<Buffer> {
    const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    if (encoding === 'identity' || encoding === '') return body;
    const codec = encoding === 'gzip' || encoding === 'x-gzip' ? gunzip : encoding === 'deflate' ? inflate : undefined;
    if (!codec) {
      throw new OtlpHttpError(415, GRPC_CODE.INVALID_ARGUMENT, 'unsupported_encoding', `Content-Encoding '${encoding}' is not supported (use gzip)`);
    }
    try {
      // the output limit stops a small body that inflates to gigabytes
      return await codec(body, { maxOutputLength: maxBody });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
        throw tooLarge(`decompressed request body is over the ${maxBody}-byte limit`);
      }
      throw new OtlpHttpError(400, GRPC_CODE.INVALID_ARGUMENT, 'invalid_request', `malformed ${encoding} body: ${(err as Error).message}`);
    }
  }

  const tooLarge = (message: string) =>
    new OtlpHttpError(413, GRPC_CODE.RESOURCE_EXHAUSTED, 'payload_too_large', message, { Connection: 'close' });

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

  function send(res: ServerResponse, status: number, format: WireFormat, body: Buffer, headers: Record<string, string> = {}): void {
    requests.inc({ code: String(status) });
    res.writeHead(status, {
      'Content-Type': format === 'json' ? 'application/json' : 'application/x-protobuf',
      'Content-Length': String(body.length),
      ...headers,
    });
    res.end(body);
  }

  function sendError(res: ServerResponse, format: WireFormat, err: OtlpHttpError): void {
    send(res, err.status, format, encodeStatus(format, err.grpcCode, err.message, { code: err.code, message: err.message }), err.headers);
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
   * Reads, decodes and maps one request. Only the row buffers and a few counts leave this
   * function: the decoded spans die here instead of living on while the rows wait for their
   * insert, which would have them copied into the old generation and cost full collections.
   */
  async function receive(req: IncomingMessage, format: WireFormat, principal: IngestPrincipal) {
    const body = await decompress(req, await readBody(req));
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
    const { rows, counts, spans, toolCalls, untrustedRecords, conventions, unmapped } = mapSpans(decoded.spans, trust);
    const { rejected: refused, rejectedCount, rejectionMessages } = decoded;
    const message = rejectedCount
      ? `${rejectedCount} span(s) rejected: ${rejectionMessages.join('; ')}${rejectedCount > rejectionMessages.length ? '; …' : ''}`
      : '';
    const flagged: [string, number][] = [
      [principal.kind === 'anonymous' ? principal.reason : 'no_credential', principal.kind === 'anonymous' ? spans : 0],
      ['identity_mismatch', mismatched],
      ['service_record_from_other_source', untrustedRecords],
    ];
    return { write: { rows, counts }, spans, toolCalls, conventions, unmapped, refused, rejectedCount, message, flagged };
  }

  async function handle(req: IncomingMessage, res: ServerResponse, format: WireFormat, principal: IngestPrincipal): Promise<void> {
    if (!writer.available) {
      throw new OtlpHttpError(503, GRPC_CODE.UNAVAILABLE, 'storage_unavailable', 'storage is unavailable; retry later', { 'Retry-After': '5' });
    }
    const { write, spans, toolCalls, conventions, unmapped, refused, rejectedCount, message, flagged } = await receive(req, format, principal);
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
    for (const [reason, n] of refused) rejected.inc({ reason }, n);
    for (const [reason, n] of flagged) if (n > 0) unverified.inc({ reason }, n);
    send(res, 200, format, encodeExportResponse(format, rejectedCount, message));
  }

  return async function otlpReceiver(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const format = formatOf(req);
    try {
      const path = (req.url ?? '/').split('?')[0]!;
      const signal = DROPPED_SIGNAL_PATHS[path];
      if (path !== TRACES_PATH && !signal) {
        throw new OtlpHttpError(404, GRPC_CODE.NOT_FOUND, 'not_found', `no route for ${req.method} ${path}; OTLP traces go to POST ${TRACES_PATH}`);
      }
      if (req.method !== 'POST') {
        throw new OtlpHttpError(405, GRPC_CODE.UNIMPLEMENTED, 'method_not_allowed', `${req.method} is not allowed on ${path}; use POST`, { Allow: 'POST' });
      }
      const principal = await principalOf(req);
      if (!format) {
        throw new OtlpHttpError(
          415,
          GRPC_CODE.INVALID_ARGUMENT,
          'unsupported_media_type',
          `Content-Type '${req.headers['content-type'] ?? ''}' is not supported; use application/x-protobuf or application/json`,
        );
      }
      if (signal) {
        // read to the end (within the body limit) so the connection stays usable, then dropped
        await readBody(req);
        dropped.inc({ signal });
        // an empty ExportMetricsServiceResponse / ExportLogsServiceResponse: `{}`, or no bytes
        send(res, 200, format, format === 'json' ? Buffer.from('{}') : Buffer.alloc(0));
        return;
      }
      await handle(req, res, format, principal);
    } catch (err) {
      if (res.headersSent) return;
      const known =
        err instanceof OtlpHttpError
          ? err
          : (log.error({ err }, 'OTLP request failed'), new OtlpHttpError(500, GRPC_CODE.INTERNAL, 'internal', 'internal error'));
      if (!req.readableEnded && !req.destroyed) {
        // the body is not wanted: drop it before answering (closing on unread data could reset
        // the connection before the client reads the answer), within a bound
        await discard(req, discardLimit);
      }
      if (!res.writableEnded && !res.destroyed) sendError(res, format ?? 'json', known);
    }
  };
}

/** Reads and drops what is left of a request body, up to `limit` bytes; past that, cuts the connection. */
function discard(req: IncomingMessage, limit: number): Promise<void> {
  return new Promise((resolve) => {
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) req.destroy();
    });
    req.once('end', resolve);
    req.once('close', resolve);
    req.resume();
  });
}

/** Starts the receiver on host:port (0: any free port). */
export async function startOtlpReceiver(options: ReceiverOptions): Promise<Listening> {
  const handler = createOtlpHandler(options);
  return listen((req, res) => void handler(req, res), options.host, options.port);
}

export interface RunningIngest {
  readonly writer: BatchWriter;
  readonly url: string;
  readonly banner: string[];
  /** Stops taking requests, then inserts what is queued. */
  close(): Promise<void>;
}

/**
 * Ingest inside the collector role: the batching writer on the store, the OTLP receiver on
 * --otlp-port and the in-process sink of the hosted roles' records, configured from the
 * credentials (see ingestAuth), CUSTODY_INGEST_MAX_BODY_BYTES and
 * CUSTODY_INGEST_MAX_QUEUE_ROWS. Writes are refused (503) until the store's schema is in place.
 */
export async function startIngest(ctx: RoleContext, store: Store, env: CustodyEnv = ctx.env): Promise<RunningIngest> {
  const { options, log } = ctx;
  const maxBodyBytes = env[ENV.INGEST_MAX_BODY_BYTES] ?? DEFAULT_MAX_BODY_BYTES;
  const maxQueuedRows = env[ENV.INGEST_MAX_QUEUE_ROWS] ?? 200_000;
  const writer = createBatchWriter({ store, log, maxQueuedRows, startUnavailable: !store.migrated });
  if (!store.migrated) void store.whenMigrated().then(() => store.migrated && writer.setAvailable(true));
  const bindings = createBindingIndex({ store, log });
  const { auth, describe } = ingestAuth(ctx, env);
  // the hosted roles' own records: in process, written as the service's
  ctx.services.provide(
    SERVICE.SERVICE_SINK,
    createServiceSink(async (spans) => {
      learnFromTokenEvents(bindings, spans);
      await writer.write(mapSpans(spans, TRUST.SERVICE));
    }),
  );
  const listening = await startOtlpReceiver({ host: options.host, port: options.otlpPort, writer, log, maxBodyBytes, auth, bindings });
  // the address reporters and people can use, also when bound to every interface
  const host = options.host === '0.0.0.0' ? '127.0.0.1' : options.host === '::' ? '[::1]' : new URL(listening.url).hostname;
  const url = `http://${host}:${listening.port}`;
  ctx.setOtlpUrl(url);
  ctx.addReadinessCheck('ingest', () => writer.available);
  const banner = [`OTLP          ${url}`, `  credentials ${describe}`];
  if (!auth.required) {
    banner.push(
      '!! OPEN INGEST: spans without a credential are accepted and stored as unverified (loopback, first day);',
      '!!   the rules never take them for plane errors or latency. Set mode: registered to refuse them (401).',
    );
  }
  return {
    writer,
    url,
    banner,
    async close() {
      await listening.close();
      await writer.close();
    },
  };
}

/**
 * Who may send spans: a credential is required in mode: registered, off loopback, or when a
 * gateway credential (CUSTODY_INGEST_TOKEN) is set; otherwise (open first-day mode on loopback)
 * spans without one are stored as unverified. Agent credentials are checked against the token
 * service's registry in this process; custody tokens against its keys (in process, or the JWKS at
 * CUSTODY_TOKEN_URL / CUSTODY_URL).
 */
export function ingestAuth(ctx: RoleContext, env: CustodyEnv = ctx.env): { auth: IngestAuth; describe: string } {
  const { options, log } = ctx;
  const credentials = credentialsFromEnv(env);
  let config: TokenServiceConfig | undefined;
  try {
    config = loadTokenConfig(options.tokenConfigFile);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'collector: token service configuration unreadable; custody tokens are checked with defaults');
  }
  const loopback = isLoopback(options.host);
  const registered = config ? config.mode === 'registered' || (config.mode === 'auto' && !loopback) : !loopback;
  const required = registered || !loopback || !!credentials.ingest;
  let verifier: TokenVerifier | undefined;
  const chain = config ? { roleOrder: config.roleOrder, maxDepth: config.delegation.max_depth, maxTtlSeconds: config.max_ttl_seconds } : {};
  const verifyToken = () => {
    if (!verifier) {
      const keys = ctx.services.lookup<TokenKeysService>(SERVICE.TOKEN_KEYS);
      const common = { clockSkewSeconds: TOKEN_GRACE_SECONDS, requireSponsor: false, ...chain };
      if (keys) verifier = createTokenVerifier({ issuer: keys.issuer, jwks: () => keys.jwks(), ...common });
      else {
        const issuer = env[ENV.TOKEN_ISSUER] || config?.issuer;
        if (!issuer) return undefined;
        verifier = createTokenVerifier({ issuer, jwks: jwksUrl(env[ENV.TOKEN_URL] || env[ENV.URL] || DEFAULTS.URL), ...common });
      }
    }
    const v = verifier;
    return (token: string) => v.verify(token);
  };
  const auth = createIngestAuth({
    credentials,
    required,
    agents: () => ctx.services.lookup<AgentCredentialChecker>(SERVICE.AGENT_CREDENTIALS),
    verifyToken,
  });
  const describe = required ? 'credential required: agent credential, custody token, service or gateway credential' : 'open: spans without a credential stored as unverified';
  return { auth, describe };
}
