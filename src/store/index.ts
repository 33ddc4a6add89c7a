// Chooses and opens the stores from configuration: memory (the zero-config default), or
// PostgreSQL for users, sessions and the denylist, with Redis (optional) for the shared counters
// and denylist. Also the readiness checks of whatever was opened.
import type { FastifyBaseLogger } from 'fastify'
import type { Redis } from 'ioredis'
import type pg from 'pg'
import type { Config } from '../config.js'
import { CachedUserStore } from './cache.js'
import { type CounterStore, FallbackCounterStore, MemoryCounterStore } from './counters.js'
// pg and ioredis are imported only when configured: together they cost ~300 ms of cold start.
import { type DenyList, MemoryDenyList, MemorySessionStore, type SessionStore } from './sessions.js'
import { MemoryUserStore, type UserStore } from './users.js'

export interface Stores {
  users: UserStore
  sessions: SessionStore
  denylist: DenyList
  counters: CounterStore
  /** The Redis client, for @fastify/rate-limit's shared store; undefined without REDIS_URL. */
  redis?: Redis
  /** Readiness: each dependency's ping; rejects when it does not answer. */
  checks: Record<string, () => Promise<void>>
  close(): Promise<void>
}

export async function openStores(config: Config, log: FastifyBaseLogger): Promise<Stores> {
  const { storage } = config
  const closers: (() => Promise<unknown>)[] = []
  const checks: Stores['checks'] = {}
  let users: UserStore = new MemoryUserStore()
  let sessions: SessionStore = new MemorySessionStore()
  let denylist: DenyList | undefined
  let counters: CounterStore = new MemoryCounterStore()
  let pool: pg.Pool | undefined
  let redis: Redis | undefined

  if (storage.kind === 'postgres') {
    const { createPgPool, PostgresDenyList, PostgresSessionStore, PostgresUserStore } = await import('./postgres.js')
    const { migrate } = await import('./migrate.js')
    pool = createPgPool(storage.databaseUrl as string, {
      connectionTimeoutMillis: storage.timeoutMs,
      queryTimeoutMs: storage.timeoutMs,
      onError: (err) => log.warn({ err: err.message }, 'postgres connection error'),
    })
    if (storage.migrateOnStart) {
      const applied = await migrate(pool)
      log.info({ applied }, applied.length > 0 ? 'migrations applied' : 'migrations up to date')
    }
    const pgUsers = new PostgresUserStore(pool)
    users = storage.userCacheTtlMs > 0 ? new CachedUserStore(pgUsers, storage.userCacheTtlMs) : pgUsers
    sessions = new PostgresSessionStore(pool)
    checks.postgres = () => pgUsers.ping()
    if (!storage.redisUrl) denylist = new PostgresDenyList(pool)
  }

  if (storage.redisUrl) {
    const { createRedis, RedisCounterStore, RedisDenyList } = await import('./redis.js')
    redis = createRedis(storage.redisUrl, {
      timeoutMs: storage.timeoutMs,
      onError: (err) => log.debug({ err: err.message }, 'redis connection error'),
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
  closers.push(() => Promise.allSettled([users.close(), sessions.close(), denylist.close(), counters.close()]))
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
