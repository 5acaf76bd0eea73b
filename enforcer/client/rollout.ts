import { requestJson } from './http';

/** What the enforcer knows of the rollout. */
export interface RolloutSnapshot {
  percent: number;
  /** The plane's incident switch: allows stay cached this long; null when off. */
  incidentCacheTtlS: number | null;
  /** The version of the revocations the plane enforces; undefined when it does not say. */
  revocationsVersion?: string;
  /** A tier-scoped canary: only calls with these attribute values can be canary. */
  scope?: Readonly<Record<string, readonly string[]>>;
  /** The plane runs in staging (CUSTODY_ENV=staging or the policy's `mode: staging`). */
  staging?: boolean;
  /** Epoch ms of the answer. */
  fetchedAt: number;
}

export interface RolloutClientOptions {
  /** GET this URL (…/v1/rollout). */
  url: string;
  timeoutMs: number;
  /** Ask again when the last answer is older than this. */
  refreshMs: number;
  /** An answer older than this is no answer: the rollout is unknown and every call is enforced. */
  maxAgeMs: number;
  now: () => number;
  /** Called when the plane's incident switch changes (null: off). */
  onIncident?: (cacheTtlS: number | null) => void;
  /** Called when the plane's revocations change: someone's tokens are no longer accepted. */
  onRevocations?: () => void;
}

/**
 * The rollout percent as the plane last said it, refreshed in the background: a call never waits
 * for it. Unknown (never fetched, unreadable, or too old) is reported as undefined, which the
 * enforcer treats as canary: enforce.
 */
export function createRolloutClient(o: RolloutClientOptions) {
  let snapshot: RolloutSnapshot | undefined;
  let incident: number | null = null;
  let revocations: string | undefined;
  let staging = false;
  /** Whether the last ask was answered: a plane in trouble is not waited for. */
  let answering = true;
  let inflight: Promise<void> | undefined;
  let lastAttempt = -Infinity;
  let closed = false;

  function refresh(): Promise<void> {
    if (inflight || closed) return inflight ?? Promise.resolve();
    lastAttempt = o.now();
    inflight = (async () => {
      try {
        const body = await requestJson(o.url, { method: 'GET', signal: AbortSignal.timeout(o.timeoutMs), timeoutMs: o.timeoutMs });
        const parsed = parseRollout(body);
        answering = parsed !== undefined;
        if (!parsed) return; // a malformed answer leaves what we knew to age out
        snapshot = { ...parsed, fetchedAt: o.now() };
        staging = parsed.staging === true;
        if (parsed.incidentCacheTtlS !== incident) {
          incident = parsed.incidentCacheTtlS;
          o.onIncident?.(incident);
        }
        if (parsed.revocationsVersion !== undefined && parsed.revocationsVersion !== revocations) {
          // a change from a version we knew: allows cached before it may be for a party revoked since.
          // (Allows cached before the first answer were decided by the plane with its revocations of
          // that moment, so the first answer only sets what is known.)
          const changed = revocations !== undefined;
          revocations = parsed.revocationsVersion;
          if (changed) o.onRevocations?.();
        }
      } catch {
        answering = false;
        /* unknown rollout fails closed (enforce); the next call tries again */
      } finally {
        inflight = undefined;
      }
    })();
    return inflight;
  }

  return {
    /** The rollout, or undefined when unknown. Starts a refresh when one is due. */
    current(): RolloutSnapshot | undefined {
      const now = o.now();
      if (!inflight && now - (snapshot?.fetchedAt ?? -Infinity) >= o.refreshMs && now - lastAttempt >= Math.min(o.refreshMs, 1000)) {
        void refresh();
      }
      return snapshot && now - snapshot.fetchedAt < o.maxAgeMs ? snapshot : undefined;
    },
    /**
     * The last incident switch the plane announced, even when the rollout itself has aged out:
     * the switch exists for the time the plane is in trouble.
     */
    incidentCacheTtlS: (): number | null => incident,
    /** Whether the plane last said it runs in staging (kept when the rollout ages out: staging only adds refusals). */
    staging: (): boolean => staging,
    /**
     * Before reusing a cached allow: when the last answer is older than the refresh interval, ask
     * again and wait for it (at most `maxWaitMs`), so a revocation the plane announced is seen first.
     * A plane that did not answer last time is not waited for.
     */
    async settle(maxWaitMs: number): Promise<void> {
      const now = o.now();
      if (closed || now - (snapshot?.fetchedAt ?? -Infinity) < o.refreshMs) return;
      if (!answering) {
        // the plane is in trouble (what cached allows are for): ask in the background, at most once a second
        if (!inflight && now - lastAttempt >= Math.min(o.refreshMs, 1000)) void refresh();
        return;
      }
      const pending = inflight ?? refresh();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([pending, new Promise<void>((resolve) => (timer = setTimeout(resolve, maxWaitMs)))]);
      clearTimeout(timer);
    },
    refresh,
    close(): void {
      closed = true;
    },
  };
}

export type RolloutClient = ReturnType<typeof createRolloutClient>;

function parseRollout(body: unknown): Omit<RolloutSnapshot, 'fetchedAt'> | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const b = body as { percent?: unknown; incident?: unknown; revocations?: unknown; environment?: unknown; scope?: unknown };
  if (typeof b.percent !== 'number' || !(b.percent >= 0 && b.percent <= 100)) return undefined;
  let incidentCacheTtlS: number | null = null;
  if (b.incident !== undefined && b.incident !== null) {
    const ttl = (b.incident as { cache_ttl_s?: unknown }).cache_ttl_s;
    if (typeof ttl !== 'number' || !(ttl > 0)) return undefined;
    incidentCacheTtlS = ttl;
  }
  const version = (b.revocations as { version?: unknown } | null | undefined)?.version;
  return {
    percent: b.percent,
    incidentCacheTtlS,
    ...(typeof version === 'string' && version ? { revocationsVersion: version } : {}),
    ...(b.environment === 'staging' ? { staging: true } : {}),
    ...(scopeOf(b.scope) ?? {}),
  };
}

/** A scope as GET /v1/rollout gives it; anything malformed counts as a scope no call is in (enforce nothing unknown as canary). */
function scopeOf(v: unknown): { scope: Record<string, string[]> } | undefined {
  if (v === undefined || v === null) return undefined;
  const scope: Record<string, string[]> = {};
  if (typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, values] of Object.entries(v as Record<string, unknown>)) {
      scope[k] = Array.isArray(values) ? values.filter((x): x is string => typeof x === 'string') : [];
    }
  }
  return { scope };
}
