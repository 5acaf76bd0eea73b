import { TOKEN_ERROR, TokenError } from './errors';

/**
 * Single-use enforcement for high-risk tools: remembers each `jti` until its token has expired
 * (plus the clock skew), so a replayed token is refused. In memory, per process: share one cache
 * between the verifiers of one process.
 */
export interface ReplayCache {
  /**
   * Records the jti; throws (or rejects with) ERR_TOKEN_REPLAY when it was already used. A cache
   * shared by replicas answers asynchronously (enforcer/plane/shared-state.ts).
   */
  use(jti: string, expSeconds: number): void | Promise<void>;
  readonly size: number;
  clear(): void;
}

export interface ReplayCacheOptions {
  now?: () => number;
  clockSkewSeconds?: number;
  /** When this many live entries are held, further single-use tokens are refused (fail closed). */
  maxEntries?: number;
}

export function createReplayCache(options: ReplayCacheOptions = {}): ReplayCache {
  const now = options.now ?? Date.now;
  const skewMs = (options.clockSkewSeconds ?? 5) * 1000;
  const maxEntries = options.maxEntries ?? 1_000_000;
  const until = new Map<string, number>();
  let nextSweep = 0;

  const sweep = (t: number) => {
    let next = Infinity;
    for (const [jti, u] of until) {
      if (u < t) until.delete(jti);
      else if (u < next) next = u;
    }
    // at most one full sweep a second, however busy
    nextSweep = Math.max(next, t + 1000);
  };

  return {
    use(jti, expSeconds) {
      const t = now();
      if (t >= nextSweep || until.size >= maxEntries) sweep(t);
      const seen = until.get(jti);
      if (seen !== undefined && seen >= t) throw new TokenError(TOKEN_ERROR.REPLAY, `token ${jti} was already used`);
      if (until.size >= maxEntries) {
        throw new TokenError(TOKEN_ERROR.REPLAY, `the replay cache is full (${maxEntries} live tokens): refusing single-use tokens`);
      }
      const u = expSeconds * 1000 + skewMs;
      until.set(jti, u);
      nextSweep = Math.min(nextSweep, Math.max(u, t + 1000));
    },
    get size() {
      return until.size;
    },
    clear: () => until.clear(),
  };
}
