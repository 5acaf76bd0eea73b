import { createHash } from 'node:crypto';
import { CustodyError } from '../../common/errors';
import type { Logger } from '../../common/log';
import { gauge, histogram } from '../../common/metrics';
import { METRIC } from '../../common/names';
import { INGEST_TABLES, INSERT_SETTINGS, ROW_FORMAT, type IngestTable, type TableRows } from './mapping';
import { StoreWriteError, type Store } from '../store';

/**
 * The batching writer between the OTLP receiver and ClickHouse. Concurrent requests' rows are
 * coalesced into one insert per table (group commit: while a table's insert runs, the rows that
 * arrive wait and go together in the next one; a lone request waits at most `lingerMs` for
 * company). A request's promise settles only when all of ITS rows are inserted, so an
 * acknowledged span is stored. Memory is bounded: past `maxQueuedRows` / `maxQueuedBytes` writes
 * are refused (429) rather than queued; while storage fails they are refused at once (503) and a
 * probe watches for its return. Rows that ClickHouse refuses (a data error, not an outage) fail only
 * the request they came from (RowsRefusedError); the others in the same insert are stored.
 */
export interface WriterOptions {
  store: Pick<Store, 'insertRaw' | 'ping'>;
  log?: Logger;
  /** Most rows in one insert (per table). Default 50000. */
  maxBatchRows?: number;
  /** How long a lone request's rows wait for others before being inserted. Default 4 ms. */
  lingerMs?: number;
  /** Rows queued (all tables) beyond which writes are refused with 429. Default 200000. */
  maxQueuedRows?: number;
  /** Bytes queued beyond which writes are refused with 429. Default 256 MiB. */
  maxQueuedBytes?: number;
  /** Probe interval while storage is failing, ms. Default 1000. */
  probeIntervalMs?: number;
  /** Start refusing (503) until `setAvailable(true)`, e.g. while migrations wait for a server. */
  startUnavailable?: boolean;
}

/** What write() takes: one request's rows (see mapSpans). */
export interface WriteRequest {
  readonly rows: TableRows;
  readonly counts: Partial<Record<IngestTable, number>>;
}

