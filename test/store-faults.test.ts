// Faults of the shared stores: a database or Redis that is not there, one that accepts connections
// and never answers, connections cut under a running store. Every failure must be a quick
// StoreUnavailableError (a 503), or healthy() === false for the denylists, and the stores must
// recover by themselves once the service is back.
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { createServer, type Server, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { StoreUnavailableError } from '../src/errors.js'
import { createPgPool, PostgresDenyList, PostgresSessionStore, PostgresUserStore } from '../src/store/postgres.js'
import { createRedis, RedisCounterStore, RedisDenyList, redisReady } from '../src/store/redis.js'
import { createTestSchema, describeWith, PG_URL, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const run = promisify(execFile)

/** Port 1 on loopback: nothing listens there, so connections are refused at once. */
const CLOSED_PG = 'postgres://postgres:s3cret-Pa55@127.0.0.1:1/test'
const CLOSED_REDIS = 'redis://127.0.0.1:1'

/** Resolves to the rejection of `promise` and how long it took (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const started = Date.now()
  try {
    await promise
  } catch (error) {
    return { error, ms: Date.now() - started }
  }
  throw new Error('expected a rejection')
}

function expectUnavailable(error: unknown, dependency: 'postgres' | 'redis'): void {
  expect(error).toBeInstanceOf(StoreUnavailableError)
  expect(error).toMatchObject({ dependency, statusCode: 503 })
}

describe('PostgreSQL not listening', () => {
  const users = new PostgresUserStore(CLOSED_PG)
  const sessions = new PostgresSessionStore(CLOSED_PG)
  afterAll(async () => {
    await users.close()
    await sessions.close()
  })

  it('rejects findById with StoreUnavailableError within 3 s', async () => {
    const { error, ms } = await rejection(users.findById(randomUUID()))
    expectUnavailable(error, 'postgres')
    expect(ms).toBeLessThan(3_000)
  })

  it('rejects every user and session operation the same way', async () => {
    const now = new Date()
    const operations = [
      users.create({
        id: randomUUID(),
        username: 'x',
        email: null,
        passwordHash: 'h',
        createdAt: now,
        roles: ['user'],
      }),
      users.findByUsername('x'),
      users.list({ limit: 10, offset: 0 }),
      users.ping(),
      sessions.findToken('h'),
      sessions.rotate(randomUUID(), 'a', { hash: 'b', expiresAt: now }, { userAgent: null, ip: null, at: now }),
      sessions.ping(),
    ]
    for (const { error } of await Promise.all(operations.map(rejection))) expectUnavailable(error, 'postgres')
  })

  it('reports the denylist unhealthy, and still enforces what this instance added', async () => {
    const list = new PostgresDenyList(CLOSED_PG)
    try {
      await sleep(100)
      expect(list.healthy()).toBe(false)
      const id = randomUUID()
      expectUnavailable((await rejection(list.add(id, Date.now() / 1000 + 60))).error, 'postgres')
      expect(list.has(id)).toBe(true)
      expectUnavailable((await rejection(list.refresh())).error, 'postgres')
      expect(list.healthy()).toBe(false)
    } finally {
      await list.close()
    }
  })

  it('exits 1 from npm run migrate without printing the password', async () => {
    const result = await run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'], {
      env: { ...process.env, DATABASE_URL: CLOSED_PG },
    }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    )
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/^migrate: failed: .*ECONNREFUSED/)
    expect(result.stderr).not.toContain('s3cret-Pa55')
  })

  it('exits 1 from npm run migrate without DATABASE_URL', async () => {
    const env = { ...process.env }
    delete env.DATABASE_URL
    const result = await run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'], { env }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    )
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/DATABASE_URL is not set/)
  })
})

describe('a server that accepts connections and never answers', () => {
  let server: Server
  let port = 0
  const sockets = new Set<Socket>()
  beforeAll(async () => {
    server = createServer((socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as { port: number }).port
  })
  afterAll(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })

  it('gives StoreUnavailableError from PostgreSQL after the 2 s connection timeout, not a hang', async () => {
    const store = new PostgresUserStore(`postgres://postgres@127.0.0.1:${port}/test`)
    try {
      const { error, ms } = await rejection(store.findById(randomUUID()))
      expectUnavailable(error, 'postgres')
      expect(ms).toBeLessThan(3_000)
    } finally {
      await store.close()
    }
  })

  it('gives StoreUnavailableError from Redis at once', async () => {
    const counters = new RedisCounterStore(`redis://127.0.0.1:${port}`)
    try {
      const { error, ms } = await rejection(counters.incr('k', 1, 1_000))
      expectUnavailable(error, 'redis')
      expect(ms).toBeLessThan(1_000)
    } finally {
      await counters.close()
    }
  })
})

describe('Redis not listening', () => {
  it('rejects every counter operation with StoreUnavailableError at once', async () => {
    const counters = new RedisCounterStore(CLOSED_REDIS)
    try {
      await sleep(50)
      const operations = [
        counters.incr('k', 1, 1_000),
        counters.get('k'),
        counters.setIfAbsent('k', 1_000),
        counters.delete('k'),
        counters.ping(),
      ]
      const started = Date.now()
      for (const { error } of await Promise.all(operations.map(rejection))) expectUnavailable(error, 'redis')
      expect(Date.now() - started).toBeLessThan(1_000)
    } finally {
      await counters.close()
    }
  })

  it('reports the denylist unhealthy, and still enforces what this instance added', async () => {
    const list = new RedisDenyList(CLOSED_REDIS)
    try {
      await sleep(100)
      expect(list.healthy()).toBe(false)
      const id = randomUUID()
      expectUnavailable((await rejection(list.add(id, Date.now() / 1000 + 60))).error, 'redis')
      expect(list.has(id)).toBe(true)
      expect(list.healthy()).toBe(false)
    } finally {
      await list.close()
    }
  })

  it('times out waiting for the connection with StoreUnavailableError', async () => {
    const redis = createRedis(CLOSED_REDIS)
    try {
      expectUnavailable((await rejection(redisReady(redis, 200))).error, 'redis')
    } finally {
      redis.disconnect()
    }
  })
})

describeWith('postgres', 'PostgreSQL connections cut under a running store', () => {
  let db: TestSchema
  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterAll(async () => {
    await db?.drop()
  })

  it('fails the affected requests with StoreUnavailableError and recovers without a restart', async () => {
    const applicationName = `cut_${randomUUID().slice(0, 8)}`
    const pool = db.newPool({ applicationName })
    const store = new PostgresUserStore(pool)
    const list = new PostgresDenyList(pool)
    const user = { id: randomUUID(), username: 'survivor', email: null, passwordHash: 'h', createdAt: new Date() }
    await store.create({ ...user, roles: ['user'] })
    await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000 })

    // As an administrator restarting the server would: terminate every connection of the pool.
    const admin = new pg.Client({ connectionString: PG_URL })
    await admin.connect()
    try {
      const killed = await admin.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
        [applicationName],
      )
      expect(killed.rowCount).toBeGreaterThan(0)
    } finally {
      await admin.end()
    }

    // Idle connections are dropped by the pool; anything that still fails is a 503, never a 500.
    for (let i = 0; i < 5; i++) {
      await store.findById(user.id).catch((err: unknown) => expectUnavailable(err, 'postgres'))
    }
    expect((await store.findById(user.id))?.username).toBe('survivor')
    await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000 })
    await list.close()
  })

  it('does not let an idle connection error crash the process', async () => {
    const applicationName = `idle_${randomUUID().slice(0, 8)}`
    const pool = createPgPool(PG_URL, { applicationName })
    const errors: Error[] = []
    pool.on('error', (err) => errors.push(err))
    await pool.query('SELECT 1')
    const admin = new pg.Client({ connectionString: PG_URL })
    await admin.connect()
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [
      applicationName,
    ])
    await admin.end()
    await vi.waitFor(() => expect(errors.length).toBeGreaterThan(0), { timeout: 2_000 })
    expect((await pool.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }])
    await pool.end()
  })
})

describeWith('redis', 'Redis connections cut under a running denylist', () => {
  it('turns unhealthy, then reconnects and loads the entries it missed meanwhile', async () => {
    const prefix = redisPrefix()
    const connectionName = `cut_${randomUUID().slice(0, 8)}`
    const list = new RedisDenyList(createRedis(REDIS_URL, { connectionName }), { prefix })
    const admin = createRedis(REDIS_URL)
    try {
      await redisReady(admin)
      await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000 })

      // Cut both of its connections (the subscriber carries the same name).
      const clients = String(await admin.client('LIST')).split('\n')
      const ids = clients
        .filter((line) => line.includes(` name=${connectionName} `))
        .map((l) => /id=(\d+)/.exec(l)?.[1])
      expect(ids).toHaveLength(2)
      for (const id of ids) await admin.client('KILL', 'ID', String(id))
      await vi.waitFor(() => expect(list.healthy()).toBe(false), { timeout: 1_000, interval: 5 })

      // An entry whose PUBLISH it cannot have seen: only the reload after reconnecting finds it.
      const missed = randomUUID()
      await admin.set(`${prefix}deny:${missed}`, String(Date.now() / 1000 + 60), 'EX', 60)
      expect(list.has(missed)).toBe(false)

      await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 5_000 })
      expect(list.has(missed)).toBe(true)
    } finally {
      await list.close()
      admin.disconnect()
    }
  })
})
