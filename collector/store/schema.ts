import { DATABASE, DEFAULTS, TABLE, TRUST } from '../../common/names';

/**
 * Which rows the rollback rules may count, as SQL over the source table's columns. Record
 * authorship (a service's own row vs an agent-reported one, verified vs unverified spans) is
 * decided at ingest; once ingest marks it, these two predicates are the one place the rules
 * filter on it (a new migration re-creates the two views below with them).
 */
export const RULE_ROWS = {
  /** policy_decisions rows that are the plane's own record. */
  decisions: '1',
  /** audit_events rows from an accepted agent source: never an unverified span (anyone who can reach an open OTLP port could write one). */
  agentReports: `trust != '${TRUST.UNVERIFIED}'`,
} as const;

/**
 * Latency histogram key for a latency in ms: whole ms (rounded up) to 1 s, 10 ms steps to 60 s,
 * 60001 above. `x > T` is exact for every whole-ms threshold up to 1 s, every 10 ms above.
 */
export function latencyBucketSql(ms: string): string {
  return `toUInt32(multiIf(${ms} <= 1000, ceil(greatest(${ms}, 0)), ${ms} <= 60000, ceil(${ms} / 10) * 10, 60001))`;
}

/**
 * The storage schema as versioned migrations. Every statement is idempotent (IF NOT EXISTS), so a
 * migration interrupted half-way is simply run again. On a cluster, `cluster` adds ON CLUSTER to
 * every statement and switches MergeTree engines to their Replicated form.
 */
export interface SchemaOptions {
  database?: string;
  /** Audit retention in days (default 90). */
  retentionDays?: number;
  /** ClickHouse cluster name for ON CLUSTER and Replicated*MergeTree engines. */
  cluster?: string;
  /** ZooKeeper/Keeper path prefix for replicated tables. */
  replicationPath?: string;
}

export interface Migration {
  version: number;
  name: string;
  statements: string[];
}

/** Inserts per table whose deduplication tokens a single server remembers. */
export const DEDUP_WINDOW = 100_000;

/** Every table ingest writes, directly or through a materialized view. */
export const DEDUP_TABLES: readonly string[] = [
  TABLE.OTEL_TRACES, 'otel_traces_trace_id_ts', TABLE.AUDIT_EVENTS, TABLE.POLICY_DECISIONS, TABLE.TOKEN_EVENTS,
  TABLE.ROLLOUT_EVENTS, TABLE.AUDIT_ROLLUP_1M, TABLE.TOKEN_ROLLUP_1M,
];

