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

/** Installs `window.mint(sub, seconds)` in the page: an HS256 token the gateway accepts. */
async function installMint(page) {
  await page.evaluate(async (secret) => {
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const text = (o) => b64(new TextEncoder().encode(JSON.stringify(o)));
    window.mint = async (sub, seconds = 600) => {
      const body = `${text({ alg: "HS256", typ: "JWT" })}.${text({ sub, exp: Math.floor(Date.now() / 1000) + seconds })}`;
      return `${body}.${b64(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body)))}`;
    };
  }, process.env.JWT_SECRET);
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
  await installMint(page);
  await page.evaluate(async (url) => {
    window.tokens = 0;
    const getToken = () => ((window.tokens += 1), window.mint("sdk-test", 3));
    window.sync = await window.openSync({ url, getToken, shapes: { items: { table: "items" } } });
    await window.sync.ready("items");
  }, GATEWAY);
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

const MEMOS = { memos: { table: "memos" } };
const memoIds = (page) => page.evaluate(async () => (await window.sync.shape("memos").getAll()).map((m) => m.id).sort());

test("two users, one browser: each sees only its own local data, and a queued write waits for its own token", { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await installMint(page);
  const openAs = (sub, extra = {}) =>
    page.evaluate(async ({ url, sub, shapes, extra }) => {
      window.sync = await window.openSync({ url, token: await window.mint(sub), shapes, ...extra });
      await window.sync.ready("memos");
    }, { url: GATEWAY, sub, shapes: MEMOS, extra });
  // X syncs, writes while offline, signs out (its data stays for its next session).
  await openAs("x");
  assert.deepEqual(await memoIds(page), [1]);
  await cut(context, true);
  await page.evaluate(() => window.sync.shape("memos").put({ id: 10, owner: "x", body: "written offline by x" }));
  await page.evaluate(() => window.sync.signOut());
  await cut(context, false);
  // Y signs in on the same browser: none of X's rows, none of X's writes.
  await openAs("y");
  assert.deepEqual(await memoIds(page), [2], "Y sees only its own rows");
  assert.deepEqual(await page.evaluate(() => window.sync.outbox.stats()), { pending: 0, synced: 0, failed: 0, abandoned: 0 });
  // A database named by the app is refused to another identity, saying whose it is.
  const xDatabase = "gateway-sync " + GATEWAY + " as x";
  const refused = await page.evaluate(async ({ url, shapes, database }) => {
    try {
      await window.openSync({ url, token: await window.mint("y"), shapes, database });
      return "opened";
    } catch (e) {
      return String(e.message ?? e);
    }
  }, { url: GATEWAY, shapes: MEMOS, database: xDatabase });
  assert.match(refused, /holds the data of subject "x"/);
  await page.evaluate(() => window.sync.signOut());
  assert.equal(sql("select count(*) from memos where id = 10"), "0", "X's write was not pushed with Y's token");
  // X comes back: its queued write is pushed with its own token.
  await openAs("x");
  await until("X's offline write in PostgreSQL", () => sql("select owner from memos where id = 10") === "x");
  assert.deepEqual(await memoIds(page), [1, 10]);
  await page.evaluate(() => window.sync.signOut({ clear: true }));
  const names = await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(!names.includes(xDatabase), `signOut({ clear: true }) deleted X's database: ${names}`);
  assert.ok(names.includes("gateway-sync " + GATEWAY + " as y"), "Y's stays");
  await context.close();
});

test("a token for another identity is never sent with this database's writes", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await installMint(page);
  await page.evaluate(async (url) => {
    // Short-lived tokens: the engine asks getToken before each request.
    window.who = "z";
    const getToken = () => window.mint(window.who, 3);
    window.sync = await window.openSync({ url, getToken, shapes: { memos: { table: "memos" } } });
    await window.sync.ready("memos");
    window.refusals = [];
    window.sync.on("status", (e) => e.status === "error" && window.refusals.push(e.reason));
    // The app's sign-in changes hands without signOut: the next token is someone else's.
    window.who = "w";
    await window.sync.shape("memos").put({ id: 20, owner: "z", body: "z's write" });
  }, GATEWAY);
  const reason = await until("the engine stopped, saying why", () => page.evaluate(() => window.refusals[0]));
  assert.match(reason, /token for subject "w" at .* while this database holds the data of subject "z"/);
  await new Promise((ok) => setTimeout(ok, 1000));
  assert.equal(sql("select count(*) from memos where id = 20"), "0", "nothing was pushed with w's token");
  const pending = await page.evaluate(async () => (await window.sync.outbox.pending()).map((e) => e.status));
  assert.deepEqual(pending, ["pending"], "z's write waits for z");
  await context.close();
});

