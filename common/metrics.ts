import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * One Prometheus registry per process; every role registers its metrics here so that
 * `custody up` exposes them all on one `/metrics`. Get-or-create keeps registration idempotent
 * when a role is started twice in one process (tests).
 */
export const registry = new Registry();
let defaultsCollected = false;

export function collectProcessMetrics(): void {
  if (defaultsCollected) return;
  defaultsCollected = true;
  collectDefaultMetrics({ register: registry });
}

type Config<T extends string> = { name: string; help: string; labelNames?: readonly T[] };

export function counter<T extends string = string>(cfg: Config<T>): Counter<T> {
  return (registry.getSingleMetric(cfg.name) as Counter<T> | undefined) ?? new Counter<T>({ ...cfg, registers: [registry] });
}

export function gauge<T extends string = string>(
  cfg: Config<T> & { collect?: (this: Gauge<T>) => void | Promise<void> },
): Gauge<T> {
  return (registry.getSingleMetric(cfg.name) as Gauge<T> | undefined) ?? new Gauge<T>({ ...cfg, registers: [registry] });
}

export function histogram<T extends string = string>(cfg: Config<T> & { buckets?: number[] }): Histogram<T> {
  return (registry.getSingleMetric(cfg.name) as Histogram<T> | undefined) ?? new Histogram<T>({ ...cfg, registers: [registry] });
}
