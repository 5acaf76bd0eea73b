import { z } from 'zod';
import { parseDuration } from './duration';
import { ConfigError } from './errors';
import { DEFAULTS, ENV } from './names';

/**
 * Every environment variable custody reads, in one zod schema: parsed once where a process starts
 * (the `custody` command, `custody/register`, the manual API's first call), the values passed down
 * from there. A bad value is a ConfigError naming the variable and what was expected; a secret's
 * value is never repeated.
 */

/** Who reads a variable: the agent (custody/register, the enforcer), the servers (`custody up` and the single-role commands), the client commands, a tool API behind custody/guard. */
export type EnvSide = 'agent' | 'server' | 'cli' | 'tool';

export interface EnvVar {
  readonly read: readonly EnvSide[];
  /** What it does, for the README's table. */
  readonly description: string;
  /** The default, as people read it ('' when unset means off or none). */
  readonly default: string;
  /** Never repeat the value in an error or a log line. */
  readonly secret?: boolean;
  readonly schema: z.ZodType<unknown, string | undefined>;
}

/** The environment as a process has it: names to raw strings. */
export type EnvSource = Readonly<Record<string, string | undefined>>;

// ---- value types, each with the message its readers have always given ----

/** Any text, as given; unset stays undefined. */
const text = () => z.string().optional();
/** A credential: surrounding white space dropped, '' counts as unset. */
const credential = () =>
  z
    .string()
    .optional()
    .transform((v) => v?.trim() || undefined);
/** Text where '' counts as unset. */
const orUnset = () =>
  z
    .string()
    .optional()
    .transform((v) => v || undefined);
/** A key or path where blank counts as unset; the text itself is kept as given. */
const nonBlank = () =>
  z
    .string()
    .optional()
    .transform((v) => (v === undefined || v.trim() === '' ? undefined : v));

const positiveInt = (name: string) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw === '') return undefined;
      const n = Number(raw);
      if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n <= 0) {
        ctx.addIssue({ code: 'custom', message: `${name} must be a positive integer, got '${raw}'` });
        return z.NEVER;
      }
      return n;
    });

/** A count of calls, 0 or more. */
const wholeCalls = (name: string) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw.trim() === '') return undefined;
      const n = Number(raw);
      if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n)) {
        ctx.addIssue({ code: 'custom', message: `${name} '${raw}' must be a whole number of calls (0 or more)` });
        return z.NEVER;
      }
      return n;
    });

const number = (name: string, min: number, max: number) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw === '') return undefined;
      const n = Number(raw);
      if (!Number.isFinite(n) || n < min || n > max) {
        ctx.addIssue({ code: 'custom', message: `${name}='${raw}': expected a number from ${min} to ${max}` });
        return z.NEVER;
      }
      return n;
    });

/** A duration such as 90s, 15m, 24h, in seconds; `zero` also takes 0. */
const duration = (what: string, options: { zero?: boolean; blankIsUnset?: boolean } = {}) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || (options.blankIsUnset && raw.trim() === '')) return undefined;
      if (options.zero && /^\s*0+\s*(ms|s|m|h)?\s*$/.test(raw)) return 0;
      try {
        return parseDuration(raw, what);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    });

/** on/off, strictly: anything else is an error. The raw text is kept for messages that quote it. */
const onOff = (name: string) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const v = raw?.trim().toLowerCase();
      if (v === undefined || v === '') return undefined;
      if (['1', 'true', 'on', 'yes'].includes(v)) return true;
      if (['0', 'false', 'off', 'no'].includes(v)) return false;
      ctx.addIssue({ code: 'custom', message: `${name}='${raw}' must be on or off (true/false, 1/0)` });
      return z.NEVER;
    });

/** A switch that is on for 1/true/yes/on and off for anything else (the agent never refuses to start over it). */
const looseFlag = () =>
  z
    .string()
    .optional()
    .transform((raw) => (raw === undefined || raw.trim() === '' ? undefined : /^(1|true|yes|on)$/i.test(raw.trim())));

