import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createClient, type ClickHouseClient } from '@clickhouse/client';
import { DATABASE, DEFAULTS, ENV, TABLE } from '../../common/names';
import { ConfigError, CustodyError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { migrations, retentionStatements, type SchemaOptions } from './schema';

/**
 * The one way custody reaches ClickHouse: `@clickhouse/client`, either over HTTP(S) to a server
 * or cluster, or in-process through chDB (the embedded default). The same queries run on both.
 */
export interface Store {
  readonly client: ClickHouseClient;
  readonly database: string;
  readonly kind: 'embedded' | 'server';
  /** Where the data lives: a directory for chDB, a URL (without password) for a server. */
  readonly location: string;
  ping(): Promise<boolean>;
  /** Whether the schema is in place (false while background migrations wait for the server). */
  readonly migrated: boolean;
  /** Resolves once the schema is in place. */
  whenMigrated(): Promise<void>;
  /**
   * Inserts rows already serialized in `format`; resolves once they are written (the insert is
   * synchronous: its part is on disk, or with the server, committed by ClickHouse). Throws
   * StoreWriteError. On chDB the body goes to the engine as it is, without a copy.
   */
  insertRaw(params: RawInsert): Promise<void>;
  /**
   * Runs a SELECT and returns its rows (JSONEachRow). Settings belong in the SQL (`SETTINGS …`),
   * never in clickhouse_settings: on chDB those are SET on the session and would leak into every
   * later query of the process.
   */
  rows<T>(query: string, params?: Record<string, unknown>): Promise<T[]>;
  close(): Promise<void>;
}

export interface RawInsert {
  /** Table name within the store's database. */
  table: string;
  columns: readonly string[];
  format: 'JSONCompactEachRow' | 'JSONEachRow';
  body: Buffer;
  settings?: Readonly<Record<string, string | number>>;
}

/**
 * An insert that failed. `retryable`: the storage is down, slow or refusing for now (connection,
 * timeout, memory, disk, too many parts, missing table or column); otherwise ClickHouse answered
 * that these rows cannot be stored as they are, and sending them again fails again. `row` (1-based,
 * within the insert's body) and `column` say where, when ClickHouse said so.
 */
export class StoreWriteError extends CustodyError {
  readonly retryable: boolean;
  readonly row: number | undefined;
  readonly column: string | undefined;
  constructor(message: string, retryable: boolean, options?: { cause?: unknown; row?: number; column?: string }) {
    super(retryable ? 'ERR_STORE_UNAVAILABLE' : 'ERR_STORE_REJECTED', message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.retryable = retryable;
    this.row = options?.row;
    this.column = options?.column;
  }
}

/**
 * ClickHouse error codes that mean "the storage cannot take writes now", whatever the rows: a
 * schema not (yet) in place, limits of the server, disk, network, replication, access. Any other
 * error ClickHouse answers an insert with is taken as caused by the rows (a parse error such as
 * 25 or 27, a value out of range, …): those rows are refused and the storage stays in use. An
 * error without a ClickHouse code (connection refused, reset, timeout) is an outage.
 */
const OUTAGE_CODES = new Set([
  16, 47, 60, 74, 75, 76, 81, 107, 159, 160, 164, 192, 193, 194, 202, 203, 209, 210, 225, 236, 241, 242, 243, 252, 285, 286,
  289, 319, 372, 373, 394, 425, 439, 473, 497, 516, 999, 1000, 1001, 1002,
]);

/** Classifies a failed insert: see OUTAGE_CODES. */
export function writeError(err: unknown): StoreWriteError {
  const e = err as { message?: string; code?: unknown; clickhouseCode?: unknown; failedAtRow?: unknown };
  const code = typeof e?.clickhouseCode === 'number' ? e.clickhouseCode : Number(e?.code);
  const message = e?.message ?? String(err);
  const outage = !Number.isInteger(code) || code <= 0 || OUTAGE_CODES.has(code);
  const row = typeof e?.failedAtRow === 'number' && e.failedAtRow > 0 ? e.failedAtRow : Number(/\(at row (\d+)\)/.exec(message)?.[1]) || undefined;
  const column = /while reading the value of key ([^)\s]+)\)/.exec(message)?.[1] ?? /name: ([^,\s]+),[^\n]*ERROR/.exec(message)?.[1];
  return new StoreWriteError(`insert failed: ${message}`, outage, {
    cause: err,
    ...(outage || row === undefined ? {} : { row }),
    ...(outage || column === undefined ? {} : { column }),
  });
}

export interface StoreOptions extends SchemaOptions {
  /** ClickHouse server URL; with user, password and database in it or given separately. */
  url?: string;
  username?: string;
  password?: string;
  /** Embedded store directory (default ./.custody); chDB data goes in `<dataDir>/clickhouse`. */
  dataDir?: string;
  /**
   * Run migrations on open (default true). 'background': return at once and retry until they
   * succeed, so that a collector can start before its ClickHouse server is reachable.
   */
  migrate?: boolean | 'background';
  log?: Logger;
  requestTimeoutMs?: number;
}

