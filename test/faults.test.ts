// The app's answers when PostgreSQL or Redis goes away and comes back: a TCP proxy in front of
// each service is stopped (every connection cut, new ones refused) and started again on the same
// port, under a running app that is never restarted. Also a database that is not there from the
// start. The stores' own fault behaviour is in store-faults.test.ts.
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  buildTestApp,
  CHALLENGE_INVALID,
  forgeToken,
  getMe,
  postToken,
  register,
  registerAndLogin,
  TEST_PASSWORD,
  uniqueUsername,
} from './helpers.js'
import {
  createTestSchema,
  deleteRedisKeys,
  describeWith,
  PG_URL,
  REDIS_URL,
  redisPrefix,
  type TestSchema,
} from './services.js'
import { startProxy, type TcpProxy } from './tcp-proxy.js'

/** A hang check, not a benchmark: each answer must come well before any client would give up. */
const QUICK_MS = 3_000
const WRONG_PASSWORD = 'wrong-Password-00'
const PG_DOWN = 'Service temporarily unavailable: postgres is not reachable'

/** The response to `request` and how long it took. */
async function timed(request: Promise<LightMyRequestResponse>): Promise<{ res: LightMyRequestResponse; ms: number }> {
  const started = Date.now()
  const res = await request
  return { res, ms: Date.now() - started }
}

/**
 * Sends `request` every 50 ms until `check` passes for its response, and returns that response;
 * fails with check's last error after `timeoutMs`.
 */
function until(
  timeoutMs: number,
  request: () => Promise<LightMyRequestResponse>,
  check: (res: LightMyRequestResponse) => void,
): Promise<LightMyRequestResponse> {
  return vi.waitFor(
    async () => {
      const res = await request()
      check(res)
      return res
    },
    { timeout: timeoutMs, interval: 50 },
  )
}

/** The 503 of a route that needs the database: `{"detail": ...}` and a Retry-After. */
function expectPgDown(res: LightMyRequestResponse, ms: number): void {
  expect(res.statusCode).toBe(503)
  expect(res.json()).toEqual({ detail: PG_DOWN })
  expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
  expect(ms).toBeLessThan(QUICK_MS)
}

/** The 503 of /token: exactly error, error_description and detail. */
function expectOAuthPgDown(res: LightMyRequestResponse, ms: number): void {
  expect(res.statusCode).toBe(503)
  expect(res.json()).toEqual({ error: 'temporarily_unavailable', error_description: PG_DOWN, detail: PG_DOWN })
  expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
  expect(ms).toBeLessThan(QUICK_MS)
}

const readyz = (app: FastifyInstance) => app.inject({ method: 'GET', url: '/readyz' })
const healthz = (app: FastifyInstance) => app.inject({ method: 'GET', url: '/healthz' })

