// Local queries on a shape's declared indexes, Dexie-style: build with where/orderBy, `or`
// and the modifiers, narrow with filter/and, run with toArray/first/count/each, follow with
// sync.subscribe(query, cb).

import { indexKey, indexKeyPrefix } from "./pkg/sdk.js";

export class Query {
  #sync;
  #index = null;
  #range = null;
  /** Further clauses joined with `or`: `{index, range}`. */
  #alternatives = [];
  /** Predicates rows must also meet (`filter`/`and`). */
  #filters = [];
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
    return this.#clause(indexName(index), (clause) => ((this.#index = clause.index), (this.#range = clause.range)));
  }

  /** Rows matching this query or the range that follows on `index` (each row once). */
  or(index) {
    const alternative = { index: indexName(index), range: null };
    this.#alternatives.push(alternative);
    return this.#clause(alternative.index, (clause) => Object.assign(alternative, clause));
  }

  /** Keeps only the rows for which `predicate(row)` is true (run after the index range). */
  filter(predicate) {
    this.#filters.push(predicate);
    return this;
  }

  /** The same as `filter`. */
  and(predicate) {
    return this.filter(predicate);
  }

  /**
   * The comparisons of a `where` or `or` on `index`. IndexedDB cannot index booleans or
   * bigints (bool and int8 columns): such values are compared on the column's index keys,
   * which the SDK keeps for every one-column index.
   */
  #clause(index, set) {
    const by = (range, ...values) => {
      if (values.some((v) => typeof v === "boolean" || typeof v === "bigint")) {
        if (index === null || index === ":key" || index.includes("+")) {
          throw new Error(`where(${JSON.stringify(index)}): booleans and bigints can only be matched on a one-column index`);
        }
        set({ index: `${indexKeyPrefix()}${index}`, range: range(indexKey) });
      } else {
        set({ index, range: range((v) => v) });
      }
      return this;
    };
    return {
      equals: (v) => by((key) => IDBKeyRange.only(key(v)), v),
      above: (v) => by((key) => IDBKeyRange.lowerBound(key(v), true), v),
      aboveOrEqual: (v) => by((key) => IDBKeyRange.lowerBound(key(v)), v),
      below: (v) => by((key) => IDBKeyRange.upperBound(key(v), true), v),
      belowOrEqual: (v) => by((key) => IDBKeyRange.upperBound(key(v)), v),
      between: (low, high, includeLow = true, includeHigh = false) =>
        by((key) => IDBKeyRange.bound(key(low), key(high), !includeLow, !includeHigh), low, high),
      startsWith: (prefix) => by(() => IDBKeyRange.bound(prefix, `${prefix}\uffff`)),
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
    if (this.#collected()) return this.#collect();
    const source = this.#source(this.#index);
    return withoutIndexKeys(await this.#rows(source), source.objectStore ?? source);
  }

  async #rows(source) {
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
    if (this.#collected()) return (await this.#collect()).length;
    const all = await request(this.#source(this.#index).count(this.#range));
    return Math.max(0, Math.min(all - this.#offset, this.#limit));
  }

  /** Calls `callback(row)` for each matching row, in order. */
  async each(callback) {
    for (const row of await this.toArray()) callback(row);
  }

  /**
   * With `or` or `filter`: every range's rows, each once (by primary key), in the first
   * range's index order and then in each added range's order; filtered, then reversed,
   * offset and limited.
   */
  #collected() {
    return this.#alternatives.length > 0 || this.#filters.length > 0;
  }

  async #collect() {
    const store = this.#sync.database.transaction(this.shape).objectStore(this.shape);
    const clauses = [{ index: this.#index, range: this.#range }, ...this.#alternatives];
    const seen = new Set();
    let rows = [];
    for (const { index, range } of clauses) {
      const found = await entries(this.#source(index, store), range);
      for (const [key, row] of found) {
        const id = JSON.stringify(key);
        if (!seen.has(id)) seen.add(id), rows.push(row);
      }
    }
    rows = withoutIndexKeys(rows, store).filter((row) => this.#filters.every((f) => f(row)));
    if (this.#reverse) rows.reverse();
    return rows.slice(this.#offset, this.#offset + this.#limit);
  }

  /** Calls `callback(rows)` now and whenever the result changes; returns an unsubscribe function. */
  subscribe(callback) {
    return this.#sync.subscribe(this, callback);
  }

  #source(index, store = this.#sync.database.transaction(this.shape).objectStore(this.shape)) {
    if (index === null || index === ":key") return store;
    if (!store.indexNames.contains(index)) {
      const declared = index.replace(indexKeyPrefix(), "");
      throw new Error(`shape ${JSON.stringify(this.shape)} has no index ${JSON.stringify(declared)}: declare it in openSync's shapes: {${this.shape}: {indexes: [...]}}`);
    }
    return store.index(index);
  }
}

/** Takes the SDK's index keys (see `#clause`) off rows read from `store`: one per index of them. */
function withoutIndexKeys(rows, store) {
  const prefix = indexKeyPrefix();
  const keys = [...store.indexNames].filter((name) => name.startsWith(prefix));
  if (keys.length) for (const row of rows) for (const k of keys) delete row[k];
  return rows;
}

function indexName(index) {
  return Array.isArray(index) ? index.join("+") : index;
}

/** `[primary key, row]` of every row in `range` of a store or index, in its order. */
function entries(source, range) {
  return new Promise((resolve, reject) => {
    const out = [];
    const cursor = source.openCursor(range);
    cursor.onerror = () => reject(cursor.error);
    cursor.onsuccess = () => {
      const c = cursor.result;
      if (!c) return resolve(out);
      out.push([c.primaryKey, c.value]);
      c.continue();
    };
  });
}

/** The result of an IndexedDB request. */
export function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
