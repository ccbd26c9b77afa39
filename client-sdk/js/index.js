// The SDK's JavaScript face: loads the wasm core once and wraps its engine in an idiomatic
// API. Sync, outbox and storage logic live in Rust (client-sdk/src); this file adapts it,
// elects the tab that syncs (Web Locks) and relays events between tabs (BroadcastChannel).
import init, { Engine } from "./pkg/sdk.js";
import { Query, request } from "./query.js";

let loaded;

/**
 * Opens (or reopens) the local mirror of `shapes` and starts syncing it with the gateway.
 * @param {import("./index.d.ts").SyncOptions} options
 */
export async function openSync(options) {
  loaded ??= init();
  await loaded;
  const strategy = options.strategy ?? "local-first";
  if (strategy !== "local-first" && strategy !== "network-first") {
    throw new Error(`openSync: strategy ${JSON.stringify(strategy)}: use "local-first" or "network-first"`);
  }
  if (options.version !== undefined && !(Number.isInteger(options.version) && options.version > 0)) {
    throw new Error(`openSync: version ${JSON.stringify(options.version)}: use a positive integer (your app's schema version)`);
  }
  // The local database belongs to one identity (the URL and the token's subject): by
  // default each gets its own, and one stamped with another identity is refused.
  const engine = await Engine.open(options);
  const sync = new Sync(engine, options, strategy);
  try {
    await sync.upgrade(options.version, options.upgrade);
  } catch (e) {
    await sync.close();
    throw e;
  }
  return sync;
}

/** Where the app's schema version is kept, beside the SDK's own records. */
const APP_VERSION = "\u0000app_version";
const POSITIONS = "_positions";

class Sync {
  #engine;
  #options;
  #database;
  #strategy;
  #listeners = { sync: new Set(), status: new Set(), outbox: new Set(), versionchange: new Set() };
  #live = new Map();
  #channel;
  #leading = false;
  #release;
  #closed = false;
  /** Each shape's latest status: `{status, reason}`. */
  #shapes = new Map();
  #lastSyncedAt;
  #onOnline = () => this.#engine.online();
  #onOffline = () => this.#engine.offline();

