// Chooses and opens the stores from configuration: memory (the zero-config default), or
// PostgreSQL for users, sessions and the denylist, with Redis (optional) for the shared counters
// and denylist. Also the readiness checks of whatever was opened.
import type { FastifyBaseLogger } from 'fastify'
import type { Redis } from 'ioredis'
import type pg from 'pg'
import type { Config } from '../config.js'
import { addressOf } from '../logging.js'
import type { Metrics } from '../metrics.js'
import { CachedUserStore } from './cache.js'
import { type CounterStore, FallbackCounterStore, MemoryCounterStore } from './counters.js'
// pg and ioredis are imported only when configured: together they cost ~300 ms of cold start.
import { MemoryMfaStore, type MfaStore } from './mfa.js'
import { type DenyList, MemoryDenyList, MemorySessionStore, type SessionStore } from './sessions.js'
import { MemoryOneTimeTokenStore, type OneTimeTokenStore } from './tokens.js'
import { MemoryUserStore, type UserStore } from './users.js'

export interface Stores {
  users: UserStore
  sessions: SessionStore
  /** Password-reset and e-mail verification tokens (memory, or PostgreSQL with STORE=postgres). */
  oneTimeTokens: OneTimeTokenStore
  /** Second factors: sealed TOTP secrets and recovery-code hashes (memory, or PostgreSQL with STORE=postgres). */
  mfa: MfaStore
  denylist: DenyList
  counters: CounterStore
  /** The Redis client, for @fastify/rate-limit's shared store; undefined without REDIS_URL. */
  redis?: Redis
  /** Readiness: each dependency's ping; rejects when it does not answer. */
  checks: Record<string, () => Promise<void>>
  close(): Promise<void>
}

/** Opens the configured stores; `metrics` counts each StoreUnavailableError they raise, by store. */
export async function openStores(
  config: Config,
  log: FastifyBaseLogger,
  metrics?: Pick<Metrics, 'storeErrors'>,
): Promise<Stores> {
  const { storage } = config
  const closers: (() => Promise<unknown>)[] = []
  const checks: Stores['checks'] = {}
  let users: UserStore = new MemoryUserStore()
  let sessions: SessionStore = new MemorySessionStore()
  let oneTimeTokens: OneTimeTokenStore = new MemoryOneTimeTokenStore()
  let mfa: MfaStore = new MemoryMfaStore()
  let denylist: DenyList | undefined
  let counters: CounterStore = new MemoryCounterStore()
  let pool: pg.Pool | undefined
  let redis: Redis | undefined

  if (storage.kind === 'postgres') {
    const {
      createPgPool,
      PostgresDenyList,
      PostgresMfaStore,
      PostgresOneTimeTokenStore,
      PostgresSessionStore,
      PostgresUserStore,
    } = await import('./postgres.js')
    const { prepareSchema, SchemaGate } = await import('./schema-gate.js')
    const where = addressOf(storage.databaseUrl as string)
    // No request may reach a table before the schema is known to match (store/schema-gate.ts).
    const gate = new SchemaGate({
      onProblem: (err) =>
        log.error(
          { code: (err as { code?: unknown }).code },
          `${err.message}. Until this is fixed, requests that need the database answer 503`,
        ),
      onPassed: () => log.info(`PostgreSQL at ${where} reachable and its schema matches`),
    })
    pool = createPgPool(storage.databaseUrl as string, {
      connectionTimeoutMillis: storage.timeoutMs,
      queryTimeoutMs: storage.timeoutMs,
      onError: (err) => log.warn({ err: err.message }, 'postgres connection error'),
      onUnavailable: () => metrics?.storeErrors.inc({ store: 'postgres' }),
      onConnect: gate.onConnect,
    })
    const opened = pool
    await prepareSchema(pool, gate, { migrateOnStart: storage.migrateOnStart, where, log }).catch(async (err) => {
      await opened.end().catch(() => {})
      throw err
    })
    const pgUsers = new PostgresUserStore(pool)
    users = storage.userCacheTtlMs > 0 ? new CachedUserStore(pgUsers, storage.userCacheTtlMs) : pgUsers
    sessions = new PostgresSessionStore(pool)
    oneTimeTokens = new PostgresOneTimeTokenStore(pool)
    mfa = new PostgresMfaStore(pool)
    checks.postgres = () => pgUsers.ping()
    if (!storage.redisUrl) denylist = new PostgresDenyList(pool)
  }

  if (storage.redisUrl) {
    const { createRedis, RedisCounterStore, RedisDenyList } = await import('./redis.js')
    redis = createRedis(storage.redisUrl, {
      timeoutMs: storage.timeoutMs,
      onError: (err) => log.debug({ err: err.message }, 'redis connection error'),
      onUnavailable: () => metrics?.storeErrors.inc({ store: 'redis' }),
    })
    const redisCounters = new RedisCounterStore(redis, { prefix: storage.redisPrefix })
    let warned = 0
    counters = new FallbackCounterStore(redisCounters, (err) => {
      // At most one warning a minute while Redis is down.
      if (Date.now() - warned > 60_000) {
        warned = Date.now()
        log.warn({ err: (err as Error).message }, 'redis unreachable: login throttling uses local counters')
      }
    })
    denylist = new RedisDenyList(redis, { prefix: storage.redisPrefix })
    checks.redis = () => redisCounters.ping()
    await redisCounters.ready().catch(() => log.warn('redis not reachable at start; retrying in the background'))
  }
  denylist ??= new MemoryDenyList()

  // Close the stores first, then the connections they share.
  closers.push(() =>
    Promise.allSettled([
      users.close(),
      sessions.close(),
      oneTimeTokens.close(),
      mfa.close(),
      denylist.close(),
      counters.close(),
    ]),
  )
  if (redis) {
    const client = redis
    closers.push(() => client.quit().catch(() => client.disconnect()))
  }
  if (pool) {
    const p = pool
    closers.push(() => p.end())
  }

  // A shared denylist needs its first load before it can vouch for anything.
  await waitUntil(() => (denylist as DenyList).healthy(), 3_000)

  return {
    users,
    sessions,
    oneTimeTokens,
    mfa,
    denylist,
    counters,
    redis,
    checks,
    async close() {
      for (const close of closers) await close().catch(() => {})
    },
  }
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
}
