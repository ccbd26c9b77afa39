// The official @electric-sql/client with bearer tokens against `gateway serve --auth jwt`.
// Run by the Rust test `electric_client::official_client_with_a_token_reads_only_its_scope`,
// which passes GATEWAY_URL, DATABASE_URL and tokens for org1 (TOKEN_A) and org2 (TOKEN_B).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { ShapeStream, Shape } from '@electric-sql/client'

const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
await db.connect()
after(async () => {
  await db.end()
  setTimeout(() => process.exit(), 200).unref()
})

const url = `${process.env.GATEWAY_URL}/v1/shape`
const ids = (rows) => rows.map((r) => Number(r.id)).sort((a, b) => a - b)
const orgRows = (org) => Array.from({ length: 100 }, (_, i) => i + 1).filter((i) => i % 10 === org)

async function waitFor(check, what, ms = 20000) {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

function follow(token, liveSse, where) {
  const controller = new AbortController()
  const params = where ? { table: 'todos', where } : { table: 'todos' }
  const stream = new ShapeStream({ url, params, liveSse, headers: { Authorization: `Bearer ${token}` }, signal: controller.signal })
  return { shape: new Shape(stream), controller }
}

for (const liveSse of [false, true]) {
  test(`each token reads only its org, on snapshot and live (${liveSse ? 'sse' : 'long-poll'})`, async () => {
    const a = follow(process.env.TOKEN_A, liveSse, `org_id = 'org2' OR true`)
    const b = follow(process.env.TOKEN_B, liveSse)
    const [rowsA, rowsB] = await Promise.all([a.shape.rows, b.shape.rows])
    const first = liveSse ? 11 : 1 // the long-poll run moved row 1 to org2
    assert.deepEqual(ids(rowsA), orgRows(1).filter((i) => i >= first))
    assert.ok(rowsA.every((r) => !('secret' in r)), 'hidden columns never arrive')

    const moving = liveSse ? 11 : 1
    await db.query(`update todos set org_id = 'org2' where id = $1`, [moving])
    await waitFor(() => !a.shape.currentRows.some((r) => Number(r.id) === moving), 'the row to leave org1')
    await waitFor(() => b.shape.currentRows.some((r) => Number(r.id) === moving), 'the row to reach org2')
    assert.ok(b.shape.currentRows.every((r) => r.org_id === 'org2'))
    a.controller.abort()
    b.controller.abort()
  })
}
