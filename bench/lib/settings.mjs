// @ts-check
// The bench's settings (S), read from the environment (see bench/run.mjs for the variables), and
// the environments of the servers it starts.
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { HOST } from './process.mjs'

export const benchDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const root = path.resolve(benchDir, '..')
export const serverEntry = path.join(root, 'dist', 'server.js')

/**
 * The cases BENCH_ONLY can name (the files of cases/), and the cases each needs run before it.
 * @type {Record<string, string[]>}
 */
export const CASES = {
  'users-me': [],
  'logins-registrations': [],
  // Its rate is 4 x case 2's logins/s; its /users/me target compares with case 1's req/s.
  'login-storm': ['users-me', 'logins-registrations'],
  'memory-per-user': [],
  'cold-start': [],
  // Cases 7-9.
  postgres: [],
}

/**
 * The cases to run: all of them, or those BENCH_ONLY names (comma-separated), with those they need.
 * @returns {Set<string> | null}  null: all
 */
function onlyCases() {
  const raw = process.env.BENCH_ONLY?.trim()
  if (!raw) return null
  const names = raw.split(',').map((name) => name.trim().replace(/\.mjs$/, ''))
  const unknown = names.filter((name) => !(name in CASES))
  if (unknown.length > 0)
    throw new Error(`BENCH_ONLY: unknown case ${unknown.join(', ')} (the cases: ${Object.keys(CASES).join(', ')})`)
  return new Set(names.flatMap((name) => [...(CASES[name] ?? []), name]))
}
export const only = onlyCases()

// A partial run (BENCH_ONLY) leaves the committed results alone: its results go to a file git
// ignores, its report to the temporary directory.
export const resultsFile = path.join(benchDir, only ? 'results.local.json' : 'results.json')
export const reportFile = only
  ? path.join(os.tmpdir(), 'auth-bench-report.local.html')
  : path.join(benchDir, 'report.html')

/**
 * A number from the environment, `fallback` when unset or empty; throws when it is not one.
 * @param {string} name
 * @param {number} fallback
 * @returns {number}
 */
function envNumber(name, fallback, { min = 1, integer = true } = {}) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value < min || (integer && !Number.isInteger(value)))
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}`)
  return value
}

const QUICK = process.env.BENCH_QUICK === '1'
export const CORES = os.availableParallelism()

const runs = envNumber('BENCH_RUNS', QUICK ? 1 : 3)
const durationSeconds = envNumber('BENCH_DURATION', QUICK ? 2 : 5, { integer: false })
const hashConcurrency = envNumber('BENCH_HASH_CONCURRENCY', CORES)
const hashQueueMax = envNumber('BENCH_HASH_QUEUE_MAX', 8 * hashConcurrency, { min: 0 })

export const S = {
  quick: QUICK,
  runs,
  durationSeconds,
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
  // Case 7 compares two medians: at least 3 runs each, except in a smoke run.
  pgRuns: QUICK ? runs : Math.max(3, runs),
  // Case 9: users loaded, seconds per phase, lookups in flight in the concurrent phase.
  lookupUsers: QUICK ? 1_000 : 10_000,
  lookupSeconds: QUICK ? 1 : 3,
  lookupConcurrency: 32,
  // Logins and registrations run twice as long: at ~10/s, the hashes cut off when a run stops are
  // a visible share of a short run (about half a hash time per slot).
  hashDurationSeconds: 2 * durationSeconds,
  hashConcurrency,
  hashQueueMax,
  // Cases 2 and 3 measure bcrypt through the server, not its shedding: the longest wait config.ts
  // accepts, so that a slow (or busy) machine does not turn a full slot into 503s.
  hashMaxWaitMs: envNumber('BENCH_HASH_MAX_WAIT_MS', 60_000, { min: 0 }),
  // The storm runs on a server of its own, configured as in production: the shedding policy is
  // what it measures. It may use a hash concurrency of its own, as long as the table prints it
  // (case 4's rows are labelled with the gate: `4 storm (gate <concurrency>/<queue max>)`).
  stormHashConcurrency: envNumber('BENCH_STORM_HASH_CONCURRENCY', hashConcurrency),
  stormHashQueueMax: envNumber('BENCH_STORM_HASH_QUEUE_MAX', hashQueueMax, { min: 0 }),
  stormHashMaxWaitMs: envNumber('BENCH_STORM_HASH_MAX_WAIT_MS', 0, { min: 0 }) || undefined,
}

/** The password of every user the bench registers. */
export const PASSWORD = 'bench-Vq7!kT2m-xR9p'

/** The users the storm logs in as (registered on the server of cases 1-3 too). */
export const stormUsers = Array.from({ length: S.stormUsers }, (_, i) => `storm_${i}`)

/** The server's environment, built from scratch: nothing leaks in from the caller's shell. */
export const serverEnv = {
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  HOST,
  JWT_SECRET: randomBytes(32).toString('base64url'),
  BCRYPT_ROUNDS: String(S.bcryptRounds),
  HASH_CONCURRENCY: String(S.hashConcurrency),
  HASH_QUEUE_MAX: String(S.hashQueueMax),
  HASH_MAX_WAIT_MS: String(S.hashMaxWaitMs),
  AUDIT_LOG: 'false',
  // DOCS_ENABLED is left to the production default (off).
  // Raised so that throttling does not pollute throughput figures: the bench measures the cost of
  // a request, and a throttled request costs nothing. Each is the highest value config.ts accepts.
  LOGIN_RATE_LIMIT_PER_MINUTE: '1000000',
  LOGIN_IP_MAX_FAILURES: '1000000',
  LOGIN_MAX_FAILURES: '100',
  REGISTER_RATE_LIMIT_MAX: '1000000',
}
/** serverEnv as printed and saved: the secret hidden. */
export const printableEnv = { ...serverEnv, JWT_SECRET: '<random 32 bytes, base64url>' }

/** The storm's server: the same, with the storm's hash gate (HASH_MAX_WAIT_MS: the server's default). */
const { HASH_MAX_WAIT_MS: _, ...withoutMaxWait } = serverEnv
/** @type {Record<string, string>} */
export const stormEnv = {
  ...withoutMaxWait,
  HASH_CONCURRENCY: String(S.stormHashConcurrency),
  HASH_QUEUE_MAX: String(S.stormHashQueueMax),
  ...(S.stormHashMaxWaitMs !== undefined && { HASH_MAX_WAIT_MS: String(S.stormHashMaxWaitMs) }),
}
