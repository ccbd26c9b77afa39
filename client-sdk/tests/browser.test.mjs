// The SDK in real headless Chromium against a real gateway and PostgreSQL, started by the
// Rust test that runs this file (gateway/tests/sdk.rs): GATEWAY_URL, DATABASE_URL, PSQL.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { extname, join, normalize } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { chromium } from "playwright-core";

const GATEWAY = process.env.GATEWAY_URL;
const here = new URL(".", import.meta.url).pathname;
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".ts": "text/plain" };

/** Runs SQL with psql; returns its unaligned output. */
function sql(text) {
  return execFileSync(process.env.PSQL, [process.env.DATABASE_URL, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", text], { encoding: "utf8" }).trim();
}

let server, origin, browser;

before(async () => {
  // The page and the SDK come from their own origin, as in an app: requests to the gateway are cross-origin.
  server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/" ? join(here, "page.html") : normalize(join(here, "..", path));
    let body;
    try {
      body = await readFile(file);
    } catch {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  origin = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function openPage(context) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log("page error:", e.message));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.pageReady);
  return page;
}

/** Opens the mirror of `shapes` in the page and waits until every shape is live. */
async function open(page, shapes) {
  await page.evaluate(async ({ url, shapes }) => {
    window.events = [];
    window.sync = await window.openSync({ url, shapes });
    window.sync.on("sync", (e) => window.events.push(e));
    await Promise.all(Object.keys(shapes).map((name) => window.sync.ready(name)));
    window.events = []; // from here on: changes made after the mirror caught up
  }, { url: GATEWAY, shapes });
}

const ITEMS = "select coalesce(json_agg(json_build_object('id', id, 'title', title, 'big', big::text || 'n', 'tags', tags, 'doc', doc, 'done', done) order by id), '[]') from items";

test("the initial mirror equals the table, values typed by the schema", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  const rows = await page.evaluate(async () => window.plain(await window.sync.shape("items").getAll()));
  assert.deepEqual(rows.sort((a, b) => a.id - b.id), JSON.parse(sql(ITEMS)));
  await context.close();
});

test("a change in PostgreSQL reaches IndexedDB whole and fires sync events", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  sql("begin; insert into items (id, title, big, done) values (100, 'new', 5, false); update items set title = 'changed' where id = 1; delete from items where id = 2; commit");
  await page.waitForFunction(() => window.events.length >= 3, null, { timeout: 10_000 });
  const seen = await page.evaluate(() => window.events.map((e) => `${e.op} ${e.key} ${e.origin}`));
  assert.deepEqual(seen.sort(), ["delete 2 server", "insert 100 server", "update 1 server"]);
  const [changed, gone, added] = await page.evaluate(async () => {
    const items = window.sync.shape("items");
    return window.plain([await items.get(1), (await items.get(2)) === undefined, await items.get(100)]);
  });
  assert.equal(changed.title, "changed");
  assert.equal(changed.big, "1n", "an update keeps the columns it did not change");
  assert.ok(gone, "the deleted row is gone");
  assert.equal(added.title, "new");
  await context.close();
});

test("a truncate makes the gateway rotate the shape: the store is cleared and resynced", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  sql("truncate items; insert into items (id, title, big, done) values (7, 'after truncate', 7, true)");
  // The shape may be rotated more than once while the truncate is processed; wait until
  // the mirror has equalled the table for a while.
  const expected = JSON.parse(sql(ITEMS));
  let rows, stable = 0;
  for (const started = Date.now(); stable < 3; await new Promise((ok) => setTimeout(ok, 300))) {
    assert.ok(Date.now() - started < 20_000, `the mirror never settled on the table: ${JSON.stringify(rows)}`);
    rows = await page.evaluate(async () => window.plain(await window.sync.shape("items").getAll()));
    stable = isDeepStrictEqual(rows, expected) ? stable + 1 : 0;
  }
  await context.close();
});

test("a reload resumes from the stored offset without a second snapshot", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  const requests = [];
  page.on("request", (r) => r.url().startsWith(GATEWAY) && requests.push(new URL(r.url()).searchParams.get("offset")));
  await page.reload();
  await page.waitForFunction(() => window.pageReady);
  await open(page, { items: { table: "items" } });
  const count = await page.evaluate(async () => (await window.sync.shape("items").getAll()).length);
  assert.equal(count, Number(sql("select count(*) from items")));
  assert.ok(requests.length > 0, "the reloaded page asked the gateway");
  assert.ok(!requests.includes("-1"), `no snapshot again; offsets asked: ${requests}`);
  await context.close();
});