/** Off for off/false/0/no, on otherwise. */
const offSwitch = () =>
  z
    .string()
    .optional()
    .transform((raw) => (raw === undefined ? undefined : !/^(off|false|0|no)$/i.test(raw)));

/** Comma-separated origins (scheme://host[:port]), normalized as URL.origin; unset or blank: none. */
const origins = (name: string) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw.trim() === '') return undefined;
      const out: string[] = [];
      for (const item of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
        let url: URL | undefined;
        try {
          url = new URL(item);
        } catch {
          url = undefined;
        }
        if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || (url.pathname !== '/' && url.pathname !== '') || url.search || url.hash || url.username || url.password) {
          ctx.addIssue({ code: 'custom', message: `${name}: '${item}' is not an origin: expected http(s)://host[:port], e.g. http://127.0.0.1:9000 (comma-separated)` });
          return z.NEVER;
        }
        out.push(url.origin);
      }
      return Object.freeze(out);
    });

/** The audit TTL: the stored times end in 2106, so at most 30 years. */
const retentionDays = (name: string) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw.trim() === '') return undefined;
      const days = Number(raw);
      if (!/^\d+$/.test(raw.trim()) || days < 1 || days > 10_950) {
        ctx.addIssue({ code: 'custom', message: `${name} '${raw}' must be a whole number of days from 1 to 10950 (30 years: the stored times end in 2106)` });
        return z.NEVER;
      }
      return days;
    });

/** The longest allow cache the enforcer takes (the plane's MAX_INCIDENT_CACHE_TTL_S). */
const MAX_CACHE_TTL_S = 3600;

const AGENT = ['agent'] as const;
const SERVER = ['server'] as const;
const SERVER_CLI = ['server', 'cli'] as const;
const ALL = ['agent', 'server', 'cli', 'tool'] as const;

const v = <S extends z.ZodType<unknown, string | undefined>>(read: readonly EnvSide[], schema: S, description: string, dflt = '', isSecret = false) => ({
  read,
  schema,
  description,
  default: dflt,
  ...(isSecret ? { secret: true as const } : {}),
});

