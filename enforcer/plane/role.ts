import fs from 'node:fs';
import path from 'node:path';
import type { Attributes, Context } from '@opentelemetry/api';
import { credentialsFromEnv } from '../../common/credentials';
import { DEFAULTS, ENV, SPAN, ATTR } from '../../common/names';
import { SERVICE, type RoleContext, type RunningRole } from '../../common/role';
import type { RoleStarter } from '../../common/role';
import { ConfigError } from '../../common/errors';
import { openRolloutStore, type RolloutState, type RolloutStore } from '../policy/rollout';
import { createReplayCache, type ReplayCache } from '../../identity/replay';
import { mountStateRoutes, sharedReplayCache, sharedRollout, type SharedRollout } from './shared-state';
import { RECEIPT_TYPE, receiptSigner, type PolicyReceipt, type ReceiptSigner, type RolloutReceipt } from '../../common/receipt';
import { openKeyArchive } from '../../identity/key-archive';
import { packageRoot } from '../../common/package-root';
import { loadTokenConfig } from '../../identity/config';
import { jwksUrl, revocationsUrl } from '../../identity/client';
import { createRevocationChecker, type RevocationChecker } from '../../identity/revocation';
import type { TokenKeysService } from '../../identity/role';
import { createTokenVerifier, type TokenVerifier } from '../../identity/verify';
import { parseCertificateAuthorities, peerClaimsOf } from '../../identity/certificates';
import { createChecker, finalizeApproval } from './check';
import { createApprovalBook, type ApprovalBook, type ApprovalInput, type ApprovalRecord } from './approvals';
import { mountApprovalRelay, mountApprovalRoutes, APPROVAL_PATHS } from './approval-routes';
import { approvalWebhook } from './approval-webhook';
import { fetchJson } from '../../common/json-client';
import { receiptBatcher } from './receipt-batcher';
import { planeMetrics } from './metrics';
import { watchPolicyFile, type PolicySource } from './reload';
import { arrivedAt } from '../../common/http';
import { mountPlaneRoutes, traceContextOf } from './routes';

export const POLICY_FILE = 'policy-config.yaml';
/** The rollout state, under --data-dir. */
export const ROLLOUT_STATE_FILE = path.join('policy', 'rollout.json');
/** The keys that sign decision and rollout receipts, under --data-dir. */
export const RECEIPT_KEYS_DIR = path.join('policy', 'keys');

export interface PolicyPlaneOptions {
  /** Standalone: the token service whose JWKS verifies tokens. Default $CUSTODY_TOKEN_URL, $CUSTODY_URL, http://127.0.0.1:8080. */
  tokenUrl?: string;
  /** Standalone: the tokens' issuer. Default $CUSTODY_TOKEN_ISSUER, else the token service configuration's `issuer`. */
  tokenIssuer?: string;
  /** Default $CUSTODY_ADMIN_TOKEN (every change); $CUSTODY_ROLLOUT_TOKEN moves the rollout only. */
  adminToken?: string;
  /** Policy file poll interval, ms. */
  pollMs?: number;
  /**
   * Replica mode: the plane that owns the rollout and the single-use token claims (shared-state.ts).
   * Default $CUSTODY_STATE_URL; unset, this plane owns them (the rollout file under --data-dir).
   */
  stateUrl?: string;
  /** The credential replicas claim single-use tokens with. Default $CUSTODY_STATE_TOKEN, else $CUSTODY_SERVICE_TOKEN. */
  stateToken?: string;
}

/** What the policy plane offers other roles in the same process (SERVICE.ROLLOUT). */
export interface RolloutService {
  get(): Promise<{ percent: number; revision: number; updated_at: string; scope: Readonly<Record<string, readonly string[]>> | null }>;
}

/** The default policy: --policy, else ./policy-config.yaml, else the example shipped with the package. */
export function resolvePolicyFile(file: string | undefined, cwd = process.cwd()): string {
  if (file) return path.resolve(cwd, file);
  const local = path.resolve(cwd, POLICY_FILE);
  return fs.existsSync(local) ? local : path.join(packageRoot(), POLICY_FILE);
}

