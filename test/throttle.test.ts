// Brute-force and abuse protection: the per-account soft lockout (growing, capped delays, reset on
// success, the same for unknown names), the per-address failure limit, the request caps of
// @fastify/rate-limit on /token and /register, and the client address behind (or without) a proxy.
// Small limits and real waits of about a second.
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { describe, expect, it, onTestFinished } from 'vitest'
import {
  authed,
  buildTestApp,
  type Env,
  getMe,
  INVALID_GRANT,
  login,
  oauthError,
  postToken,
  refresh,
  register,
  stableHeaders,
  TEST_PASSWORD,
  uniqueUsername,
} from './helpers.js'

const WRONG = 'not-the-password-99'
const LOCKED = oauthError('temporarily_unavailable', 'Too many failed login attempts; try again later')
/** Behind a proxy at 127.0.0.1 (inject's address), X-Forwarded-For sets the client address. */
const PROXY = { TRUST_PROXY: '127.0.0.1' }

/** A fresh app closed when the test ends; concurrent tests pass their own context's onTestFinished. */
async function appWith(env: Env, finished: typeof onTestFinished = onTestFinished): Promise<FastifyInstance> {
  const app = await buildTestApp(env)
  finished(() => app.close())
  return app
}

/** A password-grant attempt, from `ip` when given (X-Forwarded-For). */
function attempt(app: FastifyInstance, username: string, password: string, ip?: string) {
  return postToken(app, { username, password }, ip === undefined ? {} : { 'x-forwarded-for': ip })
}

async function newUser(app: FastifyInstance, prefix = 'thr'): Promise<string> {
  const username = uniqueUsername(prefix)
  const res = await register(app, { username, password: TEST_PASSWORD })
  expect(res.statusCode).toBe(201)
  return username
}

/** `n` failed logins, each answered 400 invalid_grant. */
async function fail(app: FastifyInstance, username: string, n: number, ip?: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const res = await attempt(app, username, WRONG, ip)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(INVALID_GRANT)
  }
}

function expectLocked(res: LightMyRequestResponse, retryAfter?: string): void {
  expect(res.statusCode).toBe(429)
  expect(res.json()).toEqual(LOCKED)
  if (retryAfter === undefined) expect(res.headers['retry-after']).toMatch(/^[1-9]\d*$/)
  else expect(res.headers['retry-after']).toBe(retryAfter)
}

describe('account lockout', () => {
  it('locks an account after LOGIN_MAX_FAILURES failures: 429 with Retry-After, even for the right password', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
    const username = await newUser(app)
    await fail(app, username, 3)

    const res = await attempt(app, username, TEST_PASSWORD)

    expectLocked(res, '30')
    expect(res.headers['cache-control']).toBe('no-store')
  })

  it('locks the account for every client address', async () => {
    const app = await appWith({ ...PROXY, LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
    const username = await newUser(app)
    await fail(app, username, 3, '203.0.113.7')

    expectLocked(await attempt(app, username, TEST_PASSWORD, '198.51.100.23'), '30')
  })

  it('does not lock out before the limit', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const username = await newUser(app)
    await fail(app, username, 2)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
  })

  it('leaves other accounts alone', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const victim = await newUser(app)
    const other = await newUser(app)
    await fail(app, victim, 3)

    expect((await attempt(app, other, TEST_PASSWORD)).statusCode).toBe(200)
    await fail(app, other, 2)
  })

  it('keeps existing sessions working while the account is locked', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const username = await newUser(app)
    const tokens = await login(app, username)
    await fail(app, username, 3)
    expectLocked(await attempt(app, username, TEST_PASSWORD))

    expect((await getMe(app, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
  })

  it('locks unknown usernames after the same number of failures with the same answer (no existence oracle)', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
    const known = await newUser(app)
    const unknown = uniqueUsername('ghost')
    await fail(app, known, 3)
    await fail(app, unknown, 3)

    const lockedKnown = await attempt(app, known, TEST_PASSWORD)
    const lockedUnknown = await attempt(app, unknown, TEST_PASSWORD)

    expectLocked(lockedKnown, '30')
    expectLocked(lockedUnknown, '30')
    expect(lockedUnknown.body).toBe(lockedKnown.body)
    expect(stableHeaders(lockedUnknown.headers)).toEqual(stableHeaders(lockedKnown.headers))
  })

  it('keys the lock on the normalised username: another case is the same account', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const username = await newUser(app)
    await fail(app, username.toUpperCase(), 3)
    expectLocked(await attempt(app, username, TEST_PASSWORD))
  })

  it('counts wrong current passwords of POST /users/me/password toward the lockout', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
    const username = await newUser(app)
    const { access_token } = await login(app, username)
    const change = (current: string) =>
      authed(app, 'POST', '/users/me/password', access_token, {
        current_password: current,
        new_password: 'copper-Lantern-44-meadow',
      })
    for (let i = 0; i < 3; i++) {
      const res = await change(WRONG)
      expect(res.statusCode).toBe(400)
      expect(res.json()).toEqual({ detail: 'Password is incorrect' })
    }

    expectLocked(await attempt(app, username, TEST_PASSWORD), '30')
    const locked = await change(TEST_PASSWORD)
    expect(locked.statusCode).toBe(429)
    expect(locked.json()).toEqual({ detail: 'Too many failed login attempts; try again later' })
    expect(locked.headers['retry-after']).toBe('30')
  })

  it('counts wrong passwords of DELETE /users/me toward the lockout', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const username = await newUser(app)
    const { access_token } = await login(app, username)
    for (let i = 0; i < 3; i++) {
      expect((await authed(app, 'DELETE', '/users/me', access_token, { password: WRONG })).statusCode).toBe(400)
    }
    expectLocked(await attempt(app, username, TEST_PASSWORD))
  })

  it('lets at most LOGIN_MAX_FAILURES of 20 concurrent wrong passwords be checked; the rest get 429', async () => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3' })
    const username = await newUser(app)

    const results = await Promise.all(Array.from({ length: 20 }, () => attempt(app, username, WRONG)))

    const checked = results.filter((r) => r.statusCode === 400)
    const locked = results.filter((r) => r.statusCode === 429)
    expect(checked.length).toBeLessThanOrEqual(3)
    expect(checked.length + locked.length).toBe(20)
    for (const res of checked) expect(res.json()).toEqual(INVALID_GRANT)
    for (const res of locked) expectLocked(res)
    expectLocked(await attempt(app, username, TEST_PASSWORD))
  })
})

