// Every public name custody emits or reads: span attributes, baggage keys, span names,
// environment variables, table and metric names: custody's public surface, one place each (the
// README's "Environment variables" table is checked against common/env.ts).

export const ATTR = {
  // GenAI semantic conventions
  GEN_AI_OPERATION_NAME: 'gen_ai.operation.name',
  GEN_AI_TOOL_NAME: 'gen_ai.tool.name',
  GEN_AI_TOOL_CALL_ID: 'gen_ai.tool.call.id',
  GEN_AI_AGENT_ID: 'gen_ai.agent.id',
  GEN_AI_AGENT_NAME: 'gen_ai.agent.name',
  ERROR_TYPE: 'error.type',
  SERVICE_NAME: 'service.name',

  // custody
  SPONSOR_ID: 'custody.sponsor_id',
  AGENT_INSTANCE_ID: 'custody.agent_instance_id',
  PARENT_AGENT_ID: 'custody.parent_agent_id',
  ROLE: 'custody.role',
  TOOL_ID: 'custody.tool_id',
  ACTION: 'custody.action',
  PURPOSE: 'custody.purpose',
  REQUEST_HASH: 'custody.request_hash',
  RESPONSE_HASH: 'custody.response_hash',
  POLICY_DECISION_ID: 'custody.policy_decision_id',
  POLICY_DECISION: 'custody.policy.decision',
  POLICY_LATENCY_MS: 'custody.policy.latency_ms',
  POLICY_CACHED: 'custody.policy.cached',
  POLICY_RULE_ID: 'custody.policy.rule_id',
  POLICY_REASON: 'custody.policy.reason',
  ENFORCED: 'custody.enforced',
  ROLLOUT_COHORT: 'custody.rollout.cohort',
  TOKEN_JTI: 'custody.token.jti',
  AUDIT_SEQ: 'custody.audit.seq',
  AUDIT_PREV_HASH: 'custody.audit.prev_hash',
  /** The call is sampled out of the audit (common/audit-sample.ts): stored as a counted stub. */
  AUDIT_SAMPLED: 'custody.audit.sampled',
  /** The audit sampling rate the plane granted the call's decision (0 < rate < 1). */
  AUDIT_SAMPLE_RATE: 'custody.audit.sample_rate',
  REQUEST_CONTENT: 'custody.request',
  RESPONSE_CONTENT: 'custody.response',

  // token service events
  TOKEN_RESULT: 'custody.token.result',
  TOKEN_KIND: 'custody.token.kind',
  TOKEN_REFUSAL_CODE: 'custody.token.refusal_code',
  TOKEN_TTL_SECONDS: 'custody.token.ttl_seconds',
  TOKEN_EXPIRES_AT: 'custody.token.expires_at',

  // rollout events
  ROLLOUT_FROM_PERCENT: 'custody.rollout.from_percent',
  ROLLOUT_TO_PERCENT: 'custody.rollout.to_percent',
  ROLLOUT_REASON: 'custody.rollout.reason',
  ROLLOUT_ACTOR: 'custody.rollout.actor',
  /** The plane's signed record of the rollout in force (compact JWS). */
  ROLLOUT_RECEIPT: 'custody.rollout.receipt',

  // policy changes (each load or refused reload of the policy file)
  POLICY_HASH: 'custody.policy.hash',
  POLICY_SOURCE: 'custody.policy.source',
  /** `loaded` or `refused`. */
  POLICY_CHANGE_RESULT: 'custody.policy.change.result',
  POLICY_CHANGE_ERROR: 'custody.policy.change.error',
  /** The plane's signed record of the change (compact JWS). */
  POLICY_CHANGE_RECEIPT: 'custody.policy.change.receipt',

  // policy plane / enforcer
  POLICY_VERSION: 'custody.policy.version',
  TOOL_RISK: 'custody.tool.risk',
  POLICY_INCIDENT_MODE: 'custody.policy.incident_mode',
  POLICY_CACHE_TTL_S: 'custody.policy.cache_ttl_s',

  /** The registered agent a token was issued under (token events). */
  AGENT_ID: 'custody.agent_id',
  /** Set by the collector on every stored span: who could have written it (see TRUST). */
  INGEST_TRUST: 'custody.ingest.trust',
  /** The plane's signed receipt of the decision (compact JWS), on the decision and on the call. */
  POLICY_RECEIPT: 'custody.policy.receipt',
  // human approval (require_approval rules) and disclosed arguments, on the decision and on the call
  APPROVAL_ID: 'custody.approval.id',
  /** pending, approved, denied or expired. */
  APPROVAL_STATUS: 'custody.approval.status',
  /** The person who approved or denied. */
  APPROVAL_APPROVER: 'custody.approval.approver',
  /** `credential` (the approver's own) or `admin` (the admin credential acting for them). */
  APPROVAL_VIA: 'custody.approval.via',
  APPROVAL_REASON: 'custody.approval.reason',
  /** When the approval was answered (or expired), ISO 8601. */
  APPROVAL_DECIDED_AT: 'custody.approval.decided_at',
  /** How long the call waited for the human, ms (not part of custody.policy.latency_ms). */
  APPROVAL_WAIT_MS: 'custody.approval.wait_ms',
  /** The argument fields sent to the plane in clear (the tool's disclose_args), comma-separated. */
  ARGS_DISCLOSED: 'custody.args.disclosed',
  /** custody/guard: how the tool API checked the call (`offline` or `plane`). */
  GUARD_CHECK: 'custody.guard.check',
  HTTP_REQUEST_METHOD: 'http.request.method',
  HTTP_ROUTE: 'http.route',
  URL_PATH: 'url.path',
  HTTP_RESPONSE_STATUS_CODE: 'http.response.status_code',
} as const;