/**
 * The policy-plane role: POST /v1/check, the rollout, hot reload of the policy file, the decision
 * log (every decision reported as a `custody.policy.decision` span) and the plane's metrics.
 */
export function policyPlaneRole(planeOptions: PolicyPlaneOptions = {}): RoleStarter {
  return async function startPolicyPlane(ctx: RoleContext): Promise<RunningRole> {
    const { options, log } = ctx;
    const metrics = planeMetrics();
    const file = resolvePolicyFile(options.policyFile);
    // policy changes are audit events, signed like decisions: held until the signer is ready
    const policyChanges: PolicyReceipt[] = [];
    let recordPolicyChange = (c: PolicyReceipt): void => void policyChanges.push(c);
    const policies: PolicySource = watchPolicyFile(file, {
      log,
      ...(planeOptions.pollMs !== undefined ? { pollMs: planeOptions.pollMs } : {}),
      onLoad: (p, generation) => {
        metrics.loaded(generation, p.version, p.hash, p.rollout.scope);
        recordPolicyChange({ result: 'loaded', version: p.version, hash: p.hash, source: p.source, time: Date.now() });
      },
      onError: (err, refused) => {
        metrics.reloadFailed();
        // the version that stays in force, the hash of the content refused
        recordPolicyChange({ result: 'refused', version: policies.current().version, hash: refused.hash, source: file, time: Date.now(), error: err.message.slice(0, 2000) });
      },
    });
    let shared: SharedRollout | undefined;
    try {
      const fromEnv = credentialsFromEnv(ctx.env);
      const stateUrl = planeOptions.stateUrl ?? ctx.env[ENV.STATE_URL];
      if (stateUrl) {
        try {
          new URL(stateUrl);
        } catch {
          throw new ConfigError(`--state-url / ${ENV.STATE_URL}: '${stateUrl}' is not a URL (the plane that owns the rollout, e.g. http://plane-0:8080)`);
        }
        shared = sharedRollout(stateUrl, { log, onChange: (_from, to) => metrics.rollout(to.percent) });
      }
      const rollout: RolloutStore = shared ? replicaStore(shared, stateUrl!) : openRolloutStore(path.join(options.dataDir, ROLLOUT_STATE_FILE), policies.current().rollout.percent);
      // a replica waits a little for its first read; without one it starts, answers no check and says so on /readyz
      if (shared && !(await shared.ready(STATE_FIRST_READ_MS))) log.error({ owner: stateUrl }, 'shared state not read yet: checks are refused (503) until it is');
      if (!shared) metrics.rollout(rollout.get().percent);
      const stateToken = planeOptions.stateToken ?? ctx.env[ENV.STATE_TOKEN] ?? fromEnv.service;
      const replay = shared ? sharedReplayCache(stateUrl!, stateToken) : createReplayCache();
      const { verifier, describe, revocations } = tokenVerifier(ctx, planeOptions, replay);
      const credentials = { ...fromEnv, admin: planeOptions.adminToken ?? fromEnv.admin };
      const receiptKeys = await openKeyArchive({ dir: path.join(options.dataDir, RECEIPT_KEYS_DIR), envVar: ENV.POLICY_SIGNING_KEY, key: ctx.env[ENV.POLICY_SIGNING_KEY] });
      let keySigner = receiptSigner(receiptKeys.current().kid, receiptKeys.current().privateKey);
      const currentSigner = (): ReceiptSigner => {
        const key = receiptKeys.current();
        if (keySigner.kid !== key.kid) keySigner = receiptSigner(key.kid, key.privateKey);
        return keySigner;
      };

      recordPolicyChange = (c) => reportPolicyChange(ctx, c, currentSigner().sign(RECEIPT_TYPE.POLICY, c));
      for (const c of policyChanges.splice(0)) recordPolicyChange(c);

      const report = (attributes: Attributes, parent: Context | undefined, time: number, error?: string) => {
        try {
          ctx.reporter.event(SPAN.POLICY_DECISION, attributes, { time, ...(parent ? { context: parent } : {}), ...(error ? { error } : {}) });
        } catch (err) {
          log.warn({ err: (err as Error).message }, 'cannot report a policy decision');
        }
      };
      // decisions made together share one signature; rollout changes are rare and signed alone
      const signer = receiptBatcher(currentSigner, { onBatch: (size) => metrics.receiptBatch(size) });
      // Human approvals are kept by the plane that owns the shared state; a replica opens them there.
      let book: ApprovalBook | undefined;
      let requestApproval: (input: ApprovalInput) => Promise<ApprovalRecord> | ApprovalRecord;
      if (shared) {
        const url = new URL(APPROVAL_PATHS.STATE, stateUrl!);
        requestApproval = async (input) => {
          if (!stateToken) throw new Error(`approval requests are opened at the state owner: set ${ENV.STATE_TOKEN} (or ${ENV.SERVICE_TOKEN})`);
          // more time than a single-use claim: a request is opened once per held call, and the agent's own budget bounds its wait
          const { body } = await fetchJson(url, { method: 'POST', body: input, headers: { authorization: `Bearer ${stateToken}` }, timeoutMs: APPROVAL_OPEN_TIMEOUT_MS });
          return body as ApprovalRecord;
        };
      } else {
        const announce = approvalWebhook({
          url: () => ctx.env[ENV.APPROVAL_WEBHOOK_URL] || policies.current().approvals.webhook,
          // on an ephemeral port (0) the address is not known yet: the link is the path alone
          inboxUrl: options.port === 0 ? APPROVAL_PATHS.PAGE : new URL(APPROVAL_PATHS.PAGE, options.publicUrl).toString(),
          log,
          onFailure: () => metrics.webhookFailed(),
        });
        const b = createApprovalBook({
          onResolved: async (r) => {
            const final = await finalizeApproval({ signer, report, metrics }, r);
            metrics.approval(r.status, b.size);
            log.info({ approval: r.id, status: r.status, by: r.decided_by, tool: r.tool, action: r.action, agent: r.agent_instance_id }, `approval ${r.status}`);
            return final;
          },
          onCreated: (r) => {
            metrics.approval('requested', b.size);
            announce(r);
          },
        });
        book = b;
        requestApproval = (input) => b.create(input);
      }
      const staging = () => ctx.env[ENV.ENVIRONMENT] === 'staging' || policies.current().config.mode === 'staging';
      const check = createChecker({ policy: policies.current, verifier, rolloutPercent: () => rollout.get().percent, report, canRecord: () => ctx.reporter.hasRoom(), metrics, signer, requestApproval, staging });
      const rolloutReceipt = (state: RolloutState, reason: string, actor: string) =>
        currentSigner().sign(RECEIPT_TYPE.ROLLOUT, { percent: state.percent, revision: state.revision, time: Date.now(), reason, actor } satisfies RolloutReceipt);

      // the hot path: served on the bare request, before Express
      // latency is measured from the request's arrival: time spent queued behind others counts
      // (a replica without a rollout yet answers 503: reading it throws StateUnavailableError)
      // mTLS: a client certificate of custody's authority stands for a token (--client-ca)
      const authorities = options.tls?.clientCa ? parseCertificateAuthorities(options.tls.clientCa, '--client-ca') : [];
      ctx.fast.post('/v1/check', (body, req) => check(body, traceContextOf(req.headers), arrivedAt(req), peerClaimsOf(req.socket, authorities)));
      if (shared) {
        mountApprovalRelay(ctx.control, stateUrl!);
        ctx.addReadinessCheck('shared-state', () => {
          const s = shared!.status();
          if (!s.known) return { ok: false, detail: `rollout not read yet from ${new URL(stateUrl!).origin}: checks are refused` };
          if (s.fresh) return true;
          // still serving: the last rollout read stays in force; single-use tokens are refused meanwhile
          const since = s.lastReadAt ? new Date(s.lastReadAt).toISOString() : 'start';
          return { ok: true, detail: `owner at ${new URL(stateUrl!).origin} unreachable: serving rollout revision ${s.revision} read at ${since}; single-use tokens refused` };
        });
      } else {
        // the owner: replicas claim single-use tokens here
        mountStateRoutes(ctx.control, { replay, credential: stateToken });
        mountApprovalRoutes(ctx.control, { book: book!, policy: policies.current, credentials, stateCredential: stateToken });
      }
      mountPlaneRoutes(ctx.control, {
        ...(shared ? { replicaOf: { owner: stateUrl!, accept: (body: unknown) => shared!.accept(body) } } : {}),
        policy: policies.current,
        rollout,
        staging,
        credentials,
        revocations: async () => {
          const r = await revocations.current();
          return { version: r.version, count: r.count };
        },
        receiptKeys,
        onRolloutChange: ({ from, to, reason, actor }) => {
          metrics.rollout(to);
          log.warn({ from, to, reason, actor }, `rollout moved ${from}% → ${to}%`);
          reportRollout(ctx, { from, to, reason, actor, receipt: rolloutReceipt(rollout.get(), reason, actor) });
        },
        onIncidentChange: ({ cacheTtlS, percent, reason, actor }) => {
          const what = cacheTtlS ? `incident switch on: agents keep allows cached for ${cacheTtlS} s` : 'incident switch off: normal decision cache TTL';
          log.warn({ cacheTtlS, reason, actor }, what);
          reportRollout(ctx, { from: percent, to: percent, reason: `${what}; ${reason}`, actor, receipt: rolloutReceipt(rollout.get(), `${what}; ${reason}`, actor) });
        },
      });
      // The rollout in force from this start on, signed: what a call claiming the baseline cohort is checked against.
      // (a replica's rollout is its owner's, recorded there)
      if (!shared) {
        const s = rollout.get();
        reportRollout(ctx, { from: s.percent, to: s.percent, reason: 'in force at policy plane start', actor: 'policy-plane', receipt: rolloutReceipt(s, 'in force at policy plane start', 'policy-plane') });
      }
      const service: RolloutService = {
        get: async () => {
          const s = rollout.get();
          return { percent: s.percent, revision: s.revision, updated_at: s.updated_at, scope: policies.current().rollout.scope ?? null };
        },
      };
      ctx.services.provide(SERVICE.ROLLOUT, service);

      const p = policies.current();
      const state = shared && !shared.status().known ? undefined : rollout.get();
      const banner = [
        `policy plane  ${file} (version ${p.version}, ${p.ruleCount} rules), rollout ${state ? `${state.percent}%` : 'not read yet'} canary (${rollout.file})`,
        `  tokens      ${describe}`,
        `  receipts    signed with ${receiptKeys.current().kid} (${receiptKeys.source}); public keys at GET /v1/policy/jwks.json`,
      ];
      if (book) banner.push(`  approvals   inbox at GET ${APPROVAL_PATHS.PAGE} on the control API (${p.approvals.people.size} approvers listed in the policy)`);
      if (!credentials.admin && !credentials.rollout) banner.push(`  rollout changes disabled until ${ENV.ROLLOUT_TOKEN} or ${ENV.ADMIN_TOKEN} is set`);
      if (state?.incident) {
        banner.push(`!! incident switch on since ${state.incident.since}: agents keep allows cached for ${state.incident.cache_ttl_s} s`);
      }
      return {
        name: 'policy-plane',
        banner,
        close: async () => {
          policies.close();
          book?.close();
          shared?.close();
          // Deliver the last decisions and rollout changes while a collector hosted here still listens
          // (roles stop in reverse order); bounded, since a remote collector may be down.
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([
            ctx.reporter.flush().catch(() => undefined),
            new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000).unref())),
          ]);
          clearTimeout(timer);
        },
      };
    } catch (err) {
      policies.close();
      shared?.close();
      throw err;
    }
  };
}