test("close() resolves and leaves no unhandled rejection", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  const rejections = await page.evaluate(async () => {
    const seen = [];
    window.addEventListener("unhandledrejection", (e) => seen.push(String(e.reason?.message ?? e.reason)));
    // The live SSE stream is open now; closing cancels it.
    await new Promise((ok) => setTimeout(ok, 500));
    await window.sync.close();
    await new Promise((ok) => setTimeout(ok, 1000));
    return seen;
  });
  assert.deepEqual(rejections, []);
  await context.close();
});

test("going offline is reported at once; back online the shapes catch up and are live again", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  assert.equal(await page.evaluate(() => window.sync.status.status), "live");
  await context.setOffline(true);
  // The live stream's connection may linger; the status must not.
  await until("offline reported", () => page.evaluate(() => window.sync.status.status === "offline"), 3000);
  assert.match(await page.evaluate(() => window.sync.status.reason), /offline/);
  await context.setOffline(false);
  await until("live again", () => page.evaluate(() => window.sync.status.status === "live"));
  sql("insert into items (id, title, big, done) values (12000, 'after coming back', 1, false)");
  await until("a change after coming back", async () => (await row(page, "items", 12000))?.title === "after coming back");
  assert.ok(await page.evaluate(() => window.sync.lastSyncedAt instanceof Date), "lastSyncedAt is set");
  await context.close();
});

test("a live stream that goes silent (no keep-alive) is taken for dead and replaced", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await page.evaluate(async ({ url, token }) => {
    window.statuses = [];
    // Nothing changes, so the gateway's stream stays silent longer than this.
    window.sync = await window.openSync({ url, token, liveSilenceMs: 1500, shapes: { items: { table: "items" } } });
    window.sync.on("status", (e) => window.statuses.push(`${e.status} ${e.reason ?? ""}`));
    await window.sync.ready("items");
  }, { url: GATEWAY, token: TOKEN });
  await until("the silence noticed", () => page.evaluate(() => window.statuses.some((s) => /^offline .*sent nothing/.test(s))));
  await until("live again after reconnecting", () => page.evaluate(() => window.statuses.at(-1).startsWith("live")));
  await context.close();
});

test("syncNow pushes queued writes at once and resolves when they are applied and every shape is live", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { items: { table: "items" } });
  await cut(context, true);
  await page.evaluate(() => window.sync.shape("items").put({ id: 400, title: "synced now", big: 4n, done: false }));
  await cut(context, false);
  await page.evaluate(() => window.sync.syncNow());
  assert.equal(sql("select title from items where id = 400"), "synced now", "applied when syncNow resolved");
  assert.equal((await page.evaluate(() => window.sync.outbox.stats())).pending, 0);
  assert.equal(await page.evaluate(() => window.sync.status.status), "live");
  await context.close();
});