/** The variables, in the order the README lists them. */
export const ENV_VARS = {
  // the agent's identity (custody/register, the manual API)
  [ENV.SPONSOR_ID]: v(AGENT, text(), 'The human sponsor the agent acts for; without one every tool call is refused.'),
  [ENV.AGENT_INSTANCE_ID]: v(AGENT, text(), 'This agent process; a fresh UUID when unset.', 'a UUID'),
  [ENV.PARENT_AGENT_ID]: v(AGENT, text(), 'The agent that started this one (set for sub-agents).'),
  [ENV.ROLE]: v(AGENT, text(), "The agent's role, as the policy names it (trusted only in the loopback open mode)."),
  [ENV.AGENT_NAME]: v(AGENT, text(), 'A readable name, shown in the audit trail and used as service.name.'),
  [ENV.AGENT_CREDENTIAL]: v(['agent', 'cli'], text(), "A registered agent's credential: sponsor and role then come from its registration (`custody token issue` sends it too).", '', true),
  [ENV.DELEGATION_TOKEN]: v(AGENT, text(), "A sub-agent's delegation token from its parent, exchanged for per-tool tokens.", '', true),
  [ENV.DELEGATION_UNAVAILABLE]: v(AGENT, text(), 'Set by a parent that could not obtain a delegation token for this sub-agent (why): its gated calls fail closed instead of acting on a token of its own.'),
  [ENV.TOOL_MAP]: v(AGENT, text(), 'Tool name → {tool, action} table: inline JSON or a path to a JSON/YAML file.', "the plane's tool_map"),
  [ENV.DELEGATE_TOOLS]: v(AGENT, text(), 'Tools a root agent delegates to its sub-agents (comma-separated).', 'every tool it may call'),
  [ENV.PROPAGATE_REGISTER]: v(AGENT, looseFlag(), '`0`/`false`: child node processes are not started with custody/register preloaded.', 'on'),
  [ENV.TOOL_ORIGINS]: v(AGENT, origins(ENV.TOOL_ORIGINS), "Origins (comma-separated, e.g. `http://127.0.0.1:9000`) of the tool APIs and MCP servers that get a tool call's baggage and token: `x-custody-token` on outgoing HTTP, the delegation token in MCP `_meta` (stdio servers always get it); `traceparent` goes everywhere."),
  [ENV.CAPTURE_CONTENT]: v(AGENT, looseFlag(), 'Record tool arguments and results on the span, not only their hashes.', 'off'),
  // where custody is
  [ENV.URL]: v(ALL, text(), "Control API base URL (token service and policy plane unless set apart); the client commands' `--url`.", DEFAULTS.URL),
  [ENV.POLICY_URL]: v(ALL, text(), 'The policy plane, when not at CUSTODY_URL (also where a lone collector reads the rollout).', '$CUSTODY_URL'),
  [ENV.STATE_URL]: v(SERVER, text(), "A policy plane's replica mode: the plane that owns the rollout and single-use token claims (`custody policy-plane --state-url`).", 'none (this plane owns its state)'),
  [ENV.TOKEN_URL]: v(['agent', 'server', 'tool'], text(), 'The token service, when not at CUSTODY_URL (also where the policy plane and the collector fetch its JWKS).', '$CUSTODY_URL'),
  // the enforcer
  [ENV.POLICY_TIMEOUT_MS]: v(AGENT, number(ENV.POLICY_TIMEOUT_MS, 1, 60_000), 'How long a tool call waits for a decision (token and plane) before it is refused.', String(DEFAULTS.POLICY_TIMEOUT_MS)),
  [ENV.DECISION_CACHE_TTL_S]: v(AGENT, number(ENV.DECISION_CACHE_TTL_S, 0, MAX_CACHE_TTL_S), 'Seconds an allow is reused; denies and errors never are.', String(DEFAULTS.DECISION_CACHE_TTL_S)),
  [ENV.INCIDENT_CACHE_TTL_S]: v(AGENT, number(ENV.INCIDENT_CACHE_TTL_S, 1, MAX_CACHE_TTL_S), 'Allow-cache seconds while the plane is in incident mode.', "the plane's"),
  // W3C context handed to child processes
  [ENV.TRACEPARENT]: v(AGENT, text(), 'W3C trace context a parent hands its child process (the OTel environment-carrier convention).'),
  [ENV.TRACESTATE]: v(AGENT, text(), 'W3C trace state handed with TRACEPARENT.'),
  [ENV.BAGGAGE]: v(AGENT, text(), 'W3C baggage handed to a child process (sponsor, instance, parent).'),
  // credentials of the servers and the client commands
  [ENV.ADMIN_TOKEN]: v(SERVER_CLI, credential(), 'The admin credential (registration, keys, offboarding, the rollout); the client commands send it. `custody up` on loopback generates one.', '<data-dir>/admin-token on loopback', true),
  [ENV.ROLLOUT_TOKEN]: v(SERVER_CLI, credential(), 'Moves the rollout only: what the rollback job, Argo Rollouts or Flagger hold. `custody up` on loopback generates one.', '<data-dir>/rollout-token on loopback', true),
  [ENV.AUDIT_READER_TOKEN]: v(SERVER_CLI, credential(), 'Reads the audit API only; the client commands send it for audit reads.', '', true),
  [ENV.SERVICE_TOKEN]: v(SERVER, credential(), "A role in another process writing the services' own records to the collector; no agent holds it.", '', true),
  [ENV.STATE_TOKEN]: v(SERVER, credential(), 'Policy-plane replicas claim single-use tokens at the plane that owns the state with it (both sides set it).', '$CUSTODY_SERVICE_TOKEN', true),
  [ENV.APPROVER_TOKEN]: v(['cli'], credential(), "An approver's own credential: `custody approvals` lists, approves and denies with it (its SHA-256 is in the policy's approvals.people).", '', true),
  [ENV.APPROVAL_WEBHOOK_URL]: v(SERVER, text(), 'Each new approval request is POSTed here as JSON (overrides the policy\'s approvals.webhook).', "the policy's approvals.webhook"),
  [ENV.INGEST_TOKEN]: v(SERVER, credential(), 'A gateway (upstream OpenTelemetry Collector) forwarding agents\' spans to /v1/traces.', '', true),
  // the servers
  [ENV.REPORT_QUEUE_MAX]: v(SERVER, positiveInt(ENV.REPORT_QUEUE_MAX), "Records a server role holds until the collector acknowledges them; a policy plane whose queue is full answers 503 rather than decide unrecorded.", '20000'),
  [ENV.INGEST_MAX_BODY_BYTES]: v(SERVER, positiveInt(ENV.INGEST_MAX_BODY_BYTES), 'Largest OTLP request body accepted, decompressed, in bytes.', String(16 * 1024 * 1024)),
  [ENV.INGEST_MAX_QUEUE_ROWS]: v(SERVER, positiveInt(ENV.INGEST_MAX_QUEUE_ROWS), 'Rows waiting for storage beyond which ingest answers 429.', '200000'),
  [ENV.CLICKHOUSE_URL]: v(SERVER_CLI, text(), 'A ClickHouse server instead of the embedded chDB store (`--clickhouse-url`).', 'embedded chDB', true),
  [ENV.CLICKHOUSE_CLUSTER]: v(SERVER, text(), 'ClickHouse cluster for ON CLUSTER DDL and Replicated tables (`--clickhouse-cluster`).'),
  [ENV.AUDIT_RETENTION_DAYS]: v(SERVER, retentionDays(ENV.AUDIT_RETENTION_DAYS), 'Audit TTL in days (set by the first migration).', String(DEFAULTS.AUDIT_RETENTION_DAYS)),
  [ENV.TOKEN_SIGNING_KEY]: v(SERVER, nonBlank(), "The token service's private signing key (PKCS8 PEM or JWK JSON), when not in a key file (the token config's `signing.key_env` names it).", 'a key generated in memory or the key file', true),
  [ENV.POLICY_SIGNING_KEY]: v(SERVER, nonBlank(), "The policy plane's decision-receipt signing key (PKCS8 PEM or JWK JSON).", 'a key generated into the data dir', true),
  [ENV.TOKEN_ISSUER]: v(['server', 'tool'], orUnset(), 'The issuer the policy plane, the collector and custody/guard expect in tokens.', "the token config's (custody/guard: agent-token-svc)"),
  [ENV.LOG_LEVEL]: v(SERVER, text(), 'Server log level (pino).', 'info'),
  [ENV.ENVIRONMENT]: v(
    ['agent', 'server'],
    z
      .string()
      .optional()
      .transform((raw, ctx) => {
        const v = raw?.trim().toLowerCase();
        if (!v) return undefined;
        if (v === 'staging' || v === 'production') return v;
        ctx.addIssue({ code: 'custom', message: `${ENV.ENVIRONMENT} must be 'staging' or 'production', got '${raw}'` });
        return z.NEVER;
      }),
    "`staging`: a tool call without a sponsor fails with `ERR_SPONSOR_MISSING` everywhere, shadow (baseline) calls included, and the token service requires a sponsor whatever its config (the policy's `mode: staging` does the same).",
    'production',
  ),
  [ENV.DEMO]: v(SERVER, text(), '`off`: `custody up` does not play the seed scenario (`--no-demo`).', 'on'),
  // the rollback job inside `custody up`
  [ENV.ROLLBACK_WATCH]: v(SERVER, onOff(ENV.ROLLBACK_WATCH), 'Run the rollback job inside `custody up`.', 'on'),
  [ENV.ROLLBACK_INTERVAL]: v(SERVER, duration(ENV.ROLLBACK_INTERVAL, { blankIsUnset: true }), 'How often the rollback job looks.', '60s'),
  [ENV.ROLLBACK_WINDOW]: v(SERVER, duration(ENV.ROLLBACK_WINDOW, { blankIsUnset: true }), 'The window the rules are read over.', '15m'),
  [ENV.ROLLBACK_HEALTHY_PERIOD]: v(SERVER, duration(ENV.ROLLBACK_HEALTHY_PERIOD, { blankIsUnset: true }), 'How long a stage stays healthy before it may advance.', '24h'),
  [ENV.ROLLBACK_MIN_SAMPLE]: v(SERVER, wholeCalls(ENV.ROLLBACK_MIN_SAMPLE), 'Fewer canary calls than this: hold, never advance.', '100'),
  [ENV.ROLLBACK_AUTO_ADVANCE]: v(SERVER, onOff(ENV.ROLLBACK_AUTO_ADVANCE), 'Advance earned stages without `custody rollback approve` (rolling back never waits).', 'off'),
  [ENV.ROLLBACK_MANUAL_GATES]: v(SERVER, onOff(ENV.ROLLBACK_MANUAL_GATES), 'The older name of the opposite switch: `off` advances alone.', 'on'),
  [ENV.ROLLBACK_DRY_RUN]: v(SERVER, onOff(ENV.ROLLBACK_DRY_RUN), 'Say what the job would do, change nothing.', 'off'),
  // the audit checkpointer inside the collector
  [ENV.CHECKPOINTER]: v(SERVER, offSwitch(), '`off`: no checkpointer here (run exactly one per store).', 'on'),
  [ENV.CHECKPOINT_PERIOD]: v(SERVER_CLI, duration(`$${ENV.CHECKPOINT_PERIOD}`), 'Checkpoint period (`custody audit verify` reads it too).', '60s'),
  [ENV.CHECKPOINT_LAG]: v(SERVER_CLI, duration(`$${ENV.CHECKPOINT_LAG}`, { zero: true }), 'How long after a period ends it is sealed, so late rows land first.', '15s'),
  [ENV.CHECKPOINTS_DIR]: v(SERVER_CLI, text(), 'The append-only checkpoint directory.', '<data-dir>/checkpoints'),
  [ENV.AUDIT_SIGNING_KEY]: v(SERVER, nonBlank(), 'The audit signing key (PKCS8 PEM or JWK JSON).', 'a key generated into <data-dir>/evidence/keys', true),
  // OpenTelemetry's own
  OTEL_EXPORTER_OTLP_ENDPOINT: v(['agent', 'server'], text(), 'Where spans go (agents) and where the servers report their records.', DEFAULTS.OTLP_ENDPOINT),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: v(AGENT, text(), 'The traces URL, used as is.', '$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces'),
  OTEL_EXPORTER_OTLP_PROTOCOL: v(AGENT, text(), '`http/protobuf` or `http/json` (anything else is exported as http/protobuf).', 'http/protobuf'),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: v(AGENT, text(), 'The same, for traces only.', '$OTEL_EXPORTER_OTLP_PROTOCOL'),
  OTEL_EXPORTER_OTLP_HEADERS: v(AGENT, text(), 'Export headers; an `authorization` here replaces the agent credential.', '', true),
  OTEL_EXPORTER_OTLP_TRACES_HEADERS: v(AGENT, text(), 'The same, for traces only.', '', true),
  OTEL_EXPORTER_OTLP_TIMEOUT: v(AGENT, text(), 'OTLP export timeout in ms, as the SDK reads it.', '10000'),
  OTEL_SERVICE_NAME: v(AGENT, text(), "The agent's service.name.", '$CUSTODY_AGENT_NAME or custody-agent'),
  OTEL_RESOURCE_ATTRIBUTES: v(AGENT, text(), 'Extra resource attributes (a service.name here counts as set).'),
  OTEL_SDK_DISABLED: v(AGENT, text(), '`true`: no spans are exported; tool calls are still enforced.', 'false'),
  OTEL_LOG_LEVEL: v(AGENT, text(), "The OTel diagnostic log level; unset, custody logs the SDK's warnings.", 'warn'),
  OTEL_PROPAGATORS: v(AGENT, text(), 'Propagators, as the SDK reads them.', 'tracecontext,baggage'),
  OTEL_METRICS_EXPORTER: v(AGENT, text(), 'Metrics exporter, as the SDK reads it.', 'none'),
  OTEL_LOGS_EXPORTER: v(AGENT, text(), 'Logs exporter, as the SDK reads it.', 'none'),
  OTEL_TRACES_SAMPLER: v(AGENT, text(), "Sampler, as the SDK names them (tool-call spans are always kept: they are audit records).", 'parentbased_always_on'),
  OTEL_TRACES_SAMPLER_ARG: v(AGENT, text(), 'The ratio for the ratio samplers (0–1; anything else is 1).', '1'),
  OTEL_BSP_SCHEDULE_DELAY: v(AGENT, text(), 'Batch span processor delay, ms (a bad value takes the default).', '1000'),
  OTEL_BSP_EXPORT_TIMEOUT: v(AGENT, text(), 'Batch span processor export timeout, ms.', '30000'),
  OTEL_BSP_MAX_QUEUE_SIZE: v(AGENT, text(), 'Batch span processor queue size.', '2048'),
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: v(AGENT, text(), 'Batch span processor batch size.', '512'),
} as const satisfies Record<string, EnvVar>;

