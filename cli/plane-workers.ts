import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { AggregatorRegistry } from 'prom-client';
import { registry } from '../common/metrics';
import type { Logger } from '../common/log';
import { ENV } from '../common/names';
import type { CommonOptions } from '../common/role';
import type { CustodyEnv } from '../common/env';
import { policyPlaneRole, type PolicyPlaneOptions } from '../enforcer/plane/role';
import { startHost, type Host } from './host';

/**
 * `custody policy-plane --workers N`: N worker processes share the control port (node:cluster) and
 * one state. The primary owns the state — the rollout file under --data-dir and the single-use
 * claims — in a plane of its own on a loopback port; every worker is a replica of it
 * (enforcer/plane/shared-state.ts), so a change made through any worker is in force on all.
 * With --state-url the state is another plane's, and the primary only supervises.
 *
 * /metrics on any worker answers for all of them (counters and histograms summed, gauges the
 * largest), so a scrape through the shared port sees the whole process.
 */

const METRICS_REQUEST = 'custody:metrics-request';
const METRICS_ANSWER = 'custody:metrics-answer';
/** A worker that dies is started again after this long; one that dies before it listened stops everything (a bad flag or port). */
const RESTART_DELAY_MS = 1000;
/** How long the primary waits for its workers to stop on SIGTERM/SIGINT before it kills them. */
const WORKER_STOP_MS = 20_000;

export const isPlaneWorker = (): boolean => cluster.isWorker;

/** In a worker: the whole process's metrics, asked of the primary. */
export function workerMetrics(): () => Promise<string> {
  // answers the primary's aggregation requests with this worker's registry
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([registry]);
  let next = 0;
  const waiting = new Map<number, (text: string) => void>();
  process.on('message', (m: { type?: string; id?: number; text?: string }) => {
    if (m?.type !== METRICS_ANSWER || m.id === undefined) return;
    waiting.get(m.id)?.(m.text ?? '');
    waiting.delete(m.id);
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = next++;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error('the primary process did not answer for the workers\' metrics within 5 s'));
      }, 5000);
      waiting.set(id, (text) => {
        clearTimeout(timer);
        resolve(text);
      });
      process.send!({ type: METRICS_REQUEST, id });
    });
}

export interface PlanePrimary {
  /** The port the workers share. */
  readonly url: string;
  readonly banner: string[];
}

/**
 * The primary: starts the owner plane (unless `planeOptions.stateUrl`), forks `workers` replicas
 * with the same command line, and resolves once every one of them listens.
 */
export async function startPlanePrimary(workers: number, options: CommonOptions, planeOptions: PolicyPlaneOptions, log: Logger, env: CustodyEnv): Promise<PlanePrimary> {
  let owner: Host | undefined;
  let stateUrl = planeOptions.stateUrl ?? env[ENV.STATE_URL];
  // the credential the workers claim single-use tokens with at the owner; generated when none is set
  const stateToken = env[ENV.STATE_TOKEN] ?? env[ENV.SERVICE_TOKEN] ?? randomBytes(24).toString('base64url');
  let banner: string[] = [];
  if (!stateUrl) {
    // the owner answers only its workers, on loopback: plain HTTP (the workers' port carries --tls-cert)
    const { tls: _tls, ...plain } = options;
    owner = await startHost({ ...plain, host: '127.0.0.1', port: 0 }, [policyPlaneRole({ ...planeOptions, stateToken })], log, env);
    stateUrl = owner.control.url;
    banner = owner.roles.flatMap((r) => r.banner ?? []);
  }

  const aggregator = new AggregatorRegistry();
  cluster.on('message', (worker: Worker, m: { type?: string; id?: number }) => {
    if (m?.type !== METRICS_REQUEST) return;
    aggregator.clusterMetrics().then(
      (text) => worker.send({ type: METRICS_ANSWER, id: m.id, text }),
      (err: Error) => worker.send({ type: METRICS_ANSWER, id: m.id, text: `# workers' metrics unavailable: ${err.message}\n` }),
    );
  });

  let stopping = false;
  const workerEnv = { [ENV.STATE_URL]: stateUrl, [ENV.STATE_TOKEN]: stateToken };
  const listening = new Set<number>();
  let firstUrl: string | undefined;
  const ready = new Promise<string>((resolve, reject) => {
    const fork = (): void => {
      const worker = cluster.fork(workerEnv);
      worker.once('listening', (address) => {
        listening.add(worker.id);
        const host = address.address && address.address !== '0.0.0.0' && address.address !== '::' ? address.address : '127.0.0.1';
        firstUrl ??= `${options.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
        if (listening.size === workers) resolve(firstUrl);
      });
      worker.once('exit', (code, signal) => {
        if (stopping) return;
        if (!listening.has(worker.id)) {
          reject(new Error(`a policy-plane worker exited before it listened (code ${code ?? signal}): see its error above`));
          return;
        }
        listening.delete(worker.id);
        log.error({ worker: worker.id, code, signal }, `policy-plane worker exited; starting another in ${RESTART_DELAY_MS} ms`);
        setTimeout(() => {
          if (!stopping) fork();
        }, RESTART_DELAY_MS).unref();
      });
    };
    for (let i = 0; i < workers; i++) fork();
  });

  const stopWorkers = async (): Promise<void> => {
    stopping = true;
    const all = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w);
    await Promise.all(
      all.map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            const kill = setTimeout(() => w.process.kill('SIGKILL'), WORKER_STOP_MS).unref();
            w.once('exit', () => {
              clearTimeout(kill);
              resolve();
            });
            w.process.kill('SIGTERM');
          }),
      ),
    );
  };
  let url: string;
  try {
    url = await ready;
  } catch (err) {
    await stopWorkers();
    await owner?.close();
    throw err;
  }

  let closing = false;
  const stop = (signal: string) => {
    if (closing) process.exit(130);
    closing = true;
    log.info({ signal }, 'stopping the workers');
    setTimeout(() => process.exit(1), WORKER_STOP_MS + 10_000).unref();
    void (async () => {
      await stopWorkers();
      await owner?.close();
      process.exit(0);
    })();
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  return {
    url,
    banner: [
      ...banner,
      owner ? `  workers     ${workers}, replicas of this process's plane at ${stateUrl}` : `  workers     ${workers}, replicas of ${stateUrl}`,
    ],
  };
}
