// `npm run bench`: the benchmark of issue 4, in one sitting. Starts the built server (dist/) in
// production mode and the floor (bench/floor.mjs) as child processes, drives them with autocannon
// (and, for the login storm, an open-loop generator in a worker thread: bench/storm.mjs), and
// measures memory (bench/memory.mjs) and cold start in their own processes. Prints a table and
// writes bench/results.json. It reports; it does not judge: the exit code is 0 whether or not the
// targets are met, and non-zero only when something crashed.
//
// Environment:
//   BENCH_RUNS         repeats per case (default 3)
//   BENCH_DURATION     seconds per run (default 5; logins and registrations run twice as long)
//   BENCH_CONNECTIONS  connections for GET /users/me (default 50)
//   BENCH_QUICK=1      smoke run: 1 run, 2 s, 100,000 users only
//   BENCH_HASH_CONCURRENCY, BENCH_HASH_QUEUE_MAX, BENCH_HASH_MAX_WAIT_MS  the hash gate of the
//                      server for cases 1-3 (default: cores, 8 x that, 60000: nothing is shed)
//   BENCH_STORM_HASH_CONCURRENCY, BENCH_STORM_HASH_QUEUE_MAX, BENCH_STORM_HASH_MAX_WAIT_MS  the gate
//                      of the storm's own server (default: the server's own defaults, except the
//                      two above when set; HASH_MAX_WAIT_MS is left unset)
//   BENCH_COLD_STARTS  cold starts measured (default 5)
//   BENCH_PG_URL       the PostgreSQL of cases 7-9 (default postgres://postgres@127.0.0.1:5432/test,
//                      no query string needed). Cases 7-9 run in a schema of their own, bench_<random>,
//                      created for them and dropped at the end on every way out (a signal included);
//                      when PostgreSQL does not answer they are skipped, with a line saying so.
//
// Cases 7-9 (the PostgreSQL store): 7, GET /users/me with STORE=postgres (with the user cache, and
// without it for information) against an in-memory server in the same sitting; 8, POST /token with
// STORE=postgres against the bcrypt bound; 9, the user lookup itself (findById) timed in a child
// process of its own (bench/pg-lookup.mjs).
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import autocannon from 'autocannon'
import bcrypt from 'bcrypt'
import pg from 'pg'

const benchDir = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(benchDir, '..')
const serverEntry = path.join(root, 'dist', 'server.js')
const resultsFile = path.join(benchDir, 'results.json')

// ---------------------------------------------------------------------------------------------
// Settings

function envNumber(name, fallback, { min = 1, integer = true } = {}) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value)))
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}`)
  return value
}

const QUICK = process.env.BENCH_QUICK === '1'
const CORES = os.availableParallelism()
const S = {
  quick: QUICK,
  runs: envNumber('BENCH_RUNS', QUICK ? 1 : 3),
  durationSeconds: envNumber('BENCH_DURATION', QUICK ? 2 : 5, { integer: false }),
  warmupSeconds: QUICK ? 1 : 2,
  connections: envNumber('BENCH_CONNECTIONS', 50),
  pipelining: 1,
  cores: CORES,
  // Logins and registrations: 2 x cores connections, so that a hash is always waiting for a slot
  // (the queue is never empty) but the queue never comes near its bound.
  hashConnections: 2 * CORES,
  bcryptRounds: 12,
  bcryptSamplesPerRun: 3,
  stormFactor: 4,
  stormUsers: 8,
  memoryUsers: QUICK ? [100_000] : [100_000, 1_000_000],
  coldStarts: envNumber('BENCH_COLD_STARTS', 5),
  coldStartPollMs: 5,
}
// Case 7 compares two medians: at least 3 runs each, except in a smoke run.
S.pgRuns = QUICK ? S.runs : Math.max(3, S.runs)
// Case 9: users loaded, seconds per phase, lookups in flight in the concurrent phase.
S.lookupUsers = QUICK ? 1_000 : 10_000
S.lookupSeconds = QUICK ? 1 : 3
S.lookupConcurrency = 32
// Logins and registrations run twice as long: at ~10/s, the hashes cut off when a run stops are a
// visible share of a short run (about half a hash time per slot).
S.hashDurationSeconds = 2 * S.durationSeconds
S.hashConcurrency = envNumber('BENCH_HASH_CONCURRENCY', CORES)
S.hashQueueMax = envNumber('BENCH_HASH_QUEUE_MAX', 8 * S.hashConcurrency, { min: 0 })
// Cases 2 and 3 measure bcrypt through the server, not its shedding: the longest wait config.ts
// accepts, so that a slow (or busy) machine does not turn a full slot into 503s.
S.hashMaxWaitMs = envNumber('BENCH_HASH_MAX_WAIT_MS', 60_000, { min: 0 })
// The storm runs on a server of its own, configured as in production: the shedding policy is what
// it measures (DECISIONS.md allows its own hash concurrency if printed).
S.stormHashConcurrency = envNumber('BENCH_STORM_HASH_CONCURRENCY', S.hashConcurrency)
S.stormHashQueueMax = envNumber('BENCH_STORM_HASH_QUEUE_MAX', S.hashQueueMax, { min: 0 })
S.stormHashMaxWaitMs = envNumber('BENCH_STORM_HASH_MAX_WAIT_MS', 0, { min: 0 }) || undefined

const HOST = '127.0.0.1'
const PASSWORD = 'bench-Vq7!kT2m-xR9p'
const jwtSecret = randomBytes(32).toString('base64url')

/** The server's environment, built from scratch: nothing leaks in from the caller's shell. */
const serverEnv = {
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  HOST,
  JWT_SECRET: jwtSecret,
  BCRYPT_ROUNDS: String(S.bcryptRounds),
  HASH_CONCURRENCY: String(S.hashConcurrency),
  HASH_QUEUE_MAX: String(S.hashQueueMax),
  HASH_MAX_WAIT_MS: String(S.hashMaxWaitMs),
  AUDIT_LOG: 'false',
  // DOCS_ENABLED is left to the production default (off).
  // Raised so that throttling does not pollute throughput figures (DECISIONS.md). Each is the
  // highest value config.ts accepts.
  LOGIN_RATE_LIMIT_PER_MINUTE: '1000000',
  LOGIN_IP_MAX_FAILURES: '1000000',
  LOGIN_MAX_FAILURES: '100',
  REGISTER_RATE_LIMIT_MAX: '1000000',
}
const baseEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? os.tmpdir() }
const printableEnv = { ...serverEnv, JWT_SECRET: '<random 32 bytes, base64url>' }

/** The storm's server: the same, with the storm's hash gate (HASH_MAX_WAIT_MS: the server's default). */
const { HASH_MAX_WAIT_MS: _, ...withoutMaxWait } = serverEnv
const stormEnv = {
  ...withoutMaxWait,
  HASH_CONCURRENCY: String(S.stormHashConcurrency),
  HASH_QUEUE_MAX: String(S.stormHashQueueMax),
  ...(S.stormHashMaxWaitMs !== undefined && { HASH_MAX_WAIT_MS: String(S.stormHashMaxWaitMs) }),
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL (cases 7-9): a schema of this run's own, on the search_path of every connection.

const PG_URL = process.env.BENCH_PG_URL || 'postgres://postgres@127.0.0.1:5432/test'
const pgSchema = `bench_${randomBytes(6).toString('hex')}`
/** PG_URL with any password hidden, for printing. */
const printablePgUrl = (() => {
  try {
    const u = new URL(PG_URL)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '<BENCH_PG_URL, not a URL>'
  }
})()
/** True from the CREATE SCHEMA (sent) until the DROP succeeded: the exit paths drop it when true. */
let pgSchemaCreated = false

/**
 * The DATABASE_URL of a server (or of the lookup child): the run's schema first on search_path
 * (pg passes the `options` parameter to the server), and an application_name, `<schema>_<app>`,
 * by which its connections are found in pg_stat_activity (the URL's wins over createPgPool's).
 */
function pgUrl(app) {
  const sep = PG_URL.includes('?') ? '&' : '?'
  return `${PG_URL}${sep}options=-c%20search_path%3D${pgSchema}&application_name=${pgSchema}_${app}`
}

/** The server's environment for STORE=postgres (USER_CACHE_TTL_MS: the default, unless in `extra`). */
const pgServerEnv = (app, extra = {}) => ({
  ...serverEnv,
  STORE: 'postgres',
  DATABASE_URL: pgUrl(app),
  MIGRATE_ON_START: 'true',
  ...extra,
})

/** A connected pg.Client for the bench's own statements; the caller ends it. */
async function pgClient(app, connectTimeoutMs = 3000) {
  const client = new pg.Client({
    connectionString: PG_URL,
    connectionTimeoutMillis: connectTimeoutMs,
    application_name: `${pgSchema}_${app}`,
  })
  client.on('error', () => {}) // a dropped connection fails the next query instead of the process
  await client.connect()
  return client
}

async function createPgSchema() {
  const client = await pgClient('admin')
  try {
    pgSchemaCreated = true
    await client.query(`CREATE SCHEMA ${pgSchema}`)
  } finally {
    await client.end().catch(() => {})
  }
}

async function dropPgSchema() {
  if (!pgSchemaCreated) return
  const client = await pgClient('admin')
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`)
    pgSchemaCreated = false
  } finally {
    await client.end().catch(() => {})
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes: every one is tracked and killed on every way out.

const children = new Set()
function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
}
process.on('exit', () => {
  killAll()
  if (workDir) rmSync(workDir, { recursive: true, force: true })
  // Last resort, for an exit that skipped every finally block: psql, synchronously, if installed.
  if (pgSchemaCreated)
    spawnSync('psql', [PG_URL, '-qc', `DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`], { stdio: 'ignore', timeout: 5000 })
})
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    killAll()
    // The servers are gone: drop the schema of cases 7-9 (if any), waiting at most 5 s for it.
    const giveUp = new Promise((resolve) => setTimeout(resolve, 5000))
    Promise.race([dropPgSchema().catch(() => {}), giveUp]).finally(() => process.exit(130))
  })
}

