import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { listen, type Listening, type TlsSettings } from '../../common/http';
import type { Logger } from '../../common/log';
import { counter } from '../../common/metrics';
import { credentialsFromEnv } from '../../common/credentials';
import type { CustodyEnv } from '../../common/env';
import { SERVICE, type RoleContext } from '../../common/role';
import { jwksUrl } from '../../identity/client';
import { loadTokenConfig, type TokenServiceConfig } from '../../identity/config';
import { isLoopback, type TokenKeysService } from '../../identity/role';
import { createTokenVerifier, type TokenVerifier } from '../../identity/verify';
import { parseCertificateAuthorities, peerClaimsOf } from '../../identity/certificates';
import { DEFAULTS, ENV, METRIC, TRUST } from '../../common/names';
import { TOKEN_GRACE_SECONDS, createIngestAuth, type AgentCredentialChecker, type IngestAuth, type IngestPrincipal } from './auth';
import { createServiceSink } from './sink';
import { createBindingIndex, learnFromTokenEvents, type BindingIndex } from './bindings';
import { mapSpans } from './mapping';
import { createIngestPipeline, type IngestPipeline } from './pipeline';
import { startOtlpGrpcReceiver, type GrpcListening } from './grpc';
import { GRPC_CODE, OtlpHttpError, encodeExportResponse, encodeStatus, type WireFormat } from '../otlp';
import type { Store } from '../store';
import { createBatchWriter, type BatchWriter } from './writer';

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
  /** Serve over TLS; with `clientCa`, a client certificate of custody's authority is the sender's credential. */
  tls?: TlsSettings;
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
  /** The decode→write pipeline, when another transport (gRPC) shares it; made from the options above otherwise. */
  pipeline?: IngestPipeline;
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

export function createOtlpHandler(options: Omit<ReceiverOptions, 'host' | 'port'>) {
  const { log } = options;
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const pipeline = options.pipeline ?? createIngestPipeline(options);
  // how much of an unwanted body is read and dropped before the connection is cut instead
  const discardLimit = Math.max(4 * maxBody, 64 * 1024 * 1024);
  const requests = counter<'code'>({ name: METRIC.INGEST_REQUESTS_TOTAL, help: 'OTLP export requests, by HTTP status', labelNames: ['code'] });

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

  async function handle(req: IncomingMessage, res: ServerResponse, format: WireFormat, principal: IngestPrincipal): Promise<void> {
    const body = await decompress(req, await readBody(req));
    const { rejectedCount, message } = await pipeline.ingest(body, format, principal);
    send(res, 200, format, encodeExportResponse(format, rejectedCount, message));
  }

  const authorities = options.tls?.clientCa ? parseCertificateAuthorities(options.tls.clientCa, '--client-ca') : [];
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
      const principal = await pipeline.principalOf(req.headers.authorization, peerClaimsOf(req.socket, authorities, Date.now, TOKEN_GRACE_SECONDS * 1000));
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
        pipeline.dropped(signal);
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
  return listen((req, res) => void handler(req, res), options.host, options.port, options.tls);
}

export interface RunningIngest {
  readonly writer: BatchWriter;
  readonly url: string;
  /** The OTLP/gRPC endpoint (`http://host:port`), when gRPC is on. */
  readonly grpcUrl: string | undefined;
  readonly banner: string[];
  /** Stops taking requests, then inserts what is queued. */
  close(): Promise<void>;
}

/**
 * Ingest inside the collector role: the batching writer on the store, the OTLP receivers on
 * --otlp-port (HTTP) and --otlp-grpc-port (gRPC) sharing one pipeline, and the in-process sink of
 * the hosted roles' records, configured from the credentials (see ingestAuth),
 * CUSTODY_INGEST_MAX_BODY_BYTES and CUSTODY_INGEST_MAX_QUEUE_ROWS. Writes are refused (503) until the store's schema is in place.
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
  const pipeline = createIngestPipeline({ writer, log, auth, bindings });
  const listening = await startOtlpReceiver({ host: options.host, port: options.otlpPort, writer, log, maxBodyBytes, pipeline, ...(options.tls ? { tls: options.tls } : {}) });
  let grpc: GrpcListening | undefined;
  try {
    if (options.otlpGrpcPort !== undefined) {
      grpc = await startOtlpGrpcReceiver({ host: options.host, port: options.otlpGrpcPort, pipeline, log, maxMessageBytes: maxBodyBytes });
    }
  } catch (err) {
    await listening.close();
    throw err;
  }
  // the address reporters and people can use, also when bound to every interface
  const host = options.host === '0.0.0.0' ? '127.0.0.1' : options.host === '::' ? '[::1]' : new URL(listening.url).hostname;
  const url = `${options.tls ? 'https' : 'http'}://${host}:${listening.port}`;
  ctx.setOtlpUrl(url);
  ctx.addReadinessCheck('ingest', () => writer.available);
  const grpcUrl = grpc && `http://${host}:${grpc.port}`;
  const banner = [`OTLP          ${url}`, `OTLP/gRPC     ${grpcUrl ?? 'off (--otlp-grpc-port 0)'}`, `  credentials ${describe}`];
  if (!auth.required) {
    banner.push(
      '!! OPEN INGEST: spans without a credential are accepted and stored as unverified (loopback, first day);',
      '!!   the rules never take them for plane errors or latency. Set mode: registered to refuse them (401).',
    );
  }
  return {
    writer,
    url,
    grpcUrl,
    banner,
    async close() {
      await Promise.all([listening.close(), grpc?.close()]);
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
  const verifyCertificate = () => {
    if (!verifyToken()) return undefined;
    const v = verifier!;
    return (claims: unknown) => v.verifyClaims(claims);
  };
  const auth = createIngestAuth({
    credentials,
    required,
    agents: () => ctx.services.lookup<AgentCredentialChecker>(SERVICE.AGENT_CREDENTIALS),
    verifyToken,
    verifyCertificate,
  });
  const describe = required ? 'credential required: agent credential, custody token, service or gateway credential' : 'open: spans without a credential stored as unverified';
  return { auth, describe };
}