test("the Dexie surface: add is insert-only, or, filter/and, each, bool and int8 indexes, clear; events carry rows", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  // Indexes on bool and int8 columns added to a mirror that already holds rows.
  await open(page, { dexie: { table: "dexie", indexes: ["title"] } });
  await page.evaluate(() => window.sync.close());
  await open(page, { dexie: { table: "dexie", indexes: ["title", "done", "big"] }, extra: { table: "dexie", where: "id >= 600" } });
  const indexed = await page.evaluate(async () => {
    const store = window.sync.database.transaction("dexie").objectStore("dexie");
    const count = (index, key) => new Promise((ok) => (store.index(index).count(key).onsuccess = (e) => ok(e.target.result)));
    const undeclared = await window.sync.shape("extra").where("done").equals(true).toArray().then(() => "ran", (e) => e.message);
    return { even: await count("$idx$done", 1), odd: await count("$idx$done", 0), bigs: await count("$idx$big"), undeclared };
  });
  assert.deepEqual(indexed, { even: 5, odd: 5, bigs: 10, undeclared: 'shape "extra" has no index "done": declare it in openSync\'s shapes: {extra: {indexes: [...]}}' });
  const refused = await page.evaluate(() => window.sync.shape("dexie").add({ id: 1, title: "again", big: 1n, done: false }).then(() => "added", (e) => String(e.message ?? e)));
  assert.match(refused, /already has a row with key 1: use put/);
  await page.evaluate(async () => {
    const extra = window.sync.shape("extra");
    await extra.add({ id: 600, title: "added", big: 6n, done: false });
    await extra.add({ id: 601, title: "added too", big: 6n, done: true });
  });
  await until("the added rows in PostgreSQL", () => sql("select count(*) from dexie where id in (600, 601)") === "2");
  const found = await page.evaluate(async () => {
    const dexie = window.sync.shape("dexie");
    const ids = (rows) => rows.map((r) => r.id).sort((a, b) => a - b);
    const each = [];
    await dexie.where(":key").between(1, 5).and((r) => r.id !== 3).each((r) => each.push(r.id));
    return {
      or: ids(await dexie.where(":key").equals(3).or("title").equals("item 5").toArray()),
      orBoth: await dexie.where(":key").equals(5).or("title").equals("item 5").count(),
      filter: ids(await dexie.where(":key").between(1, 10).filter((r) => r.done).toArray()),
      each,
      done: ids(await dexie.where("done").equals(true).and((r) => r.id < 600).toArray()),
      big: ids(await dexie.where("big").between(3n, 5n, true, true).toArray()),
      bigAbove: ids(await dexie.where("big").above(8n).toArray()),
      notDone: (await dexie.where("done").equals(false).and((r) => r.id < 600).toArray()).length,
      // Rows never show the index keys the SDK stores beside them.
      fields: [await dexie.get(2), (await dexie.getAll())[0], await dexie.where("done").equals(true).first()].map((r) => Object.keys(r).sort()),
    };
  });
  const fields = ["big", "done", "id", "title"];
  assert.deepEqual(found, { or: [3, 5], orBoth: 1, filter: [2, 4, 6, 8], each: [1, 2, 4], done: [2, 4, 6, 8, 10], big: [3, 4, 5], bigAbove: [9, 10], notDone: 5, fields: [fields, fields, fields] });
  // Events carry the row, and the row before for updates.
  sql("update dexie set title = 'item 7 changed' where id = 7");
  const event = await until("the update's event", () =>
    page.evaluate(() => window.plain(window.events.find((e) => e.shape === "dexie" && e.key === 7 && e.op === "update"))));
  assert.equal(event.value.title, "item 7 changed");
  assert.equal(event.old.title, "item 7");
  assert.deepEqual([Object.keys(event.value).sort(), Object.keys(event.old).sort()], [fields, fields]);
  const added = await page.evaluate(() => window.plain(window.events.find((e) => e.key === 600 && e.origin === "local")));
  assert.equal(added.value.title, "added");
  await page.evaluate(() => window.sync.shape("extra").clear());
  await until("clear reached PostgreSQL", () => sql("select count(*) from dexie where id >= 600") === "0");
  assert.deepEqual(await page.evaluate(() => window.sync.shape("extra").getAll()), []);
  await context.close();
});