function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** Keeps the last lines a child wrote (for error messages) and counts them all. */
function captureOutput(child) {
  const out = { lines: 0, tail: [] }
  for (const stream of [child.stdout, child.stderr]) {
    if (!stream) continue
    let partial = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop() ?? ''
      for (const line of parts) {
        if (line === '') continue
        out.lines++
        out.tail.push(line.length > 400 ? `${line.slice(0, 400)}...` : line)
        if (out.tail.length > 20) out.tail.shift()
      }
    })
  }
  return out
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, HOST, () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** One GET, no keep-alive: the status code, or 0 when the connection failed. */
function probe(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, agent: false, timeout: 1000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', () => resolve(0))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(0))
  })
}

function waitExit(child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
}

/** SIGTERM, then SIGKILL after 5 s. Returns the ms to exit and whether SIGKILL was needed. */
async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return { ms: 0, killed: false }
  const t0 = performance.now()
  child.kill('SIGTERM')
  if (await waitExit(child, 5000)) return { ms: performance.now() - t0, killed: false }
  child.kill('SIGKILL')
  await waitExit(child, 5000)
  return { ms: performance.now() - t0, killed: true }
}

let workDir // the servers' cwd: an empty directory, so that a developer's .env is not loaded

/**
 * Spawns `node <args>` with `env` on a free port and resolves when GET /healthz answers 200,
 * polling every `pollMs`. Returns the child, its port, its output, and the ms from spawn to 200.
 */
async function startNode(name, args, env, { pollMs = 20, timeoutMs = 20_000 } = {}) {
  const port = await freePort()
  const started = performance.now()
  const child = track(
    spawn(process.execPath, args, {
      cwd: workDir,
      env: { ...baseEnv, ...env, PORT: String(port) },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  )
  const output = captureOutput(child)
  let exited = false
  child.once('exit', () => {
    exited = true
  })
  for (;;) {
    if ((await probe(port, '/healthz')) === 200) break
    if (exited || performance.now() - started > timeoutMs) {
      child.kill('SIGKILL')
      throw new Error(
        `${name} did not come up (${exited ? `exited with ${child.exitCode ?? child.signalCode}` : 'timed out'}):\n${output.tail.join('\n')}`,
      )
    }
    await sleep(pollMs)
  }
  return { name, child, port, output, readyMs: performance.now() - started }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/** CPU seconds a process has used so far (Linux /proc), or null elsewhere. */
function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm) ".
    return (Number(fields[11]) + Number(fields[12])) / 100 // USER_HZ is 100 on Linux
  } catch {
    return null
  }
}

/**
 * CPU seconds the whole machine has spent in processes so far (user + nice + system + steal from
 * /proc/stat), or null elsewhere. irq and softirq are left out: loopback traffic is processed there
 * and charged to no process, so it would count our own load as someone else's.
 */
function machineBusySeconds() {
  try {
    const [user, nice, system, , , , , steal] = readFileSync('/proc/stat', 'utf8')
      .split('\n', 1)[0]
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number)
    return (user + nice + system + (steal || 0)) / 100
  } catch {
    return null
  }
}

/** pid -> { name (command line, shortened), cpu seconds } for every process (Linux), else empty. */
function processCpuTable() {
  const table = new Map()
  let pids = []
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d))
  } catch {
    return table
  }
  for (const pid of pids) {
    const cpu = cpuSeconds(pid)
    if (cpu === null) continue
    let name = ''
    try {
      name = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120)
    } catch {}
    table.set(Number(pid), { name, cpu })
  }
  return table
}

/** CPU seconds of our running children plus those already reaped (cutime + cstime of this process). */
function childrenCpuSeconds() {
  let total = 0
  for (const child of children) total += cpuSeconds(child.pid) ?? 0
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    total += (Number(fields[13]) + Number(fields[14])) / 100
  } catch {}
  return total
}

/**
 * Starts measuring how much CPU processes other than ours (this one and its children) take: the
 * other tenants of the machine, whose load skews every figure. The returned function gives the
 * wall time and that CPU as a percentage of one core, since the start.
 */
/** Every foreign process seen busy during a measurement: command line -> highest % of a core. */
const seenOthers = new Map()

function noiseMeter() {
  const procs0 = processCpuTable()
  const t0 = performance.now()
  const machine0 = machineBusySeconds()
  const self0 = process.cpuUsage()
  const children0 = childrenCpuSeconds()
  /**
   * The PostgreSQL backends serving our processes are our load, not noise (cases 7-9): `dbPids`,
   * the pids of those alive now (a pid not seen at the start counts from zero), and `dbSeconds`,
   * CPU seconds of backends already gone, as their client reported it. Their CPU is returned apart
   * as dbCpuPct.
   */
  return ({ dbPids, dbSeconds } = {}) => {
    const wall = (performance.now() - t0) / 1000
    const machine1 = machineBusySeconds()
    const self = process.cpuUsage(self0)
    const procs1 = processCpuTable()
    let dbCpu = dbSeconds ?? (dbPids ? 0 : null)
    for (const pid of dbPids ?? []) {
      const now = procs1.get(pid)
      if (now) dbCpu = (dbCpu ?? 0) + now.cpu - (procs0.get(pid)?.cpu ?? 0)
    }
    const ours = (self.user + self.system) / 1e6 + (childrenCpuSeconds() - children0) + (dbCpu ?? 0)
    const otherCpuPct =
      machine0 === null || machine1 === null ? null : Math.max(0, ((machine1 - machine0 - ours) / wall) * 100)
    // Who they were: processes alive at both ends that are not ours, by CPU used in between.
    const ourPids = new Set([process.pid, ...[...children].map((c) => c.pid), ...(dbPids ?? [])])
    const others = []
    for (const [pid, { name, cpu }] of procs1) {
      const before = procs0.get(pid)
      if (!before || ourPids.has(pid)) continue
      const pctOfCore = ((cpu - before.cpu) / wall) * 100
      if (pctOfCore >= 5) others.push({ pid, name, pctOfCore: Math.round(pctOfCore) })
    }
    others.sort((a, b) => b.pctOfCore - a.pctOfCore)
    for (const { name, pctOfCore } of others) seenOthers.set(name, Math.max(seenOthers.get(name) ?? 0, pctOfCore))
    return {
      wallSeconds: wall,
      otherCpuPct,
      otherProcesses: others.slice(0, 5),
      ...(dbCpu !== null && { dbCpuPct: (dbCpu / wall) * 100 }),
    }
  }
}

