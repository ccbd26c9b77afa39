export interface ShapeOptions {
  /** Table, optionally schema-qualified. */
  table: string;
  /** Row filter (the gateway's where-clause language), with `$1`… for `params`. */
  where?: string;
  columns?: string[];
  params?: string[];
  /** Primary-key columns, for writes before the first sync (the gateway's schema tells them after). */
  key?: string | string[];
  /** The table's `reject_stale` version column: writes send the version they were based on. */
  versionColumn?: string;
  /**
   * Indexes for queries: a column, or an array of columns for a compound index. IndexedDB
   * cannot index booleans or bigints (int8): such rows are left out of that index.
   */
  indexes?: Array<string | string[]>;
}

export type Strategy = "local-first" | "network-first";

export interface SyncOptions {
  /** The gateway's base URL, e.g. `https://sync.example.com`. */
  url: string;
  /** A JWT sent as `Authorization: Bearer …`. */
  token?: string;
  /** Called for a token at start and again when the gateway answers 401 (e.g. at expiry). */
  getToken?: () => string | Promise<string>;
  /** IndexedDB database name (default: derived from `url`). Tabs sharing it share one sync. */
  database?: string;
  /** `local-first` (default): writes show at once. `network-first`: only once the gateway applied them. */
  strategy?: Strategy;
  /** Live updates over Server-Sent Events (default true); long-polling otherwise, or when SSE does not hold. */
  sse?: boolean;
  /** Failed pushes (429, 5xx) before a write is abandoned (default 10). Being offline does not count. */
  maxRetries?: number;
  /** How long an applied write waits for its change to come back through the stream (default 15000 ms). */
  confirmTimeoutMs?: number;
  shapes: Record<string, ShapeOptions>;
}

/** A primary key: one value, or an array in key order for composite keys (int8 keys as strings). */
export type Key = string | number | Array<string | number>;

export interface SyncEvent {
  type: "sync";
  shape: string;
  op: "insert" | "update" | "delete";
  key: Key;
  /** `local`: this tab wrote it; `server`: it came from the gateway; `-tab`: heard from another tab. */
  origin: "server" | "local" | "server-tab" | "local-tab";
}

export interface StatusEvent {
  type: "status";
  shape: string;
  status: "connecting" | "live" | "offline" | "error";
  reason?: string;
}

export interface OutboxEntry<Row = Record<string, unknown>> {
  /** The write's local id (what put/update/delete returned). */
  id: string;
  /** Its id in the gateway's ledger: integers counting up by one per local database, given
   * at the first push and kept for retries. */
  mutation_id?: number;
  shape: string;
  op: "put" | "update" | "delete";
  key: Key;
  /** The row (put) or the changed columns (update). */
  value?: Partial<Row>;
  status: "pending" | "synced" | "failed" | "abandoned";
  /** Whether the write came back through the stream (the row shown is the server's again). */
  echoed: boolean;
  attempts: number;
  /** The gateway's transaction, once synced. */
  txid?: number;
  /** Why it failed, was abandoned, or the last retry failed. */
  error?: string;
  /** The server's row, when a conflict returned it. */
  row?: Record<string, unknown> | null;
  created_ms: number;
  synced_ms?: number;
}

export interface OutboxEvent {
  type: "outbox";
  entry: OutboxEntry;
}

export interface WriteOptions {
  strategy?: Strategy;
}

export interface WhereClause<Row> {
  equals(value: IDBValidKey): Query<Row>;
  above(value: IDBValidKey): Query<Row>;
  aboveOrEqual(value: IDBValidKey): Query<Row>;
  below(value: IDBValidKey): Query<Row>;
  belowOrEqual(value: IDBValidKey): Query<Row>;
  between(low: IDBValidKey, high: IDBValidKey, includeLow?: boolean, includeHigh?: boolean): Query<Row>;
  startsWith(prefix: string): Query<Row>;
}

/** A local query on one shape's declared indexes. */
export interface Query<Row> {
  readonly shape: string;
  where(index: string | string[]): WhereClause<Row>;
  orderBy(index: string | string[]): Query<Row>;
  reverse(): Query<Row>;
  offset(n: number): Query<Row>;
  limit(n: number): Query<Row>;
  toArray(): Promise<Row[]>;
  first(): Promise<Row | undefined>;
  count(): Promise<number>;
  /** Calls `callback` with the result now and whenever it changes; returns an unsubscribe function. */
  subscribe(callback: (rows: Row[]) => void): () => void;
}

export interface Shape<Row = Record<string, unknown>> {
  get(key: Key): Promise<Row | undefined>;
  getAll(): Promise<Row[]>;
  /** Inserts or replaces a row; returns the outbox entry's id. */
  put(row: Row, options?: WriteOptions): Promise<string>;
  /** Changes some columns, given as an object or as a function of the current row. */
  update(key: Key, change: Partial<Row> | ((row: Row) => Row), options?: WriteOptions): Promise<string>;
  delete(key: Key, options?: WriteOptions): Promise<string>;
  /** Filters on an index: a declared column, an array for a compound index, or `":key"`. */
  where(index: string | string[]): WhereClause<Row>;
  orderBy(index: string | string[]): Query<Row>;
  query(): Query<Row>;
}

export interface TransactionShape<Row> {
  put(row: Row): void;
  update(key: Key, change: Partial<Row> | ((row: Row) => Row)): void;
  delete(key: Key): void;
}

export interface Transaction {
  shape<Row = Record<string, unknown>>(name: string): TransactionShape<Row>;
}

export interface Outbox {
  stats(): Promise<{ pending: number; synced: number; failed: number; abandoned: number }>;
  pending(): Promise<OutboxEntry[]>;
  entries(status?: OutboxEntry["status"]): Promise<OutboxEntry[]>;
  /** Removes the entries that were applied and came back; returns how many. */
  clearSynced(): Promise<number>;
}

export interface Sync {
  on(type: "sync", listener: (event: SyncEvent) => void): () => void;
  on(type: "status", listener: (event: StatusEvent) => void): () => void;
  on(type: "outbox", listener: (event: OutboxEvent) => void): () => void;
  /** Resolves once the shape's mirror has caught up with the gateway. */
  ready(shape: string): Promise<void>;
  shape<Row = Record<string, unknown>>(name: string): Shape<Row>;
  /** Writes that reach the gateway as one atomic batch and roll back together if it is refused. */
  transaction(body: (tx: Transaction) => void | Promise<void>, options?: WriteOptions): Promise<string[]>;
  subscribe<Row>(query: Query<Row>, callback: (rows: Row[]) => void): () => void;
  readonly outbox: Outbox;
  /** Whether this tab is the one syncing with the gateway (one per database, elected with Web Locks). */
  readonly leading: boolean;
  readonly database: IDBDatabase;
  close(): void;
}

export function openSync(options: SyncOptions): Promise<Sync>;