/** The writer will not take these rows now; the client should retry after `retryAfterSeconds`. */
export class WriteRefusedError extends CustodyError {
  readonly status: 429 | 503;
  readonly retryAfterSeconds: number;
  constructor(status: 429 | 503, message: string, retryAfterSeconds: number, options?: { cause?: unknown }) {
    super(status === 429 ? 'ERR_INGEST_BUSY' : 'ERR_STORE_UNAVAILABLE', message, options);
    this.status = status;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

interface Entry {
  pending: number;
  settled: boolean;
  resolve(): void;
  reject(err: Error): void;
}

interface Part {
  entry: Entry;
  body: Buffer;
  rows: number;
  /** The insert's deduplication token: the same rows sent again (a retry) are stored once. */
  token: string;
}

interface TableQueue {
  readonly table: IngestTable;
  readonly columns: readonly string[];
  parts: Part[];
  rows: number;
  bytes: number;
  inFlight: boolean;
  timer: NodeJS.Timeout | undefined;
}

export interface BatchWriter {
  /** Resolves once every row of the request is inserted; rejects with WriteRefusedError or RowsRefusedError. */
  write(request: WriteRequest): Promise<void>;
  /** Whether writes are taken now (false while storage is failing). */
  readonly available: boolean;
  readonly queuedRows: number;
  readonly queuedBytes: number;
  /** Marks storage usable or not (e.g. once migrations have run). */
  setAvailable(available: boolean): void;
  /** Stops taking writes and inserts everything queued. */
  close(): Promise<void>;
}

/**
 * ClickHouse refused this request's rows (a value it cannot parse or store), not the storage being
 * down: sending them again fails again. Names the span and the column where ClickHouse said so.
 */
export class RowsRefusedError extends CustodyError {
  readonly table: string;
  readonly spanId: string | undefined;
  readonly column: string | undefined;
  readonly reason: string;
  constructor(table: string, spanId: string | undefined, column: string | undefined, reason: string, options?: { cause?: unknown }) {
    const where = `${spanId ? `span ${spanId}` : 'a span'}${column ? `, column ${table}.${column}` : ` (table ${table})`}`;
    super('ERR_ROWS_REFUSED', `storage refused ${where}: ${reason}`, options);
    this.table = table;
    this.spanId = spanId;
    this.column = column;
    this.reason = reason;
  }
}

/** Index of the part holding `row` (1-based over the parts' bodies in order), -1 when past them. */
function partOfRow(parts: readonly Part[], row: number): number {
  let first = 1;
  for (let i = 0; i < parts.length; i++) {
    if (row < first + parts[i]!.rows) return i;
    first += parts[i]!.rows;
  }
  return -1;
}

const SPAN_ID_COLUMNS = new Set(['SpanId', 'span_id']);

/** ClickHouse's reason, without its `Code: N. DB::Exception:` prefixes, on one bounded line. */
function reasonOf(err: StoreWriteError): string {
  const cause = err.cause as { message?: string } | undefined;
  const text = (cause?.message ?? err.message).replace(/^insert failed: /, '');
  const first = text.replace(/(?:Code: \d+\. DB::Exception: )+/g, '').split('\n')[0]!.trim();
  return first.length > 200 ? `${first.slice(0, 200)}…` : first;
}

function rowsRefused(q: TableQueue, part: Part, err: StoreWriteError): RowsRefusedError {
  let spanId: string | undefined;
  const spanColumn = q.columns.findIndex((c) => SPAN_ID_COLUMNS.has(c));
  if (err.row !== undefined && err.row <= part.rows && spanColumn >= 0) {
    // the body is JSONCompactEachRow lines of `[…],[…]`, written by serializeRows
    let first = 1;
    for (const line of part.body.toString('utf8').split('\n')) {
      if (!line) continue;
      try {
        const rows = JSON.parse(`[${line}]`) as unknown[][];
        if (err.row < first + rows.length) {
          const id = rows[err.row - first]?.[spanColumn];
          if (typeof id === 'string') spanId = id;
          break;
        }
        first += rows.length;
      } catch {
        break;
      }
    }
  }
  return new RowsRefusedError(q.table, spanId, err.column, reasonOf(err), { cause: err });
}

/** The same rows give the same token, so a request sent again is deduplicated by ClickHouse. */
export function dedupToken(body: Buffer): string {
  return createHash('sha256').update(body).digest('base64url');
}

const dedupSettings = (token: string) => ({
  ...INSERT_SETTINGS,
  insert_deduplicate: 1,
  insert_deduplication_token: token,
  deduplicate_blocks_in_dependent_materialized_views: 1,
});

const RETRY_BUSY_S = 1;
const RETRY_UNAVAILABLE_S = 5;

function settle(entry: Entry, err?: Error): void {
  if (entry.settled) return;
  if (err) {
    entry.settled = true;
    entry.reject(err);
  } else if (--entry.pending === 0) {
    entry.settled = true;
    entry.resolve();
  }
}

export function createBatchWriter(options: WriterOptions): BatchWriter {
  const { store, log } = options;
  const maxBatchRows = options.maxBatchRows ?? 50_000;
  const lingerMs = options.lingerMs ?? 4;
  const maxQueuedRows = options.maxQueuedRows ?? 200_000;
  const maxQueuedBytes = options.maxQueuedBytes ?? 256 * 1024 * 1024;
  const probeIntervalMs = options.probeIntervalMs ?? 1000;

  const queues = new Map<IngestTable, TableQueue>();
  for (const [table, columns] of Object.entries(INGEST_TABLES) as [IngestTable, readonly string[]][]) {
    queues.set(table, { table, columns, parts: [], rows: 0, bytes: 0, inFlight: false, timer: undefined });
  }
  let queuedRows = 0;
  let queuedBytes = 0;
  let available = !options.startUnavailable;
  let closing = false;
  let probe: NodeJS.Timeout | undefined;
  let idleWaiters: (() => void)[] = [];

  const insertSeconds = histogram<'table'>({
    name: METRIC.INGEST_INSERT_DURATION_SECONDS,
    help: 'Duration of one batched insert into a table',
    labelNames: ['table'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  const insertRows = histogram<'table'>({
    name: METRIC.INGEST_INSERT_ROWS,
    help: 'Rows in one batched insert into a table',
    labelNames: ['table'],
    buckets: [1, 10, 100, 1000, 2500, 5000, 10_000, 25_000, 50_000],
  });
  const queueGauge = gauge({ name: METRIC.INGEST_QUEUE_ROWS, help: 'Rows waiting to be inserted' });
  queueGauge.set(0);

  const setQueued = (rows: number, bytes: number) => {
    queuedRows += rows;
    queuedBytes += bytes;
    queueGauge.set(queuedRows);
  };

  const isIdle = () => [...queues.values()].every((q) => q.parts.length === 0 && !q.inFlight);
  const notifyIdle = () => {
    if (!isIdle()) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
  };

  function markUnavailable(err: Error): void {
    if (available) log?.error({ err }, 'storage failed: ingest refuses writes until it is back');
    available = false;
    // what is queued would fail the same way: refuse it now so that clients retry elsewhere or later
    for (const q of queues.values()) {
      if (q.timer) clearTimeout(q.timer);
      q.timer = undefined;
      const parts = q.parts;
      q.parts = [];
      setQueued(-q.rows, -q.bytes);
      q.rows = 0;
      q.bytes = 0;
      for (const p of parts) settle(p.entry, refusedUnavailable(err));
    }
    startProbe();
  }

  function startProbe(): void {
    if (probe || closing) return;
    probe = setInterval(() => {
      store.ping().then(
        (ok) => {
          if (!ok || closing) return;
          log?.info('storage is back: ingest takes writes again');
          available = true;
          clearInterval(probe);
          probe = undefined;
        },
        () => undefined,
      );
    }, probeIntervalMs);
    probe.unref();
  }

  const refusedUnavailable = (cause?: unknown) =>
    new WriteRefusedError(503, 'storage is unavailable; retry later', RETRY_UNAVAILABLE_S, cause ? { cause } : undefined);

  function schedule(q: TableQueue): void {
    if (q.inFlight || q.parts.length === 0) return;
    if (q.rows >= maxBatchRows || closing) {
      void flush(q);
    } else if (!q.timer) {
      q.timer = setTimeout(() => void flush(q), lingerMs);
    }
  }

  async function insert(q: TableQueue, parts: Part[]): Promise<void> {
    // One insert per request, each with its own deduplication token: a request sent again is
    // skipped by ClickHouse (with what its materialized views would write) whatever it was
    // queued with the first time. Coalescing requests into one insert would give a retry a
    // different block, which ClickHouse cannot recognise.
    for (const p of parts) {
      const end = insertSeconds.startTimer({ table: q.table });
      await store.insertRaw({ table: q.table, columns: q.columns, format: ROW_FORMAT, body: p.body, settings: dedupSettings(p.token) });
      end();
      insertRows.observe({ table: q.table }, p.rows);
    }
  }

  async function flush(q: TableQueue): Promise<void> {
    if (q.timer) clearTimeout(q.timer);
    q.timer = undefined;
    if (q.inFlight || q.parts.length === 0) return;
    // take whole requests up to the batch size (always at least one)
    let take = 0;
    let rows = 0;
    let bytes = 0;
    while (take < q.parts.length && (take === 0 || rows + q.parts[take]!.rows <= maxBatchRows)) {
      rows += q.parts[take]!.rows;
      bytes += q.parts[take]!.body.length;
      take++;
    }
    const parts = q.parts.splice(0, take);
    q.rows -= rows;
    q.bytes -= bytes;
    q.inFlight = true;
    try {
      await insert(q, parts);
      for (const p of parts) settle(p.entry);
    } catch (err) {
      await failed(q, parts, err);
    } finally {
      setQueued(-rows, -bytes);
      q.inFlight = false;
      if (q.parts.length) {
        // these rows waited while the insert ran: no linger for them
        if (available || closing) void flush(q);
      }
      notifyIdle();
    }
  }

  /**
   * An insert of several requests' rows failed. When ClickHouse refused rows (not an outage), the
   * requests are inserted again in halves (or without the one it named) until only the requests
   * whose own rows are refused are left: those fail with RowsRefusedError, every other one is
   * stored. An outage refuses all of them (503) and starts the probe.
   */
  async function failed(q: TableQueue, parts: Part[], err: unknown): Promise<void> {
    if (!(err instanceof StoreWriteError) || err.retryable) {
      for (const p of parts) settle(p.entry, refusedUnavailable(err));
      markUnavailable(err as Error);
      return;
    }
    if (parts.length === 1) {
      const refused = rowsRefused(q, parts[0]!, err);
      log?.warn({ table: q.table, spanId: refused.spanId, column: refused.column, reason: refused.reason }, 'rows refused by storage');
      settle(parts[0]!.entry, refused);
      return;
    }
    // the part holding the row ClickHouse named is tried alone, the others together
    const named = err.row === undefined ? -1 : partOfRow(parts, err.row);
    const groups = named >= 0 ? [[parts[named]!], parts.filter((_, i) => i !== named)] : [parts.slice(0, parts.length >> 1), parts.slice(parts.length >> 1)];
    for (const group of groups) {
      if (group.length === 0) continue;
      if (!available && !closing) {
        for (const p of group) settle(p.entry, refusedUnavailable());
        continue;
      }
      try {
        await insert(q, group);
        for (const p of group) settle(p.entry);
      } catch (e) {
        await failed(q, group, e);
      }
    }
  }

  return {
    write(request) {
      if (closing || !available) return Promise.reject(refusedUnavailable());
      const tables = (Object.keys(request.rows) as IngestTable[]).filter((t) => request.rows[t]);
      if (tables.length === 0) return Promise.resolve();
      const bodies = tables.map((t) => request.rows[t]!);
      const rows = tables.reduce((n, t) => n + (request.counts[t] ?? 0), 0);
      const bytes = bodies.reduce((n, b) => n + b.length, 0);
      // an empty queue takes any request: the body limit bounds it
      if (queuedRows > 0 && (queuedRows + rows > maxQueuedRows || queuedBytes + bytes > maxQueuedBytes)) {
        return Promise.reject(new WriteRefusedError(429, `ingest queue is full (${queuedRows} rows waiting); retry later`, RETRY_BUSY_S));
      }
      return new Promise<void>((resolve, reject) => {
        const entry: Entry = { pending: tables.length, settled: false, resolve, reject };
        setQueued(rows, bytes);
        tables.forEach((t, i) => {
          const q = queues.get(t)!;
          const n = request.counts[t] ?? 0;
          q.parts.push({ entry, body: bodies[i]!, rows: n, token: dedupToken(bodies[i]!) });
          q.rows += n;
          q.bytes += bodies[i]!.length;
          schedule(q);
        });
      });
    },
    get available() {
      return available && !closing;
    },
    get queuedRows() {
      return queuedRows;
    },
    get queuedBytes() {
      return queuedBytes;
    },
    setAvailable(value) {
      available = value;
      if (value && probe) {
        clearInterval(probe);
        probe = undefined;
      }
    },
    async close() {
      closing = true;
      if (probe) clearInterval(probe);
      probe = undefined;
      for (const q of queues.values()) schedule(q);
      if (!isIdle()) await new Promise<void>((resolve) => idleWaiters.push(resolve));
    },
  };
}