const noiseFields = ({ otherCpuPct, otherProcesses, dbCpuPct }) => ({
  otherCpuPct,
  otherProcesses,
  ...(dbCpuPct !== undefined && { dbCpuPct }),
})

function rssBytes(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : null
  } catch {
    return null
  }
}

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = Math.floor(v.length / 2)
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

/** An autocannon run against `server`, with the server's and this process's CPU use alongside. */
async function cannon(server, options) {
  const serverCpu0 = cpuSeconds(server.child.pid)
  const selfCpu0 = process.cpuUsage()
  const noise = noiseMeter()
  const t0 = performance.now()
  const result = await autocannon({
    url: `http://${HOST}:${server.port}`,
    connections: S.connections,
    pipelining: S.pipelining,
    duration: S.durationSeconds,
    ...options,
  })
  const wallSeconds = (performance.now() - t0) / 1000
  const serverCpu1 = cpuSeconds(server.child.pid)
  const selfCpu = process.cpuUsage(selfCpu0)
  // Cases 7-8: the PostgreSQL backends of our servers, counted as ours (see noiseMeter).
  const dbPids = server.dbPids ? await server.dbPids() : undefined
  return summarise(result, {
    serverCpuPct: serverCpu0 === null || serverCpu1 === null ? null : ((serverCpu1 - serverCpu0) / wallSeconds) * 100,
    clientCpuPct: ((selfCpu.user + selfCpu.system) / 1e6 / wallSeconds) * 100,
    ...noiseFields(noise({ dbPids })),
    loadAverage1m: os.loadavg()[0],
  })
}

function summarise(result, extra = {}) {
  const ok = result['2xx']
  const statuses = {}
  for (const [code, { count }] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = Number(count)
  return {
    rps: ok / result.duration,
    ok,
    total: result.requests.total,
    durationSeconds: result.duration,
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    statuses,
    ...extra,
  }
}

async function hashTimes(count) {
  const times = []
  for (let i = 0; i < count; i++) {
    const t0 = performance.now()
    await bcrypt.hash(`bench-${i}-${randomBytes(6).toString('hex')}`, S.bcryptRounds)
    times.push(performance.now() - t0)
  }
  return times
}

/** `CORES` hashes at once, the way the server runs them: hashes per second, the bound in practice. */
async function parallelHashRate() {
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CORES }, (_, i) => bcrypt.hash(`bench-p${i}`, S.bcryptRounds)))
  return CORES / ((performance.now() - t0) / 1000)
}

async function request(port, method, urlPath, { headers = {}, body } = {}) {
  const res = await fetch(`http://${HOST}:${port}${urlPath}`, { method, headers, body })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {}
  return { status: res.status, json, text }
}

/** Setup requests only: a 503 (the hash gate shedding) is retried after a short pause. */
async function retryShed(send) {
  for (let attempt = 1; ; attempt++) {
    const res = await send()
    if (res.status !== 503 || attempt >= 30) return res
    await sleep(200 + Math.random() * 300)
  }
}

async function register(port, username) {
  const res = await retryShed(() =>
    request(port, 'POST', '/register', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password: PASSWORD }),
    }),
  )
  if (res.status !== 201) throw new Error(`POST /register ${username}: ${res.status} ${res.text.slice(0, 300)}`)
  return res.json
}

const loginBody = (username) => `username=${encodeURIComponent(username)}&password=${encodeURIComponent(PASSWORD)}`

async function login(port, username) {
  const res = await retryShed(() =>
    request(port, 'POST', '/token', {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: loginBody(username),
    }),
  )
  if (res.status !== 200) throw new Error(`POST /token ${username}: ${res.status} ${res.text.slice(0, 300)}`)
  return res.json.access_token
}

/** Registers the /users/me user and the storm users on `server`; returns an access token. */
async function prepare(server, stormUsers) {
  await register(server.port, 'bench_me')
  const token = await login(server.port, 'bench_me')
  await Promise.all(stormUsers.map((u) => register(server.port, u)))
  return token
}

function runStorm({ port, rate, durationMs, bodies }) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./storm.mjs', import.meta.url), {
      workerData: { host: HOST, port, rate, durationMs, bodies },
    })
    worker.once('message', (message) => {
      resolve(message)
      worker.terminate()
    })
    worker.once('error', reject)
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`storm worker exited with ${code}`))
    })
  })
}