/**
 * Who could have written a stored record: `service` a custody role (in process, or with the
 * service credential); `verified` an agent whose credential proves the identity on the span;
 * `gateway` a gateway credential's forwarded spans; `unverified` no credential (open mode) or an
 * identity the credential does not prove.
 */
export const TRUST = { SERVICE: 'service', VERIFIED: 'verified', GATEWAY: 'gateway', UNVERIFIED: 'unverified' } as const;
export type Trust = (typeof TRUST)[keyof typeof TRUST];

export const BAGGAGE = {
  SPONSOR_ID: 'custody.sponsor_id',
  AGENT_INSTANCE_ID: 'custody.agent_instance_id',
  PARENT_AGENT_ID: 'custody.parent_agent_id',
} as const;

/** Span names the collector classifies on. */
export const SPAN = {
  /** Tool-call spans are named `execute_tool {gen_ai.tool.name}` (the name the agent called) and carry gen_ai.operation.name=execute_tool. */
  TOOL_CALL_PREFIX: 'execute_tool',
  TOOL_CALL_OPERATION: 'execute_tool',
  /** One per policy decision (the decision log). */
  POLICY_DECISION: 'custody.policy.decision',
  /** One per token issuance or refusal. */
  TOKEN_ISSUE: 'custody.token.issue',
  /** One per rollout percent change. */
  ROLLOUT_CHANGE: 'custody.rollout.change',
  /** One per policy load or refused reload. */
  POLICY_CHANGE: 'custody.policy.change',
  /** custody/guard: a tool API's side of a call, `custody.guard {tool}` (never `execute_tool`: the agent's span is the audit row). */
  GUARD: 'custody.guard',
} as const;

