// Subscribers for `loadtest --client official`: each follows its scope's shape with the
// official @electric-sql/client, as an app would, and reports on stdout what it was handed,
// when: `U <i>` at its first up-to-date, `R <i> <id> <sent_us> <received_us>` per row,
// `E <i> <message>` on an error. Lines are written in batches, so reporting costs little.
// Settings come as one line of JSON on stdin, not as an argument (other users of the
// machine can read a process's arguments; these hold tokens):
// {table, sse, tokens: [...], shapeUrls: [...]}. Closing stdin ends the run.
import { setMaxListeners } from 'node:events'
import { createInterface } from 'node:readline'
import { ShapeStream } from '@electric-sql/client'

const input = createInterface({ input: process.stdin })
const [firstLine] = await input[Symbol.asyncIterator]().next().then((r) => [r.value])
const settings = JSON.parse(firstLine)
// Microseconds since the epoch: the clock the load tester's writer stamps rows with.
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000)

let lines = []
let scheduled = false
function report(line) {
  lines.push(line)
  if (!scheduled) {
    scheduled = true
    setTimeout(flush, 5)
  }
}
function flush() {
  scheduled = false
  if (lines.length > 0) {
    process.stdout.write(lines.join('\n') + '\n')
    lines = []
  }
}

const controller = new AbortController()
// Every stream listens on the one signal: not a leak.
setMaxListeners(0, controller.signal)
settings.tokens.forEach((token, i) => {
  const stream = new ShapeStream({
    url: settings.shapeUrls[i],
    params: { table: settings.table, columns: ['id', 'sent_us'] },
    headers: { Authorization: `Bearer ${token}` },
    liveSse: settings.sse,
    signal: controller.signal,
    onError: (error) => {
      report(`E ${i} ${String(error?.message ?? error).replace(/\s+/g, ' ')}`)
      return {} // keep following, as an app would
    },
  })
  let upToDate = false
  stream.subscribe((messages) => {
    const received = nowUs()
    for (const m of messages) {
      if (m.headers?.operation === 'insert') {
        report(`R ${i} ${m.value.id} ${m.value.sent_us ?? 0} ${received}`)
      } else if (m.headers?.control === 'up-to-date' && !upToDate) {
        upToDate = true
        report(`U ${i}`)
      }
    }
  })
})

// The load tester ends the run by closing stdin.
input.on('close', () => {
  controller.abort()
  flush()
  process.exit(0)
})