function runMemoryChild(users, hash) {
  return new Promise((resolve, reject) => {
    const child = track(
      spawn(
        process.execPath,
        ['--expose-gc', '--max-old-space-size=8192', path.join(benchDir, 'memory.mjs'), String(users)],
        {
          cwd: workDir,
          env: { ...baseEnv, BENCH_HASH: hash },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      ),
    )
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    child.once('error', reject)
    child.once('exit', (code) => {
      if (code !== 0)
        return reject(new Error(`memory child (${users} users) exited with ${code}: ${stderr.slice(-1000)}`))
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()))
      } catch (err) {
        reject(err)
      }
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Reporting

const rows = []
const fmt = (n, digits = 0) =>
  n === null || n === undefined || Number.isNaN(n)
    ? 'n/a'
    : Number(n).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
const pct = (x) => (x === null ? 'n/a' : `${(x * 100).toFixed(1)}%`)
const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'PASS' : 'FAIL')
function row(kase, metric, value, target = '', ok = undefined, runs = '') {
  rows.push({ case: kase, metric, value, runs, target, result: ok === undefined ? '' : verdict(ok) })
}
const listRuns = (values, digits = 0, unit = '') => values.map((v) => `${fmt(v, digits)}${unit}`).join(' / ')
const med = (list, f) => median(list.map(f))
/** p50 / p99 / max of autocannon runs, each the median over the runs. */
const lat = (list) =>
  `p50 ${fmt(
    med(list, (x) => x.latencyMs.p50),
    1,
  )} / p99 ${fmt(
    med(list, (x) => x.latencyMs.p99),
    1,
  )} / max ${fmt(
    med(list, (x) => x.latencyMs.max),
    1,
  )} ms`
const noiseRow = (kase, list) =>
  row(
    kase,
    "others' CPU, % of a core (noise)",
    fmt(med(list, (x) => x.otherCpuPct)),
    '',
    undefined,
    listRuns(list.map((x) => x.otherCpuPct)),
  )

function printTable() {
  const headers = {
    case: 'case',
    metric: 'metric',
    value: 'value (median)',
    runs: 'runs',
    target: 'target',
    result: 'result',
  }
  const cols = Object.keys(headers)
  const width = Object.fromEntries(
    cols.map((c) => [c, Math.max(headers[c].length, ...rows.map((r) => String(r[c]).length))]),
  )
  const line = (r) => `| ${cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')} |`
  console.log(line(headers))
  console.log(`|${cols.map((c) => '-'.repeat(width[c] + 2)).join('|')}|`)
  for (const r of rows) console.log(line(r))
}

function log(message) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`)
}

// ---------------------------------------------------------------------------------------------
// The cases

const results = {
  machine: {
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cpuCount: os.cpus().length,
    availableParallelism: CORES,
    totalMemoryBytes: os.totalmem(),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    date: new Date().toISOString(),
  },
  settings: {
    ...S,
    serverEnv: printableEnv,
    postgres: {
      url: printablePgUrl,
      schema: pgSchema,
      serverEnvAdded: {
        STORE: 'postgres',
        DATABASE_URL: pgUrl('<server|nocache>'),
        MIGRATE_ON_START: 'true',
        USER_CACHE_TTL_MS: 'unset (the default), and 0 for the no-cache server of case 7',
      },
    },
  },
  cases: {},
}

async function main() {
  if (!existsSync(serverEntry)) throw new Error(`${serverEntry} is missing: run \`npm run build\` first`)
  workDir = mkdtempSync(path.join(os.tmpdir(), 'auth-bench-'))

  console.log(
    `Machine: ${results.machine.cpuModel} x ${results.machine.cpuCount}, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB, Node ${process.version}`,
  )
  console.log(
    `Runs per case: ${S.runs}, ${S.durationSeconds} s each (${S.hashDurationSeconds} s for logins and registrations), ${S.connections} connections (pipelining ${S.pipelining})${QUICK ? ' [BENCH_QUICK]' : ''}`,
  )
  console.log('Server environment (rate limits raised so that throttling does not count):')
  for (const [k, v] of Object.entries(printableEnv)) console.log(`  ${k}=${v}`)
  console.log(`Logins and registrations (cases 2, 3, 8) use ${S.hashConnections} connections.`)
  console.log(
    `Cases 7-9 (PostgreSQL ${printablePgUrl}): schema ${pgSchema}, created for this run and dropped at the end; the servers get the environment above plus STORE=postgres, MIGRATE_ON_START=true, DATABASE_URL with search_path=${pgSchema} (USER_CACHE_TTL_MS: the default, and 0 for case 7's no-cache server).`,
  )
  console.log(
    `  Case 7: ${S.pgRuns} run(s) of each server, one user (one token): with the cache, every lookup but one per USER_CACHE_TTL_MS is a hit, the best case; the no-cache server is the worst.`,
  )
  const stormDiff = Object.entries(stormEnv).filter(([k, v]) => serverEnv[k] !== v)
  const stormUnset = Object.keys(serverEnv).filter((k) => !(k in stormEnv))
  console.log(
    `The storm (case 4) has a server of its own, the same but ${[
      ...stormDiff.map(([k, v]) => `${k}=${v}`),
      ...stormUnset.map((k) => `${k} unset (server default)`),
    ].join(', ')}`,
  )
  // What the servers make of those environments, from their own config loader (dist/config.js).
  try {
    const { loadConfig } = await import('../dist/config.js')
    results.settings.serverConfig = {}
    let first
    for (const [name, env] of [
      ['cases 1-3, 6', serverEnv],
      ['case 4 (storm)', stormEnv],
      ['cases 7-8 (postgres)', pgServerEnv('server')],
      ['case 7 (postgres, no user cache)', pgServerEnv('nocache', { USER_CACHE_TTL_MS: '0' })],
    ]) {
      const config = loadConfig(env)
      const storage = config.storage
        ? `${config.storage.kind}${config.storage.redisUrl ? ' + redis' : ''}${
            config.storage.kind === 'postgres' ? `, USER_CACHE_TTL_MS ${config.storage.userCacheTtlMs}` : ''
          }`
        : 'memory (no storage setting)'
      results.settings.serverConfig[name] = {
        storage,
        ...(config.storage?.kind === 'postgres' && { userCacheTtlMs: config.storage.userCacheTtlMs }),
        password: config.password,
        throttle: config.throttle,
      }
      console.log(`Server config for ${name} (loadConfig): storage ${storage}`)
      // The PostgreSQL servers differ from the first only in their storage: not printed twice.
      const rest = JSON.stringify([config.password, config.throttle])
      first ??= rest
      if (env.STORE === 'postgres' && rest === first) continue
      console.log(`  password ${JSON.stringify(config.password)}`)
      console.log(`  throttle ${JSON.stringify(config.throttle)}`)
    }
  } catch (err) {
    console.log(`  (could not load dist/config.js to show the resolved settings: ${err.message})`)
  }
  if (S.hashQueueMax < S.hashConnections - S.hashConcurrency)
    console.log(
      `  WARNING: HASH_QUEUE_MAX ${S.hashQueueMax} < ${S.hashConnections - S.hashConcurrency}: cases 2 and 3 may shed (503)`,
    )
  const load = os.loadavg()[0]
  results.machine.loadAverage1mAtStart = load
  console.log(`Load average (1 min) at start: ${load.toFixed(2)} on ${CORES} cores`)
  if (load > CORES / 2)
    console.log('  WARNING: the machine is busy with other work; figures will be skewed (see the noise rows)')
  console.log('')

  // bcrypt at the configured cost, in this process, before anything else runs.
  log('measuring bcrypt (cost 12) in the bench process')
  await hashTimes(1) // the thread pool and the native module warm up
  const bcryptTimes = await hashTimes(5)
  const sampleHash = await bcrypt.hash(PASSWORD, S.bcryptRounds)

  log('starting the server and the floor')
  const real = await startNode('server', [serverEntry], serverEnv)
  const extraServers = []
  const floor = await startNode('floor', [path.join(benchDir, 'floor.mjs')], { HOST })
  try {
    // A user and a token for /users/me; a pool of users for the storm.
    const stormUsers = Array.from({ length: S.stormUsers }, (_, i) => `storm_${i}`)
    const token = await prepare(real, stormUsers)
    const me = await request(real.port, 'GET', '/users/me', { headers: { authorization: `Bearer ${token}` } })
    if (me.status !== 200) throw new Error(`GET /users/me with a fresh token: ${me.status} ${me.text.slice(0, 300)}`)
    const floorMe = await request(floor.port, 'GET', '/users/me')
    const shape = (o) =>
      Object.keys(o ?? {})
        .sort()
        .join(',')
    if (shape(me.json) !== shape(floorMe.json))
      throw new Error(`the floor's JSON shape (${shape(floorMe.json)}) differs from the server's (${shape(me.json)})`)

    // ---- Case 1: GET /users/me vs the floor, alternating.
    log('case 1: GET /users/me vs the floor (warm-up)')
    const meOptionsFor = (t) => ({
      requests: [{ method: 'GET', path: '/users/me', headers: { authorization: `Bearer ${t}` } }],
    })
    const meOptions = meOptionsFor(token)
    const floorOptions = { requests: [{ method: 'GET', path: '/users/me' }] }
    await cannon(real, { ...meOptions, duration: S.warmupSeconds })
    await cannon(floor, { ...floorOptions, duration: S.warmupSeconds })
    const case1 = { real: [], floor: [] }
    for (let r = 0; r < S.runs; r++) {
      const order = r % 2 === 0 ? ['real', 'floor'] : ['floor', 'real']
      for (const which of order) {
        log(`case 1 run ${r + 1}/${S.runs}: ${which}`)
        case1[which].push(which === 'real' ? await cannon(real, meOptions) : await cannon(floor, floorOptions))
        await sleep(250)
      }
    }
    const c1 = {
      realRps: med(case1.real, (x) => x.rps),
      floorRps: med(case1.floor, (x) => x.rps),
      ratios: case1.real.map((x, i) => x.rps / case1.floor[i].rps),
    }
    c1.ratio = c1.realRps / c1.floorRps
    results.cases.usersMe = { runs: case1, medians: c1 }

    // ---- Cases 2 and 3: logins and registrations vs the bcrypt bound.
    const hashRunOptions = { connections: S.hashConnections, duration: S.hashDurationSeconds }
    const bcryptPerRun = []
    const parallelRates = []
    const case2 = []
    const case3 = []
    for (let r = 0; r < S.runs; r++) {
      log(`case 2 run ${r + 1}/${S.runs}: POST /token (bcrypt timed first)`)
      bcryptPerRun.push(...(await hashTimes(S.bcryptSamplesPerRun)))
      parallelRates.push(await parallelHashRate())
      case2.push(
        await cannon(real, {
          ...hashRunOptions,
          requests: [
            {
              method: 'POST',
              path: '/token',
              headers: { 'content-type': 'application/x-www-form-urlencoded' },
              body: loginBody('bench_me'),
            },
          ],
        }),
      )
      await sleep(250)
    }
    for (let r = 0; r < S.runs; r++) {
      log(`case 3 run ${r + 1}/${S.runs}: POST /register (bcrypt timed first)`)
      bcryptPerRun.push(...(await hashTimes(S.bcryptSamplesPerRun)))
      parallelRates.push(await parallelHashRate())
      const tag = randomBytes(3).toString('hex')
      let seq = 0
      case3.push(
        await cannon(real, {
          ...hashRunOptions,
          requests: [
            {
              method: 'POST',
              path: '/register',
              headers: { 'content-type': 'application/json' },
              setupRequest: (req) => ({
                ...req,
                body: JSON.stringify({ username: `r${r}_${tag}_${seq++}`, password: PASSWORD }),
              }),
            },
          ],
        }),
      )
      await sleep(250)
    }
    const allBcrypt = [...bcryptTimes, ...bcryptPerRun]
    const hashMs = median(allBcrypt)
    const bound = CORES / (hashMs / 1000)
    const c2 = { loginRps: med(case2, (x) => x.rps), bound, hashMs }
    c2.ratio = c2.loginRps / bound
    const c3 = { registerRps: med(case3, (x) => x.rps), bound, hashMs }
    c3.ratio = c3.registerRps / bound
    const parallelBound = median(parallelRates)
    results.cases.bcryptBound = {
      hashMsSamples: allBcrypt,
      medianHashMs: hashMs,
      cores: CORES,
      boundPerSecond: bound,
      parallelHashesPerSecond: parallelRates,
      parallelMedian: parallelBound,
    }
    results.cases.login = { runs: case2, medians: c2 }
    results.cases.register = { runs: case3, medians: c3 }

    // ---- Case 4: login storm at 4 x capacity with /users/me alongside.
    const capacity = c2.loginRps
    const stormRate = S.stormFactor * capacity
    const bodies = stormUsers.map(loginBody)
    log('case 4: starting the storm server')
    const stormServer = await startNode('storm server', [serverEntry], stormEnv)
    extraServers.push(stormServer)
    const stormToken = await prepare(stormServer, stormUsers)
    await cannon(stormServer, { ...meOptionsFor(stormToken), duration: S.warmupSeconds })
    const case4 = []
    for (let r = 0; r < S.runs; r++) {
      log(`case 4 run ${r + 1}/${S.runs}: POST /token at ${fmt(stormRate, 1)}/s with GET /users/me alongside`)
      const [storm, meRun] = await Promise.all([
        runStorm({ port: stormServer.port, rate: stormRate, durationMs: S.durationSeconds * 1000, bodies }),
        cannon(stormServer, meOptionsFor(stormToken)),
      ])
      const byStatus = {}
      let shedWellFormed = 0
      for (const [status, ms, wellFormed] of storm.records) {
        byStatus[status] ??= []
        byStatus[status].push(ms)
        shedWellFormed += wellFormed
      }
      const latency = {}
      for (const [status, list] of Object.entries(byStatus)) {
        list.sort((a, b) => a - b)
        latency[status] = {
          count: list.length,
          p50: percentile(list, 0.5),
          p99: percentile(list, 0.99),
          max: list.at(-1),
        }
      }
      const count = (s) => byStatus[s]?.length ?? 0
      case4.push({
        offeredRate: stormRate,
        sent: storm.sent,
        achievedOfferRate: storm.sent / (storm.offeredForMs / 1000),
        token: {
          ok: count('200'),
          shed: count('503'),
          shedWithRetryAfterAndDetail: shedWellFormed,
          other: storm.records.length - count('200') - count('503'),
          latencyByStatus: latency,
          loginsPerSecond: count('200') / (storm.totalMs / 1000),
        },
        usersMe: meRun,
      })
      await sleep(500)
    }
    const c4 = {
      capacity,
      offeredRate: stormRate,
      meP99: med(case4, (x) => x.usersMe.latencyMs.p99),
      meRps: med(case4, (x) => x.usersMe.rps),
      tokenOk: case4.reduce((a, x) => a + x.token.ok, 0),
      tokenShed: case4.reduce((a, x) => a + x.token.shed, 0),
      tokenOther: case4.reduce((a, x) => a + x.token.other, 0),
      shedWellFormed: case4.reduce((a, x) => a + x.token.shedWithRetryAfterAndDetail, 0),
      shedMaxMs: Math.max(-1, ...case4.map((x) => x.token.latencyByStatus['503']?.max ?? -1)),
      okP99Ms: med(case4, (x) => x.token.latencyByStatus['200']?.p99 ?? null),
      okMaxMs: Math.max(-1, ...case4.map((x) => x.token.latencyByStatus['200']?.max ?? -1)),
      meFailures: case4.reduce((a, x) => a + x.usersMe.errors + x.usersMe.non2xx, 0),
    }
    c4.meFraction = c4.meRps / c1.realRps
    if (c4.shedMaxMs < 0) c4.shedMaxMs = null
    if (c4.okMaxMs < 0) c4.okMaxMs = null
    results.cases.loginStorm = {
      serverEnv: { ...stormEnv, JWT_SECRET: printableEnv.JWT_SECRET },
      runs: case4.map((x) => ({ ...x })),
      medians: c4,
    }

    results.servers = {
      server: { rssBytesAtEnd: rssBytes(real.child.pid), logLines: real.output.lines, logTail: real.output.tail },
      stormServer: {
        rssBytesAtEnd: rssBytes(stormServer.child.pid),
        logLines: stormServer.output.lines,
        logTail: stormServer.output.tail,
      },
      floor: { rssBytesAtEnd: rssBytes(floor.child.pid), logLines: floor.output.lines, logTail: floor.output.tail },
    }

    // Rows for cases 1-4.
    row('1 GET /users/me', 'server req/s', fmt(c1.realRps), '', undefined, listRuns(case1.real.map((x) => x.rps)))
    row('1 GET /users/me', 'server latency', lat(case1.real))
    row('1 GET /users/me', 'floor req/s', fmt(c1.floorRps), '', undefined, listRuns(case1.floor.map((x) => x.rps)))
    row('1 GET /users/me', 'floor latency', lat(case1.floor))
    row('1 GET /users/me', 'server / floor', pct(c1.ratio), '>= 70%', c1.ratio >= 0.7, c1.ratios.map(pct).join(' / '))
    row(
      '1 GET /users/me',
      'CPU % of a core: server / floor / client',
      `${fmt(med(case1.real, (x) => x.serverCpuPct))} / ${fmt(med(case1.floor, (x) => x.serverCpuPct))} / ${fmt(med(case1.real, (x) => x.clientCpuPct))}`,
    )
    noiseRow('1 GET /users/me', [...case1.real, ...case1.floor])
    const c1Failures = [...case1.real, ...case1.floor].reduce((a, x) => a + x.errors + x.non2xx, 0)
    row('1 GET /users/me', 'non-2xx + errors', fmt(c1Failures), '0', c1Failures === 0)

    row(
      '2 POST /token',
      'bcrypt cost 12, one hash (bench)',
      `${fmt(hashMs, 1)} ms`,
      '',
      undefined,
      `${allBcrypt.length} samples`,
    )
    row('2 POST /token', `bcrypt bound (${CORES} cores / hash)`, `${fmt(bound, 2)}/s`)
    row(
      '2 POST /token',
      `bcrypt, ${CORES} hashes at once (info)`,
      `${fmt(parallelBound, 2)}/s`,
      '',
      undefined,
      listRuns(parallelRates, 2),
    )
    row(
      '2 POST /token',
      'logins/s',
      fmt(c2.loginRps, 2),
      '',
      undefined,
      listRuns(
        case2.map((x) => x.rps),
        2,
      ),
    )
    row('2 POST /token', 'latency', lat(case2))
    row('2 POST /token', 'logins/s / bound', pct(c2.ratio), '>= 90%', c2.ratio >= 0.9)
    const c2Failures = case2.reduce((a, x) => a + x.errors + x.non2xx, 0)
    row('2 POST /token', 'non-2xx + errors', fmt(c2Failures), '0', c2Failures === 0)
    noiseRow('2 POST /token', case2)

    row(
      '3 POST /register',
      'registrations/s',
      fmt(c3.registerRps, 2),
      '',
      undefined,
      listRuns(
        case3.map((x) => x.rps),
        2,
      ),
    )
    row('3 POST /register', 'latency', lat(case3))
    row('3 POST /register', 'registrations/s / bound', pct(c3.ratio), '>= 90%', c3.ratio >= 0.9)
    const c3Failures = case3.reduce((a, x) => a + x.errors + x.non2xx, 0)
    row('3 POST /register', 'non-2xx + errors', fmt(c3Failures), '0', c3Failures === 0)
    noiseRow('3 POST /register', case3)

    const k4 = `4 storm (gate ${S.stormHashConcurrency}/${S.stormHashQueueMax})`
    row(
      k4,
      '/token offered',
      `${fmt(stormRate, 1)}/s (4 x ${fmt(capacity, 2)})`,
      '',
      undefined,
      listRuns(
        case4.map((x) => x.achievedOfferRate),
        1,
        '/s',
      ),
    )
    row(k4, '/users/me req/s', fmt(c4.meRps), '', undefined, listRuns(case4.map((x) => x.usersMe.rps)))
    row(k4, '/users/me latency', lat(case4.map((x) => x.usersMe)))
    row(
      k4,
      '/users/me p99',
      `${fmt(c4.meP99, 1)} ms`,
      '<= 50 ms',
      c4.meP99 <= 50,
      listRuns(
        case4.map((x) => x.usersMe.latencyMs.p99),
        1,
      ),
    )
    row(k4, '/users/me req/s vs unloaded', pct(c4.meFraction), '>= 40%', c4.meFraction >= 0.4)
    row(k4, '/users/me non-2xx + errors', fmt(c4.meFailures), '0', c4.meFailures === 0)
    row(
      k4,
      '/token 200 / 503 / other',
      `${c4.tokenOk} / ${c4.tokenShed} / ${c4.tokenOther}`,
      'other = 0',
      c4.tokenOther === 0,
      case4.map((x) => `${x.token.ok}/${x.token.shed}/${x.token.other}`).join(' '),
    )
    row(
      k4,
      '/token logins/s under storm',
      fmt(
        med(case4, (x) => x.token.loginsPerSecond),
        2,
      ),
      '',
      undefined,
      listRuns(
        case4.map((x) => x.token.loginsPerSecond),
        2,
      ),
    )
    row(k4, '/token 200 latency p99 / max', `${fmt(c4.okP99Ms, 0)} / ${fmt(c4.okMaxMs, 0)} ms`)
    row(
      k4,
      '/token 503 latency max (all runs)',
      c4.shedMaxMs === null ? 'no 503' : `${fmt(c4.shedMaxMs, 1)} ms`,
      '<= 100 ms',
      c4.shedMaxMs === null ? null : c4.shedMaxMs <= 100,
    )
    row(
      k4,
      '/token 503s with Retry-After + detail',
      `${c4.shedWellFormed} of ${c4.tokenShed}`,
      'all',
      c4.tokenShed === 0 ? null : c4.shedWellFormed === c4.tokenShed,
    )
    row(k4, 'storm server log lines (LOG_LEVEL=warn)', fmt(stormServer.output.lines))
    noiseRow(
      k4,
      case4.map((x) => x.usersMe),
    )
  } finally {
    log('stopping the server and the floor')
    await Promise.all([real, floor, ...extraServers].map((server) => stopChild(server.child)))
  }

  // ---- Case 5: memory per user, each size in its own process, nothing else running.
  const noise5 = noiseMeter()
  const case5 = {}
  for (const users of S.memoryUsers) {
    case5[users] = []
    for (let r = 0; r < S.runs; r++) {
      log(`case 5 run ${r + 1}/${S.runs}: ${fmt(users)} users`)
      case5[users].push(await runMemoryChild(users, sampleHash))
    }
  }
  results.cases.memory = { runs: case5, medians: {}, ...noiseFields(noise5()) }
  for (const users of S.memoryUsers) {
    const list = case5[users]
    const rss = median(list.map((x) => x.rssBytesPerUser))
    const heap = median(list.map((x) => x.heapBytesPerUser))
    results.cases.memory.medians[users] = { rssBytesPerUser: rss, heapBytesPerUser: heap }
    row(
      `5 memory ${fmt(users)} users`,
      'rss bytes/user',
      fmt(rss),
      '<= 512',
      rss <= 512,
      listRuns(list.map((x) => x.rssBytesPerUser)),
    )
    row(
      `5 memory ${fmt(users)} users`,
      'heapUsed bytes/user',
      fmt(heap),
      '',
      undefined,
      listRuns(list.map((x) => x.heapBytesPerUser)),
    )
  }
  row('5 memory', "others' CPU, % of a core (noise)", fmt(results.cases.memory.otherCpuPct))

  // ---- Case 6: cold start, spawn to the first 200 on /healthz.
  const noise6 = noiseMeter()
  const case6 = []
  const shutdowns = []
  for (let i = 0; i < S.coldStarts; i++) {
    log(`case 6 start ${i + 1}/${S.coldStarts}`)
    const s = await startNode('server (cold start)', [serverEntry], serverEnv, { pollMs: S.coldStartPollMs })
    case6.push(s.readyMs)
    shutdowns.push(await stopChild(s.child))
    await sleep(200)
  }
  const cold = median(case6)
  results.cases.coldStart = { runsMs: case6, medianMs: cold, shutdowns, ...noiseFields(noise6()) }
  row(
    '6 cold start',
    'spawn to first 200 /healthz',
    `${fmt(cold)} ms`,
    '< 500 ms',
    cold < 500,
    listRuns(case6, 0, ' ms'),
  )
  const killed = shutdowns.filter((x) => x.killed).length
  row(
    '6 cold start',
    'SIGTERM to exit',
    `${fmt(median(shutdowns.map((x) => x.ms)))} ms`,
    'exits without SIGKILL',
    killed === 0,
    killed > 0
      ? `${killed} of ${shutdowns.length} needed SIGKILL`
      : listRuns(
          shutdowns.map((x) => x.ms),
          0,
          ' ms',
        ),
  )
  row('6 cold start', "others' CPU, % of a core (noise)", fmt(results.cases.coldStart.otherCpuPct))

  // ---- Cases 7-9: the PostgreSQL store (skipped when PostgreSQL does not answer).
  await postgresCases(sampleHash)
}