export const startPolicyPlaneRole: RoleStarter = (ctx) => policyPlaneRole()(ctx);

/**
 * In `custody up`, the token service's keys in process; alone, its JWKS over HTTP. The token
 * service's configuration (--token-config, as the token service resolves it) gives the role order
 * delegation chains are checked against, and the issuer when none is given.
 */
function tokenVerifier(ctx: RoleContext, o: PolicyPlaneOptions, replayCache: ReplayCache): { verifier: TokenVerifier; describe: string; revocations: RevocationChecker } {
  const keys = ctx.services.lookup<TokenKeysService>(SERVICE.TOKEN_KEYS);
  const explicitIssuer = o.tokenIssuer ?? ctx.env[ENV.TOKEN_ISSUER];
  let config: ReturnType<typeof loadTokenConfig> | undefined;
  try {
    config = loadTokenConfig(ctx.options.tokenConfigFile);
  } catch (err) {
    // Alone with an explicit issuer, or beside the token service, the defaults do; otherwise the issuer is unknown.
    if (!keys && !explicitIssuer) throw err;
    ctx.log.warn({ err: (err as Error).message }, 'policy plane: token service configuration unreadable; default role order');
  }
  const chain = config ? { roleOrder: config.roleOrder, maxDepth: config.delegation.max_depth } : {};
  if (keys) {
    // the registry's list itself: a revocation counts from the next check
    const revocations = createRevocationChecker(() => keys.revocations());
    return {
      verifier: createTokenVerifier({ issuer: keys.issuer, jwks: () => keys.jwks(), revocations, replayCache, ...chain }),
      describe: `verified with the in-process token service's keys and revocations (issuer '${keys.issuer}')`,
      revocations,
    };
  }
  const base = o.tokenUrl ?? ctx.env[ENV.TOKEN_URL] ?? ctx.env[ENV.URL] ?? DEFAULTS.URL;
  const issuer = explicitIssuer ?? config!.issuer;
  const url = jwksUrl(base);
  const feed = revocationsUrl(base);
  // Asked again every second while checks come in; unreachable for a minute, every token is refused.
  const revocations = createRevocationChecker(feed, { refreshMs: PLANE_REVOCATION_REFRESH_MS, maxStaleMs: 60_000 });
  return {
    verifier: createTokenVerifier({ issuer, jwks: url, revocations, replayCache, ...chain }),
    describe: `verified with ${url}, revocations from ${feed} (issuer '${issuer}')`,
    revocations,
  };
}

