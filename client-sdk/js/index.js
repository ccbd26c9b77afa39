// The SDK's JavaScript face: loads the wasm core once and wraps its engine in an idiomatic
// API. Sync, outbox and storage logic live in Rust (client-sdk/src); this file adapts it,
// elects the tab that syncs (Web Locks) and relays events between tabs (BroadcastChannel).
import init, { Engine } from "./pkg/sdk.js";
import { Query } from "./query.js";

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
  const engine = await Engine.open(options);
  const database = options.database ?? `gateway-sync ${options.url}`;
  return new Sync(engine, Object.keys(options.shapes), database, strategy);
}

class Sync {
  #engine;
  #strategy;
  #listeners = { sync: new Set(), status: new Set(), outbox: new Set() };
  #live = new Map();
  #channel;
  #leading = false;
  #release;
  #closed = false;
  #onOnline = () => this.#engine.wake();

  constructor(engine, names, database, strategy) {
    this.#engine = engine;
    this.#strategy = strategy;
    for (const name of names) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      this.#live.set(name, { promise, resolve, live: false });
    }
    // Other tabs of this database hear every event with origin `…-tab`, and wake the
    // leader's outbox when they write.
    this.#channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`gateway-sync:${database}`) : null;
    engine.on((event) => {
      this.#dispatch(event);
      this.#channel?.postMessage(event.type === "sync" ? { ...event, origin: `${event.origin}-tab` } : event);
    });
    if (this.#channel) {
      this.#channel.onmessage = ({ data }) => {
        if (data.type === "push") {
          if (this.#leading) engine.wake();
        } else if (data.type === "hello") {
          if (this.#leading) for (const [shape, s] of this.#live) if (s.live) this.#channel.postMessage({ type: "status", shape, status: "live" });
        } else {
          this.#dispatch(data);
        }
      };
      this.#channel.postMessage({ type: "hello" });
    }
    addEventListener("online", this.#onOnline);
    // One tab at a time follows the shapes and pushes the outbox; when it closes, the
    // lock passes to another tab.
    const lead = () => {
      if (this.#closed) return;
      this.#leading = true;
      engine.lead();
    };
    if (navigator.locks) {
      const held = new Promise((r) => (this.#release = r));
      navigator.locks.request(`gateway-sync:${database}`, () => (lead(), held));
    } else {
      lead();
    }
  }

  #dispatch(event) {
    if (event.type === "status" && event.status === "live") {
      const s = this.#live.get(event.shape);
      if (s) (s.live = true), s.resolve();
    }
    for (const listener of this.#listeners[event.type] ?? []) listener(event);
  }

  /** Whether this tab is the one syncing with the gateway. */
  get leading() {
    return this.#leading;
  }

  /** Calls `listener` on `sync`, `status` or `outbox` events; returns an unsubscribe function. */
  on(type, listener) {
    const set = this.#listeners[type];
    if (!set) throw new Error(`unknown event ${JSON.stringify(type)}; use "sync", "status" or "outbox"`);
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
    const engine = this.#engine;
    const write = (op, key, value, options) => this.#write([{ shape: name, op, key, value }], false, options).then((ids) => ids[0]);
    const query = () => new Query(this, name);
    return {
      get: (key) => engine.get(name, key),
      getAll: () => engine.getAll(name),
      put: (row, options) => write("put", undefined, row, options),
      update: (key, change, options) => write("update", key, change, options),
      delete: (key, options) => write("delete", key, undefined, options),
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
        update: (key, change) => void writes.push({ shape, op: "update", key, value: change }),
        delete: (key) => void writes.push({ shape, op: "delete", key }),
      }),
    };
    await body(tx);
    return writes.length ? this.#write(writes, true, options) : [];
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
    const engine = this.#engine;
    return {
      stats: () => engine.outboxStats(),
      pending: () => engine.outboxEntries("pending"),
      entries: (status) => engine.outboxEntries(status),
      clearSynced: () => engine.clearSynced(),
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
  close() {
    this.#closed = true;
    removeEventListener("online", this.#onOnline);
    this.#engine.close();
    this.#channel?.close();
    this.#release?.();
  }
}
