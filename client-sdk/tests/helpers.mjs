// Shared by the browser suites and the benchmark: SQL through psql, polling, the page
// server and Chromium.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { extname, join, normalize } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".ts": "text/plain" };

/** Debian's Chromium, as playwright-core launches it (never a downloaded browser). */
export const CHROMIUM = { executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] };

/** Runs SQL with psql (PSQL, DATABASE_URL); returns its unaligned output. */
export function sql(text) {
  return execFileSync(process.env.PSQL, [process.env.DATABASE_URL, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", text], { encoding: "utf8" }).trim();
}

/** Polls `check` until it returns a truthy value. */
export async function until(what, check, timeout = 15_000) {
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() - started < timeout, `timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

/**
 * Serves the test page at `/` and the SDK folder below it, from its own origin as in an
 * app (requests to the gateway are cross-origin); resolves to `{server, origin}`.
 */
export async function servePage() {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/" ? join(here, "page.html") : normalize(join(here, "..", path));
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}
