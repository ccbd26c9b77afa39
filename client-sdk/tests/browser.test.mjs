// The SDK in real headless Chromium against a real gateway and PostgreSQL, started by the
// Rust test that runs this file (gateway/tests/sdk.rs): GATEWAY_URL, DATABASE_URL, PSQL.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { chromium } from "playwright-core";
import { CHROMIUM, servePage, sql, until } from "./helpers.mjs";

const GATEWAY = process.env.GATEWAY_URL;
const TOKEN = process.env.TOKEN;
let server, origin, browser;

before(async () => {
  ({ server, origin } = await servePage());
  browser = await chromium.launch(CHROMIUM);
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

/** Opens the mirror of `shapes` in the page; waits until every shape is live unless `wait` is false. */
async function open(page, shapes, { wait = true } = {}) {
  await page.evaluate(async ({ url, token, shapes, wait }) => {
    window.events = [];
    window.outboxEvents = [];
    window.sync = await window.openSync({ url, token, shapes });
    window.sync.on("sync", (e) => window.events.push(e));
    window.sync.on("outbox", (e) => window.outboxEvents.push(e.entry));
    window.statuses = [];
    window.sync.on("status", (e) => window.statuses.push(e));
    if (!wait) return;
    await Promise.all(Object.keys(shapes).map((name) => window.sync.ready(name)));
    window.events = []; // from here on: changes made after the mirror caught up
  }, { url: GATEWAY, token: TOKEN, shapes, wait });
}

/** Cuts (or restores) the page's network to the gateway, as when the device goes offline. */
const toGateway = (url) => url.href.startsWith(GATEWAY);
async function cut(context, offline) {
  if (offline) await context.route(toGateway, (route) => route.abort("internetdisconnected"));
  else await context.unroute(toGateway);
}

const row = (page, shape, key) => page.evaluate(async ({ shape, key }) => window.plain(await window.sync.shape(shape).get(key)), { shape, key });

const ITEMS = "select coalesce(json_agg(json_build_object('id', id, 'title', title, 'big', big::text || 'n', 'tags', tags, 'doc', doc, 'done', done, 'stamp', stamp) order by id), '[]') from items";

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

test("a local write shows at once, reaches PostgreSQL, and comes back with the server's values", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  const shown = await page.evaluate(async () => {
    const items = window.sync.shape("items");
    await items.put({ id: 200, title: "local", big: 200n, tags: ["x"], doc: { k: 1 }, done: false });
    await items.update(5, (row) => ({ ...row, title: `${row.title}!` }));
    await items.update(6, { done: false });
    await items.delete(7);
    return window.plain([await items.get(200), await items.get(5), await items.get(7)]);
  });
  assert.equal(shown[0].title, "local", "the optimistic row is in IndexedDB when put returns");
  assert.equal(shown[0].stamp, undefined, "the server's default is not known yet");
  assert.equal(shown[1].title, "item 5!");
  assert.equal(shown[2], null, "deleted");
  await until("the writes in PostgreSQL", () =>
    sql("select (select title from items where id = 200) = 'local' and (select title from items where id = 5) = 'item 5!' and not (select done from items where id = 6) and not exists (select 1 from items where id = 7)") === "t");
  const back = await until("the server's row", async () => {
    const r = await row(page, "items", 200);
    return r?.stamp === "server" && r;
  });
  assert.deepEqual(back, { id: 200, title: "local", big: "200n", tags: ["x"], doc: { k: 1 }, done: false, stamp: "server" });
  await until("every write synced and back through the stream", async () => {
    const entries = await page.evaluate(() => window.sync.outbox.entries());
    return entries.length === 4 && entries.every((e) => e.status === "synced" && e.echoed);
  });
  assert.deepEqual(await page.evaluate(() => window.sync.outbox.stats()), { pending: 0, synced: 4, failed: 0, abandoned: 0 });
  const origins = await page.evaluate(() => window.events.map((e) => `${e.origin} ${e.op} ${e.key}`));
  assert.ok(origins.includes("local insert 200") && origins.includes("local delete 7"), origins.join(", "));
  assert.equal(await page.evaluate(() => window.sync.outbox.clearSynced()), 4);
  await context.close();
});

test("offline writes are kept across a reload and pushed when back online", { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  await cut(context, true);
  await page.evaluate(async () => {
    const items = window.sync.shape("items");
    await items.put({ id: 300, title: "offline", big: 1n, done: true });
    await items.update(8, { title: "edited offline" });
  });
  await page.reload();
  await page.waitForFunction(() => window.pageReady);
  await open(page, { items: { table: "items" } }, { wait: false });
  const kept = await page.evaluate(async () => {
    const items = window.sync.shape("items");
    return window.plain({ pending: await window.sync.outbox.pending(), added: await items.get(300), edited: await items.get(8) });
  });
  assert.deepEqual(kept.pending.map((e) => `${e.op} ${e.status}`), ["put pending", "update pending"]);
  assert.equal(kept.added.title, "offline");
  assert.equal(kept.edited.title, "edited offline");
  assert.equal(sql("select count(*) from items where id = 300"), "0", "nothing reached the server while offline");
  await cut(context, false);
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  await until("the offline writes in PostgreSQL", () =>
    sql("select count(*) from items where (id = 300 and title = 'offline') or (id = 8 and title = 'edited offline')") === "2");
  await until("the outbox drained", async () => (await page.evaluate(() => window.sync.outbox.stats())).pending === 0);
  await context.close();
});

test("a conflict or a refused transaction rolls the rows back to the server's and reports it", { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" }, notes: { table: "notes", versionColumn: "version" } });
  await cut(context, true);
  await page.evaluate(async () => {
    await window.sync.shape("notes").update(1, { body: "mine" });
    await window.sync.transaction(async (tx) => {
      tx.shape("items").put({ id: 400, title: "in a refused transaction" });
      tx.shape("notes").update(2, { body: "stale" });
    });
  });
  assert.equal((await row(page, "notes", 1)).body, "mine", "optimistic until the gateway answers");
  assert.equal((await row(page, "items", 400)).title, "in a refused transaction");
  sql("update notes set body = 'theirs', version = version + 1");
  await cut(context, false);
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  const failed = await until("three refused writes reported", async () => {
    const events = await page.evaluate(() => window.plain(window.outboxEvents.filter((e) => e.status === "failed")));
    return events.length === 3 && events;
  });
  assert.ok(failed.every((e) => /^(conflict|aborted)/.test(e.error)), JSON.stringify(failed));
  await until("the rows rolled back to the server's", async () => {
    const [one, two, item] = [await row(page, "notes", 1), await row(page, "notes", 2), await row(page, "items", 400)];
    return one?.body === "theirs" && two?.body === "theirs" && item === null;
  });
  assert.equal(sql("select string_agg(body, ',' order by id) from notes"), "theirs,theirs");
  assert.equal(sql("select count(*) from items where id = 400"), "0", "the atomic batch applied nothing");
  assert.deepEqual(await page.evaluate(() => window.sync.outbox.stats()), { pending: 0, synced: 0, failed: 3, abandoned: 0 });
  await context.close();
});

test("two tabs: one leads with one SSE connection per shape, both see each other's writes, the other takes over", { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const live = new Map();
  const count = (page, name) => page.on("request", (r) => {
    const u = new URL(r.url());
    if (r.url().startsWith(GATEWAY) && u.searchParams.get("live") === "true") live.set(name, [...(live.get(name) ?? []), u.searchParams.get("live_sse")]);
  });
  const first = await openPage(context);
  count(first, "first");
  await open(first, { items: { table: "items" } });
  const second = await openPage(context);
  count(second, "second");
  await open(second, { items: { table: "items" } });
  assert.deepEqual(await Promise.all([first, second].map((p) => p.evaluate(() => window.sync.leading))), [true, false]);
  await second.evaluate(() => window.sync.shape("items").put({ id: 500, title: "from the second tab" }));
  await until("the first tab sees the second's write", async () =>
    (await first.evaluate(() => window.events.some((e) => e.key === 500 && e.origin === "local-tab"))) && (await row(first, "items", 500))?.title === "from the second tab");
  await until("the leader pushed it", () => sql("select count(*) from items where id = 500") === "1");
  await first.evaluate(() => window.sync.shape("items").update(500, { title: "from the first tab" }));
  await until("the second tab sees the first's write", async () => (await row(second, "items", 500))?.title === "from the first tab");
  sql("update items set title = 'from the server' where id = 9");
  await until("the second tab hears of a server change through the first", () =>
    second.evaluate(() => window.events.some((e) => e.key === 9 && e.origin === "server-tab")));
  assert.deepEqual(live.get("first").filter((sse) => sse === "true").length, 1, `live requests of the leader: ${live.get("first")}`);
  assert.equal(live.get("second"), undefined, "the second tab made no live request");
  await first.close();
  await until("the second tab leads", () => second.evaluate(() => window.sync.leading));
  sql("update items set title = 'after the handover' where id = 10");
  await until("the new leader follows the shape", async () => (await row(second, "items", 10))?.title === "after the handover");
  await context.close();
});

test("queries on declared indexes, and a live query that re-runs when its rows change", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items", indexes: ["title", ["stamp", "id"]] } });
  const result = await page.evaluate(async () => {
    const items = window.sync.shape("items");
    const titles = (rows) => rows.map((r) => r.title);
    return window.plain({
      startsWith: await items.where("title").startsWith("item 1").count(),
      between: titles(await items.where(":key").between(13, 16).toArray()),
      above: await items.where(":key").above(45).count(),
      top: titles(await items.orderBy("title").reverse().offset(1).limit(2).toArray()),
      first: (await items.where("title").equals("item 3").first())?.id,
      missing: await items.where("title").equals("nope").first(),
    });
  });
  assert.equal(result.startsWith, Number(sql("select count(*) from items where title like 'item 1%'")));
  assert.deepEqual(result.between, ["item 13", "item 14", "item 15"]);
  assert.equal(result.above, Number(sql("select count(*) from items where id > 45")));
  assert.deepEqual(result.top, sql("select string_agg(title, ',') from (select title from items order by title desc offset 1 limit 2) t").split(","));
  assert.equal(result.first, 3);
  assert.equal(result.missing, undefined);
  await page.evaluate(() => {
    window.seen = [];
    window.sync.shape("items").where("title").startsWith("zz").subscribe((rows) => window.seen.push(rows.map((r) => r.title)));
  });
  await until("the first result", () => page.evaluate(() => window.seen.length === 1));
  sql("insert into items (id, title) values (600, 'zz top')");
  await until("the live query re-ran", () => page.evaluate(() => window.seen.length === 2));
  assert.deepEqual(await page.evaluate(() => window.seen), [[], ["zz top"]]);
  await context.close();
});

