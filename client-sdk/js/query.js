// Local queries on a shape's declared indexes, Dexie-style: build with where/orderBy and
// the modifiers, run with toArray/first/count, follow with sync.subscribe(query, cb).

export class Query {
  #sync;
  #index = null;
  #range = null;
  #reverse = false;
  #offset = 0;
  #limit = Infinity;

  constructor(sync, shape) {
    this.#sync = sync;
    this.shape = shape;
  }

  /**
   * Filters on an index: a declared column, an array of columns for a compound index, or
   * ":key" for the primary key.
   */
  where(index) {
    this.#index = indexName(index);
    const range = (r) => ((this.#range = r), this);
    return {
      equals: (v) => range(IDBKeyRange.only(v)),
      above: (v) => range(IDBKeyRange.lowerBound(v, true)),
      aboveOrEqual: (v) => range(IDBKeyRange.lowerBound(v)),
      below: (v) => range(IDBKeyRange.upperBound(v, true)),
      belowOrEqual: (v) => range(IDBKeyRange.upperBound(v)),
      between: (low, high, includeLow = true, includeHigh = false) => range(IDBKeyRange.bound(low, high, !includeLow, !includeHigh)),
      startsWith: (prefix) => range(IDBKeyRange.bound(prefix, `${prefix}\uffff`)),
    };
  }

  /** Orders by an index (rows without a value for it are left out, as IndexedDB does). */
  orderBy(index) {
    this.#index = indexName(index);
    return this;
  }

  reverse() {
    this.#reverse = !this.#reverse;
    return this;
  }

  offset(n) {
    this.#offset = n;
    return this;
  }

  limit(n) {
    this.#limit = n;
    return this;
  }

  /** The matching rows. */
  async toArray() {
    const source = this.#source();
    if (!this.#reverse && this.#offset === 0) {
      return request(source.getAll(this.#range, Number.isFinite(this.#limit) ? this.#limit : undefined));
    }
    return new Promise((resolve, reject) => {
      const rows = [];
      let skipped = this.#offset === 0;
      const cursor = source.openCursor(this.#range, this.#reverse ? "prev" : "next");
      cursor.onerror = () => reject(cursor.error);
      cursor.onsuccess = () => {
        const c = cursor.result;
        if (!c || rows.length >= this.#limit) return resolve(rows);
        if (!skipped) return (skipped = true), c.advance(this.#offset);
        rows.push(c.value);
        c.continue();
      };
    });
  }

  async first() {
    const limit = this.#limit;
    this.#limit = 1;
    try {
      return (await this.toArray())[0];
    } finally {
      this.#limit = limit;
    }
  }

  async count() {
    const all = await request(this.#source().count(this.#range));
    return Math.max(0, Math.min(all - this.#offset, this.#limit));
  }

  /** Calls `callback(rows)` now and whenever the result changes; returns an unsubscribe function. */
  subscribe(callback) {
    return this.#sync.subscribe(this, callback);
  }

  #source() {
    const store = this.#sync.database.transaction(this.shape).objectStore(this.shape);
    if (this.#index === null || this.#index === ":key") return store;
    if (!store.indexNames.contains(this.#index)) {
      throw new Error(`shape ${JSON.stringify(this.shape)} has no index ${JSON.stringify(this.#index)}: declare it in openSync's shapes: {${this.shape}: {indexes: [...]}}`);
    }
    return store.index(this.#index);
  }
}

function indexName(index) {
  return Array.isArray(index) ? index.join("+") : index;
}

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
