// Which external services the tests can use, decided once per test file at import: PostgreSQL and
// Redis on their default local ports (TEST_DATABASE_URL / TEST_REDIS_URL override them). Without
// them, their suites are skipped with a warning, except in CI (CI=true), where they fail instead.
// Also: a fresh, migrated PostgreSQL schema per suite, dropped afterwards.
import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import pg from 'pg'
import { beforeAll, describe } from 'vitest'
import { migrate } from '../src/store/migrate.js'
import { createPgPool, type PgPoolOptions } from '../src/store/postgres.js'

export const PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export type Service = 'postgres' | 'redis'

async function reachPostgres(): Promise<boolean> {
  const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 1_000, query_timeout: 1_000 })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('SELECT 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

async function reachRedis(): Promise<boolean> {
  const redis = new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 1_000,
    commandTimeout: 1_000,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
  })
  redis.on('error', () => {})
  try {
    await redis.connect()
    await redis.ping()
    return true
  } catch {
    return false
  } finally {
    redis.disconnect()
  }
}

export const [pgAvailable, redisAvailable] = await Promise.all([reachPostgres(), reachRedis()])

/** host:port only: never the URL's credentials. */
function where(url: string): string {
  try {
    const { hostname, port } = new URL(url)
    return `${hostname}:${port}`
  } catch {
    return 'the configured address'
  }
}

const SERVICES: Record<Service, { label: string; available: boolean; at: string }> = {
  postgres: { label: 'PostgreSQL', available: pgAvailable, at: where(PG_URL) },
  redis: { label: 'Redis', available: redisAvailable, at: where(REDIS_URL) },
}

const warned = new Set<Service>()

/**
 * True when the suites needing `service` should be skipped (it is unreachable and this is not CI),
 * with a warning the first time. In CI it is always false: the suite runs, and assertReachable in
 * its beforeAll fails it.
 */
export function requireOrSkip(service: Service): boolean {
  const { label, available, at } = SERVICES[service]
  if (available || process.env.CI === 'true') return false
  if (!warned.has(service)) {
    warned.add(service)
    console.warn(`${label} suites skipped: not reachable at ${at}`)
  }
  return true
}

/** Throws (failing the suite) when `service` is unreachable: for beforeAll. */
export function assertReachable(service: Service): void {
  const { label, available, at } = SERVICES[service]
  if (!available) {
    throw new Error(
      `${label} is not reachable at ${at}; CI=true, so its suites fail rather than skip (.ci/run starts it)`,
    )
  }
}

/** describe() that needs `services`: skipped without them locally, failed without them in CI. */
export function describeWith(services: Service | Service[], name: string, fn: () => void): void {
  const needed = [services].flat()
  const skip = needed.map(requireOrSkip).some(Boolean)
  describe.skipIf(skip)(name, () => {
    beforeAll(() => {
      for (const service of needed) assertReachable(service)
    })
    fn()
  })
}

/** A random key prefix for Redis, so concurrent test files never see each other's keys. */
export function redisPrefix(): string {
  return `test:${randomBytes(6).toString('hex')}:`
}

export interface TestSchema {
  readonly name: string
  /** A pool whose search_path is the schema. */
  readonly pool: pg.Pool
  /** DATABASE_URL for a child process: the schema set through the `options` parameter. */
  readonly url: string
  /** Another pool on the same schema (a second instance); ended by drop(). */
  newPool(options?: Omit<PgPoolOptions, 'schema'>): pg.Pool
  /** Empties every table (the migrations stay applied). */
  truncate(): Promise<void>
  /** Ends the pools and drops the schema with everything in it. */
  drop(): Promise<void>
}

/** A new schema named test_<random>, migrated unless `migrated` is false. */
export async function createTestSchema({ migrated = true } = {}): Promise<TestSchema> {
  const name = `test_${randomBytes(6).toString('hex')}`
  const admin = new pg.Pool({ connectionString: PG_URL, max: 1 })
  admin.on('error', () => {})
  await admin.query(`CREATE SCHEMA ${pg.escapeIdentifier(name)}`)
  const pools: pg.Pool[] = []
  const newPool = (options: Omit<PgPoolOptions, 'schema'> = {}) => {
    const pool = createPgPool(PG_URL, { ...options, schema: name })
    pools.push(pool)
    return pool
  }
  const pool = newPool()
  if (migrated) await migrate(pool)
  const url = new URL(PG_URL)
  url.searchParams.set('options', `-c search_path=${name}`)
  return {
    name,
    pool,
    url: url.toString(),
    newPool,
    async truncate() {
      await pool.query(
        'TRUNCATE users, refresh_families, refresh_tokens, revoked_tokens, one_time_tokens, mfa_totp, mfa_recovery_codes',
      )
    },
    async drop() {
      await Promise.all(pools.map((p) => p.end().catch(() => {})))
      await admin.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(name)} CASCADE`)
      await admin.end()
    },
  }
}

/** Deletes every Redis key under a test prefix (SCAN + DEL). */
export async function deleteRedisKeys(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0 })
  redis.on('error', () => {})
  try {
    await redis.connect()
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await redis.del(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}
