// The official @electric-sql/client against `gateway serve`. Run by the Rust test
// `electric_client::official_client_passes_its_protocol_suite`, which starts PostgreSQL and
// the gateway and passes GATEWAY_URL and DATABASE_URL.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { ShapeStream, Shape } from '@electric-sql/client'

const GATEWAY = process.env.GATEWAY_URL
const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
await db.connect()
after(async () => {
  await db.end()
  // Aborted streams may leave idle keep-alive sockets; do not wait for them to time out.
  setTimeout(() => process.exit(), 200).unref()
})

const url = `${GATEWAY}/v1/shape`

async function waitFor(check, what, ms = 20000) {
  const start = Date.now()
  for (;;) {
    const v = await check()
    if (v) return v
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

const ids = (rows) => rows.map((r) => Number(r.id)).sort((a, b) => a - b)

for (const liveSse of [false, true]) {
  const mode = liveSse ? 'sse' : 'long-poll'

  test(`initial sync then live changes (${mode})`, async () => {
    const t = `items_${mode.replace('-', '_')}`
    await db.query(`create table ${t} (id int8 primary key, org text not null, title text, n int4, ok bool, meta json, tags int4[])`)
    await db.query(`insert into ${t} select i, 'o' || (i % 2), 't' || i, i, i % 2 = 0, '{"k": 1}', '{1,2}' from generate_series(1, 20) i`)
    const controller = new AbortController()
    const stream = new ShapeStream({ url, params: { table: t, where: `org = $1`, params: ['o1'] }, liveSse, signal: controller.signal })
    const shape = new Shape(stream)
    const rows = await shape.rows
    assert.deepEqual(ids(rows), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19])
    const one = rows.find((r) => r.id === 1n)
    assert.equal(typeof one.id, 'bigint', 'int8 parses to BigInt through the schema header')
    assert.equal(one.n, 1)
    assert.equal(one.ok, false)
    assert.deepEqual(one.meta, { k: 1 })
    assert.deepEqual(one.tags, [1, 2])

    await db.query(`insert into ${t} values (101, 'o1', 'new', 101, true, null, null)`)
    await db.query(`update ${t} set org = 'o1' where id = 2`) // moves in
    await db.query(`update ${t} set org = 'o0' where id = 3`) // moves out
    await db.query(`update ${t} set title = 'renamed' where id = 5`)
    await db.query(`delete from ${t} where id = 7`)
    const expected = [1, 2, 5, 9, 11, 13, 15, 17, 19, 101]
    await waitFor(() => JSON.stringify(ids(shape.currentRows)) === JSON.stringify(expected), 'live changes')
    const five = shape.currentRows.find((r) => r.id === 5n)
    assert.equal(five.title, 'renamed')
    assert.equal(five.n, 5, 'an update merges into the row')
    assert.equal(shape.currentRows.find((r) => r.id === 2n).title, 't2', 'a row moving in arrives whole')
    controller.abort()
  })
}

test('resume from a stored offset and handle gets only what is new', async () => {
  await db.query(`create table resume (id int4 primary key, v text)`)
  await db.query(`insert into resume values (1, 'a'), (2, 'b')`)
  const c1 = new AbortController()
  const s1 = new ShapeStream({ url, params: { table: 'resume' }, signal: c1.signal })
  const shape1 = new Shape(s1)
  await shape1.rows
  const { lastOffset, handle } = shape1
  c1.abort()
  await db.query(`insert into resume values (3, 'c'); update resume set v = 'bb' where id = 2`)

  const seen = []
  const c2 = new AbortController()
  const s2 = new ShapeStream({ url, params: { table: 'resume' }, offset: lastOffset, handle, signal: c2.signal })
  s2.subscribe((messages) => seen.push(...messages))
  await waitFor(() => seen.filter((m) => m.key).length >= 2, 'resumed changes')
  const changes = seen.filter((m) => m.key)
  assert.deepEqual(changes.map((m) => m.headers.operation), ['insert', 'update'])
  assert.equal(changes[0].value.id, 3)
  assert.ok(changes.every((m) => typeof m.headers.lsn === 'string' && Array.isArray(m.headers.txids)))
  c2.abort()
})

test('truncate makes the client refetch into the new state', async () => {
  await db.query(`create table trunc (id int4 primary key, v text)`)
  await db.query(`insert into trunc values (1, 'a'), (2, 'b')`)
  const controller = new AbortController()
  const shape = new Shape(new ShapeStream({ url, params: { table: 'trunc' }, signal: controller.signal }))
  assert.equal((await shape.rows).length, 2)
  const firstHandle = shape.handle
  await db.query(`truncate trunc; insert into trunc values (9, 'z')`)
  await waitFor(() => shape.currentRows.length === 1 && shape.currentRows[0].id === 9, 'refetched rows')
  assert.notEqual(shape.handle, firstHandle)
  controller.abort()
})

test('columns limit what is synced and unknown params are ignored', async () => {
  await db.query(`create table cols (id int4 primary key, secret text, visible text)`)
  await db.query(`insert into cols values (1, 's', 'v')`)
  const controller = new AbortController()
  const shape = new Shape(new ShapeStream({ url, params: { table: 'cols', columns: ['id', 'visible'], customParam: 'x' }, signal: controller.signal }))
  const rows = await shape.rows
  assert.deepEqual(rows, [{ id: 1, visible: 'v' }])
  controller.abort()
})

test('a bad filter is a 400 the client reports', async () => {
  await db.query(`create table bad (id int4 primary key)`)
  const controller = new AbortController()
  const errors = []
  const stream = new ShapeStream({ url, params: { table: 'bad', where: 'nope = 1' }, signal: controller.signal, onError: (e) => { errors.push(e) } })
  stream.subscribe(() => {}, (e) => errors.push(e))
  await waitFor(() => errors.length > 0, 'an error')
  assert.equal(errors[0].status, 400)
  assert.match(JSON.stringify(errors[0].json ?? errors[0].text ?? ''), /unknown column/)
  controller.abort()
})

for (const method of ['GET', 'POST']) {
  test(`changes_only with requestSnapshot loads a subset, then follows it live (${method})`, async () => {
    const t = `subset_${method.toLowerCase()}`
    await db.query(`create table ${t} (id int4 primary key, grp text not null, n int4)`)
    await db.query(`insert into ${t} select i, 'g' || (i % 3), i from generate_series(1, 30) i`)
    const controller = new AbortController()
    const stream = new ShapeStream({ url, params: { table: t }, log: 'changes_only', subsetMethod: method, signal: controller.signal })
    const shape = new Shape(stream)
    await shape.rows
    assert.equal(shape.currentRows.length, 0, 'changes_only starts empty')
    await shape.requestSnapshot({ where: `grp = $1`, params: { 1: 'g1' }, orderBy: 'n DESC', limit: 4 })
    assert.deepEqual(ids(shape.currentRows), [19, 22, 25, 28])

    await db.query(`update ${t} set n = n + 100 where id = 28`) // a subset row changes
    await db.query(`insert into ${t} values (31, 'g2', 31)`) // a new row arrives as a change
    await waitFor(
      () => shape.currentRows.some((r) => r.id === 28 && r.n === 128) && shape.currentRows.some((r) => r.id === 31),
      'live changes after the subset'
    )
    assert.deepEqual(ids(shape.currentRows), [19, 22, 25, 28, 31])
    controller.abort()
  })
}

test('a write pushed to the outbox comes back through the stream with its txid', async () => {
  await db.query(`create table pushed (id int4 primary key, title text)`)
  const seen = []
  const controller = new AbortController()
  const stream = new ShapeStream({ url, params: { table: 'pushed' }, signal: controller.signal })
  stream.subscribe((messages) => seen.push(...messages))
  await waitFor(() => seen.some((m) => m.headers?.control === 'up-to-date'), 'the first up-to-date')

  const response = await fetch(`${GATEWAY}/v1/outbox`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_id: 'node', mutations: [{ id: 1, table: 'pushed', op: 'insert', value: { id: 1, title: 'mine' } }] }),
  })
  assert.equal(response.status, 200)
  const { txid, results } = await response.json()
  assert.equal(results[0].status, 'applied')
  const echo = await waitFor(() => seen.find((m) => m.value?.title === 'mine'), 'the echo of the write')
  assert.ok(echo.headers.txids.includes(Number(txid)), `txids ${echo.headers.txids} include ${txid}`)
  controller.abort()
})