describeWith(['postgres', 'redis'], 'PostgreSQL and Redis going away under a running app', () => {
  const LOGIN_MAX_FAILURES = 3
  let db: TestSchema
  let pgProxy: TcpProxy
  let redisProxy: TcpProxy
  let prefix: string
  let app: FastifyInstance
  /** A user logged in while everything was up, and their (still valid) access token. */
  let bearer: string

  beforeAll(async () => {
    db = await createTestSchema()
    const pgTarget = new URL(PG_URL)
    const redisTarget = new URL(REDIS_URL)
    pgProxy = await startProxy(pgTarget.hostname, Number(pgTarget.port || 5432))
    redisProxy = await startProxy(redisTarget.hostname, Number(redisTarget.port || 6379))
    // The schema's URL (its search_path option included), through the proxy.
    const databaseUrl = new URL(db.url)
    databaseUrl.hostname = '127.0.0.1'
    databaseUrl.port = String(pgProxy.port)
    const redisUrl = new URL(REDIS_URL)
    redisUrl.hostname = '127.0.0.1'
    redisUrl.port = String(redisProxy.port)
    prefix = redisPrefix()
    app = await buildTestApp({
      STORE: 'postgres',
      DATABASE_URL: databaseUrl.toString(),
      REDIS_URL: redisUrl.toString(),
      REDIS_PREFIX: prefix,
      // Every authenticated request reads the user from the database: no cached record hides the outage.
      USER_CACHE_TTL_MS: '0',
      LOGIN_MAX_FAILURES: String(LOGIN_MAX_FAILURES),
    })
  })

  afterAll(async () => {
    await app?.close()
    await Promise.allSettled([pgProxy?.stop(), redisProxy?.stop()])
    if (prefix) await deleteRedisKeys(prefix)
    await db?.drop()
  })

  it('answers normally while both are up', async () => {
    const ready = await readyz(app)
    expect(ready.statusCode).toBe(200)
    expect(ready.json()).toEqual({ status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
    const { token } = await registerAndLogin(app)
    bearer = `Bearer ${token}`
    expect((await getMe(app, bearer)).statusCode).toBe(200)
  })

  describe('PostgreSQL unreachable', () => {
    beforeAll(async () => {
      await pgProxy.stop()
    })

    it('fails /readyz with 503 naming postgres within 1.5 s; /healthz stays 200', async () => {
      const started = Date.now()
      const ready = await until(
        1_500,
        () => readyz(app),
        (res) => expect(res.statusCode, res.body).toBe(503),
      )
      expect(Date.now() - started).toBeLessThan(1_500)
      expect(ready.json()).toEqual({
        detail: 'Not ready: postgres unreachable',
        checks: { postgres: 'unreachable', redis: 'ok' },
      })
      const live = await healthz(app)
      expect(live.statusCode).toBe(200)
      expect(live.json()).toEqual({ status: 'ok' })
    })

    it('answers /register and /users/me with a quick 503 {"detail"}', async () => {
      const reg = await timed(register(app, { username: uniqueUsername('down'), password: TEST_PASSWORD }))
      expectPgDown(reg.res, reg.ms)
      const me = await timed(getMe(app, bearer))
      expectPgDown(me.res, me.ms)
    })

    it('answers /token (both grants) with a quick 503 temporarily_unavailable', async () => {
      const login = await timed(postToken(app, { username: uniqueUsername('down'), password: TEST_PASSWORD }))
      expectOAuthPgDown(login.res, login.ms)
      const refresh = await timed(
        postToken(app, { grant_type: 'refresh_token', refresh_token: `rt_${'x'.repeat(43)}` }),
      )
      expectOAuthPgDown(refresh.res, refresh.ms)
    })

    it('recovers by itself when the database returns', async () => {
      await pgProxy.start()
      const ready = await until(
        10_000,
        () => readyz(app),
        (res) => expect(res.statusCode, res.body).toBe(200),
      )
      expect(ready.json()).toEqual({ status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
      expect((await getMe(app, bearer)).statusCode).toBe(200)
      const { token } = await registerAndLogin(app)
      expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)
    })
  })

  describe('Redis unreachable', () => {
    beforeAll(async () => {
      await redisProxy.stop()
    })

    it('fails revocation checks closed: a valid token gets 401 within 3 s', async () => {
      const me = await until(
        3_000,
        () => getMe(app, bearer),
        (res) => expect(res.statusCode, res.body).not.toBe(200),
      )
      expect(me.statusCode).toBe(401)
      expect(me.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
      expect(me.json()).toEqual({ detail: 'Could not validate credentials' })
    })

    it('fails /readyz with 503 naming redis; /healthz stays 200', async () => {
      const ready = await until(
        1_500,
        () => readyz(app),
        (res) => expect(res.statusCode, res.body).toBe(503),
      )
      expect(ready.json()).toEqual({
        detail: 'Not ready: redis unreachable',
        checks: { postgres: 'ok', redis: 'unreachable' },
      })
      expect((await healthz(app)).statusCode).toBe(200)
    })

    it('still registers and logs in, throttling failed logins with local counters', async () => {
      const username = uniqueUsername('noredis')
      const reg = await timed(register(app, { username, password: TEST_PASSWORD }))
      expect(reg.res.statusCode).toBe(201)
      expect(reg.ms).toBeLessThan(QUICK_MS)
      const good = await timed(postToken(app, { username, password: TEST_PASSWORD }))
      expect(good.res.statusCode).toBe(200)
      expect(good.ms).toBeLessThan(QUICK_MS)

      for (let i = 1; i <= LOGIN_MAX_FAILURES; i++) {
        const wrong = await timed(postToken(app, { username, password: WRONG_PASSWORD }))
        expect(wrong.res.statusCode, `failure ${i}`).toBe(400)
        expect(wrong.res.json()).toMatchObject({ error: 'invalid_grant' })
        expect(wrong.ms).toBeLessThan(QUICK_MS)
      }
      // The local counters locked the account: the right password is refused too, for now.
      const locked = await postToken(app, { username, password: TEST_PASSWORD })
      expect(locked.statusCode).toBe(429)
      expect(locked.json()).toMatchObject({ error: 'temporarily_unavailable' })
    })

    it('accepts tokens again once Redis returns', async () => {
      await redisProxy.start()
      await until(
        8_000,
        () => getMe(app, bearer),
        (res) => expect(res.statusCode, res.body).toBe(200),
      )
      const ready = await until(
        2_000,
        () => readyz(app),
        (res) => expect(res.statusCode, res.body).toBe(200),
      )
      expect(ready.json()).toEqual({ status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
      // And revocation is shared again: a logout is in Redis, not only in this instance's memory.
      const { token } = await registerAndLogin(app)
      const logout = await app.inject({ method: 'POST', url: '/logout', headers: { authorization: `Bearer ${token}` } })
      expect(logout.statusCode).toBe(204)
      const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0 })
      redis.on('error', () => {})
      try {
        await redis.connect()
        expect((await redis.keys(`${prefix}deny:*`)).length).toBeGreaterThanOrEqual(2)
      } finally {
        redis.disconnect()
      }
    })
  })
})

/**
 * An app on PostgreSQL (a schema of its own, no Redis, no user cache) reached through a TCP proxy
 * that the test can stop or stall; `env` adds settings.
 */
async function pgAppBehindProxy(env: Record<string, string>) {
  const db = await createTestSchema()
  const pgTarget = new URL(PG_URL)
  const pgProxy = await startProxy(pgTarget.hostname, Number(pgTarget.port || 5432))
  const databaseUrl = new URL(db.url)
  databaseUrl.hostname = '127.0.0.1'
  databaseUrl.port = String(pgProxy.port)
  const app = await buildTestApp({
    STORE: 'postgres',
    DATABASE_URL: databaseUrl.toString(),
    USER_CACHE_TTL_MS: '0',
    ...env,
  })
  return { db, pgProxy, app }
}

describeWith('postgres', 'PostgreSQL going away without Redis (the denylist in PostgreSQL)', () => {
  let db: TestSchema
  let pgProxy: TcpProxy
  let app: FastifyInstance
  let bearer: string

  beforeAll(async () => {
    ;({ db, pgProxy, app } = await pgAppBehindProxy({}))
    bearer = `Bearer ${(await registerAndLogin(app)).token}`
  })

  afterAll(async () => {
    await app?.close()
    await pgProxy?.stop()
    await db?.drop()
  })

  it('answers authenticated requests 503 (not 401) for as long as the database is away, then recovers', async () => {
    expect((await getMe(app, bearer)).statusCode).toBe(200)
    await pgProxy.stop()
    // Across several polls of the denylist (every 500 ms; stale after 2 s): always the database's
    // 503, never a 401 that would tell the client its token is bad.
    const deadline = Date.now() + 2_500
    while (Date.now() < deadline) {
      const me = await timed(getMe(app, bearer))
      expectPgDown(me.res, me.ms)
      await sleep(250)
    }
    const ready = await readyz(app)
    expect(ready.statusCode).toBe(503)
    expect(ready.json()).toEqual({ detail: 'Not ready: postgres unreachable', checks: { postgres: 'unreachable' } })

    await pgProxy.start()
    await until(
      10_000,
      () => getMe(app, bearer),
      (res) => expect(res.statusCode, res.body).toBe(200),
    )
    expect((await readyz(app)).statusCode).toBe(200)
  })
})

describeWith('postgres', 'PostgreSQL stalled (packets dropped, no reset)', () => {
  let db: TestSchema
  let pgProxy: TcpProxy
  let app: FastifyInstance
  let username: string
  let bearer: string

  beforeAll(async () => {
    ;({ db, pgProxy, app } = await pgAppBehindProxy({ STORE_TIMEOUT_MS: '500' }))
    const user = await registerAndLogin(app)
    username = user.username
    bearer = `Bearer ${user.token}`
  })

  afterAll(async () => {
    pgProxy?.resume()
    await app?.close()
    await pgProxy?.stop()
    await db?.drop()
  })

  it('answers /token, /register and /users/me 503 with Retry-After within STORE_TIMEOUT_MS, then recovers', async () => {
    pgProxy.stall()
    try {
      const login = await timed(postToken(app, { username, password: TEST_PASSWORD }))
      expectOAuthPgDown(login.res, login.ms)
      const reg = await timed(register(app, { username: uniqueUsername('stalled'), password: TEST_PASSWORD }))
      expectPgDown(reg.res, reg.ms)
      const me = await timed(getMe(app, bearer))
      expectPgDown(me.res, me.ms)
    } finally {
      pgProxy.resume()
    }
    await until(
      10_000,
      () => postToken(app, { username, password: TEST_PASSWORD }),
      (res) => expect(res.statusCode, res.body).toBe(200),
    )
  })
})

describe('PostgreSQL not listening from the start (127.0.0.1:1)', () => {
  let app: FastifyInstance | undefined
  let bootMs = 0

  beforeAll(async () => {
    const started = Date.now()
    app = await buildTestApp({ STORE: 'postgres', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test' })
    bootMs = Date.now() - started
  })

  afterAll(async () => {
    await app?.close()
  })

  it('boots anyway, live but not ready', async () => {
    const server = app as FastifyInstance
    expect(bootMs).toBeLessThan(10_000)
    expect((await healthz(server)).statusCode).toBe(200)
    const ready = await timed(readyz(server))
    expect(ready.res.statusCode).toBe(503)
    expect(ready.res.json()).toEqual({ detail: 'Not ready: postgres unreachable', checks: { postgres: 'unreachable' } })
    expect(ready.ms).toBeLessThan(QUICK_MS)
  })

  it('answers requests that need the database with a quick 503', async () => {
    const server = app as FastifyInstance
    const reg = await timed(register(server, { username: uniqueUsername('closed'), password: TEST_PASSWORD }))
    expectPgDown(reg.res, reg.ms)
    const login = await timed(postToken(server, { username: uniqueUsername('closed'), password: TEST_PASSWORD }))
    expectOAuthPgDown(login.res, login.ms)
    const me = await timed(getMe(server, `Bearer ${forgeToken(server, randomUUID())}`))
    expectPgDown(me.res, me.ms)
  })
})