/** Custody's entries in an MCP request's `params._meta` and in HTTP headers (remote sub-agents). */
export const PROPAGATION = {
  TRACEPARENT: 'traceparent',
  TRACESTATE: 'tracestate',
  BAGGAGE: 'baggage',
  /** The caller's delegation token: the callee exchanges it for its own per-tool tokens. */
  MCP_DELEGATION_TOKEN: 'dev.custody/delegation_token',
  HTTP_DELEGATION_TOKEN: 'x-custody-delegation-token',
  /** The call's per-tool token, on outgoing HTTP to the tool origins (CUSTODY_TOOL_ORIGINS); custody/guard reads it. */
  HTTP_TOKEN: 'x-custody-token',
  /** The same in an MCP request's `_meta` (trusted servers only); mcpToolGuard reads it. */
  MCP_CALL_TOKEN: 'dev.custody/token',
} as const;

export const ENV = {
  SPONSOR_ID: 'CUSTODY_SPONSOR_ID',
  AGENT_INSTANCE_ID: 'CUSTODY_AGENT_INSTANCE_ID',
  PARENT_AGENT_ID: 'CUSTODY_PARENT_AGENT_ID',
  ROLE: 'CUSTODY_ROLE',
  AGENT_CREDENTIAL: 'CUSTODY_AGENT_CREDENTIAL',
  DELEGATION_TOKEN: 'CUSTODY_DELEGATION_TOKEN',
  DELEGATION_UNAVAILABLE: 'CUSTODY_DELEGATION_UNAVAILABLE',
  AGENT_NAME: 'CUSTODY_AGENT_NAME',
  URL: 'CUSTODY_URL',
  POLICY_TIMEOUT_MS: 'CUSTODY_POLICY_TIMEOUT_MS',
  DECISION_CACHE_TTL_S: 'CUSTODY_DECISION_CACHE_TTL_S',
  CAPTURE_CONTENT: 'CUSTODY_CAPTURE_CONTENT',
  ADMIN_TOKEN: 'CUSTODY_ADMIN_TOKEN',
  /** Moves the rollout only (the rollback job, Argo Rollouts, Flagger). */
  ROLLOUT_TOKEN: 'CUSTODY_ROLLOUT_TOKEN',
  /** Reads the audit API only. */
  AUDIT_READER_TOKEN: 'CUSTODY_AUDIT_READER_TOKEN',
  /** Roles in other processes writing their own records to the collector; no agent holds it. */
  SERVICE_TOKEN: 'CUSTODY_SERVICE_TOKEN',
  STATE_TOKEN: 'CUSTODY_STATE_TOKEN',
  REPORT_QUEUE_MAX: 'CUSTODY_REPORT_QUEUE_MAX',
  /** A gateway (upstream OpenTelemetry Collector) forwarding agents' spans to /v1/traces. */
  INGEST_TOKEN: 'CUSTODY_INGEST_TOKEN',
  /** The token service's private signing key (PKCS8 PEM or JWK JSON), when not in a key file. */
  TOKEN_SIGNING_KEY: 'CUSTODY_TOKEN_SIGNING_KEY',
  CLICKHOUSE_URL: 'CLICKHOUSE_URL',
  /** ClickHouse cluster name: ON CLUSTER DDL and Replicated*MergeTree tables. */
  CLICKHOUSE_CLUSTER: 'CUSTODY_CLICKHOUSE_CLUSTER',
  /** Largest OTLP request body accepted, decompressed, in bytes (default 16 MiB). */
  INGEST_MAX_BODY_BYTES: 'CUSTODY_INGEST_MAX_BODY_BYTES',
  /** Rows waiting for storage beyond which ingest answers 429 (default 200000). */
  INGEST_MAX_QUEUE_ROWS: 'CUSTODY_INGEST_MAX_QUEUE_ROWS',
  LOG_LEVEL: 'CUSTODY_LOG_LEVEL',
  /** `staging`: a call without a sponsor is a validation error everywhere, shadow included. */
  ENVIRONMENT: 'CUSTODY_ENV',
  // agent side (custody/register)
  /** Tool-name → {tool, action} table: inline JSON or a path to a JSON/YAML file. */
  TOOL_MAP: 'CUSTODY_TOOL_MAP',
  /** Tools a root agent delegates to its sub-agents (comma-separated); default: every tool it may call. */
  DELEGATE_TOOLS: 'CUSTODY_DELEGATE_TOOLS',
  /** `0`/`false` stops child node processes from being started with custody/register preloaded. */
  PROPAGATE_REGISTER: 'CUSTODY_PROPAGATE_REGISTER',
  /** Origins (comma-separated) that outgoing HTTP from a tool call sends baggage and the call's token to. */
  TOOL_ORIGINS: 'CUSTODY_TOOL_ORIGINS',
  /** W3C context handed to child processes (the OTel env-carrier convention). */
  TRACEPARENT: 'TRACEPARENT',
  TRACESTATE: 'TRACESTATE',
  BAGGAGE: 'BAGGAGE',
  // the rollback watch inside `custody up` (the standalone command takes flags)
  ROLLBACK_WATCH: 'CUSTODY_ROLLBACK_WATCH',
  // the audit checkpointer inside the collector (evidence)
  /** `off` disables the checkpointer (run exactly one per store). */
  CHECKPOINTER: 'CUSTODY_CHECKPOINTER',
  /** Checkpoint period (duration, default 60s). */
  CHECKPOINT_PERIOD: 'CUSTODY_CHECKPOINT_PERIOD',
  /** How long after a period ends it is sealed, so rows still being written land first (default 15s). */
  CHECKPOINT_LAG: 'CUSTODY_CHECKPOINT_LAG',
  /** The append-only checkpoint directory (default <data-dir>/checkpoints). */
  CHECKPOINTS_DIR: 'CUSTODY_CHECKPOINTS_DIR',
  /** The audit signing key (PKCS8 PEM or JWK JSON); default a key generated once into <data-dir>/evidence/keys. */
  AUDIT_SIGNING_KEY: 'CUSTODY_AUDIT_SIGNING_KEY',
  POLICY_SIGNING_KEY: 'CUSTODY_POLICY_SIGNING_KEY',
  ROLLBACK_INTERVAL: 'CUSTODY_ROLLBACK_INTERVAL',
  DEMO: 'CUSTODY_DEMO',
  AUDIT_RETENTION_DAYS: 'CUSTODY_AUDIT_RETENTION_DAYS',
  ROLLBACK_WINDOW: 'CUSTODY_ROLLBACK_WINDOW',
  ROLLBACK_HEALTHY_PERIOD: 'CUSTODY_ROLLBACK_HEALTHY_PERIOD',
  ROLLBACK_MIN_SAMPLE: 'CUSTODY_ROLLBACK_MIN_SAMPLE',
  ROLLBACK_MANUAL_GATES: 'CUSTODY_ROLLBACK_MANUAL_GATES',
  /** on: the rollback watch advances earned stages by itself (default off: each advance needs `custody rollback approve`). */
  ROLLBACK_AUTO_ADVANCE: 'CUSTODY_ROLLBACK_AUTO_ADVANCE',
  ROLLBACK_DRY_RUN: 'CUSTODY_ROLLBACK_DRY_RUN',
  // policy plane / enforcer
  POLICY_URL: 'CUSTODY_POLICY_URL',
  STATE_URL: 'CUSTODY_STATE_URL',
  TOKEN_URL: 'CUSTODY_TOKEN_URL',
  TOKEN_ISSUER: 'CUSTODY_TOKEN_ISSUER',
  INCIDENT_CACHE_TTL_S: 'CUSTODY_INCIDENT_CACHE_TTL_S',
  RULE_MIN_SAMPLE: 'CUSTODY_RULE_MIN_SAMPLE',
  // human approval
  /** Each new approval request is POSTed here (overrides the policy's approvals.webhook). */
  APPROVAL_WEBHOOK_URL: 'CUSTODY_APPROVAL_WEBHOOK_URL',
  /** An approver's own credential, sent by `custody approvals`. */
  APPROVER_TOKEN: 'CUSTODY_APPROVER_TOKEN',
} as const;

