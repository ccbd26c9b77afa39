// The SDK's browser benchmark, run by gateway/benches/sdk.rs (GATEWAY_URL, BENCH_ROWS,
// BENCH_ROUNDS): snapshot mirroring rate against a hand-written reference, cross-tab write
// latency against a bare BroadcastChannel message, and the bundle size. Rounds interleave;
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

// The reference: the same shape fetched with the protocol's requests and every row put in
// one IndexedDB transaction, values left as text.
async function reference(database) {
  return page.evaluate(async ({ url, database }) => {
    const started = performance.now();
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open(database, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("rows");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
    const messages = [];
    let offset = "-1", handle = null;
    for (;;) {
      const response = await fetch(`${url}/v1/shape?table=wide&offset=${offset}${handle ? `&handle=${handle}` : ""}`);
      offset = response.headers.get("electric-offset");
      handle = response.headers.get("electric-handle");
      const body = await response.json();
      messages.push(...body.filter((m) => m.value));
      if (body.some((m) => m.headers?.control === "up-to-date")) break;
    }
    const tx = db.transaction("rows", "readwrite");
    const store = tx.objectStore("rows");
    for (const m of messages) store.put(m.value, Number(m.value.id));
    await new Promise((ok) => (tx.oncomplete = ok));
    db.close();
    return { rows: messages.length, ms: performance.now() - started };
  }, { url: GATEWAY, database });
}

async function sdk(database) {
  return page.evaluate(async ({ url, database }) => {
    const started = performance.now();
    const sync = await window.openSync({ url, database, shapes: { wide: { table: "wide" } } });
    await sync.ready("wide");
    const ms = performance.now() - started;
    const rows = (await sync.shape("wide").getAll()).length;
    sync.close();
    return { rows, ms };
  }, { url: GATEWAY, database });
}

console.log(`sdk mirror: ${ROWS} rows, ${ROUNDS} interleaved rounds (the shape's log is built before round 1)`);
await reference("warm-up");
const ratios = [], rates = [];
for (let round = 1; round <= ROUNDS; round++) {
  const ref = await reference(`reference-${round}`);
  const ours = await sdk(`sdk-${round}`);
  if (ours.rows !== ROWS || ref.rows !== ROWS) throw new Error(`rows mirrored: sdk ${ours.rows}, reference ${ref.rows}, table ${ROWS}`);
  const [refRate, rate] = [ROWS / (ref.ms / 1000), ROWS / (ours.ms / 1000)];
  console.log(`  round ${round}: reference ${refRate.toFixed(0)} rows/s, sdk ${rate.toFixed(0)} rows/s (typed, positions stored), ratio ${(rate / refRate).toFixed(2)}`);
  ratios.push(rate / refRate);
  rates.push(rate);
}
console.log(`sdk mirror: ${median(rates).toFixed(0)} rows/s (target ≥ 20000), sdk / reference median ${median(ratios).toFixed(2)}`);

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