  constructor(engine, options, strategy) {
    this.#engine = engine;
    this.#options = options;
    const database = (this.#database = engine.databaseName());
    this.#strategy = strategy;
    for (const name of Object.keys(options.shapes)) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      this.#live.set(name, { promise, resolve, live: false });
      this.#shapes.set(name, { status: "connecting" });
    }
    // Other tabs of this database hear every event with origin `…-tab`, and wake the
    // leader's outbox when they write.
    this.#channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`gateway-sync:${database}`) : null;
    if (this.#channel) {
      this.#channel.onmessage = ({ data }) => {
        if (data.type === "push") {
          if (this.#leading) this.#engine.wake();
        } else if (data.type === "changes") {
          this.#changes(data.changes, data.origin);
        } else if (data.type === "hello") {
          if (this.#leading) for (const [shape, s] of this.#live) if (s.live) this.#channel.postMessage({ type: "status", shape, status: "live" });
        } else {
          this.#dispatch(data);
        }
      };
      this.#channel.postMessage({ type: "hello" });
    }
    addEventListener("online", this.#onOnline);
    addEventListener("offline", this.#onOffline);
    this.#attach(engine);
  }

  /** Listens to `engine` and, once this tab holds the database's lock, lets it lead. */
  #attach(engine) {
    engine.on((event) => {
      if (event.type === "versionchange") return void this.#versionChange(engine, event);
      if (event.type === "changes") {
        this.#changes(event.changes, event.origin);
        // One message per transaction of changes, however many rows it touched, sent after
        // this tab's own reactions (a 100,000-row snapshot takes a few hundred ms to clone).
        const relayed = { ...event, origin: `${event.origin}-tab` };
        return void setTimeout(() => this.#closed || this.#channel?.postMessage(relayed));
      }
      this.#dispatch(event);
      this.#channel?.postMessage(event);
    });
    // The leader follows only its own shapes: a tab that just added stores (a newer
    // schema) takes the lead from the tab that holds it.
    this.#requestLead(engine, engine.upgradedSchema());
  }

  /**
   * One tab at a time follows the shapes and pushes the outbox (the database's Web Lock);
   * when it closes, the lock passes to another tab. A leader whose lock is stolen resigns
   * and queues to lead again.
   */
  #requestLead(engine, steal) {
    const lead = () => {
      if (this.#closed || engine !== this.#engine) return;
      this.#leading = true;
      engine.lead();
      if (navigator.onLine === false) engine.offline();
    };
    if (!navigator.locks) return lead();
    const held = new Promise((r) => (this.#release = r));
    navigator.locks.request(`gateway-sync:${this.#database}`, { steal }, () => (lead(), held)).catch(() => {
      if (this.#closed || engine !== this.#engine) return;
      this.#leading = false;
      engine.resign();
      this.#requestLead(engine, false);
    });
  }

  /**
   * Another tab upgrades the database (a new shape or index) or deletes it (a sign-out):
   * the engine has closed its connection so that tab is not blocked. After an upgrade
   * this tab opens the database again, with the new schema, and syncs on; after a
   * deletion it stays closed.
   */
  async #versionChange(engine, event) {
    if (engine !== this.#engine) return;
    this.#leading = false;
    this.#release?.();
    this.#dispatch(event);
    if (event.newVersion === null || event.newVersion === undefined) return void (await this.close());
    const reopened = await Engine.open(this.#options);
    if (this.#closed) return void reopened.close();
    this.#engine = reopened;
    this.#attach(reopened);
  }

  /**
   * Runs the app's `upgrade({from, to, sync})` when the database holds an older app schema
   * version than `version` (0: none yet), then records `version`; one tab at a time.
   */
  async upgrade(version, upgrade) {
    if (version === undefined) return;
    const run = async () => {
      const db = this.#engine.database();
      const from = (await request(db.transaction(POSITIONS).objectStore(POSITIONS).get(APP_VERSION))) ?? 0;
      if (from >= version) return;
      await upgrade?.({ from, to: version, sync: this });
      const tx = db.transaction(POSITIONS, "readwrite");
      await request(tx.objectStore(POSITIONS).put(version, APP_VERSION));
    };
    if (navigator.locks) await navigator.locks.request(`gateway-sync-upgrade:${this.#database}`, run);
    else await run();
  }

  /** A `sync` event per changed row. */
  #changes(changes, origin) {
    const listeners = this.#listeners.sync;
    if (!listeners.size) return;
    for (const change of changes) {
      const event = { type: "sync", origin, ...change };
      for (const listener of listeners) listener(event);
    }
  }

  #dispatch(event) {
    if (event.type === "status") {
      this.#shapes.set(event.shape, { status: event.status, reason: event.reason });
      if (event.lastSyncedAt) this.#lastSyncedAt = event.lastSyncedAt;
    }
    if (event.type === "status" && event.status === "live") {
      const s = this.#live.get(event.shape);
      if (s) (s.live = true), s.resolve();
    }
    for (const listener of this.#listeners[event.type] ?? []) listener(event);
  }

  /**
   * Where syncing stands, over every shape: `error` if one failed for good, else `offline`
   * if one cannot reach the gateway (or the browser is offline), else `connecting` while
   * one has not caught up, else `live`; with the reason and when a shape last caught up.
   */
  get status() {
    const shapes = [...this.#shapes.values()];
    const status = ["error", "offline", "connecting"].find((s) => shapes.some((x) => x.status === s)) ?? "live";
    return { status, reason: shapes.find((x) => x.status === status)?.reason, lastSyncedAt: this.lastSyncedAt };
  }

  /** When a shape last caught up with the gateway (this tab's, or the leading tab's), or null. */
  get lastSyncedAt() {
    const at = this.#engine.lastSyncedAt() ?? this.#lastSyncedAt;
    return at ? new Date(at) : null;
  }

  /**
   * Syncs now: pushes the outbox, reconnects shapes that back off after a failure, and
   * resolves once every shape is live and a push round started after the call has ended.
   * Rejects with the reason if a shape failed for good.
   */
  async syncNow() {
    if (this.#closed) throw new Error("syncNow: this sync is closed; call openSync again");
    if (!this.#leading) this.#channel?.postMessage({ type: "push" });
    await Promise.all([this.#leading ? this.#engine.pushNow() : null, this.#allLive()]);
  }

  #allLive() {
    return new Promise((resolve, reject) => {
      const check = () => {
        const { status, reason } = this.status;
        if (status === "error") stop(), reject(new Error(`syncNow: ${reason}`));
        else if (status === "live") stop(), resolve();
      };
      const stop = this.on("status", check);
      this.#engine.wake();
      check();
    });
  }

  /** Whether this tab is the one syncing with the gateway. */
  get leading() {
    return this.#leading;
  }

  /** Calls `listener` on `sync`, `status`, `outbox` or `versionchange` events; returns an unsubscribe function. */
  on(type, listener) {
    const set = this.#listeners[type];
    if (!set) throw new Error(`unknown event ${JSON.stringify(type)}; use "sync", "status", "outbox" or "versionchange"`);
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Resolves once the shape's mirror has caught up with the gateway. */
  ready(name) {
    const live = this.#live.get(name);
    if (!live) throw new Error(`no shape named ${JSON.stringify(name)}`);
    return live.promise;
  }

  /** One shape: local reads, queries and writes. */
  shape(name) {
    if (!this.#live.has(name)) throw new Error(`no shape named ${JSON.stringify(name)}; openSync was given: ${[...this.#live.keys()]}`);
    // `this.#engine` is read at each call: another tab's upgrade replaces it.
    const write = (op, key, value, options) => this.#write([{ shape: name, op, key, value }], false, options).then((ids) => ids[0]);
    const query = () => new Query(this, name);
    return {
      get: (key) => this.#engine.get(name, key),
      getAll: () => this.#engine.getAll(name),
      put: (row, options) => write("put", undefined, row, options),
      add: (row, options) => write("add", undefined, row, options),
      update: (key, change, options) => write("update", key, change, options),
      delete: (key, options) => write("delete", key, undefined, options),
      clear: (options) => this.#clear(name, options),
      where: (index) => query().where(index),
      orderBy: (index) => query().orderBy(index),
      query,
    };
  }

  /**
   * Runs `body(tx)`, whose writes (`tx.shape(name).put/update/delete`) reach the gateway as
   * one atomic batch and roll back together if it is refused. Nothing is written if `body` throws.
   */
  async transaction(body, options) {
    const writes = [];
    const tx = {
      shape: (shape) => ({
        put: (row) => void writes.push({ shape, op: "put", value: row }),
        add: (row) => void writes.push({ shape, op: "add", value: row }),
        update: (key, change) => void writes.push({ shape, op: "update", key, value: change }),
        delete: (key) => void writes.push({ shape, op: "delete", key }),
      }),
    };
    await body(tx);
    return writes.length ? this.#write(writes, true, options) : [];
  }

  /** Deletes every row the shape holds (each delete its own outbox entry); returns their ids. */
  async #clear(shape, options) {
    const keys = await request(this.#engine.database().transaction(shape).objectStore(shape).getAllKeys());
    return keys.length ? this.#write(keys.map((key) => ({ shape, op: "delete", key })), false, options) : [];
  }

  async #write(writes, atomic, options) {
    const networkFirst = (options?.strategy ?? this.#strategy) === "network-first";
    const settled = networkFirst ? this.#settlement() : null;
    const ids = await this.#engine.write(writes, atomic, networkFirst);
    this.#channel?.postMessage({ type: "push" });
    if (settled) await settled.wait(ids);
    return ids;
  }

  /** Waits for outbox entries to be applied; rejects with the reason when one is refused. */
  #settlement() {
    const outcomes = new Map();
    let wake;
    const stop = this.on("outbox", ({ entry }) => {
      if (entry.status !== "pending") outcomes.set(entry.id, entry), wake?.();
    });
    return {
      wait: async (ids) => {
        try {
          while (!ids.every((id) => outcomes.has(id))) await new Promise((r) => (wake = r));
        } finally {
          stop();
        }
        const failed = ids.map((id) => outcomes.get(id)).find((e) => e.status !== "synced");
        if (failed) throw Object.assign(new Error(`the gateway did not apply the write: ${failed.error}`), { entry: failed });
      },
    };
  }

  /** The outbox: local writes and where they stand. */
  get outbox() {
    return {
      stats: () => this.#engine.outboxStats(),
      pending: () => this.#engine.outboxEntries("pending"),
      entries: (status) => this.#engine.outboxEntries(status),
      clearSynced: () => this.#engine.clearSynced(),
      retry: (id) => this.#engine.outboxRetry(id),
      discard: (id) => this.#engine.outboxDiscard(id),
    };
  }

  /** The IndexedDB database the mirror lives in (for queries). */
  get database() {
    return this.#engine.database();
  }

  /** Calls `callback(result)` with the query's result now and whenever it changes; returns an unsubscribe function. */
  subscribe(query, callback) {
    let last, running = false, again = false, stopped = false;
    const run = async () => {
      if (running) return void (again = true);
      running = true;
      try {
        do {
          again = false;
          const result = await query.toArray();
          const text = JSON.stringify(result, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
          if (!stopped && text !== last) (last = text), callback(result);
        } while (again && !stopped);
      } finally {
        running = false;
      }
    };
    const stop = this.on("sync", (e) => e.shape === query.shape && run());
    run();
    return () => ((stopped = true), stop());
  }

  /** Stops syncing; the mirror and the outbox stay for the next `openSync`. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    removeEventListener("online", this.#onOnline);
    removeEventListener("offline", this.#onOffline);
    this.#engine.close();
    this.#channel?.close();
    this.#release?.();
  }

  /**
   * Stops syncing for this identity. With `clear: true` its local data (rows, positions,
   * pending writes, client id) is deleted; otherwise it stays for the identity's next
   * `openSync`, and its pending writes are pushed then, with its own token.
   */
  async signOut({ clear = false } = {}) {
    await this.close();
    if (!clear) return;
    // Other tabs of this identity close their connections on `versionchange`.
    await request(indexedDB.deleteDatabase(this.#database));
  }
}