export type EnvName = keyof typeof ENV_VARS;

/** The one schema over every variable. */
export const envSchema = z.object(
  Object.fromEntries(Object.entries(ENV_VARS).map(([name, spec]) => [name, spec.schema])) as {
    [K in EnvName]: (typeof ENV_VARS)[K]['schema'];
  },
);

/** The parsed environment: each variable's value, or undefined when unset (or not asked for). */
export type CustodyEnv = Readonly<z.output<typeof envSchema>>;

const NAMES = Object.keys(ENV_VARS) as EnvName[];
const readBy = (side: EnvSide): readonly EnvName[] => Object.freeze(NAMES.filter((n) => (ENV_VARS[n].read as readonly EnvSide[]).includes(side)));

/** The variables each kind of process reads. */
export const AGENT_ENV = readBy('agent');
export const SERVER_ENV = readBy('server');
export const CLI_ENV = readBy('cli');
export const TOOL_ENV = readBy('tool');

/**
 * Parses the variables `names` (default all) from `source`, once, frozen. The first bad value is a
 * ConfigError naming the variable; the ones not asked for are left undefined and unchecked.
 */
export function readEnv(source: EnvSource, names: readonly EnvName[] = NAMES): CustodyEnv {
  const shape: Record<string, z.ZodType> = {};
  const input: Record<string, string | undefined> = {};
  for (const name of names) {
    shape[name] = ENV_VARS[name].schema;
    input[name] = source[name];
  }
  const r = z.object(shape).safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const name = String(issue.path[0]) as EnvName;
    const message = issue.code === 'custom' ? issue.message : `${name}: ${issue.message}`;
    throw new ConfigError((ENV_VARS[name] as EnvVar | undefined)?.secret ? `${name} is not valid` : message);
  }
  return Object.freeze(r.data) as CustodyEnv;
}

/** The README's table of environment variables, generated from ENV_VARS (a test keeps the two equal). */
export function envTableMarkdown(): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const rows = Object.entries(ENV_VARS).map(
    ([name, spec]: [string, EnvVar]) =>
      `| \`${name}\` | ${spec.read.join(', ')} | ${spec.default ? cell(spec.default) : '—'} | ${cell(spec.description)}${spec.secret ? ' Secret: never logged.' : ''} |`,
  );
  return ['| Variable | Read by | Default | What it does |', '| --- | --- | --- | --- |', ...rows].join('\n');
}