describe('account lockout over time (LOGIN_LOCKOUT_SECONDS=1)', () => {
  it.concurrent('lifts the lock after LOGIN_LOCKOUT_SECONDS; the right password then works and resets the count', async ({
    expect,
    onTestFinished,
  }) => {
    const app = await appWith({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '1' }, onTestFinished)
    const username = await newUser(app)
    await fail(app, username, 3)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(429)

    await sleep(1100)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)

    // A fresh run: two failures are not enough to lock again, the third is.
    await fail(app, username, 2)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
    await fail(app, username, 3)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(429)
  })

  it.concurrent('doubles the lock after each further failure (Retry-After 1, then 2)', async ({
    expect,
    onTestFinished,
  }) => {
    const app = await appWith(
      { LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '1', LOGIN_LOCKOUT_MAX_SECONDS: '900' },
      onTestFinished,
    )
    const username = await newUser(app)
    await fail(app, username, 3)
    const first = await attempt(app, username, TEST_PASSWORD)
    expect(first.statusCode).toBe(429)
    expect(first.headers['retry-after']).toBe('1')

    await sleep(1100)
    // One attempt per lock period; it fails, and the next lock is longer.
    await fail(app, username, 1)
    const second = await attempt(app, username, TEST_PASSWORD)
    expect(second.statusCode).toBe(429)
    expect(second.json()).toEqual(LOCKED)
    expect(second.headers['retry-after']).toBe('2')
  })

  it.concurrent('caps the lock at LOGIN_LOCKOUT_MAX_SECONDS', async ({ expect, onTestFinished }) => {
    const app = await appWith(
      { LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '1', LOGIN_LOCKOUT_MAX_SECONDS: '1' },
      onTestFinished,
    )
    const username = await newUser(app)
    await fail(app, username, 3)
    await sleep(1100)
    await fail(app, username, 1)

    const capped = await attempt(app, username, TEST_PASSWORD)

    expect(capped.statusCode).toBe(429)
    expect(capped.headers['retry-after']).toBe('1')
    await sleep(1100)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
  })

  it.concurrent("forgets an address's failures after LOGIN_IP_WINDOW_SECONDS", async ({ expect, onTestFinished }) => {
    const app = await appWith({ ...PROXY, LOGIN_IP_MAX_FAILURES: '2', LOGIN_IP_WINDOW_SECONDS: '1' }, onTestFinished)
    const ip = '203.0.113.77'
    await fail(app, uniqueUsername('ghost'), 1, ip)
    await fail(app, uniqueUsername('ghost'), 1, ip)
    expect((await attempt(app, uniqueUsername('ghost'), WRONG, ip)).statusCode).toBe(429)

    await sleep(1100)
    const username = await newUser(app)
    expect((await attempt(app, username, TEST_PASSWORD, ip)).statusCode).toBe(200)
  })
})

