import fs from 'node:fs';
import path from 'node:path';
import { createClient, type ClickHouseClient } from '@clickhouse/client';
import { DATABASE, DEFAULTS, ENV, TABLE } from '../common/names';
import { ConfigError, CustodyError } from '../common/errors';
import type { Logger } from '../common/log';
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
  close(): Promise<void>;
}

export interface StoreOptions extends SchemaOptions {
  /** ClickHouse server URL; with user, password and database in it or given separately. */
  url?: string;
  username?: string;
  password?: string;
  /** Embedded store directory (default ./.custody); chDB data goes in `<dataDir>/clickhouse`. */
  dataDir?: string;
  /** Run migrations on open (default true). */
  migrate?: boolean;
  log?: Logger;
  requestTimeoutMs?: number;
}

export function resolveStoreOptions(flags: { clickhouseUrl?: string; dataDir?: string }): StoreOptions {
  const url = flags.clickhouseUrl ?? process.env[ENV.CLICKHOUSE_URL];
  return url ? { url } : { dataDir: flags.dataDir ?? DEFAULTS.DATA_DIR };
}

export async function openStore(options: StoreOptions): Promise<Store> {
  const database = options.database ?? DATABASE;
  let client: ClickHouseClient;
  let kind: Store['kind'];
  let location: string;
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
  } else {
    const dir = path.resolve(options.dataDir ?? DEFAULTS.DATA_DIR, 'clickhouse');
    fs.mkdirSync(dir, { recursive: true });
    kind = 'embedded';
    location = dir;
    // Loaded lazily so that a server deployment never loads the native engine.
    const { createChdbConnection } = await import('chdb/connection');
    try {
      client = createClient({
        connection: createChdbConnection({ path: dir }),
        clickhouse_settings: { date_time_input_format: 'best_effort' },
      } as Parameters<typeof createClient>[0]);
    } catch (err) {
      throw new CustodyError(
        'ERR_STORE_OPEN',
        `cannot open the embedded store at ${dir}: ${(err as Error).message} (chDB allows one data directory per process and one process per directory)`,
        { cause: err },
      );
    }
  }

  const store: Store = {
    client,
    database,
    kind,
    location,
    async ping() {
      try {
        const r = await client.ping();
        return r.success;
      } catch {
        return false;
      }
    },
    close: () => client.close(),
  };
  if (options.migrate !== false) await migrate(store, options);
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
