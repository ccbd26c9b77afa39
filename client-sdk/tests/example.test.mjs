// The example app (client-sdk/examples/todos) as `gateway demo` serves it, driven in headless
// Chromium like a person would: started by the Rust demo test (gateway/tests/api.rs) with
// DEMO_URL, DATABASE_URL and PSQL.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { CHROMIUM, sql, until } from "./helpers.mjs";

let browser;
before(async () => {
  browser = await chromium.launch(CHROMIUM);
});
after(() => browser?.close());

test("the example app shows each org its todos live and takes adds, edits and deletes, online and offline", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${process.env.DEMO_URL}/demo`);
  const acme = page.locator("section", { hasText: "acme" });
  const globex = page.locator("section", { hasText: "globex" });
  await acme.locator(".pill.live").waitFor();
  await until("both orgs' todos", async () => (await acme.locator("li").count()) === 3 && (await globex.locator("li").count()) === 2);

  await acme.locator("form input").fill("from the example");
  await acme.locator("form button").click();
  await until("the new todo in PostgreSQL", () => sql("select org_id from todos where title = 'from the example'") === "acme");
  assert.equal(await globex.locator("li", { hasText: "from the example" }).count(), 0, "not in the other org");

  await acme.locator("li", { hasText: "from the example" }).locator(".title").click();
  await acme.locator("li input:not([type])").fill("edited in the example");
  await acme.locator("li input:not([type])").press("Enter");
  await until("the edit in PostgreSQL", () => sql("select count(*) from todos where title = 'edited in the example'") === "1");
  await acme.locator("li", { hasText: "edited in the example" }).locator("input[type=checkbox]").check();
  await until("the tick in PostgreSQL", () => sql("select done from todos where title = 'edited in the example'") === "t");

  await page.locator("#offline").check();
  await acme.locator("form input").fill("written offline");
  await acme.locator("form button").click();
  await acme.locator("li", { hasText: "written offline" }).waitFor();
  await acme.locator(".meta", { hasText: "on their way" }).waitFor();
  assert.equal(sql("select count(*) from todos where title = 'written offline'"), "0");
  await page.locator("#offline").uncheck();
  await until("the offline todo in PostgreSQL", () => sql("select count(*) from todos where title = 'written offline'") === "1");
  await acme.locator(".meta", { hasText: "all writes synced" }).waitFor();

  await acme.locator("li", { hasText: "written offline" }).locator("button").click();
  await until("the delete in PostgreSQL", () => sql("select count(*) from todos where title = 'written offline'") === "0");
  sql("insert into todos (org_id, title) values ('globex', 'from psql')");
  await globex.locator("li", { hasText: "from psql" }).waitFor();
  assert.deepEqual(errors, []);
});