export async function openStore(options: StoreOptions): Promise<Store> {
  const database = options.database ?? DATABASE;
  let client: ClickHouseClient;
  let kind: Store['kind'];
  let location: string;
  let insertRaw: Store['insertRaw'];
  if (options.url) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new ConfigError(`--clickhouse-url / ${ENV.CLICKHOUSE_URL} '${options.url}' is not a URL such as http://user:pass@host:8123/`);
    }
    kind = 'server';
    location = `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
    client = createClient({
      url: options.url,
      ...(options.username ? { username: options.username } : {}),
      ...(options.password ? { password: options.password } : {}),
      request_timeout: options.requestTimeoutMs ?? 30_000,
      clickhouse_settings: { date_time_input_format: 'best_effort' },
    });
    const server = client;
    insertRaw = async ({ table, columns, format, body, settings }) => {
      try {
        const r = await server.exec({
          query: `INSERT INTO ${database}.${table} (${columns.map((c) => `\`${c}\``).join(', ')}) FORMAT ${format}`,
          values: Readable.from([body], { objectMode: false }),
          ...(settings ? { clickhouse_settings: settings } : {}),
        });
        // the response body must be read for the socket to be reused
        for await (const _ of r.stream) void _;
      } catch (err) {
        throw writeError(err);
      }
    };
  } else {
    const dir = path.resolve(options.dataDir ?? DEFAULTS.DATA_DIR, 'clickhouse');
    fs.mkdirSync(dir, { recursive: true });
    kind = 'embedded';
    location = dir;
    // Loaded lazily so that a server deployment never loads the native engine.
    const { createChdbConnection } = await import('chdb/connection');
    try {
      const connection = createChdbConnection({ path: dir });
      client = createClient({
        connection,
        clickhouse_settings: { date_time_input_format: 'best_effort' },
      } as Parameters<typeof createClient>[0]);
      insertRaw = async ({ table, columns, format, body, settings }) => {
        try {
          await connection.chdb.rawInsert({
            table: `${database}.${table}`,
            columns: [...columns],
            format,
            values: body,
            ...(settings ? { settings } : {}),
          });
        } catch (err) {
          throw writeError(err);
        }
      };
    } catch (err) {
      throw new CustodyError(
        'ERR_STORE_OPEN',
        `cannot open the embedded store at ${dir}: ${(err as Error).message} (chDB allows one data directory per process and one process per directory)`,
        { cause: err },
      );
    }
  }

  let migrated = false;
  let closed = false;
  let whenMigrated: Promise<void> = Promise.resolve();
  const store: Store = {
    client,
    database,
    kind,
    location,
    get migrated() {
      return migrated;
    },
    whenMigrated: () => whenMigrated,
    async ping() {
      try {
        const r = await client.ping();
        return r.success;
      } catch {
        return false;
      }
    },
    insertRaw,
    async rows<T>(query: string, params?: Record<string, unknown>) {
      const rs = await client.query({ query, format: 'JSONEachRow', ...(params ? { query_params: params } : {}) });
      return rs.json<T>();
    },
    close: () => {
      closed = true;
      return client.close();
    },
  };
  if (options.migrate === 'background') {
    whenMigrated = (async () => {
      for (let delayMs = 500; !closed; delayMs = Math.min(delayMs * 2, 30_000)) {
        try {
          await migrate(store, options);
          migrated = true;
          return;
        } catch (err) {
          options.log?.warn({ err: (err as Error).message, retryInMs: delayMs }, `storage at ${location} is not reachable yet; retrying`);
          await new Promise((r) => setTimeout(r, delayMs).unref());
        }
      }
    })();
  } else {
    if (options.migrate !== false) await migrate(store, options);
    migrated = true;
  }
  return store;
}

/** Applies the migrations not yet recorded; safe to run from several collectors at once. */
export async function migrate(store: Store, options: SchemaOptions & { log?: Logger } = {}): Promise<number[]> {
  const { client, database } = store;
  const onCluster = options.cluster ? ` ON CLUSTER '${options.cluster}'` : '';
  await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${database}${onCluster}` });
  const engine = options.cluster
    ? `ReplicatedReplacingMergeTree('${options.replicationPath ?? '/clickhouse/tables/{shard}'}/${database}/${TABLE.MIGRATIONS}', '{replica}')`
    : 'ReplacingMergeTree()';
  await client.command({
    query: `CREATE TABLE IF NOT EXISTS ${database}.${TABLE.MIGRATIONS}${onCluster}
      (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = ${engine} ORDER BY version`,
  });
  const rs = await client.query({ query: `SELECT version FROM ${database}.${TABLE.MIGRATIONS} FINAL`, format: 'JSONEachRow' });
  const applied = new Set((await rs.json<{ version: number }>()).map((r) => Number(r.version)));
  const done: number[] = [];
  for (const m of migrations({ ...options, database })) {
    if (applied.has(m.version)) continue;
    for (const query of m.statements) await client.command({ query });
    await client.insert({ table: `${database}.${TABLE.MIGRATIONS}`, values: [{ version: m.version, name: m.name }], format: 'JSONEachRow' });
    options.log?.info({ version: m.version, migration: m.name }, 'applied migration');
    done.push(m.version);
  }
  if (options.retentionDays !== undefined) {
    for (const query of retentionStatements({ ...options, database, retentionDays: options.retentionDays })) {
      await client.command({ query });
    }
  }
  return done;
}
