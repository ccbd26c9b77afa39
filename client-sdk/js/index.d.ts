export interface ShapeOptions {
  /** Table, optionally schema-qualified. */
  table: string;
  /** Row filter (the gateway's where-clause language), with `$1`… for `params`. */
  where?: string;
  columns?: string[];
  params?: string[];
}

export interface SyncOptions {
  /** The gateway's base URL, e.g. `https://sync.example.com`. */
  url: string;
  /** A JWT sent as `Authorization: Bearer …`. */
  token?: string;
  /** Called for a token at start and again when the gateway answers 401. */
  getToken?: () => string | Promise<string>;
  /** IndexedDB database name (default: derived from `url`). */
  database?: string;
  shapes: Record<string, ShapeOptions>;
}

export type Key = string | number | Array<string | number>;

export interface SyncEvent {
  type: "sync";
  shape: string;
  op: "insert" | "update" | "delete";
  key: Key;
  origin: "server" | "local" | "server-tab" | "local-tab";
}

export interface StatusEvent {
  type: "status";
  shape: string;
  status: "connecting" | "live" | "offline" | "error";
  reason?: string;
}

export interface ShapeReader<Row = Record<string, unknown>> {
  get(key: Key): Promise<Row | undefined>;
  getAll(): Promise<Row[]>;
}

export interface Sync {
  on(type: "sync", listener: (event: SyncEvent) => void): () => void;
  on(type: "status", listener: (event: StatusEvent) => void): () => void;
  ready(shape: string): Promise<void>;
  shape<Row = Record<string, unknown>>(name: string): ShapeReader<Row>;
  close(): void;
}

export function openSync(options: SyncOptions): Promise<Sync>;