test("network-first writes show only once the gateway applied them", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  await cut(context, true);
  await page.evaluate(() => {
    window.written = window.sync.shape("items").put({ id: 700, title: "network first" }, { strategy: "network-first" }).then(() => "applied", (e) => e.message);
  });
  await new Promise((ok) => setTimeout(ok, 500));
  assert.equal(await row(page, "items", 700), null, "not shown before the gateway applied it");
  await cut(context, false);
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  assert.equal(await page.evaluate(() => window.written), "applied");
  assert.equal((await row(page, "items", 700))?.title, "network first", "shown once applied");
  assert.equal(sql("select title from items where id = 700"), "network first");
  await context.close();
});

test("getToken is asked again when a token expires, and the stream goes on", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await page.evaluate(async ({ url, secret }) => {
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const text = (o) => b64(new TextEncoder().encode(JSON.stringify(o)));
    window.tokens = 0;
    const getToken = async () => {
      window.tokens += 1;
      const body = `${text({ alg: "HS256", typ: "JWT" })}.${text({ sub: "sdk-test", exp: Math.floor(Date.now() / 1000) + 3 })}`;
      return `${body}.${b64(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body)))}`;
    };
    window.sync = await window.openSync({ url, getToken, shapes: { items: { table: "items" } } });
    await window.sync.ready("items");
  }, { url: GATEWAY, secret: process.env.JWT_SECRET });
  await new Promise((ok) => setTimeout(ok, 4500));
  sql("update items set title = 'after the first token expired' where id = 11");
  await until("the change after expiry", async () => (await row(page, "items", 11))?.title === "after the first token expired");
  assert.ok((await page.evaluate(() => window.tokens)) >= 2, "getToken was called again");
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