export const DEFAULTS = {
  HOST: '127.0.0.1',
  CONTROL_PORT: 8080,
  OTLP_PORT: 4318,
  OTLP_GRPC_PORT: 4317,
  URL: 'http://127.0.0.1:8080',
  OTLP_ENDPOINT: 'http://127.0.0.1:4318',
  DATA_DIR: './.custody',
  POLICY_TIMEOUT_MS: 200,
  DECISION_CACHE_TTL_S: 30,
  TOKEN_TTL_S: 300,
  TOKEN_MAX_TTL_S: 900,
  AUDIT_RETENTION_DAYS: 90,
  RULE_WINDOW_S: 15 * 60,
  /** Fewer tool calls than this in the window: the rules answer insufficient_data. */
  RULE_MIN_SAMPLE: 100,
  ROLLOUT_STAGES: [10, 30, 60, 100] as readonly number[],
} as const;

/** Rollback and alert thresholds: a rule breaches when value > threshold (strictly). */
export const THRESHOLDS = {
  missing_sponsor_ratio: 0.001,
  policy_error_rate: 0.01,
  policy_latency_p95_ms: 300,
  token_issue_failure_ratio: 0.005,
  alert_policy_latency_p95_ms: 200,
} as const;

export const RULES = ['missing_sponsor_ratio', 'policy_error_rate', 'policy_latency_p95_ms'] as const;
export type RuleName = (typeof RULES)[number];

