import { Router } from 'express';
import { badRequest, HttpError } from '../../common/errors';
import { queryString } from '../../common/http';
import type { Logger } from '../../common/log';
import { SERVICE, type RoleContext, type Services } from '../../common/role';
import { registerRuleMetrics } from './metrics';
import {
  evaluateRules,
  parseCohort,
  parseThreshold,
  parseWindow,
  resolveRulesConfig,
  RuleInputError,
  THRESHOLD_PARAMETERS,
  type RulesConfig,
  type RuleThresholds,
} from './evaluate';
import type { Store } from '../store';

/**
 * GET /v1/rollback/status?window=15m&cohort=canary[&policy_error_rate=0.01…]: the rollback rules
 * for one cohort (canary, baseline or unmanaged), as the README's "Rollout control" shapes them (Argo Rollouts' web
 * metric provider reads it as is). A rule name as a parameter overrides its threshold. Besides the
 * contract's fields it names the cohort, the evaluated minute range, each rule's confidence bounds,
 * the calls that would settle an undecided rule, the inputs counted and the alerts behind a `hold`.
 */

const ROLLOUT_TIMEOUT_MS = 1000;
const PARAMETERS = ['window', 'cohort', ...Object.keys(THRESHOLD_PARAMETERS)];

/** The rollout as the status shows it: the percent and a tier-scoped canary's scope (null: every instance). */
export interface RolloutSummary {
  percent: number | null;
  scope: Readonly<Record<string, readonly string[]>> | null;
}

/**
 * In `custody up` the policy plane offers its rollout state in-process; a lone collector asks
 * `${CUSTODY_POLICY_URL}/v1/rollout`. Looked up per request: the plane starts after the collector.
 */
export function rolloutSummary(services: Services, log: Logger, policyUrl: string | undefined): () => Promise<RolloutSummary> {
  const valid = (p: unknown): number | null => (typeof p === 'number' && Number.isFinite(p) && p >= 0 && p <= 100 ? p : null);
  const scopeOf = (s: unknown): RolloutSummary['scope'] => (s && typeof s === 'object' && !Array.isArray(s) ? (s as Record<string, string[]>) : null);
  return async () => {
    const local = services.lookup<{ get(): Promise<{ percent: number; scope?: unknown }> }>(SERVICE.ROLLOUT);
    try {
      if (local) {
        let timer: NodeJS.Timeout | undefined;
        try {
          const timeout = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error('rollout service timed out')), ROLLOUT_TIMEOUT_MS);
          });
          const got = await Promise.race([local.get(), timeout]);
          return { percent: valid(got.percent), scope: scopeOf(got.scope) };
        } finally {
          clearTimeout(timer);
        }
      }
      if (!policyUrl) return { percent: null, scope: null };
      const res = await fetch(new URL('/v1/rollout', policyUrl), { signal: AbortSignal.timeout(ROLLOUT_TIMEOUT_MS) });
      if (!res.ok) throw new Error(`GET /v1/rollout answered ${res.status}`);
      const body = (await res.json()) as { percent?: unknown; scope?: unknown };
      return { percent: valid(body.percent), scope: scopeOf(body.scope) };
    } catch (err) {
      // the rollout is context for the reader, not part of the verdict
      log.warn({ err }, 'rollback status: rollout unavailable');
      return { percent: null, scope: null };
    }
  };
}

function rejectUnknown(query: Record<string, unknown>, allowed: readonly string[]): void {
  for (const name of Object.keys(query)) {
    if (!allowed.includes(name)) throw badRequest('invalid_parameter', `unknown query parameter '${name}' (expected ${allowed.join(', ')})`);
  }
}

function parsed<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof RuleInputError) throw badRequest('invalid_parameter', `query parameter '${err.parameter}': ${err.message}`);
    throw err;
  }
}

export function rollbackStatusRouter(store: Store, options: { config: Readonly<RulesConfig>; rollout: () => Promise<RolloutSummary>; log: Logger }): Router {
  const { config } = options;
  const router = Router();
  router.get('/v1/rollback/status', async (req, res) => {
    const q = req.query as Record<string, unknown>;
    rejectUnknown(q, PARAMETERS);
    const window = queryString(q, 'window');
    const cohort = queryString(q, 'cohort');
    const windowS = window === undefined ? config.windowS : parsed(() => parseWindow(window));
    const thresholds: RuleThresholds = { ...config.thresholds };
    for (const rule of Object.keys(THRESHOLD_PARAMETERS) as (keyof typeof THRESHOLD_PARAMETERS)[]) {
      // present but empty is a bad threshold, not the default
      const v = q[rule] === '' ? '' : queryString(q, rule);
      if (v !== undefined) thresholds[rule] = parsed(() => parseThreshold(rule, v));
    }
    const opts = {
      windowS,
      cohort: cohort === undefined ? config.cohort : parsed(() => parseCohort(cohort)),
      thresholds,
    };
    let result;
    try {
      result = await evaluateRules(store, opts);
    } catch (err) {
      options.log.error({ err }, 'rollback status: storage did not answer');
      throw new HttpError(503, 'storage_unavailable', `the store did not answer: ${(err as Error).message}`, { 'Retry-After': '5' });
    }
    res.json({
      action: result.action,
      window_s: result.window_s,
      sample_size: result.sample_size,
      rules: result.rules,
      // a scoped canary's cohort is only the calls in its scope: the rules say so beside the percent
      rollout: await options.rollout(),
      cohort: result.cohort,
      window: result.window,
      more_calls: result.more_calls,
      alerts: result.alerts,
      inputs: result.inputs,
      by_cohort: result.by_cohort,
    });
  });
  return router;
}

/** Mounts GET /v1/rollback/status and the rule gauges; the collector role calls it once its store is open. */
export function mountRules(ctx: RoleContext, store: Store, options: { config?: Readonly<RulesConfig> } = {}): { close(): void } {
  const config = options.config ?? resolveRulesConfig();
  ctx.control.use(rollbackStatusRouter(store, { config, rollout: rolloutSummary(ctx.services, ctx.log, ctx.options.policyUrl), log: ctx.log }));
  return registerRuleMetrics(store, { config, log: ctx.log });
}
