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
type Aggregator = 'sum' | 'max' | 'min' | 'first' | 'average';

/** A counter; workers' counts are summed unless `aggregator` says otherwise (each worker counting the same event: 'max'). */
export function counter<T extends string = string>(cfg: Config<T> & { aggregator?: Aggregator }): Counter<T> {
  return (registry.getSingleMetric(cfg.name) as Counter<T> | undefined) ?? new Counter<T>({ ...cfg, registers: [registry] });
}

/**
 * A gauge. Workers of one process (`custody policy-plane --workers N`) report the same state, so
 * their /metrics shows the largest value of a gauge unless `aggregator` says otherwise.
 */
export function gauge<T extends string = string>(
  cfg: Config<T> & { collect?: (this: Gauge<T>) => void | Promise<void>; aggregator?: Aggregator },
): Gauge<T> {
  return (registry.getSingleMetric(cfg.name) as Gauge<T> | undefined) ?? new Gauge<T>({ aggregator: 'max', ...cfg, registers: [registry] });
}

export function histogram<T extends string = string>(cfg: Config<T> & { buckets?: number[] }): Histogram<T> {
  return (registry.getSingleMetric(cfg.name) as Histogram<T> | undefined) ?? new Histogram<T>({ ...cfg, registers: [registry] });
}