export const COHORT = { CANARY: 'canary', BASELINE: 'baseline' } as const;
export type Cohort = (typeof COHORT)[keyof typeof COHORT];
/** Tool calls from agents custody does not manage (no custody cohort): a cohort of their own in the rules. */
export const UNMANAGED_COHORT = 'unmanaged';

export const DECISION = { ALLOW: 'allow', DENY: 'deny', ERROR: 'error', PENDING: 'pending' } as const;
export type DecisionResult = (typeof DECISION)[keyof typeof DECISION];

/** error.type of a tool call refused by policy (denied) or for want of a decision (unavailable): the tool never ran. */
export const POLICY_ERROR_TYPE = { DENIED: 'policy_denied', UNAVAILABLE: 'policy_unavailable' } as const;

export const DATABASE = 'custody';
export const TABLE = {
  OTEL_TRACES: 'otel_traces',
  AUDIT_EVENTS: 'audit_events',
  POLICY_DECISIONS: 'policy_decisions',
  TOKEN_EVENTS: 'token_events',
  ROLLOUT_EVENTS: 'rollout_events',
  /** Each policy load or refused reload, signed by the plane. */
  POLICY_EVENTS: 'policy_events',
  AUDIT_ROLLUP_1M: 'audit_rollup_1m',
  TOKEN_ROLLUP_1M: 'token_rollup_1m',
  /** The plane's decision log per minute: decisions, errors, server-side latency histogram. */
  DECISION_ROLLUP_1M: 'decision_rollup_1m',
  /** Agent-reported failures no plane decision backs (timeout, unreachable, garbage), per instance. */
  AGENT_FAILURE_ROLLUP_1M: 'agent_failure_rollup_1m',
  MIGRATIONS: 'schema_migrations',
  /** Signed Merkle checkpoints over the evidence tables, one per period. */
  AUDIT_CHECKPOINTS: 'audit_checkpoints',
  /** Each checkpoint's leaf hashes with the row each one stands for, to name altered rows. */
  AUDIT_CHECKPOINT_LEAVES: 'audit_checkpoint_leaves',
} as const;