// ---------------------------------------------------------------------------------------------
// Cases 7-9: the PostgreSQL store.

function runLookupChild(hash) {
  return new Promise((resolve, reject) => {
    const child = track(
      spawn(process.execPath, [path.join(benchDir, 'pg-lookup.mjs')], {
        cwd: workDir,
        env: {
          ...baseEnv,
          BENCH_PG_URL: pgUrl('lookup'),
          BENCH_HASH: hash,
          BENCH_LOOKUP_USERS: String(S.lookupUsers),
          BENCH_LOOKUP_SECONDS: String(S.lookupSeconds),
          BENCH_LOOKUP_CONCURRENCY: String(S.lookupConcurrency),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    )
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    child.once('error', reject)
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`lookup child exited with ${code}: ${stderr.slice(-1000)}`))
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()))
      } catch (err) {
        reject(err)
      }
    })
  })
}

/**
 * Cases 7-9, in the run's own schema (dropped at the end, whatever happens). When PostgreSQL does
 * not answer, or the schema cannot be created, they are skipped: a line and a row say so.
 */
async function postgresCases(sampleHash) {
  try {
    await createPgSchema()
  } catch (err) {
    const reason = `PostgreSQL at ${printablePgUrl} not usable (${err.message || err.code || err})`
    pgSchemaCreated = false // nothing was created, or nothing can be dropped anyway
    log(`cases 7-9 skipped: ${reason}`)
    console.log(`\nCases 7-9 (PostgreSQL) skipped: ${reason}`)
    results.cases.postgres = { skipped: reason }
    row('7-9 PostgreSQL', 'skipped', reason)
    return
  }
  let watch
  try {
    // Our servers' backends, by application_name (`<schema>_<app>`), for the CPU they use.
    watch = await pgClient('watch')
    const prefix = `${pgSchema}_`
    const dbPids = () =>
      watch
        .query('SELECT pid FROM pg_stat_activity WHERE left(application_name, $1) = $2', [prefix.length, prefix])
        .then(
          ({ rows }) => new Set(rows.map((r) => r.pid)),
          () => undefined,
        )
    const servers = []
    try {
      await serverCases(servers, dbPids)
    } finally {
      log('stopping the servers of cases 7-8')
      await Promise.all(servers.map((server) => stopChild(server.child)))
    }
    await lookupCase(sampleHash)
  } finally {
    await watch?.end().catch(() => {})
    try {
      await dropPgSchema()
    } catch (err) {
      console.log(`\nWARNING: could not drop schema ${pgSchema}: ${err.message}`)
      results.cases.postgres = { ...results.cases.postgres, dropError: err.message }
    }
  }
}

