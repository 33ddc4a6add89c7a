// @ts-check
// Case 9 (the cost of the user lookup), run as its own process: `node bench/pg-lookup.mjs` with
// BENCH_PG_URL (the bench's schema on its search_path, and an application_name of its own) and
// BENCH_HASH (one bcrypt hash, stored in every record). Imports the built stores (dist/).
//
// Loads BENCH_LOOKUP_USERS users into a MemoryUserStore and, through PostgresUserStore, into
// PostgreSQL, then times findById on random ids of those users:
//   memory      MemoryUserStore, sequential awaits
//   pgSerial    PostgresUserStore on one pool (the server's settings: createPgPool's defaults),
//               sequential awaits: the latency of one lookup
//   pgParallel  the same with BENCH_LOOKUP_CONCURRENCY lookups in flight: lookups per second
//   cacheHits   CachedUserStore over PostgreSQL, every id already cached: what a hit costs
// Each phase runs for BENCH_LOOKUP_SECONDS after a warm-up of a third of that. For the PostgreSQL
// phases it also reports the CPU used per lookup by this process and by its PostgreSQL backends
// (found in pg_stat_activity by application_name; CPU from /proc, so Linux only, else null).
// Prints one JSON line (with backendCpuSecondsTotal: all the CPU its backends used, for the
// parent's noise figure).
import { randomBytes, randomUUID } from 'node:crypto'
import { cpuSeconds } from './lib/cpu.mjs'
import { percentile } from './lib/stats.mjs'

// Imported from the build, typed from their source.
/** @param {string} file  under dist/ */
const fromDist = (file) => import(new URL(`../dist/${file}`, import.meta.url).href)
const { CachedUserStore } = /** @type {typeof import('../src/store/cache.js')} */ (await fromDist('store/cache.js'))
const { migrate } = /** @type {typeof import('../src/store/migrate.js')} */ (await fromDist('store/migrate.js'))
const { createPgPool, PostgresUserStore } = /** @type {typeof import('../src/store/postgres.js')} */ (
  await fromDist('store/postgres.js')
)
const { MemoryUserStore } = /** @type {typeof import('../src/store/users.js')} */ (await fromDist('store/users.js'))

const url = process.env.BENCH_PG_URL
const hash = process.env.BENCH_HASH
const userCount = Number(process.env.BENCH_LOOKUP_USERS ?? 1000)
const seconds = Number(process.env.BENCH_LOOKUP_SECONDS ?? 3)
const concurrency = Number(process.env.BENCH_LOOKUP_CONCURRENCY ?? 32)
if (!url) throw new Error('BENCH_PG_URL is required')
if (!hash) throw new Error('BENCH_HASH (one bcrypt hash) is required')
if (!Number.isSafeInteger(userCount) || userCount <= 0) throw new Error('BENCH_LOOKUP_USERS must be a positive integer')
if (!(seconds > 0)) throw new Error('BENCH_LOOKUP_SECONDS must be > 0')
if (!Number.isSafeInteger(concurrency) || concurrency <= 0)
  throw new Error('BENCH_LOOKUP_CONCURRENCY must be a positive integer')

/** Memory lookups (and cache hits) are far below the clock's resolution: timed in batches. */
const BATCH = 1000

// The server's pool (createPgPool's defaults: at most 10 connections), named so that its backends
// can be found in pg_stat_activity. The URL's own application_name wins over createPgPool's.
const pool = createPgPool(url)
const appName = new URL(url).searchParams.get('application_name')

/** pid -> CPU seconds used so far, for this pool's PostgreSQL backends (null when /proc is unreadable). */
async function backendCpu() {
  if (!appName) return null
  const { rows } = await pool.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [appName])
  const cpu = new Map()
  for (const { pid } of rows) {
    const seconds = cpuSeconds(pid)
    if (seconds === null) return null
    cpu.set(pid, seconds)
  }
  return cpu
}

/** @type {string[]} */
const ids = []
const pick = () => /** @type {string} */ (ids[Math.floor(Math.random() * ids.length)])

/**
 * Runs `lanes` loops of `await lookup(id)` for the phase's duration, each loop timing batches of
 * `batch` lookups. Returns per-lookup µs (median, p99 of the batches' means), lookups per second,
 * and this process's and the backends' CPU µs per lookup.
 * @param {(id: string) => Promise<unknown>} lookup
 */
