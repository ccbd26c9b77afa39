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
   * Indexes for queries: a column, or an array of columns for a compound index. A
   * one-column index also serves booleans and bigints (bool, int8), which IndexedDB cannot
   * index itself; a compound index leaves rows with such values out.
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
  /**
   * IndexedDB database name. Default: one per identity, the `url` and the token's `sub`
   * (`gateway-sync <url> as <sub>`), so another user never sees, pushes or deletes this
   * one's data. A named database is stamped with the identity that first opens it and
   * refused to any other. Tabs sharing it share one sync.
   */
  database?: string;
  /** The app's own schema version (a positive integer); with `upgrade`, run once per version. */
  version?: number;
  /**
   * Runs when the local database holds an older app schema version than `version` (`from`
   * is 0 the first time), before `openSync` resolves, one tab at a time; a throw fails the
   * open and the version stays.
   */
  upgrade?: (change: { from: number; to: number; sync: Sync }) => void | Promise<void>;
  /** `local-first` (default): writes show at once. `network-first`: only once the gateway applied them. */
  strategy?: Strategy;
  /** Live updates over Server-Sent Events (default true); long-polling otherwise, or when SSE does not hold. */
  sse?: boolean;
  /** Failed pushes (429, 5xx) before a write is abandoned (default 10). Being offline does not count. */
  maxRetries?: number;
  /** How long an applied write waits for its change to come back through the stream (default 15000 ms). */
  confirmTimeoutMs?: number;
  /**
   * How long a live stream may send nothing, not even the gateway's keep-alive (every 21 s),
   * before it is taken for dead, the shape goes `offline` and reconnects (default 45000 ms).
   */
  liveSilenceMs?: number;
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
  /** The row now (insert, update). */
  value?: Record<string, unknown>;
  /** The row before (update, delete), when the mirror held it. */
  old?: Record<string, unknown>;
}

export interface StatusEvent {
  type: "status";
  shape: string;
  status: SyncStatus;
  reason?: string;
  /** When a shape last caught up with the gateway (ms since the epoch), if it has. */
  lastSyncedAt?: number;
}

export type SyncStatus = "connecting" | "live" | "offline" | "error";