/** Cases 7 and 8: the server with STORE=postgres. Pushes the servers it starts onto `servers`. */
async function serverCases(servers, dbPids) {
  log('cases 7-8: starting an in-memory server and two PostgreSQL servers (user cache on, off)')
  const start = async (name, env) => {
    const server = await startNode(name, [serverEntry], env)
    server.dbPids = dbPids
    servers.push(server)
    return server
  }
  const variants = {
    memory: { server: await start('in-memory server (case 7)', serverEnv) },
    cached: { server: await start('postgres server', pgServerEnv('server')) },
    uncached: { server: await start('postgres server, no cache', pgServerEnv('nocache', { USER_CACHE_TTL_MS: '0' })) },
  }
  // What the server makes of an unset USER_CACHE_TTL_MS (its default), from loadConfig above.
  const ttl = results.settings.serverConfig?.['cases 7-8 (postgres)']?.userCacheTtlMs
  // One user per store; the two PostgreSQL servers share theirs (registered on one, logged in on both).
  await register(variants.memory.server.port, 'bench_me')
  await register(variants.cached.server.port, 'bench_me')
  let shape
  for (const [name, v] of Object.entries(variants)) {
    v.token = await login(v.server.port, 'bench_me')
    const me = await request(v.server.port, 'GET', '/users/me', { headers: { authorization: `Bearer ${v.token}` } })
    if (me.status !== 200) throw new Error(`GET /users/me (${name}): ${me.status} ${me.text.slice(0, 300)}`)
    const keys = Object.keys(me.json).sort().join(',')
    shape ??= keys
    if (keys !== shape) throw new Error(`GET /users/me (${name}) answers ${keys}, the in-memory server ${shape}`)
  }
  const meOptions = (token) => ({
    requests: [{ method: 'GET', path: '/users/me', headers: { authorization: `Bearer ${token}` } }],
  })

  // ---- Case 7: GET /users/me, in-memory vs PostgreSQL (cache on, off), alternating.
  log('case 7: GET /users/me, in-memory vs PostgreSQL (warm-up)')
  for (const v of Object.values(variants)) await cannon(v.server, { ...meOptions(v.token), duration: S.warmupSeconds })
  const case7 = { memory: [], cached: [], uncached: [] }
  const names = Object.keys(case7)
  for (let r = 0; r < S.pgRuns; r++) {
    for (const which of r % 2 === 0 ? names : [...names].reverse()) {
      log(`case 7 run ${r + 1}/${S.pgRuns}: ${which}`)
      case7[which].push(await cannon(variants[which].server, meOptions(variants[which].token)))
      await sleep(250)
    }
  }
  const c7 = {
    memoryRps: med(case7.memory, (x) => x.rps),
    cachedRps: med(case7.cached, (x) => x.rps),
    uncachedRps: med(case7.uncached, (x) => x.rps),
    userCacheTtlMs: ttl ?? null,
    cachedRatios: case7.cached.map((x, i) => x.rps / case7.memory[i].rps),
    uncachedRatios: case7.uncached.map((x, i) => x.rps / case7.memory[i].rps),
  }
  c7.cachedRatio = c7.cachedRps / c7.memoryRps
  c7.uncachedRatio = c7.uncachedRps / c7.memoryRps
  results.cases.pgUsersMe = { runs: case7, medians: c7 }

  // ---- Case 8: POST /token with STORE=postgres vs the bcrypt bound (case 2's method).
  log('case 8: bcrypt cost 12 in the bench process')
  const bcryptTimes = await hashTimes(5)
  const parallelRates = []
  const case8 = []
  for (let r = 0; r < S.runs; r++) {
    log(`case 8 run ${r + 1}/${S.runs}: POST /token on PostgreSQL (bcrypt timed first)`)
    bcryptTimes.push(...(await hashTimes(S.bcryptSamplesPerRun)))
    parallelRates.push(await parallelHashRate())
    case8.push(
      await cannon(variants.cached.server, {
        connections: S.hashConnections,
        duration: S.hashDurationSeconds,
        requests: [
          {
            method: 'POST',
            path: '/token',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: loginBody('bench_me'),
          },
        ],
      }),
    )
    await sleep(250)
  }
  const hashMs = median(bcryptTimes)
  const c8 = { loginRps: med(case8, (x) => x.rps), bound: CORES / (hashMs / 1000), hashMs }
  c8.ratio = c8.loginRps / c8.bound
  c8.vsMemoryLogins = results.cases.login ? c8.loginRps / results.cases.login.medians.loginRps : null
  results.cases.pgLogin = {
    hashMsSamples: bcryptTimes,
    parallelHashesPerSecond: parallelRates,
    runs: case8,
    medians: c8,
  }

  results.servers ??= {}
  for (const [name, v] of Object.entries(variants)) {
    const { child, output } = v.server
    results.servers[`case7 ${name}`] = {
      rssBytesAtEnd: rssBytes(child.pid),
      logLines: output.lines,
      logTail: output.tail,
    }
  }

  // Rows for cases 7 and 8.
  const k7 = '7 PostgreSQL /users/me'
  const cacheLabel = `user cache ${ttl ?? '?'} ms`
  row(k7, 'in-memory req/s', fmt(c7.memoryRps), '', undefined, listRuns(case7.memory.map((x) => x.rps)))
  row(k7, 'in-memory latency', lat(case7.memory))
  row(k7, `postgres req/s (${cacheLabel})`, fmt(c7.cachedRps), '', undefined, listRuns(case7.cached.map((x) => x.rps)))
  row(k7, 'postgres latency', lat(case7.cached))
  row(
    k7,
    'postgres / in-memory',
    pct(c7.cachedRatio),
    '>= 50%',
    c7.cachedRatio >= 0.5,
    c7.cachedRatios.map(pct).join(' / '),
  )
  row(
    k7,
    'postgres, no cache (TTL 0) req/s (info)',
    fmt(c7.uncachedRps),
    '',
    undefined,
    listRuns(case7.uncached.map((x) => x.rps)),
  )
  row(k7, 'postgres, no cache latency (info)', lat(case7.uncached))
  row(k7, 'no cache / in-memory (info)', pct(c7.uncachedRatio), '', undefined, c7.uncachedRatios.map(pct).join(' / '))
  for (const [which, label] of [
    ['memory', 'in-memory'],
    ['cached', 'postgres'],
    ['uncached', 'no cache'],
  ]) {
    const list = case7[which]
    row(
      k7,
      `CPU % of a core, ${label}: server / pg backends / client`,
      `${fmt(med(list, (x) => x.serverCpuPct))} / ${fmt(med(list, (x) => x.dbCpuPct))} / ${fmt(med(list, (x) => x.clientCpuPct))}`,
    )
  }
  const c7Failures = names.map((n) => case7[n].reduce((a, x) => a + x.errors + x.non2xx, 0))
  const c7FailuresTotal = c7Failures.reduce((a, b) => a + b, 0)
  row(
    k7,
    'non-2xx + errors',
    fmt(c7FailuresTotal),
    '0',
    c7FailuresTotal === 0,
    `${c7Failures.join(' / ')} (mem/pg/no cache)`,
  )
  noiseRow(
    k7,
    names.flatMap((n) => case7[n]),
  )

  const k8 = '8 PostgreSQL /token'
  row(k8, 'bcrypt cost 12, one hash (bench)', `${fmt(hashMs, 1)} ms`, '', undefined, `${bcryptTimes.length} samples`)
  row(k8, `bcrypt bound (${CORES} cores / hash)`, `${fmt(c8.bound, 2)}/s`)
  row(
    k8,
    `bcrypt, ${CORES} hashes at once (info)`,
    `${fmt(median(parallelRates), 2)}/s`,
    '',
    undefined,
    listRuns(parallelRates, 2),
  )
  row(
    k8,
    'logins/s',
    fmt(c8.loginRps, 2),
    '',
    undefined,
    listRuns(
      case8.map((x) => x.rps),
      2,
    ),
  )
  row(k8, 'latency', lat(case8))
  row(k8, 'logins/s / bound', pct(c8.ratio), '>= 90%', c8.ratio >= 0.9)
  row(k8, 'logins/s vs in-memory (case 2) (info)', c8.vsMemoryLogins === null ? 'n/a' : pct(c8.vsMemoryLogins))
  row(
    k8,
    'CPU % of a core: server / pg backends / client',
    `${fmt(med(case8, (x) => x.serverCpuPct))} / ${fmt(med(case8, (x) => x.dbCpuPct))} / ${fmt(med(case8, (x) => x.clientCpuPct))}`,
  )
  const c8Failures = case8.reduce((a, x) => a + x.errors + x.non2xx, 0)
  row(k8, 'non-2xx + errors', fmt(c8Failures), '0', c8Failures === 0)
  noiseRow(k8, case8)
}