export const METRIC = {
  MISSING_SPONSOR_RATIO: 'custody_missing_sponsor_ratio',
  POLICY_ERROR_RATE: 'custody_policy_error_rate',
  POLICY_LATENCY_P95_SECONDS: 'custody_policy_latency_p95_seconds',
  TOKEN_ISSUE_FAILURE_RATIO: 'custody_token_issue_failure_ratio',
  ROLLBACK_RULE_BREACHED: 'custody_rollback_rule_breached',
  ROLLOUT_PERCENT: 'custody_rollout_percent',
  /** A tier-scoped canary's scope: 1 per attribute, labelled with its name and values ('*' / '*' when unscoped). */
  ROLLOUT_SCOPE_INFO: 'custody_rollout_scope_info',
  TOOL_CALLS_TOTAL: 'custody_tool_calls_total',
  SPANS_INGESTED_TOTAL: 'custody_spans_ingested_total',
  SPANS_REJECTED_TOTAL: 'custody_spans_rejected_total',
  SPANS_UNVERIFIED_TOTAL: 'custody_spans_unverified_total',
  TOOL_CALLS_BY_CONVENTION_TOTAL: 'custody_tool_calls_by_convention_total',
  TOOL_SPANS_UNMAPPED_TOTAL: 'custody_tool_spans_unmapped_total',
  OTLP_SIGNALS_DROPPED_TOTAL: 'custody_otlp_signals_dropped_total',
  AUDIT_SAMPLED_OUT_TOTAL: 'custody_audit_sampled_out_total',
  AUDIT_SAMPLE_REFUSED_TOTAL: 'custody_audit_sample_refused_total',
  INGEST_REQUESTS_TOTAL: 'custody_ingest_requests_total',
  INGEST_GRPC_REQUESTS_TOTAL: 'custody_ingest_grpc_requests_total',
  INGEST_QUEUE_ROWS: 'custody_ingest_queue_rows',
  INGEST_INSERT_DURATION_SECONDS: 'custody_ingest_insert_duration_seconds',
  INGEST_INSERT_ROWS: 'custody_ingest_insert_rows',
  TOKENS_ISSUED_TOTAL: 'custody_tokens_issued_total',
  POLICY_DECISION_DURATION_SECONDS: 'custody_policy_decision_duration_seconds',
  POLICY_RECEIPT_BATCH_SIZE: 'custody_policy_receipt_batch_size',
  AUDIT_SCHEMA_VIOLATIONS_TOTAL: 'custody_audit_schema_violations_total',
  ROLLBACK_WATCH_ERRORS_TOTAL: 'custody_rollback_watch_errors_total',
  ROLLBACK_WATCH_CHANGES_TOTAL: 'custody_rollback_watch_changes_total',
  ROLLBACK_WATCH_LAST_SUCCESS: 'custody_rollback_watch_last_success_timestamp_seconds',
  ROLLBACK_WATCH_AWAITING_APPROVAL: 'custody_rollback_watch_awaiting_approval',
  POLICY_DECISIONS_TOTAL: 'custody_policy_decisions_total',
  APPROVALS_PENDING: 'custody_approvals_pending',
  APPROVALS_TOTAL: 'custody_approvals_total',
  APPROVAL_WEBHOOK_FAILURES_TOTAL: 'custody_approval_webhook_failures_total',
  POLICY_RELOAD_ERRORS_TOTAL: 'custody_policy_reload_errors_total',
  POLICY_VERSION: 'custody_policy_version',
  AUDIT_CHECKPOINTS_TOTAL: 'custody_audit_checkpoints_total',
  AUDIT_CHECKPOINT_ERRORS_TOTAL: 'custody_audit_checkpoint_errors_total',
  AUDIT_CHECKPOINT_DURATION_SECONDS: 'custody_audit_checkpoint_duration_seconds',
  AUDIT_CHECKPOINT_ROWS_TOTAL: 'custody_audit_checkpoint_rows_total',
  AUDIT_LATE_ROWS_TOTAL: 'custody_audit_late_rows_total',
  AUDIT_LAST_CHECKPOINT: 'custody_audit_last_checkpoint_timestamp_seconds',
} as const;
