import { collectProcessMetrics, registry } from '../common/metrics';
import { createFastRouter } from '../common/fast-route';
import { createJsonApp, finish, listen, type Listening } from '../common/http';
import type { Logger } from '../common/log';
import { createReporter, type Reporter } from '../common/report';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { CustodyEnv } from '../common/env';
import { ENV } from '../common/names';
import { SERVICE, type CommonOptions, type ReadinessResult, type RoleContext, type RoleStarter, type RunningRole } from '../common/role';

export type { RoleStarter } from '../common/role';

export interface Host {
  readonly control: Listening;
  readonly roles: RunningRole[];
  readonly reporter: Reporter;
  readonly log: Logger;
  /** The environment the roles were started with. */
  readonly env: CustodyEnv;
  close(): Promise<void>;
}

/**
 * Hosts one or more roles in this process behind one control API: `custody up` passes them all,
 * `custody collector` (and the other single-role commands) one. Roles start in order, so the
 * collector is there before the roles that report to it.
 */
/** `env`: the environment the command parsed at its start (common/env.ts), handed to every role. */
/** `metrics`: what GET /metrics answers, when not this process's registry (a worker answers for all workers). */
export async function startHost(options: CommonOptions, starters: RoleStarter[], log: Logger, env: CustodyEnv, hooks: { metrics?: () => Promise<string> } = {}): Promise<Host> {
  collectProcessMetrics();
  const app = createJsonApp();
  const fast = createFastRouter(log);
  const checks = new Map<string, () => Promise<ReadinessResult> | ReadinessResult>();
  // Created on first use, after the collector (if hosted here) has bound its port.
  let reporter: Reporter | undefined;
  const services = new Map<string, unknown>();
  // The hosted roles' records: into the collector's store in process when it is hosted here (and
  // no --otlp-url sends them elsewhere); over OTLP with the service credential otherwise.
  const getReporter = () => {
    if (reporter) return reporter;
    const sink = options.otlpUrlGiven ? undefined : (services.get(SERVICE.SERVICE_SINK) as SpanExporter | undefined);
    const serviceToken = env[ENV.SERVICE_TOKEN];
    if (!sink && !serviceToken) {
      log.warn(`records are reported to ${options.otlpUrl} without ${ENV.SERVICE_TOKEN}: the collector stores them as unverified, never as this service's records`);
    }
    return (reporter = createReporter({
      serviceName: 'custody',
      endpoint: options.otlpUrl,
      ...(env[ENV.REPORT_QUEUE_MAX] !== undefined ? { maxQueue: env[ENV.REPORT_QUEUE_MAX] } : {}),
      ...(sink ? { exporter: sink } : serviceToken ? { headers: { authorization: `Bearer ${serviceToken}` } } : {}),
    }));
  };

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', async (_req, res) => {
    const results: Record<string, boolean> = {};
    const details: Record<string, string> = {};
    await Promise.all(
      [...checks].map(async ([name, check]) => {
        try {
          const r = await check();
          results[name] = typeof r === 'boolean' ? r : r.ok;
          if (typeof r === 'object' && r.detail) details[name] = r.detail;
        } catch {
          // a thrown error's text stays in the logs: /readyz answers anyone
          results[name] = false;
        }
      }),
    );
    const ready = Object.values(results).every(Boolean);
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not_ready', checks: results, ...(Object.keys(details).length ? { details } : {}) });
  });
  app.get('/metrics', async (_req, res) => {
    res.set('Content-Type', registry.contentType).send(await (hooks.metrics ?? (() => registry.metrics()))());
  });

  const roles: RunningRole[] = [];
  const ctx: RoleContext = {
    control: app,
    fast,
    log,
    get reporter() {
      return getReporter();
    },
    options,
    env,
    services: {
      provide: (name, value) => void services.set(name, value),
      lookup: <T>(name: string) => services.get(name) as T | undefined,
    },
    setOtlpUrl: (url) => {
      // an --otlp-url given on the command line wins over this process's receiver
      if (!options.otlpUrlGiven) options.otlpUrl = url;
    },
    addReadinessCheck: (name, check) => void checks.set(name, check),
  };
  try {
    for (const start of starters) roles.push(await start(ctx));
  } catch (err) {
    for (const role of roles.reverse()) await role.close().catch(() => undefined);
    await reporter?.shutdown().catch(() => undefined);
    throw err;
  }
  finish(app, log);
  const control = await listen(fast.listener(app), options.host, options.port, options.tls);

  let closing: Promise<void> | undefined;
  return {
    control,
    roles,
    env,
    get reporter() {
      return getReporter();
    },
    log,
    close() {
      closing ??= (async () => {
        await control.close();
        const stop = (role: RunningRole) => role.close().catch((err) => log.error({ err, role: role.name }, 'error while stopping'));
        // the first role (the collector, when hosted here) takes the others' events: deliver
        // what they reported before it stops, never waiting long on a collector elsewhere
        for (const role of [...roles].slice(1).reverse()) await stop(role);
        if (reporter) await bounded(reporter.flush(), 2000);
        if (roles[0]) await stop(roles[0]);
        if (reporter) await bounded(reporter.shutdown(), 2000);
      })();
      return closing;
    },
  };
}

/** Waits for `p` at most `ms`; telemetry never holds a shutdown hostage. */
async function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/**
 * How long a graceful stop may take (the final checkpoint, the last writes) before the process
 * exits anyway: a supervisor's SIGTERM must end the process, whatever hangs.
 */
const STOP_DEADLINE_MS = 30_000;

/** Stops the host on SIGINT/SIGTERM, once; a second signal exits at once, and so does a stop that takes over 30 s. */
export function closeOnSignals(host: Host): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    host.log.info({ signal }, 'stopping');
    setTimeout(() => {
      host.log.error({ signal, deadline_ms: STOP_DEADLINE_MS }, `stopping took over ${STOP_DEADLINE_MS / 1000} s; exiting without finishing`);
      process.exit(1);
    }, STOP_DEADLINE_MS).unref();
    host.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}
