// The SDK's browser benchmark, run by gateway/benches/sdk.rs (GATEWAY_URL, BENCH_ROWS,
// BENCH_ROUNDS): snapshot mirroring rate against Dexie 4's bulkPut and a bare IndexedDB
// loop, cross-tab write latency against a bare BroadcastChannel message, and the bundle size. Rounds interleave;
// medians are reported, since absolute times on shared machines drift.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, servePage } from "./helpers.mjs";

const GATEWAY = process.env.GATEWAY_URL;
const ROWS = Number(process.env.BENCH_ROWS ?? 100_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const here = new URL(".", import.meta.url).pathname;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const { server, origin } = await servePage();
// A profile on disk, as a user's browser has: an incognito context keeps IndexedDB in
// memory, which is several times slower in Chromium.
const profile = await mkdtemp(join(tmpdir(), "sdk-bench-"));
const context = await chromium.launchPersistentContext(profile, CHROMIUM);
const page = await context.newPage();
await page.goto(`${origin}/`);
await page.waitForFunction(() => window.pageReady);

// The three loaders, each from the same gateway and into a database of its own, deleted
// after the run so every round starts alike. `fetchShape` is the protocol's requests, as a
// hand-written app makes them; rows arrive with their values as text.
const loaders = {
  // The bare loop: every row put in one IndexedDB transaction, values left as text.
  bare: async ({ url, database }) => {
    const started = performance.now();
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open(database, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("rows");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
    const rows = await window.fetchShape(url, () => {});
    const tx = db.transaction("rows", "readwrite");
    const store = tx.objectStore("rows");
    for (const row of rows) store.put(row, Number(row.id));
    await new Promise((ok) => (tx.oncomplete = ok));
    db.close();
    return { rows: rows.length, ms: performance.now() - started };
  },
  // Dexie 4 as its docs show it: a table keyed by id, each response's rows in one bulkPut.
  dexie: async ({ url, database }) => {
    const { Dexie } = await import("/tests/node_modules/dexie/dist/dexie.mjs");
    const started = performance.now();
    const db = new Dexie(database);
    db.version(1).stores({ wide: "id" });
    await db.open();
    let count = 0;
    const pending = [];
    await window.fetchShape(url, (rows) => pending.push(rows));
    for (const rows of pending) {
      await db.wide.bulkPut(rows.map((row) => ({ ...row, id: Number(row.id) })));
      count += rows.length;
    }
    db.close();
    return { rows: count, ms: performance.now() - started };
  },
  // The SDK: typed rows, positions stored, events for each change.
  sdk: async ({ url, database }) => {
    const started = performance.now();
    const sync = await window.openSync({ url, database, shapes: { wide: { table: "wide" } } });
    await sync.ready("wide");
    const ms = performance.now() - started;
    const rows = (await sync.shape("wide").getAll()).length;
    await sync.close();
    return { rows, ms };
  },
};

await page.evaluate(() => {
  // The shape from offset -1 to up-to-date; `each(rows)` per response; resolves to every row.
  window.fetchShape = async (url, each) => {
    const all = [];
    let offset = "-1", handle = null;
    for (;;) {
      const response = await fetch(`${url}/v1/shape?table=wide&offset=${offset}${handle ? `&handle=${handle}` : ""}`);
      offset = response.headers.get("electric-offset");
      handle = response.headers.get("electric-handle");
      const body = await response.json();
      const rows = body.filter((m) => m.value).map((m) => m.value);
      each(rows);
      all.push(...rows);
      if (body.some((m) => m.headers?.control === "up-to-date")) return all;
    }
  };
});

async function load(kind, database) {
  const result = await page.evaluate(`(${loaders[kind]})(${JSON.stringify({ url: GATEWAY, database })})`);
  await page.evaluate((name) => new Promise((ok) => (indexedDB.deleteDatabase(name).onsuccess = ok)), database);
  if (result.rows !== ROWS) throw new Error(`${kind} mirrored ${result.rows} rows of ${ROWS}`);
  return ROWS / (result.ms / 1000);
}

console.log(`sdk mirror: ${ROWS} rows from the gateway into IndexedDB, ${ROUNDS} interleaved rounds (order rotates each round)`);
await load("bare", "warm-up");
const ratios = { dexie: [], bare: [] }, rates = [];
for (let round = 1; round <= ROUNDS; round++) {
  const kinds = ["bare", "dexie", "sdk"];
  const order = [...kinds.slice(round % 3), ...kinds.slice(0, round % 3)];
  const rate = {};
  for (const kind of order) rate[kind] = await load(kind, `${kind}-${round}`);
  console.log(`  round ${round}: bare loop ${rate.bare.toFixed(0)} rows/s, Dexie bulkPut ${rate.dexie.toFixed(0)} rows/s, sdk ${rate.sdk.toFixed(0)} rows/s: sdk / Dexie ${(rate.sdk / rate.dexie).toFixed(2)}, sdk / bare ${(rate.sdk / rate.bare).toFixed(2)}`);
  ratios.dexie.push(rate.sdk / rate.dexie);
  ratios.bare.push(rate.sdk / rate.bare);
  rates.push(rate.sdk);
}
console.log(`sdk mirror: ${median(rates).toFixed(0)} rows/s; sdk / Dexie bulkPut median ${median(ratios.dexie).toFixed(2)} (target ≥ 1.0), sdk / bare loop median ${median(ratios.bare).toFixed(2)}`);

// Cross-tab latency: a write in a follower tab until the leader tab's `sync` event, against
// a bare BroadcastChannel message between the same two tabs.
const other = await context.newPage();
await other.goto(page.url());
await other.waitForFunction(() => window.pageReady);
for (const p of [page, other]) {
  await p.evaluate(async (url) => {
    window.sync = await window.openSync({ url, database: "latency", shapes: { wide: { table: "wide" } } });
    await window.sync.ready("wide");
    window.probe = new BroadcastChannel("probe");
  }, GATEWAY);
}
const WRITES = 30;
const latency = { sdk: [], channel: [] };
for (let i = 0; i < WRITES; i++) {
  const seen = page.evaluate((id) => new Promise((ok) => {
    const stop = window.sync.on("sync", (e) => e.key === id && e.origin === "local-tab" && (stop(), ok(performance.now() + performance.timeOrigin)));
  }), ROWS + 1 + i);
  const sent = await other.evaluate(async (id) => {
    const t = performance.now() + performance.timeOrigin;
    await window.sync.shape("wide").put({ id, title: "latency probe", big: 1n, amount: 1, done: false, note: "" });
    return t;
  }, ROWS + 1 + i);
  latency.sdk.push((await seen) - sent);
  const heard = page.evaluate(() => new Promise((ok) => (window.probe.onmessage = () => ok(performance.now() + performance.timeOrigin))));
  const posted = await other.evaluate(() => ((window.probe.postMessage("x"), performance.now() + performance.timeOrigin)));
  latency.channel.push((await heard) - posted);
}
console.log(`sdk cross-tab: local write → visible in another tab, median ${median(latency.sdk).toFixed(1)} ms (max ${Math.max(...latency.sdk).toFixed(1)}); bare BroadcastChannel message median ${median(latency.channel).toFixed(1)} ms`);

const files = ["js/pkg/sdk_bg.wasm", "js/pkg/sdk.js", "js/index.js", "js/query.js"];
const bytes = (await Promise.all(files.map((f) => readFile(join(here, "..", f))))).reduce((n, b) => n + gzipSync(b, { level: 9 }).length, 0);
console.log(`sdk bundle: ${(bytes / 1024).toFixed(0)} KiB gzipped, wasm + JS (budget 250 KB)`);
await context.close();
await rm(profile, { recursive: true, force: true });
server.close();
