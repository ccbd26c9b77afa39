// The SDK's JavaScript face: loads the wasm core once and wraps its engine in an idiomatic
// API. The sync logic lives in Rust (client-sdk/src); this file only adapts it.
import init, { Engine } from "./pkg/sdk.js";

let loaded;

/**
 * Opens (or reopens) the local mirror of `shapes` and starts syncing it with the gateway.
 * @param {import("./index.d.ts").SyncOptions} options
 */
export async function openSync(options) {
  loaded ??= init();
  await loaded;
  const engine = await Engine.open(options);
  const sync = new Sync(engine, Object.keys(options.shapes));
  engine.start();
  return sync;
}

class Sync {
  #engine;
  #listeners = { sync: new Set(), status: new Set() };
  #live = new Map();

  constructor(engine, names) {
    this.#engine = engine;
    for (const name of names) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      this.#live.set(name, { promise, resolve });
    }
    engine.on((event) => {
      if (event.type === "status" && event.status === "live") this.#live.get(event.shape)?.resolve();
      for (const listener of this.#listeners[event.type] ?? []) listener(event);
    });
  }

  /** Calls `listener` on `sync` (a row changed) or `status` events; returns an unsubscribe function. */
  on(type, listener) {
    const set = this.#listeners[type];
    if (!set) throw new Error(`unknown event ${JSON.stringify(type)}; use "sync" or "status"`);
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Resolves once the shape's mirror has caught up with the gateway. */
  ready(name) {
    const live = this.#live.get(name);
    if (!live) throw new Error(`no shape named ${JSON.stringify(name)}`);
    return live.promise;
  }

  /** Local reads of one shape's rows. */
  shape(name) {
    const engine = this.#engine;
    return {
      get: (key) => engine.get(name, key),
      getAll: () => engine.getAll(name),
    };
  }

  /** Stops syncing; the mirror stays for the next `openSync`. */
  close() {
    this.#engine.close();
  }
}