test("failed writes can be retried (under a new mutation id) or discarded", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { checked: { table: "checked" } });
  const [first, second] = await page.evaluate(async () => {
    const checked = window.sync.shape("checked");
    return [await checked.put({ id: 1, n: 0 }), await checked.put({ id: 2, n: -1 })];
  });
  await until("both refused", async () => (await page.evaluate(() => window.sync.outbox.stats())).failed === 2);
  await page.evaluate((id) => window.sync.outbox.discard(id), second);
  const pendingRefusal = await page.evaluate((id) => window.sync.outbox.retry(id).then(() => "retried", (e) => String(e.message ?? e)), "no-such-id");
  assert.match(pendingRefusal, /no outbox entry/);
  sql("alter table checked drop constraint positive");
  await page.evaluate((id) => window.sync.outbox.retry(id), first);
  await until("the retried write applied", () => sql("select coalesce(string_agg(id || ':' || n, ','), '') from checked") === "1:0");
  // PostgreSQL commits before the gateway's answer reaches the tab, so the entry turns synced a moment later.
  const entries = () => page.evaluate(async () => (await window.sync.outbox.entries()).map((e) => `${e.id} ${e.status}`));
  await until("the retried write is synced", async () => (await entries()).includes(`${first} synced`));
  assert.deepEqual(await entries(), [`${first} synced`], "the discarded write is gone");
  await until("the mirror holds the retried row", () => page.evaluate(async () => (await window.sync.shape("checked").get(1))?.n === 0));
  assert.equal(await page.evaluate(() => window.sync.shape("checked").get(2)), undefined);
  await context.close();
});

test("an upgrade in another tab is not blocked: this tab closes, reopens with the new schema and syncs on", { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const [older, newer] = [await openPage(context), await openPage(context)];
  await open(older, { items: { table: "items" } });
  await older.evaluate(() => {
    window.versionChanges = [];
    window.sync.on("versionchange", (e) => window.versionChanges.push(e.newVersion));
  });
  // A new shape means a new object store: the newer tab upgrades the database.
  // It takes the lead: the older tab's leader would not follow the new shape.
  await open(newer, { items: { table: "items" }, notes: { table: "notes" } });
  assert.equal(await newer.evaluate(() => window.sync.leading), true);
  assert.equal(await older.evaluate(() => window.versionChanges.length), 1);
  sql("insert into items (id, title, big, done) values (13000, 'after the upgrade', 1, false)");
  for (const page of [older, newer]) {
    await until("the change in both tabs", async () => (await row(page, "items", 13000))?.title === "after the upgrade");
  }
  await context.close();
});

test("upgrade hooks run once per app schema version", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  const runs = await page.evaluate(async ({ url, token }) => {
    const runs = [];
    const openAt = async (version) => {
      const sync = await window.openSync({ url, token, version, upgrade: ({ from, to }) => void runs.push(`${from}->${to}`), shapes: { notes: { table: "notes" } } });
      await sync.close();
    };
    await openAt(1);
    await openAt(1);
    await openAt(3);
    return runs;
  }, { url: GATEWAY, token: TOKEN });
  assert.deepEqual(runs, ["0->1", "1->3"]);
  await context.close();
});

test("rows move into and out of the mirror as the caller's memberships change (a rule scoped through a subquery)", { timeout: 30_000 }, async () => {
  const context = await browser.newContext();
  const page = await openPage(context);
  await open(page, { tasks: { table: "tasks" } });
  const ids = () => page.evaluate(async () => (await window.sync.shape("tasks").getAll()).map((t) => t.id).sort((a, b) => a - b));
  assert.deepEqual(await ids(), [1, 4, 7, 10], "project 1's tasks");
  sql("insert into members values ('sdk-test', 2)");
  await until("project 2's tasks in IndexedDB", async () => isDeepStrictEqual(await ids(), [1, 2, 4, 5, 7, 8, 10, 11]));
  const moved = await row(page, "tasks", 5);
  assert.equal(moved.title, "task 5", "a row that moved in is whole");
  sql("delete from members where user_id = 'sdk-test' and project_id = 1");
  await until("project 1's tasks gone from IndexedDB", async () => isDeepStrictEqual(await ids(), [2, 5, 8, 11]));
  const deletes = await page.evaluate(() => window.events.filter((e) => e.op === "delete").map((e) => e.key).sort((a, b) => a - b));
  assert.deepEqual(deletes, [1, 4, 7, 10], "each row that left fired a delete");
  await context.close();
});