export interface OutboxEntry<Row = Record<string, unknown>> {
  /** The write's local id (what put/update/delete returned). */
  id: string;
  /** Its id in the gateway's ledger: integers counting up by one per local database, given
   * at the first push and kept for retries. */
  mutation_id?: number;
  shape: string;
  op: "put" | "add" | "update" | "delete";
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

/** A value a `where` compares: booleans and bigints only on a one-column index. */
export type IndexValue = IDBValidKey | boolean | bigint;

export interface WhereClause<Row> {
  equals(value: IndexValue): Query<Row>;
  above(value: IndexValue): Query<Row>;
  aboveOrEqual(value: IndexValue): Query<Row>;
  below(value: IndexValue): Query<Row>;
  belowOrEqual(value: IndexValue): Query<Row>;
  between(low: IndexValue, high: IndexValue, includeLow?: boolean, includeHigh?: boolean): Query<Row>;
  startsWith(prefix: string): Query<Row>;
}

/** A local query on one shape's declared indexes. */
export interface Query<Row> {
  readonly shape: string;
  where(index: string | string[]): WhereClause<Row>;
  orderBy(index: string | string[]): Query<Row>;
  /** Rows of this query or of the range that follows on `index`, each once. */
  or(index: string | string[]): WhereClause<Row>;
  /** Keeps the rows for which `predicate` is true. */
  filter(predicate: (row: Row) => boolean): Query<Row>;
  and(predicate: (row: Row) => boolean): Query<Row>;
  reverse(): Query<Row>;
  offset(n: number): Query<Row>;
  limit(n: number): Query<Row>;
  toArray(): Promise<Row[]>;
  first(): Promise<Row | undefined>;
  count(): Promise<number>;
  each(callback: (row: Row) => void): Promise<void>;
  /** Calls `callback` with the result now and whenever it changes; returns an unsubscribe function. */
  subscribe(callback: (rows: Row[]) => void): () => void;
}

export interface Shape<Row = Record<string, unknown>> {
  get(key: Key): Promise<Row | undefined>;
  getAll(): Promise<Row[]>;
  /** Inserts or replaces a row; returns the outbox entry's id. */
  put(row: Row, options?: WriteOptions): Promise<string>;
  /** Inserts a new row: rejects when a row with its key is there (and the gateway refuses one it holds). */
  add(row: Row, options?: WriteOptions): Promise<string>;
  /** Changes some columns, given as an object or as a function of the current row. */
  update(key: Key, change: Partial<Row> | ((row: Row) => Row), options?: WriteOptions): Promise<string>;
  delete(key: Key, options?: WriteOptions): Promise<string>;
  /** Deletes every row the shape holds, each through the outbox; returns the entries' ids. */
  clear(options?: WriteOptions): Promise<string[]>;
  /** Filters on an index: a declared column, an array for a compound index, or `":key"`. */
  where(index: string | string[]): WhereClause<Row>;
  orderBy(index: string | string[]): Query<Row>;
  query(): Query<Row>;
}

export interface TransactionShape<Row> {
  put(row: Row): void;
  add(row: Row): void;
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
  /** Pushes a failed or abandoned write again (with the rest of its atomic batch), under a new mutation id. */
  retry(id: string): Promise<void>;
  /** Drops a failed or abandoned write (its row already shows the server's). */
  discard(id: string): Promise<void>;
}

export interface Sync {
  on(type: "sync", listener: (event: SyncEvent) => void): () => void;
  on(type: "status", listener: (event: StatusEvent) => void): () => void;
  on(type: "outbox", listener: (event: OutboxEvent) => void): () => void;
  /**
   * Another tab upgrades this database (a new shape or index: this tab closes its connection
   * so it is not blocked, then reopens it and syncs on) or deletes it (`newVersion` null, a
   * sign-out: this tab stays closed).
   */
  on(type: "versionchange", listener: (event: { type: "versionchange"; newVersion: number | null }) => void): () => void;
  /** Resolves once the shape's mirror has caught up with the gateway. */
  ready(shape: string): Promise<void>;
  /**
   * Over every shape: `error` if one failed for good, else `offline` if one cannot reach the
   * gateway (the browser's `offline` event, a failed request, a live stream gone silent),
   * else `connecting` while one has not caught up, else `live`. Changes come as `status` events.
   */
  readonly status: { status: SyncStatus; reason?: string; lastSyncedAt: Date | null };
  /** When a shape last caught up with the gateway, or null. */
  readonly lastSyncedAt: Date | null;
  /** Pushes the outbox and reconnects what backs off now; resolves once every shape is live and the push round ended. */
  syncNow(): Promise<void>;
  shape<Row = Record<string, unknown>>(name: string): Shape<Row>;
  /** Writes that reach the gateway as one atomic batch and roll back together if it is refused. */
  transaction(body: (tx: Transaction) => void | Promise<void>, options?: WriteOptions): Promise<string[]>;
  subscribe<Row>(query: Query<Row>, callback: (rows: Row[]) => void): () => void;
  readonly outbox: Outbox;
  /** Whether this tab is the one syncing with the gateway (one per database, elected with Web Locks). */
  readonly leading: boolean;
  readonly database: IDBDatabase;
  /** Stops syncing; the mirror and the outbox stay for the next `openSync`. */
  close(): Promise<void>;
  /**
   * Stops syncing for this identity; `clear: true` deletes its local data (rows, positions,
   * pending writes). Without it the data waits for the identity's next `openSync`.
   */
  signOut(options?: { clear?: boolean }): Promise<void>;
}

export function openSync(options: SyncOptions): Promise<Sync>;