describe('per-address limit (LOGIN_IP_MAX_FAILURES)', () => {
  it('answers 429 once an address has LOGIN_IP_MAX_FAILURES failed logins over different usernames', async () => {
    const app = await appWith({ ...PROXY, LOGIN_IP_MAX_FAILURES: '5', LOGIN_IP_WINDOW_SECONDS: '60' })
    const ip = '203.0.113.50'
    for (let i = 0; i < 5; i++) await fail(app, uniqueUsername('spray'), 1, ip)
    const username = await newUser(app)

    const res = await attempt(app, username, TEST_PASSWORD, ip)

    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual(LOCKED)
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(60)
  })

  it('leaves other addresses alone', async () => {
    const app = await appWith({ ...PROXY, LOGIN_IP_MAX_FAILURES: '5' })
    for (let i = 0; i < 5; i++) await fail(app, uniqueUsername('spray'), 1, '203.0.113.51')
    const username = await newUser(app)

    expect((await attempt(app, username, TEST_PASSWORD, '198.51.100.51')).statusCode).toBe(200)
    await fail(app, uniqueUsername('spray'), 1, '198.51.100.51')
  })

  it('does not count successful logins', async () => {
    const app = await appWith({ ...PROXY, LOGIN_IP_MAX_FAILURES: '3' })
    const ip = '203.0.113.52'
    const username = await newUser(app)
    for (let i = 0; i < 6; i++) expect((await attempt(app, username, TEST_PASSWORD, ip)).statusCode).toBe(200)
    await fail(app, uniqueUsername('spray'), 2, ip)

    expect((await attempt(app, username, TEST_PASSWORD, ip)).statusCode).toBe(200)
    await fail(app, uniqueUsername('spray'), 1, ip)
    expect((await attempt(app, username, TEST_PASSWORD, ip)).statusCode).toBe(429)
  })

  it('ignores a forged X-Forwarded-For without TRUST_PROXY: the socket address is throttled', async () => {
    const app = await appWith({ LOGIN_IP_MAX_FAILURES: '3' })
    for (let i = 0; i < 3; i++) await fail(app, uniqueUsername('spray'), 1, `198.51.100.${i + 1}`)
    const username = await newUser(app)

    const res = await attempt(app, username, TEST_PASSWORD, '192.0.2.200')

    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual(LOCKED)
  })

  it('uses the X-Forwarded-For address behind a trusted proxy (control)', async () => {
    const app = await appWith({ ...PROXY, LOGIN_IP_MAX_FAILURES: '3' })
    for (let i = 0; i < 3; i++) await fail(app, uniqueUsername('spray'), 1, `198.51.100.${i + 1}`)
    const username = await newUser(app)
    expect((await attempt(app, username, TEST_PASSWORD, '192.0.2.200')).statusCode).toBe(200)
  })
})

describe('request caps (@fastify/rate-limit)', () => {
  it('answers the third login request for one account within a minute with 429 (LOGIN_RATE_LIMIT_PER_MINUTE=2)', async () => {
    const app = await appWith({ LOGIN_RATE_LIMIT_PER_MINUTE: '2' })
    const username = await newUser(app)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)

    const res = await attempt(app, username, TEST_PASSWORD)

    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual(oauthError('temporarily_unavailable', 'Too many requests; retry in 1 minute'))
    expect(res.headers['retry-after']).toBe('60')
  })

  it('does not count refresh grants, nor requests for other accounts', async () => {
    const app = await appWith({ LOGIN_RATE_LIMIT_PER_MINUTE: '2' })
    const username = await newUser(app)
    const tokens = await login(app, username)
    let current = tokens.refresh_token
    for (let i = 0; i < 4; i++) {
      const res = await refresh(app, current)
      expect(res.statusCode).toBe(200)
      current = res.json().refresh_token
    }
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(429)
    expect((await attempt(app, await newUser(app), TEST_PASSWORD)).statusCode).toBe(200)
  })

  it('answers the third registration from one address with 429 and Retry-After (REGISTER_RATE_LIMIT_MAX=2)', async () => {
    const app = await appWith({ REGISTER_RATE_LIMIT_MAX: '2' })
    await newUser(app)
    await newUser(app)

    const res = await register(app, { username: uniqueUsername('reg'), password: TEST_PASSWORD })

    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual({ detail: 'Too many requests; retry in 1 hour' })
    expect(res.headers['retry-after']).toBe('3600')
  })

  it('counts registrations per address behind a trusted proxy', async () => {
    const app = await appWith({ ...PROXY, REGISTER_RATE_LIMIT_MAX: '2' })
    const from = (ip: string) =>
      app.inject({
        method: 'POST',
        url: '/register',
        headers: { 'content-type': 'application/json', 'x-forwarded-for': ip },
        payload: JSON.stringify({ username: uniqueUsername('reg'), password: TEST_PASSWORD }),
      })
    expect((await from('203.0.113.60')).statusCode).toBe(201)
    expect((await from('203.0.113.60')).statusCode).toBe(201)
    expect((await from('203.0.113.60')).statusCode).toBe(429)

    expect((await from('198.51.100.60')).statusCode).toBe(201)
  })

  it('ignores a forged X-Forwarded-For on /register without TRUST_PROXY', async () => {
    const app = await appWith({ REGISTER_RATE_LIMIT_MAX: '2' })
    const from = (ip: string) =>
      app.inject({
        method: 'POST',
        url: '/register',
        headers: { 'content-type': 'application/json', 'x-forwarded-for': ip },
        payload: JSON.stringify({ username: uniqueUsername('reg'), password: TEST_PASSWORD }),
      })
    expect((await from('203.0.113.61')).statusCode).toBe(201)
    expect((await from('203.0.113.62')).statusCode).toBe(201)

    const res = await from('203.0.113.63')
    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual({ detail: 'Too many requests; retry in 1 hour' })
  })
})