async function phase(lookup, { lanes = 1, batch = 1, measureBackends = false } = {}) {
  /** @param {number} ms */
  const run = async (ms) => {
    /** @type {number[]} */
    const samples = []
    let count = 0
    const deadline = performance.now() + ms
    const lane = async () => {
      while (performance.now() < deadline) {
        const t0 = performance.now()
        for (let i = 0; i < batch; i++) {
          const record = await lookup(pick())
          if (record === undefined) throw new Error('a stored user was not found')
        }
        samples.push(((performance.now() - t0) * 1000) / batch)
        count += batch
      }
    }
    const t0 = performance.now()
    await Promise.all(Array.from({ length: lanes }, lane))
    return { samples, count, wallSeconds: (performance.now() - t0) / 1000 }
  }
  await run((seconds * 1000) / 3) // warm-up: the JIT, and the pool's connections opened
  const backends0 = measureBackends ? await backendCpu() : null
  const cpu0 = process.cpuUsage()
  const { samples, count, wallSeconds } = await run(seconds * 1000)
  const cpu = process.cpuUsage(cpu0)
  const backends1 = measureBackends ? await backendCpu() : null
  samples.sort((a, b) => a - b)
  // A backend opened during the phase counts from zero; one closed during it is lost (the pool keeps
  // its connections for 30 s idle, so none should be).
  let backendSeconds = null
  let backendsLost = null
  if (backends0 && backends1) {
    backendSeconds = 0
    for (const [pid, cpu1] of backends1) backendSeconds += cpu1 - (backends0.get(pid) ?? 0)
    backendsLost = [...backends0.keys()].filter((pid) => !backends1.has(pid)).length
  }
  return {
    lanes,
    lookups: count,
    wallSeconds,
    perSecond: count / wallSeconds,
    microsP50: percentile(samples, 0.5),
    microsP99: percentile(samples, 0.99),
    microsMax: samples.at(-1) ?? null,
    clientCpuMicrosPerLookup: (cpu.user + cpu.system) / count,
    backendCpuMicrosPerLookup: backendSeconds === null ? null : (backendSeconds * 1e6) / count,
    backends: backends1?.size ?? null,
    backendsLost,
  }
}

/** @type {Record<string, unknown>} */
const result = { users: userCount, seconds, concurrency, poolMax: pool.options.max }
try {
  result.migrationsApplied = await migrate(pool)
  const pgUsers = new PostgresUserStore(pool)
  const memory = new MemoryUserStore()
  const tag = randomBytes(4).toString('hex')
  /** @type {import('../src/store/users.js').Role[]} */
  const roles = ['user']
  const all = Array.from({ length: userCount }, (_, i) => ({
    id: randomUUID(),
    username: `lookup_${tag}_${i}`,
    email: null,
    passwordHash: hash,
    createdAt: new Date(),
    roles,
  }))
  for (let i = 0; i < all.length; i += 32) {
    const chunk = all.slice(i, i + 32)
    const stored = await Promise.all(chunk.map((u) => pgUsers.create(u)))
    if (stored.some((x) => x === null)) throw new Error('a lookup user could not be inserted')
  }
  for (const u of all) {
    memory.createSync(u)
    ids.push(u.id)
  }

  result.memory = await phase((id) => memory.findById(id), { batch: BATCH })
  result.pgSerial = await phase((id) => pgUsers.findById(id), { measureBackends: true })
  result.pgParallel = await phase((id) => pgUsers.findById(id), { lanes: concurrency, measureBackends: true })
  // Hits only: a TTL far longer than the phase, and every id looked up once before.
  const cached = new CachedUserStore(pgUsers, 3_600_000, userCount + 1)
  for (const id of ids) await cached.findById(id)
  result.cacheHits = await phase((id) => cached.findById(id), { batch: BATCH })
} finally {
  // All the CPU this pool's backends used, for the parent's noise figure (they are our load).
  const backends = await backendCpu().catch(() => null)
  if (backends) result.backendCpuSecondsTotal = [...backends.values()].reduce((a, b) => a + b, 0)
  await pool.end()
}
process.stdout.write(`${JSON.stringify(result)}\n`)