export function migrations(options: SchemaOptions = {}): Migration[] {
  const db = options.database ?? DATABASE;
  const days = options.retentionDays ?? 90;
  const onCluster = options.cluster ? ` ON CLUSTER '${options.cluster}'` : '';
  const engine = (kind: 'MergeTree' | 'AggregatingMergeTree' | 'ReplacingMergeTree', table: string, args = ''): string => {
    if (!options.cluster) return `${kind}(${args})`;
    const path = `${options.replicationPath ?? '/clickhouse/tables/{shard}'}/${db}/${table}`;
    return `Replicated${kind}('${path}', '{replica}'${args ? `, ${args}` : ''})`;
  };
  const t = (name: string) => `${db}.${name}`;

  return [
    {
      version: 1,
      name: 'otel_traces',
      statements: [
        `CREATE DATABASE IF NOT EXISTS ${db}${onCluster}`,
        // The OpenTelemetry Collector ClickHouse exporter's traces schema, so its readers work unchanged.
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.OTEL_TRACES)}${onCluster} (
          Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
          TraceId String CODEC(ZSTD(1)),
          SpanId String CODEC(ZSTD(1)),
          ParentSpanId String CODEC(ZSTD(1)),
          TraceState String CODEC(ZSTD(1)),
          SpanName LowCardinality(String) CODEC(ZSTD(1)),
          SpanKind LowCardinality(String) CODEC(ZSTD(1)),
          ServiceName LowCardinality(String) CODEC(ZSTD(1)),
          ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
          ScopeName String CODEC(ZSTD(1)),
          ScopeVersion String CODEC(ZSTD(1)),
          SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
          Duration UInt64 CODEC(ZSTD(1)),
          StatusCode LowCardinality(String) CODEC(ZSTD(1)),
          StatusMessage String CODEC(ZSTD(1)),
          Events Nested (
            Timestamp DateTime64(9),
            Name LowCardinality(String),
            Attributes Map(LowCardinality(String), String)
          ) CODEC(ZSTD(1)),
          Links Nested (
            TraceId String,
            SpanId String,
            TraceState String,
            Attributes Map(LowCardinality(String), String)
          ) CODEC(ZSTD(1)),
          INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
          INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
          INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
          INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
          INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
          INDEX idx_duration Duration TYPE minmax GRANULARITY 1
        ) ENGINE = ${engine('MergeTree', TABLE.OTEL_TRACES)}
        PARTITION BY toDate(Timestamp)
        ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
        TTL toDateTime(Timestamp) + toIntervalDay(${days})
        SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1`,
        `CREATE TABLE IF NOT EXISTS ${t('otel_traces_trace_id_ts')}${onCluster} (
          TraceId String CODEC(ZSTD(1)),
          Start DateTime CODEC(Delta, ZSTD(1)),
          End DateTime CODEC(Delta, ZSTD(1)),
          INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
        ) ENGINE = ${engine('MergeTree', 'otel_traces_trace_id_ts')}
        PARTITION BY toDate(Start)
        ORDER BY (TraceId, Start)
        TTL toDate(Start) + toIntervalDay(${days})
        SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1`,
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t('otel_traces_trace_id_ts_mv')}${onCluster}
        TO ${t('otel_traces_trace_id_ts')}
        AS SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End
        FROM ${t(TABLE.OTEL_TRACES)}
        WHERE TraceId != ''
        GROUP BY TraceId`,
      ],
    },
    {
      version: 2,
      name: 'audit_events',
      statements: [
        // One typed row per tool call. Everything rules and audit queries filter on is a column.
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.AUDIT_EVENTS)}${onCluster} (
          timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
          end_timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
          trace_id String CODEC(ZSTD(1)),
          span_id String CODEC(ZSTD(1)),
          parent_span_id String CODEC(ZSTD(1)),
          service_name LowCardinality(String),
          sponsor_id String CODEC(ZSTD(1)),
          agent_instance_id String CODEC(ZSTD(1)),
          parent_agent_id String CODEC(ZSTD(1)),
          agent_name LowCardinality(String),
          role LowCardinality(String),
          tool_id LowCardinality(String),
          tool_name LowCardinality(String),
          action LowCardinality(String),
          purpose String CODEC(ZSTD(1)),
          request_hash String CODEC(ZSTD(1)),
          response_hash String CODEC(ZSTD(1)),
          policy_decision_id String CODEC(ZSTD(1)),
          decision LowCardinality(String),
          rule_id LowCardinality(String),
          policy_latency_ms Float64,
          policy_cached Bool,
          enforced Bool,
          cohort LowCardinality(String),
          status LowCardinality(String),
          error_type LowCardinality(String),
          token_jti String CODEC(ZSTD(1)),
          tool_call_id String CODEC(ZSTD(1)),
          audit_seq UInt64,
          audit_prev_hash String CODEC(ZSTD(1)),
          duration_ns UInt64,
          attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
          ingested_at DateTime64(3) DEFAULT now64(3),
          INDEX idx_sponsor sponsor_id TYPE bloom_filter(0.01) GRANULARITY 4,
          INDEX idx_parent parent_agent_id TYPE bloom_filter(0.01) GRANULARITY 4,
          INDEX idx_decision_id policy_decision_id TYPE bloom_filter(0.01) GRANULARITY 4,
          INDEX idx_trace trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
          INDEX idx_tool tool_id TYPE set(256) GRANULARITY 4,
          INDEX idx_decision decision TYPE set(8) GRANULARITY 4
        ) ENGINE = ${engine('MergeTree', TABLE.AUDIT_EVENTS)}
        PARTITION BY toDate(timestamp)
        ORDER BY (agent_instance_id, timestamp, span_id)
        TTL toDateTime(timestamp) + toIntervalDay(${days})`,
      ],
    },
    {
      version: 3,
      name: 'decision_log_token_events_rollout_events',
      statements: [
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.POLICY_DECISIONS)}${onCluster} (
          timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
          policy_decision_id String,
          decision LowCardinality(String),
          rule_id LowCardinality(String),
          reason String,
          sponsor_id String,
          agent_instance_id String,
          parent_agent_id String,
          role LowCardinality(String),
          tool_id LowCardinality(String),
          action LowCardinality(String),
          purpose String,
          cohort LowCardinality(String),
          enforced Bool,
          token_jti String,
          latency_ms Float64,
          trace_id String,
          span_id String,
          service_name LowCardinality(String),
          attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
          INDEX idx_instance agent_instance_id TYPE bloom_filter(0.01) GRANULARITY 4
        ) ENGINE = ${engine('MergeTree', TABLE.POLICY_DECISIONS)}
        PARTITION BY toDate(timestamp)
        ORDER BY (policy_decision_id)
        TTL toDateTime(timestamp) + toIntervalDay(${days})`,
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.TOKEN_EVENTS)}${onCluster} (
          timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
          result LowCardinality(String),
          kind LowCardinality(String),
          code LowCardinality(String),
          jti String,
          sponsor_id String,
          agent_instance_id String,
          parent_agent_id String,
          tool_id LowCardinality(String),
          role LowCardinality(String),
          ttl_seconds UInt32,
          expires_at DateTime64(3),
          trace_id String,
          span_id String,
          service_name LowCardinality(String),
          attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
          INDEX idx_jti jti TYPE bloom_filter(0.01) GRANULARITY 4
        ) ENGINE = ${engine('MergeTree', TABLE.TOKEN_EVENTS)}
        PARTITION BY toDate(timestamp)
        ORDER BY (timestamp)
        TTL toDateTime(timestamp) + toIntervalDay(${days})`,
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.ROLLOUT_EVENTS)}${onCluster} (
          timestamp DateTime64(9),
          from_percent Float64,
          to_percent Float64,
          reason String,
          actor String,
          trace_id String,
          span_id String,
          service_name LowCardinality(String)
        ) ENGINE = ${engine('MergeTree', TABLE.ROLLOUT_EVENTS)}
        ORDER BY (timestamp)
        TTL toDateTime(timestamp) + toIntervalDay(${days})`,
      ],
    },
    {
      version: 4,
      name: 'rollups',
      statements: [
        // Per-minute, per-cohort, per-tool rollups: rule evaluation reads at most window/1m rows
        // per tool, however many spans are stored.
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.AUDIT_ROLLUP_1M)}${onCluster} (
          minute DateTime,
          cohort LowCardinality(String),
          tool_id LowCardinality(String),
          calls SimpleAggregateFunction(sum, UInt64),
          missing_sponsor SimpleAggregateFunction(sum, UInt64),
          missing_parent SimpleAggregateFunction(sum, UInt64),
          policy_errors SimpleAggregateFunction(sum, UInt64),
          denies SimpleAggregateFunction(sum, UInt64),
          allows SimpleAggregateFunction(sum, UInt64),
          policy_checks SimpleAggregateFunction(sum, UInt64),
          latency_ms AggregateFunction(quantilesTiming(0.5, 0.95, 0.99), UInt32)
        ) ENGINE = ${engine('AggregatingMergeTree', TABLE.AUDIT_ROLLUP_1M)}
        ORDER BY (cohort, minute, tool_id)
        TTL minute + toIntervalDay(${days})`,
        // Latency is rounded up to whole ms: ceil is monotonic, so the rounded p95 exceeds 300
        // exactly when the true p95 does. Cached decisions asked no plane and are left out;
        // an error always counts as a plane call (errors are never served from the cache), so
        // policy_errors <= policy_checks and the error rate cannot exceed 1.
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t(TABLE.AUDIT_ROLLUP_1M + '_mv')}${onCluster}
        TO ${t(TABLE.AUDIT_ROLLUP_1M)}
        AS SELECT
          toStartOfMinute(timestamp) AS minute,
          cohort,
          tool_id,
          count() AS calls,
          countIf(sponsor_id = '') AS missing_sponsor,
          countIf(parent_agent_id = '') AS missing_parent,
          countIf(decision = 'error') AS policy_errors,
          countIf(decision = 'deny') AS denies,
          countIf(decision = 'allow') AS allows,
          countIf(decision = 'error' OR (decision != '' AND NOT policy_cached)) AS policy_checks,
          quantilesTimingStateIf(0.5, 0.95, 0.99)(toUInt32(ceil(policy_latency_ms)), decision = 'error' OR (decision != '' AND NOT policy_cached)) AS latency_ms
        FROM ${t(TABLE.AUDIT_EVENTS)}
        GROUP BY minute, cohort, tool_id`,
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.TOKEN_ROLLUP_1M)}${onCluster} (
          minute DateTime,
          issued SimpleAggregateFunction(sum, UInt64),
          refused SimpleAggregateFunction(sum, UInt64)
        ) ENGINE = ${engine('AggregatingMergeTree', TABLE.TOKEN_ROLLUP_1M)}
        ORDER BY (minute)
        TTL minute + toIntervalDay(${days})`,
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t(TABLE.TOKEN_ROLLUP_1M + '_mv')}${onCluster}
        TO ${t(TABLE.TOKEN_ROLLUP_1M)}
        AS SELECT
          toStartOfMinute(timestamp) AS minute,
          countIf(result = 'issued') AS issued,
          countIf(result != 'issued') AS refused
        FROM ${t(TABLE.TOKEN_EVENTS)}
        GROUP BY minute`,
      ],
    },
    {
      version: 5,
      name: 'audit_checkpoints',
      // collector/evidence: every row of the evidence tables is sealed into the period of its
      // write time (ingested_at), so the decision log and token events get that column too.
      statements: [
        ...[TABLE.POLICY_DECISIONS, TABLE.TOKEN_EVENTS].flatMap((name) => [
          `ALTER TABLE ${t(name)}${onCluster} ADD COLUMN IF NOT EXISTS ingested_at DateTime64(3) DEFAULT now64(3)`,
          `ALTER TABLE ${t(name)}${onCluster} MATERIALIZE COLUMN ingested_at`,
        ]),
        ...[TABLE.AUDIT_EVENTS, TABLE.POLICY_DECISIONS, TABLE.TOKEN_EVENTS].map(
          (name) => `ALTER TABLE ${t(name)}${onCluster} ADD INDEX IF NOT EXISTS idx_ingested_at ingested_at TYPE minmax GRANULARITY 1`,
        ),
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.AUDIT_CHECKPOINTS)}${onCluster} (
          seq UInt64,
          kind LowCardinality(String),
          period_start DateTime64(3),
          period_end DateTime64(3),
          row_count UInt64,
          merkle_root String,
          prev_checkpoint_hash String,
          checkpoint_hash String,
          kid String,
          signature String,
          body String,
          created_at DateTime64(3) DEFAULT now64(3)
        ) ENGINE = ${engine('MergeTree', TABLE.AUDIT_CHECKPOINTS)}
        ORDER BY (seq)`,
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.AUDIT_CHECKPOINT_LEAVES)}${onCluster} (
          checkpoint_seq UInt64,
          ingested_at DateTime64(3) CODEC(Delta, ZSTD(1)),
          leaf FixedString(32),
          source LowCardinality(String),
          row_key String CODEC(ZSTD(1)),
          row_time DateTime64(3) CODEC(Delta, ZSTD(1)),
          label String CODEC(ZSTD(1))
        ) ENGINE = ${engine('MergeTree', TABLE.AUDIT_CHECKPOINT_LEAVES)}
        ORDER BY (checkpoint_seq, ingested_at, leaf)
        TTL toDateTime(ingested_at) + toIntervalDay(${days + 7})`,
      ],
    },
    {
      version: 6,
      name: 'durable_inserts',
      // Ingest acknowledges a span once its insert returns. An insert writes its part through the
      // page cache, which outlives a crash of the process; fsync of the part's files and directory
      // makes it outlive a crash of the machine too, at a cost that large batches make small.
      statements: [
        TABLE.OTEL_TRACES, 'otel_traces_trace_id_ts', TABLE.AUDIT_EVENTS, TABLE.POLICY_DECISIONS, TABLE.TOKEN_EVENTS,
        TABLE.ROLLOUT_EVENTS, TABLE.AUDIT_ROLLUP_1M, TABLE.TOKEN_ROLLUP_1M,
      ].map((name) => `ALTER TABLE ${t(name)}${onCluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1`),
    },
    {
      version: 7,
      name: 'insert_deduplication',
      // Delivery is at least once: an exporter resends a request whose answer it did not get, and
      // a request whose rows went into some tables but not others is sent again whole. Ingest
      // gives each request's insert a deduplication token (a hash of its rows), and ClickHouse
      // skips an insert whose token it has already seen in the table, together with what the
      // insert would have written through materialized views (the rollups): each tool call is
      // stored once. On one server the window is the last DEDUP_WINDOW inserts per table; on a
      // cluster the replicated tables' own deduplication (Keeper) applies with its window.
      statements: options.cluster
        ? []
        : DEDUP_TABLES.map((name) => `ALTER TABLE ${t(name)} MODIFY SETTING non_replicated_deduplication_window = ${DEDUP_WINDOW}`),
    },
    {
      version: 8,
      name: 'record_trust',
      // Who could have written each tool-call row (TRUST in common/names.ts): written by ingest,
      // '' for rows stored before it was recorded. The rollup's plane-side figures (policy errors,
      // plane checks, their latency) leave out unverified rows: anyone who can reach an open
      // OTLP port could write those.
      statements: [
        `ALTER TABLE ${t(TABLE.AUDIT_EVENTS)}${onCluster} ADD COLUMN IF NOT EXISTS trust LowCardinality(String) DEFAULT '' AFTER attributes`,
        `DROP VIEW IF EXISTS ${t(TABLE.AUDIT_ROLLUP_1M + '_mv')}${onCluster}`,
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t(TABLE.AUDIT_ROLLUP_1M + '_mv')}${onCluster}
        TO ${t(TABLE.AUDIT_ROLLUP_1M)}
        AS SELECT
          toStartOfMinute(timestamp) AS minute,
          cohort,
          tool_id,
          count() AS calls,
          countIf(sponsor_id = '') AS missing_sponsor,
          countIf(parent_agent_id = '') AS missing_parent,
          countIf(decision = 'error' AND trust != 'unverified') AS policy_errors,
          countIf(decision = 'deny') AS denies,
          countIf(decision = 'allow') AS allows,
          countIf((decision = 'error' OR (decision != '' AND NOT policy_cached)) AND trust != 'unverified') AS policy_checks,
          quantilesTimingStateIf(0.5, 0.95, 0.99)(toUInt32(ceil(policy_latency_ms)), (decision = 'error' OR (decision != '' AND NOT policy_cached)) AND trust != 'unverified') AS latency_ms
        FROM ${t(TABLE.AUDIT_EVENTS)}
        GROUP BY minute, cohort, tool_id`,
      ],
    },
    {
      version: 9,
      name: 'rule_inputs',
      statements: [
        // The plane's own decision log, per minute: every decision it made, the errors among them,
        // and a histogram of its server-side latency (from the request's arrival), so that order
        // statistics for any threshold are exact. `instances` counts the agents it decided for.
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.DECISION_ROLLUP_1M)}${onCluster} (
          minute DateTime,
          cohort LowCardinality(String),
          tool_id LowCardinality(String),
          decisions SimpleAggregateFunction(sum, UInt64),
          errors SimpleAggregateFunction(sum, UInt64),
          latency_hist SimpleAggregateFunction(sumMap, Tuple(Array(UInt32), Array(UInt64))),
          instances AggregateFunction(uniqExact, String)
        ) ENGINE = ${engine('AggregatingMergeTree', TABLE.DECISION_ROLLUP_1M)}
        ORDER BY (cohort, minute, tool_id)
        TTL minute + toIntervalDay(${days})`,
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t(TABLE.DECISION_ROLLUP_1M + '_mv')}${onCluster}
        TO ${t(TABLE.DECISION_ROLLUP_1M)}
        AS SELECT
          toStartOfMinute(timestamp) AS minute,
          cohort,
          tool_id,
          count() AS decisions,
          countIf(decision = 'error') AS errors,
          sumMap([${latencyBucketSql('latency_ms')}], [toUInt64(1)]) AS latency_hist,
          uniqExactStateIf(agent_instance_id, agent_instance_id != '') AS instances
        FROM ${t(TABLE.POLICY_DECISIONS)}
        WHERE ${RULE_ROWS.decisions}
        GROUP BY minute, cohort, tool_id`,
        // Failures only an agent sees: an error with no plane decision behind it (timeout,
        // unreachable, a garbage or 5xx answer). Kept per reporting instance, so that the rules
        // can leave out the worst one; a failure's latency counts at no less than the timeout.
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.AGENT_FAILURE_ROLLUP_1M)}${onCluster} (
          minute DateTime,
          cohort LowCardinality(String),
          agent_instance_id String,
          failures SimpleAggregateFunction(sum, UInt64),
          latency_hist SimpleAggregateFunction(sumMap, Tuple(Array(UInt32), Array(UInt64)))
        ) ENGINE = ${engine('AggregatingMergeTree', TABLE.AGENT_FAILURE_ROLLUP_1M)}
        ORDER BY (cohort, minute, agent_instance_id)
        TTL minute + toIntervalDay(${days})`,
        `CREATE MATERIALIZED VIEW IF NOT EXISTS ${t(TABLE.AGENT_FAILURE_ROLLUP_1M + '_mv')}${onCluster}
        TO ${t(TABLE.AGENT_FAILURE_ROLLUP_1M)}
        AS SELECT
          toStartOfMinute(timestamp) AS minute,
          cohort,
          agent_instance_id,
          count() AS failures,
          sumMap([${latencyBucketSql(`greatest(policy_latency_ms, ${DEFAULTS.POLICY_TIMEOUT_MS})`)}], [toUInt64(1)]) AS latency_hist
        FROM ${t(TABLE.AUDIT_EVENTS)}
        WHERE decision = 'error' AND policy_decision_id = '' AND (${RULE_ROWS.agentReports})
        GROUP BY minute, cohort, agent_instance_id`,
        ...[TABLE.DECISION_ROLLUP_1M, TABLE.AGENT_FAILURE_ROLLUP_1M].map(
          (name) => `ALTER TABLE ${t(name)}${onCluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1`,
        ),
        // exactly once, like every table ingest writes (migration 7)
        ...(options.cluster
          ? []
          : [TABLE.DECISION_ROLLUP_1M, TABLE.AGENT_FAILURE_ROLLUP_1M].map(
              (name) => `ALTER TABLE ${t(name)} MODIFY SETTING non_replicated_deduplication_window = ${DEDUP_WINDOW}`,
            )),
      ],
    },
    {
      version: 10,
      name: 'rollout_receipts',
      // The plane's signed receipt of each rollout state it put in force (common/receipt.ts).
      statements: [`ALTER TABLE ${t(TABLE.ROLLOUT_EVENTS)}${onCluster} ADD COLUMN IF NOT EXISTS receipt String`],
    },
    {
      version: 11,
      name: 'tool_call_convention',
      // Which convention recorded each tool call (CONVENTION in collector/ingest/conventions.ts):
      // gen_ai, mcp, openinference or openllmetry; '' for rows stored before it was recorded.
      statements: [
        `ALTER TABLE ${t(TABLE.AUDIT_EVENTS)}${onCluster} ADD COLUMN IF NOT EXISTS convention LowCardinality(String) DEFAULT '' AFTER trust`,
      ],
    },
    {
      version: 12,
      name: 'audit_sampling',
      // A sampled-out tool call (common/audit-sample.ts) is stored as a stub: its chain fields and
      // what the rules count, no attributes and no otel_traces row. The rollups count it like any call.
      statements: [
        `ALTER TABLE ${t(TABLE.AUDIT_EVENTS)}${onCluster} ADD COLUMN IF NOT EXISTS audit_sampled Bool DEFAULT false AFTER convention`,
      ],
    },
    {
      version: 13,
      name: 'policy_events',
      // Each policy load or refused reload, written only by the policy plane, with its signed
      // receipt (common/receipt.ts PolicyReceipt): which version decided when.
      statements: [
        `CREATE TABLE IF NOT EXISTS ${t(TABLE.POLICY_EVENTS)}${onCluster} (
          timestamp DateTime64(9),
          result LowCardinality(String),
          version String,
          hash String,
          source String,
          error String,
          receipt String,
          trace_id String,
          span_id String,
          service_name LowCardinality(String),
          ingested_at DateTime64(3) DEFAULT now64(3)
        ) ENGINE = ${engine('MergeTree', TABLE.POLICY_EVENTS)}
        ORDER BY (timestamp)
        TTL toDateTime(timestamp) + toIntervalDay(${days})`,
        `ALTER TABLE ${t(TABLE.POLICY_EVENTS)}${onCluster} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1`,
        ...(options.cluster ? [] : [`ALTER TABLE ${t(TABLE.POLICY_EVENTS)} MODIFY SETTING non_replicated_deduplication_window = ${DEDUP_WINDOW}`]),
      ],
    },
  ];
}

/** The retention change for an existing table: TTL is data, not schema version. */
export function retentionStatements(options: SchemaOptions & { retentionDays: number }): string[] {
  const db = options.database ?? DATABASE;
  const onCluster = options.cluster ? ` ON CLUSTER '${options.cluster}'` : '';
  const d = options.retentionDays;
  return [
    `ALTER TABLE ${db}.${TABLE.AUDIT_EVENTS}${onCluster} MODIFY TTL toDateTime(timestamp) + toIntervalDay(${d})`,
    `ALTER TABLE ${db}.${TABLE.OTEL_TRACES}${onCluster} MODIFY TTL toDateTime(Timestamp) + toIntervalDay(${d})`,
    `ALTER TABLE ${db}.${TABLE.POLICY_DECISIONS}${onCluster} MODIFY TTL toDateTime(timestamp) + toIntervalDay(${d})`,
    `ALTER TABLE ${db}.${TABLE.TOKEN_EVENTS}${onCluster} MODIFY TTL toDateTime(timestamp) + toIntervalDay(${d})`,
  ];
}