describe('logins the server sheds under load', () => {
  it('answers 503 with Retry-After and counts them as no failure: overload never locks an account or an address', async () => {
    // One hash at a time, none may wait: every login that overlaps another is shed.
    const app = await appWith({
      HASH_CONCURRENCY: '1',
      HASH_QUEUE_MAX: '0',
      LOGIN_MAX_FAILURES: '2',
      LOGIN_IP_MAX_FAILURES: '3',
    })
    const username = await newUser(app)
    const results = await Promise.all(Array.from({ length: 12 }, () => attempt(app, username, WRONG)))
    const shed = results.filter((r) => r.statusCode === 503)
    expect(shed.length).toBeGreaterThan(3)
    for (const res of shed) {
      expect(res.json()).toEqual(oauthError('temporarily_unavailable', 'Server busy, try again shortly'))
      expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    }
    // At most one request was really checked (a 400); the shed ones left no trace in the counters,
    // so neither the account (limit 2) nor the address (limit 3) is locked now.
    expect(results.filter((r) => r.statusCode === 400).length).toBeLessThanOrEqual(1)
    expect((await attempt(app, username, TEST_PASSWORD)).statusCode).toBe(200)
    const other = await newUser(app)
    expect((await attempt(app, other, TEST_PASSWORD)).statusCode).toBe(200)
  })
})

describe('LoginThrottle.cancelled: only the lock the attempt set', () => {
  it('leaves a lock set by a concurrent failure when an attempt at the limit is cancelled', async () => {
    const { LoginThrottle } = await import('../src/services/throttle.js')
    const { MemoryCounterStore } = await import('../src/store/counters.js')
    const { testConfig } = await import('./helpers.js')
    const limits = { ...testConfig({ LOGIN_MAX_FAILURES: '3' }).throttle }
    // A counter store whose first lock attempt waits until released: the interleaving of a right
    // password of an account with MFA (cancelled) and a wrong code arriving at the same moment.
    const store = new MemoryCounterStore()
    let release!: () => void
    const held = new Promise<void>((resolve) => {
      release = resolve
    })
    let first = true
    const setIfAbsent = store.setIfAbsent.bind(store)
    store.setIfAbsent = async (key, ttl) => {
      if (first) {
        first = false
        await held
      }
      return setIfAbsent(key, ttl)
    }
    const throttle = new LoginThrottle(store, limits)
    for (let n = 0; n < 2; n++) await throttle.failed(await throttle.begin('carol', '10.0.0.1'))
    // The password attempt reaches the limit (3) and waits at its lock; the wrong code (4) sets it.
    const password = throttle.begin('carol', '10.0.0.1')
    await sleep(10)
    const wrongCode = await throttle.begin('carol', '10.0.0.2')
    expect(wrongCode.setLock).toBe(true)
    release()
    const passwordAttempt = await password
    expect(passwordAttempt.setLock).toBe(false)
    await throttle.cancelled(passwordAttempt)
    await throttle.failed(wrongCode)
    await expect(throttle.begin('carol', '10.0.0.3')).rejects.toMatchObject({ statusCode: 429 })
    await store.close()
  })
})