for (const liveSse of [false, true]) {
  const mode = liveSse ? 'sse' : 'long-poll'

  test(`rows move in and out as a subquery's set changes (${mode})`, async () => {
    const [members, todos] = [`members_${mode.replace('-', '_')}`, `todos_${mode.replace('-', '_')}`]
    await db.query(`create table ${members} (user_id text, project_id int8, primary key (user_id, project_id))`)
    await db.query(`create table ${todos} (id int8 primary key, project_id int8, title text)`)
    await db.query(`insert into ${members} values ('u1', 1), ('u2', 2)`)
    await db.query(`insert into ${todos} select i, i % 3, 't' || i from generate_series(1, 12) i`)
    const where = `project_id IN (SELECT project_id FROM ${members} WHERE user_id = $1)`
    const controller = new AbortController()
    const stream = new ShapeStream({ url, params: { table: todos, where, params: ['u1'] }, liveSse, signal: controller.signal })
    const shape = new Shape(stream)
    assert.deepEqual(ids(await shape.rows), [1, 4, 7, 10])
    const reaches = (expected, what) =>
      waitFor(() => JSON.stringify(ids(shape.currentRows)) === JSON.stringify(expected), what)

    await db.query(`insert into ${members} values ('u1', 2)`)
    await reaches([1, 2, 4, 5, 7, 8, 10, 11], 'a new membership brings its todos')
    await db.query(`update ${todos} set project_id = 0 where id = 1`)
    await db.query(`update ${todos} set title = 'renamed' where id = 5`)
    await db.query(`begin; insert into ${members} values ('u1', 5); insert into ${todos} values (50, 5, 'with its membership'); commit`)
    await reaches([2, 4, 5, 7, 8, 10, 11, 50], 'a todo leaves its project; a membership arrives with its todo')
    await db.query(`delete from ${members} where user_id = 'u1' and project_id = 2`)
    await reaches([4, 7, 10, 50], 'a removed membership takes its todos away')
    for (const row of shape.currentRows) assert.equal(typeof row.title, 'string', 'rows that moved in arrive whole')
    assert.equal(shape.currentRows.find((r) => r.id === 50n).title, 'with its membership')
    controller.abort()
  })
}
