import {
  Server,
  ServerCredentials,
  status,
  type MethodDefinition,
  type Metadata,
  type ServerUnaryCall,
  type ServiceDefinition,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { CustodyError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { counter } from '../../common/metrics';
import { METRIC } from '../../common/names';
import { GRPC_CODE, OtlpHttpError, encodeExportResponse } from '../otlp';
import type { DroppedSignal, IngestPipeline } from './pipeline';

/**
 * The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export` through the
 * same pipeline as OTLP/HTTP protobuf (credentials from the `authorization` metadata, the body
 * limit as the largest message, partial success, an answer only once the rows are stored), and
 * the metrics and logs Export services answering success and dropping what they get. Messages
 * stay bytes until the pipeline decodes them: one decoder for both transports.
 */
export interface GrpcReceiverOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  pipeline: IngestPipeline;
  log: Logger;
  /** Largest message, compressed and decompressed, in bytes. */
  maxMessageBytes: number;
}

export interface GrpcListening {
  readonly port: number;
  /** `http://host:port`, as OTLP gRPC exporters take their endpoint. */
  readonly url: string;
  close(): Promise<void>;
}

export const GRPC_SERVICES = {
  traces: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
  metrics: '/opentelemetry.proto.collector.metrics.v1.MetricsService/Export',
  logs: '/opentelemetry.proto.collector.logs.v1.LogsService/Export',
} as const;

const bytes = (b: Buffer): Buffer => b;
function unary(path: string): MethodDefinition<Buffer, Buffer> {
  return { path, requestStream: false, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes };
}
const service = (path: string): ServiceDefinition => ({ Export: unary(path) });

// an empty ExportMetricsServiceResponse / ExportLogsServiceResponse
const EMPTY = Buffer.alloc(0);

// how long a stop waits for calls in flight (each waits at most for its write) before cutting them
const SHUTDOWN_GRACE_MS = 35_000;

function authorizationOf(metadata: Metadata): string | undefined {
  const v = metadata.get('authorization')[0];
  return typeof v === 'string' ? v : v === undefined ? undefined : v.toString('utf8');
}

export async function startOtlpGrpcReceiver(options: GrpcReceiverOptions): Promise<GrpcListening> {
  const { pipeline, log } = options;
  const requests = counter<'method' | 'code'>({
    name: METRIC.INGEST_GRPC_REQUESTS_TOTAL,
    help: 'OTLP/gRPC export calls, by service (traces, metrics, logs) and gRPC status',
    labelNames: ['method', 'code'],
  });
  const server = new Server({
    'grpc.max_receive_message_length': options.maxMessageBytes,
    // what a stock exporter sends between exports: keep idle connections open as long as HTTP keep-alive
    'grpc.max_connection_idle_ms': 65_000,
  });

  function fail(method: string, callback: sendUnaryData<Buffer>, err: unknown): void {
    const known =
      err instanceof OtlpHttpError
        ? err
        : (log.error({ err }, 'OTLP/gRPC call failed'), new OtlpHttpError(500, GRPC_CODE.INTERNAL, 'internal', 'internal error'));
    requests.inc({ method, code: status[known.grpcCode] ?? String(known.grpcCode) });
    callback({ code: known.grpcCode as status, details: `${known.code}: ${known.message}` });
  }

  server.addService(service(GRPC_SERVICES.traces), {
    Export: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
      void (async () => {
        try {
          const principal = await pipeline.principalOf(authorizationOf(call.metadata));
          const { rejectedCount, message } = await pipeline.ingest(call.request, 'protobuf', principal);
          requests.inc({ method: 'traces', code: 'OK' });
          callback(null, encodeExportResponse('protobuf', rejectedCount, message));
        } catch (err) {
          fail('traces', callback, err);
        }
      })();
    },
  });
  for (const signal of ['metrics', 'logs'] as const satisfies readonly DroppedSignal[]) {
    server.addService(service(GRPC_SERVICES[signal]), {
      Export: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
        void (async () => {
          try {
            await pipeline.principalOf(authorizationOf(call.metadata));
            pipeline.dropped(signal);
            requests.inc({ method: signal, code: 'OK' });
            callback(null, EMPTY);
          } catch (err) {
            fail(signal, callback, err);
          }
        })();
      },
    });
  }

  const shownHost = options.host.includes(':') ? `[${options.host}]` : options.host;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${shownHost}:${options.port}`, ServerCredentials.createInsecure(), (err, bound) => {
      if (err) {
        reject(
          new CustodyError(
            'ERR_LISTEN',
            `cannot listen for OTLP/gRPC on ${shownHost}:${options.port}: ${err.message} (the port in use? choose another with --otlp-grpc-port, 0 turns gRPC off)`,
          ),
        );
      } else resolve(bound);
    }),
  );
  return {
    port,
    url: `http://${shownHost}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), SHUTDOWN_GRACE_MS);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
