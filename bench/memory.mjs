// @ts-check
// Case 5 (memory), run as its own process: `node --expose-gc bench/memory.mjs N` with the
// precomputed bcrypt hash in BENCH_HASH. Inserts N users through MemoryUserStore.createSync and
// prints one JSON line with the rss and heapUsed deltas. Imports the built store (dist/).
import { randomUUID } from 'node:crypto'

// Imported from the build, typed from its source.
const { MemoryUserStore } = /** @type {typeof import('../src/store/users.js')} */ (
  await import(new URL('../dist/store/users.js', import.meta.url).href)
)

const n = Number(process.argv[2])
const hash = process.env.BENCH_HASH
if (!Number.isSafeInteger(n) || n <= 0) throw new Error('usage: node --expose-gc bench/memory.mjs N')
if (!hash) throw new Error('BENCH_HASH (one bcrypt hash) is required')
const gc = globalThis.gc
if (typeof gc !== 'function') throw new Error('run with --expose-gc')

const settle = () => {
  for (let i = 0; i < 4; i++) gc()
  return process.memoryUsage()
}

const store = new MemoryUserStore()
/** @type {import('../src/store/users.js').Role[]} */
const roles = ['user']
const before = settle()
const started = performance.now()
for (let i = 0; i < n; i++) {
  store.createSync({
    id: randomUUID(),
    username: `user${i}`,
    email: null,
    passwordHash: hash,
    createdAt: new Date(),
    roles,
  })
}
const insertMs = performance.now() - started
const after = settle()
const { total: count } = await store.list({ limit: 1, offset: 0 })
if (count !== n) throw new Error(`stored ${count} users, expected ${n}`)

process.stdout.write(
  `${JSON.stringify({
    users: n,
    insertMs,
    rssBefore: before.rss,
    rssAfter: after.rss,
    heapUsedBefore: before.heapUsed,
    heapUsedAfter: after.heapUsed,
    rssBytesPerUser: (after.rss - before.rss) / n,
    heapBytesPerUser: (after.heapUsed - before.heapUsed) / n,
  })}\n`,
)
