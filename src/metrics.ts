// Prometheus metrics for the people on call: the definitions and one registry per app. Counting
// happens where the thing happens (routes, the hash gate, token verification, the stores); the
// HTTP side (the per-request histogram and the separate listener) is plugins/metrics.ts.
//
// createMetrics({ enabled: false }) (METRICS_PORT unset) returns no-op handles: nothing is
// registered, nothing is collected, and counting costs one empty call. Each app gets its own
// registry, so that several apps in one process (the tests) never share or clash.
//
// Every label value comes from a fixed list (outcomes, results, store names, route patterns,
// methods, status classes): never a username, an address, a token or a raw path, so the number of
// series stays bounded whatever clients send.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import type * as PromClient from 'prom-client'

/** Prefix of every metric name, the process and event-loop ones included. */
export const METRIC_PREFIX = 'auth_'

/** How a password grant ended (README, "Metrics"). */
export const LOGIN_OUTCOMES = [
  'success',
  'mfa_required',
  'invalid',
  'locked',
  'throttled',
  'shed',
  'unavailable',
  'error',
] as const
export type LoginOutcome = (typeof LOGIN_OUTCOMES)[number]

/** How a refresh_token grant ended. */
export const REFRESH_OUTCOMES = [
  'success',
  'invalid',
  'reuse_detected',
  'grace_reissue',
  'unavailable',
  'error',
] as const
export type RefreshOutcome = (typeof REFRESH_OUTCOMES)[number]

export const STORE_NAMES = ['postgres', 'redis'] as const
export type StoreName = (typeof STORE_NAMES)[number]

export interface RequestLabels {
  /** The route pattern (`/users/:id`), or `unmatched` when no route matched. */
  route: string
  method: string
  /** `2xx`, `4xx`... */
  status_class: string
}

/**
 * Counts bumped on every authenticated request (GET /users/me): plain integers, incremented in
 * place and read only when Prometheus scrapes, so the hot path allocates nothing and calls nothing.
 */
export interface TokenCounts {
  /** Access tokens that verified (from the cache or in full). */
  valid: number
  /** Access tokens refused by verification (signature, type, claims, expiry). */
  invalid: number
  /** Verifications answered by the verified-token cache (a subset of `valid`). */
  cacheHits: number
}

export interface Metrics {
  /** What the metrics listener exposes; null when metrics are off. */
  readonly registry: PromClient.Registry | null
  /** One observation per answered request, in seconds. */
  readonly httpRequests: { observe(labels: RequestLabels, seconds: number): void }
  readonly logins: { inc(labels: { outcome: LoginOutcome }): void }
  readonly refreshes: { inc(labels: { outcome: RefreshOutcome }): void }
  /** How long a hash job waited for a free slot of the hash gate, in seconds. */
  readonly hashWaitSeconds: { observe(seconds: number): void }
  /** Hash jobs the gate refused at once (503). */
  readonly hashShed: { inc(): void }
  /** StoreUnavailableError raised, by store. */
  readonly storeErrors: { inc(labels: { store: StoreName }): void }
  readonly tokens: TokenCounts
  /** Where the hash-queue gauge reads the number of waiting hash jobs when scraped. */
  sampleHashQueue(read: () => number): void
}

/** Upper bounds of the request-duration buckets: GET /users/me takes well under 1 ms, a login one bcrypt. */
const REQUEST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
/** Upper bounds of the hash-wait buckets: HASH_MAX_WAIT_MS (1 s by default) bounds the expected wait. */
const HASH_WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

const NOOP = { inc() {}, observe() {} }

export function createMetrics({ enabled }: { enabled: boolean }): Metrics {
  const tokens: TokenCounts = { valid: 0, invalid: 0, cacheHits: 0 }
  if (!enabled) {
    return {
      registry: null,
      httpRequests: NOOP,
      logins: NOOP,
      refreshes: NOOP,
      hashWaitSeconds: NOOP,
      hashShed: NOOP,
      storeErrors: NOOP,
      tokens,
      sampleHashQueue() {},
    }
  }

  // prom-client is loaded only when metrics are on: about 70 ms of module loading that a server
  // without METRICS_PORT never pays at start.
  const { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } = createRequire(import.meta.url)(
    'prom-client',
  ) as typeof PromClient
  const registry = new Registry()
  // Always named: prom-client's default is its process-wide global registry.
  const registers = [registry]
  const name = (suffix: string) => METRIC_PREFIX + suffix
  collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX })

  new Gauge({
    name: name('build_info'),
    help: 'Always 1; the version label is the running version (package.json)',
    labelNames: ['version'],
    registers,
  }).set({ version: packageVersion() }, 1)

  const httpRequests = new Histogram({
    name: name('http_request_duration_seconds'),
    help: 'Answered HTTP requests on the public port and their duration in seconds, by route pattern, method and status class',
    labelNames: ['route', 'method', 'status_class'],
    buckets: REQUEST_BUCKETS,
    registers,
  })
  const logins = new Counter({
    name: name('logins_total'),
    help: 'Password grants (POST /token with a username and a password) by outcome',
    labelNames: ['outcome'],
    registers,
  })
  const refreshes = new Counter({
    name: name('refreshes_total'),
    help: 'Refresh-token grants by outcome',
    labelNames: ['outcome'],
    registers,
  })
  const storeErrors = new Counter({
    name: name('store_errors_total'),
    help: 'StoreUnavailableError raised: PostgreSQL or Redis unreachable or too slow (STORE_TIMEOUT_MS)',
    labelNames: ['store'],
    registers,
  })
  // Every known label value starts at 0, so that rate() and alerts see a series before its first event.
  for (const outcome of LOGIN_OUTCOMES) logins.inc({ outcome }, 0)
  for (const outcome of REFRESH_OUTCOMES) refreshes.inc({ outcome }, 0)
  for (const store of STORE_NAMES) storeErrors.inc({ store }, 0)

  let readHashQueue = () => 0
  new Gauge({
    name: name('hash_queue_length'),
    help: 'Hash jobs (bcrypt) waiting for a free slot of the hash gate',
    registers,
    collect() {
      this.set(readHashQueue())
    },
  })
  const hashWaitSeconds = new Histogram({
    name: name('hash_wait_seconds'),
    help: 'How long each hash job waited for a free slot of the hash gate, in seconds',
    buckets: HASH_WAIT_BUCKETS,
    registers,
  })
  const hashShed = new Counter({
    name: name('hash_shed_total'),
    help: 'Hash jobs refused at once by the hash gate (answered 503 with Retry-After)',
    registers,
  })

  new Counter({
    name: name('token_verifications_total'),
    help: 'Access-token verifications by result (valid: from the cache or checked in full)',
    labelNames: ['result'],
    registers,
    collect() {
      this.reset()
      this.inc({ result: 'valid' }, tokens.valid)
      this.inc({ result: 'invalid' }, tokens.invalid)
    },
  })
  new Counter({
    name: name('token_cache_hits_total'),
    help: 'Access-token verifications answered by the verified-token cache',
    registers,
    collect() {
      this.reset()
      this.inc(tokens.cacheHits)
    },
  })

  return {
    registry,
    httpRequests,
    logins,
    refreshes,
    hashWaitSeconds,
    hashShed,
    storeErrors,
    tokens,
    sampleHashQueue(read) {
      readHashQueue = read
    },
  }
}

let version: string | undefined

/** The version in package.json: one level above this file, both in src/ and in dist/. */
function packageVersion(): string {
  version ??= String(
    (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown }).version ??
      'unknown',
  )
  return version
}