/** How long a replica waits for the owner to open an approval request. */
const APPROVAL_OPEN_TIMEOUT_MS = 1000;

/** How long a replica's start waits for its first read of the owner's rollout. */
const STATE_FIRST_READ_MS = 3000;

/** A replica's rollout: the owner's, read by `shared`; changes go to the owner through the routes, never here. */
function replicaStore(shared: SharedRollout, owner: string): RolloutStore {
  const refuse = () => Promise.reject(new Error(`a replica's rollout changes go to its owner at ${owner}`));
  return { file: `${new URL(owner).origin} (shared state)`, get: () => shared.get(), setPercent: refuse, setIncident: refuse };
}

/** A standalone plane's revocation feed refresh: with the agents' 2 s rollout poll, a revocation reaches every cache within 5 s. */
export const PLANE_REVOCATION_REFRESH_MS = 1000;

function reportRollout(ctx: RoleContext, c: { from: number; to: number; reason: string; actor: string; receipt: string }): void {
  try {
    ctx.reporter.event(SPAN.ROLLOUT_CHANGE, {
      [ATTR.ROLLOUT_FROM_PERCENT]: c.from,
      [ATTR.ROLLOUT_TO_PERCENT]: c.to,
      [ATTR.ROLLOUT_REASON]: c.reason,
      [ATTR.ROLLOUT_ACTOR]: c.actor,
      [ATTR.ROLLOUT_RECEIPT]: c.receipt,
    });
  } catch (err) {
    ctx.log.warn({ err: (err as Error).message }, 'cannot report a rollout change');
  }
}

/** A policy load or refused reload, as the plane's own record (`custody.policy.change`, table policy_events). */
function reportPolicyChange(ctx: RoleContext, c: PolicyReceipt, receipt: string): void {
  try {
    ctx.reporter.event(
      SPAN.POLICY_CHANGE,
      {
        [ATTR.POLICY_CHANGE_RESULT]: c.result,
        [ATTR.POLICY_VERSION]: c.version,
        [ATTR.POLICY_HASH]: c.hash,
        [ATTR.POLICY_SOURCE]: c.source,
        [ATTR.POLICY_CHANGE_RECEIPT]: receipt,
        ...(c.error ? { [ATTR.POLICY_CHANGE_ERROR]: c.error } : {}),
      },
      { time: c.time, ...(c.error ? { error: c.error } : {}) },
    );
  } catch (err) {
    ctx.log.warn({ err: (err as Error).message }, 'cannot report a policy change');
  }
}