/** Case 9: findById alone, in a child process (bench/pg-lookup.mjs), with no server running. */
async function lookupCase(sampleHash) {
  const case9 = []
  const noise = noiseMeter()
  let dbSeconds = 0
  for (let r = 0; r < S.runs; r++) {
    log(`case 9 run ${r + 1}/${S.runs}: findById, ${fmt(S.lookupUsers)} users, ${S.lookupSeconds} s per phase`)
    const run = await runLookupChild(sampleHash)
    dbSeconds += run.backendCpuSecondsTotal ?? 0
    case9.push(run)
  }
  const phases = ['memory', 'pgSerial', 'pgParallel', 'cacheHits']
  const medians = {}
  for (const p of phases) {
    medians[p] = {}
    for (const key of ['perSecond', 'microsP50', 'microsP99', 'clientCpuMicrosPerLookup', 'backendCpuMicrosPerLookup'])
      medians[p][key] = med(case9, (x) => x[p][key])
  }
  results.cases.pgLookup = { runs: case9, medians, ...noiseFields(noise({ dbSeconds })) }

  const k9 = '9 user lookup (findById)'
  const m = medians
  const us = (v, digits) => `${fmt(v, digits)} µs`
  row(
    k9,
    'in-memory (MemoryUserStore)',
    `${us(m.memory.microsP50, 2)}`,
    '',
    undefined,
    listRuns(
      case9.map((x) => x.memory.microsP50),
      2,
      ' µs',
    ),
  )
  row(
    k9,
    'postgres, 1 at a time: p50 / p99',
    `${us(m.pgSerial.microsP50, 0)} / ${us(m.pgSerial.microsP99, 0)}`,
    '',
    undefined,
    listRuns(
      case9.map((x) => x.pgSerial.microsP50),
      0,
      ' µs',
    ),
  )
  row(
    k9,
    'postgres, 1 at a time: CPU per lookup, node / pg backend',
    `${us(m.pgSerial.clientCpuMicrosPerLookup, 0)} / ${us(m.pgSerial.backendCpuMicrosPerLookup, 0)}`,
  )
  const poolMax = case9[0]?.poolMax ?? '?'
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight (pool ${poolMax}): lookups/s`,
    fmt(m.pgParallel.perSecond),
    '',
    undefined,
    listRuns(case9.map((x) => x.pgParallel.perSecond)),
  )
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight: p50 / p99 (pool wait incl.)`,
    `${us(m.pgParallel.microsP50, 0)} / ${us(m.pgParallel.microsP99, 0)}`,
  )
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight: CPU per lookup, node / pg`,
    `${us(m.pgParallel.clientCpuMicrosPerLookup, 0)} / ${us(m.pgParallel.backendCpuMicrosPerLookup, 0)}`,
  )
  row(
    k9,
    'cached over postgres, hits (CachedUserStore)',
    us(m.cacheHits.microsP50, 2),
    '',
    undefined,
    listRuns(
      case9.map((x) => x.cacheHits.microsP50),
      2,
      ' µs',
    ),
  )
  row(k9, "others' CPU, % of a core (noise)", fmt(results.cases.pgLookup.otherCpuPct))
}

let crashed = null
try {
  await main()
} catch (err) {
  crashed = err
} finally {
  killAll()
  if (workDir) rmSync(workDir, { recursive: true, force: true })
}

results.table = rows
results.otherProcessesSeen = Object.fromEntries([...seenOthers].sort((a, b) => b[1] - a[1]))
if (crashed) results.error = String(crashed?.stack ?? crashed)
// Floats to 3 decimals: enough for every figure, and a readable file.
const round = (_key, value) =>
  typeof value === 'number' && !Number.isInteger(value) ? Math.round(value * 1000) / 1000 : value
writeFileSync(resultsFile, `${JSON.stringify(results, round, 2)}\n`)
// The file lives in the linted tree (`biome check .`): let biome lay it out the way it wants.
const biome = path.join(root, 'node_modules', '.bin', 'biome')
if (existsSync(biome)) spawnSync(biome, ['format', '--write', resultsFile], { cwd: root, stdio: 'ignore' })
console.log('')
if (rows.length > 0) printTable()
for (const [name, { logLines, logTail }] of Object.entries(results.servers ?? {})) {
  if (logLines === 0) continue
  console.log(`\nThe ${name} wrote ${logLines} log line(s); the last:\n  ${logTail.slice(-2).join('\n  ')}`)
}
if (seenOthers.size > 0) {
  console.log('\nOther processes busy during the measurements (highest % of a core in one run):')
  for (const [name, pctOfCore] of [...seenOthers].sort((a, b) => b[1] - a[1]).slice(0, 10))
    console.log(`  ${String(pctOfCore).padStart(4)}%  ${name}`)
}
console.log(`\nResults: ${path.relative(process.cwd(), resultsFile) || resultsFile}`)
if (crashed) {
  console.error(`\nThe benchmark crashed: ${crashed?.stack ?? crashed}`)
  process.exitCode = 1
}
