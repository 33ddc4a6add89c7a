// Sessions: refresh tokens (rotation, reuse detection, lifetimes, scope), POST /revoke (RFC 7009),
// POST /logout, and the denylist that keeps revoked access tokens out until their exp.
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { MemoryDenyList, MemorySessionStore } from '../src/store/sessions.js'
import {
  authed,
  buildTestApp,
  CHALLENGE_INVALID,
  CHALLENGE_MISSING,
  decodeClaims,
  getMe,
  login,
  nowSeconds,
  oauthError,
  postRevoke,
  postToken,
  REFRESH_TOKEN_PATTERN,
  refresh,
  register,
  TEST_PASSWORD,
  type TokenBody,
  uniqueUsername,
} from './helpers.js'

const INVALID_REFRESH = oauthError('invalid_grant', 'Invalid refresh token')
const INVALID_CREDENTIALS = { detail: 'Could not validate credentials' }
const ADMIN = { ADMIN_USERNAME: 'sessions_admin', ADMIN_PASSWORD: 'amber-Falcon-27-trellis' }
const DAY_MS = 86_400_000

/** 401 invalid_token with the generic body: a dead or forged access token. */
function expectInvalidToken(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual(INVALID_CREDENTIALS)
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
}

function expectInvalidRefresh(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(400)
  expect(res.json()).toEqual(INVALID_REFRESH)
}

async function expectUserOk(app: FastifyInstance, accessToken: string): Promise<void> {
  const res = await getMe(app, `Bearer ${accessToken}`)
  expect(res.statusCode).toBe(200)
}

/** A new user, logged in once; returns the name and the /token body. */
async function newSession(app: FastifyInstance, fields: Record<string, string> = {}) {
  const username = uniqueUsername('sess')
  const reg = await register(app, { username, password: TEST_PASSWORD })
  expect(reg.statusCode).toBe(201)
  const tokens = await login(app, username, TEST_PASSWORD, fields)
  return { username, id: reg.json().id as string, tokens }
}

let app: FastifyInstance
let adminToken: string
beforeAll(async () => {
  app = await buildTestApp(ADMIN)
  adminToken = (await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
})
afterAll(async () => {
  await app.close()
})

describe('POST /token: the refresh token in the password grant', () => {
  it('returns an opaque rt_ refresh token of at least 256 bits and the granted scope', async () => {
    const username = uniqueUsername('sess')
    await register(app, { username, password: TEST_PASSWORD })

    const res = await postToken(app, { username, password: TEST_PASSWORD })

    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({
      access_token: expect.any(String),
      token_type: 'bearer',
      expires_in: 1800,
      refresh_token: expect.stringMatching(REFRESH_TOKEN_PATTERN),
      scope: 'user',
    })
    expect(decodeClaims(res.json().access_token)).toMatchObject({ scope: 'user', sid: expect.any(String) })
  })

  it('gives every login its own refresh token and session', async () => {
    const { username, tokens: first } = await newSession(app)
    const second = await login(app, username)

    expect(second.refresh_token).not.toBe(first.refresh_token)
    expect(decodeClaims(second.access_token).sid).not.toBe(decodeClaims(first.access_token).sid)
  })
})

describe('POST /token grant_type=refresh_token: rotation', () => {
  // The reuse tests below present a spent token again at once, which the reuse grace (10 s by
  // default) would answer with a new pair: they run on an app with the grace off
  // (REFRESH_REUSE_GRACE_SECONDS=0), which is the behaviour they pin. The grace has its own tests.
  let strict: FastifyInstance
  beforeAll(async () => {
    strict = await buildTestApp({ REFRESH_REUSE_GRACE_SECONDS: '0' })
  })
  afterAll(async () => {
    await strict.close()
  })

  it('returns a new access token and a new refresh token in the same session', async () => {
    const { tokens } = await newSession(app)

    const res = await refresh(app, tokens.refresh_token)

    expect(res.statusCode).toBe(200)
    const body = res.json<TokenBody>()
    expect(body).toEqual({
      access_token: expect.any(String),
      token_type: 'bearer',
      expires_in: 1800,
      refresh_token: expect.stringMatching(REFRESH_TOKEN_PATTERN),
      scope: 'user',
    })
    expect(body.refresh_token).not.toBe(tokens.refresh_token)
    expect(body.access_token).not.toBe(tokens.access_token)
    expect(decodeClaims(body.access_token).sid).toBe(decodeClaims(tokens.access_token).sid)
    await expectUserOk(app, body.access_token)
  })

  it('sends no-store on the refresh answer', async () => {
    const { tokens } = await newSession(app)
    const res = await refresh(app, tokens.refresh_token)
    expect(res.statusCode).toBe(200)
    expect(res.headers['cache-control']).toBe('no-store')
    expect(res.headers.pragma).toBe('no-cache')
  })

  it('answers the old refresh token with 400 invalid_grant after a rotation', async () => {
    const { tokens } = await newSession(strict)
    expect((await refresh(strict, tokens.refresh_token)).statusCode).toBe(200)

    expectInvalidRefresh(await refresh(strict, tokens.refresh_token))
  })

  it('revokes the whole family on reuse: the current refresh token dies too', async () => {
    const { tokens } = await newSession(strict)
    const rotated = (await refresh(strict, tokens.refresh_token)).json<TokenBody>()

    expectInvalidRefresh(await refresh(strict, tokens.refresh_token))

    expectInvalidRefresh(await refresh(strict, rotated.refresh_token))
  })

  it("rejects the family's access tokens with 401 invalid_token after a reuse", async () => {
    const { tokens } = await newSession(strict)
    const rotated = (await refresh(strict, tokens.refresh_token)).json<TokenBody>()
    await expectUserOk(strict, rotated.access_token)

    expectInvalidRefresh(await refresh(strict, tokens.refresh_token))

    expectInvalidToken(await getMe(strict, `Bearer ${tokens.access_token}`))
    expectInvalidToken(await getMe(strict, `Bearer ${rotated.access_token}`))
  })

  it("leaves the user's other sessions alone after a reuse in one of them", async () => {
    const { username, tokens } = await newSession(strict)
    const other = await login(strict, username)
    await refresh(strict, tokens.refresh_token)
    expectInvalidRefresh(await refresh(strict, tokens.refresh_token))

    await expectUserOk(strict, other.access_token)
    expect((await refresh(strict, other.refresh_token)).statusCode).toBe(200)
  })

  it('lets at most one of two concurrent refreshes with the same token succeed, then revokes the family', async () => {
    const { tokens } = await newSession(strict)

    const results = await Promise.all([refresh(strict, tokens.refresh_token), refresh(strict, tokens.refresh_token)])

    const ok = results.filter((r) => r.statusCode === 200)
    const failed = results.filter((r) => r.statusCode !== 200)
    expect(ok.length).toBeLessThanOrEqual(1)
    expect(failed.length).toBeGreaterThanOrEqual(1)
    for (const res of failed) expectInvalidRefresh(res)
    // Whoever won holds nothing usable: the family is revoked.
    for (const res of ok) {
      const body = res.json<TokenBody>()
      expectInvalidRefresh(await refresh(strict, body.refresh_token))
      expectInvalidToken(await getMe(strict, `Bearer ${body.access_token}`))
    }
    expectInvalidToken(await getMe(strict, `Bearer ${tokens.access_token}`))
  })
})

describe('POST /token grant_type=refresh_token: the reuse grace (REFRESH_REUSE_GRACE_SECONDS)', () => {
  /** Refreshes `token` and expects 200 in the session `sid`; returns the body. */
  async function refreshOk(target: FastifyInstance, token: string, sid: unknown): Promise<TokenBody> {
    const res = await refresh(target, token)
    expect(res.statusCode).toBe(200)
    const body = res.json<TokenBody>()
    expect(decodeClaims(body.access_token).sid).toBe(sid)
    return body
  }

  /** The session is revoked: each refresh token answers invalid_grant, each access token 401. */
  async function expectSessionRevoked(
    target: FastifyInstance,
    pairs: { access_token: string; refresh_token: string }[],
  ) {
    for (const pair of pairs) {
      expectInvalidToken(await getMe(target, `Bearer ${pair.access_token}`))
      expectInvalidRefresh(await refresh(target, pair.refresh_token))
    }
  }

  it('answers two concurrent refreshes with the same token with two pairs of the same session, all usable', async () => {
    const { tokens } = await newSession(app)
    const sid = decodeClaims(tokens.access_token).sid

    const results = await Promise.all([refresh(app, tokens.refresh_token), refresh(app, tokens.refresh_token)])

    expect(results.map((r) => r.statusCode)).toEqual([200, 200])
    const [a, b] = results.map((r) => r.json<TokenBody>()) as [TokenBody, TokenBody]
    for (const body of [a, b]) {
      expect(body).toEqual({
        access_token: expect.any(String),
        token_type: 'bearer',
        expires_in: 1800,
        refresh_token: expect.stringMatching(REFRESH_TOKEN_PATTERN),
        scope: 'user',
      })
      expect(decodeClaims(body.access_token).sid).toBe(sid)
    }
    expect(a.refresh_token).not.toBe(b.refresh_token)
    // Nothing was revoked: every access token of the session works.
    for (const access of [tokens.access_token, a.access_token, b.access_token]) await expectUserOk(app, access)
    // Either tab may hold either token: each rotates once more, normally.
    const nextA = await refreshOk(app, a.refresh_token, sid)
    const nextB = await refreshOk(app, b.refresh_token, sid)
    for (const access of [tokens.access_token, a.access_token, b.access_token, nextA.access_token, nextB.access_token])
      await expectUserOk(app, access)
  })

  describe('when both refreshes read the token before either rotates it (rotate loses the race)', () => {
    /**
     * The memory store, except that the next `n` findToken calls answer together, once all n have
     * read the store: both refreshes see the token not yet rotated, so one of their rotate() calls
     * wins and the other loses, as two requests on two PostgreSQL connections may.
     */
    class LockstepSessionStore extends MemorySessionStore {
      #size = 0
      readonly #waiting: (() => void)[] = []
      lockstep(n: number): void {
        this.#size = n
      }
      override async findToken(hash: string) {
        const found = await super.findToken(hash)
        if (this.#size > 0) {
          await new Promise<void>((resolve) => {
            this.#waiting.push(resolve)
            if (this.#waiting.length < this.#size) return
            this.#size = 0
            for (const release of this.#waiting.splice(0)) release()
          })
        }
        return found
      }
    }

    async function lockstepApp(env: Record<string, string>) {
      const sessions = new LockstepSessionStore()
      return { sessions, app: await buildTestApp(env, { stores: { sessions } }) }
    }

    it('takes the loser for a grace re-issue: two pairs of the same session, all usable', async () => {
      const { sessions, app: own } = await lockstepApp({})
      try {
        const { tokens } = await newSession(own)
        const sid = decodeClaims(tokens.access_token).sid
        sessions.lockstep(2)

        const results = await Promise.all([refresh(own, tokens.refresh_token), refresh(own, tokens.refresh_token)])

        expect(results.map((r) => r.statusCode)).toEqual([200, 200])
        const [a, b] = results.map((r) => r.json<TokenBody>()) as [TokenBody, TokenBody]
        expect(a.refresh_token).not.toBe(b.refresh_token)
        for (const body of [a, b]) expect(decodeClaims(body.access_token).sid).toBe(sid)
        for (const access of [tokens.access_token, a.access_token, b.access_token]) await expectUserOk(own, access)
        const nextA = await refreshOk(own, a.refresh_token, sid)
        const nextB = await refreshOk(own, b.refresh_token, sid)
        await expectUserOk(own, nextA.access_token)
        await expectUserOk(own, nextB.access_token)
      } finally {
        await own.close()
      }
    })

    it('with REFRESH_REUSE_GRACE_SECONDS=0: one 200, one 400, and the session revoked, as before', async () => {
      const { sessions, app: own } = await lockstepApp({ REFRESH_REUSE_GRACE_SECONDS: '0' })
      try {
        const { tokens } = await newSession(own)
        sessions.lockstep(2)

        const results = await Promise.all([refresh(own, tokens.refresh_token), refresh(own, tokens.refresh_token)])

        expect(results.map((r) => r.statusCode).sort()).toEqual([200, 400])
        for (const res of results) if (res.statusCode === 400) expectInvalidRefresh(res)
        const winner = results.find((r) => r.statusCode === 200)?.json<TokenBody>() as TokenBody
        await expectSessionRevoked(own, [tokens, winner])
      } finally {
        await own.close()
      }
    })
  })

  it('answers a third concurrent refresh with the same token as reuse: the session is revoked', async () => {
    const { tokens } = await newSession(app)

    const results = await Promise.all([1, 2, 3].map(() => refresh(app, tokens.refresh_token)))

    // One rotation, one grace re-issue, and the third is a second reuse.
    expect(results.map((r) => r.statusCode).sort()).toEqual([200, 200, 400])
    for (const res of results) if (res.statusCode === 400) expectInvalidRefresh(res)
    const issued = results.filter((r) => r.statusCode === 200).map((r) => r.json<TokenBody>())
    await expectSessionRevoked(app, [tokens, ...issued])
  })

  it('gives a sequential reuse within the grace one pair, and revokes the session at the third use', async () => {
    const { tokens } = await newSession(app)
    const sid = decodeClaims(tokens.access_token).sid
    const first = await refreshOk(app, tokens.refresh_token, sid)

    const again = await refreshOk(app, tokens.refresh_token, sid)

    expect(again.refresh_token).not.toBe(first.refresh_token)
    await expectUserOk(app, first.access_token)
    await expectUserOk(app, again.access_token)

    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
    await expectSessionRevoked(app, [tokens, first, again])
  })

  it('applies the refresh checks to the grace path: scope narrowing, and nothing spent by a refused one', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const sid = decodeClaims(admin.access_token).sid
    await refreshOk(app, admin.refresh_token, sid)

    const wider = await refresh(app, admin.refresh_token, { scope: 'user admin other' })
    expect(wider.statusCode).toBe(400)
    expect(wider.json()).toEqual(oauthError('invalid_scope', 'The requested scope exceeds the scope granted'))

    const narrowed = await refresh(app, admin.refresh_token, { scope: 'user' })
    expect(narrowed.statusCode).toBe(200)
    expect(narrowed.json().scope).toBe('user')
    expect(decodeClaims(narrowed.json().access_token)).toMatchObject({ sid, scope: 'user' })
  })

  it('answers invalid_grant on the grace path for a user an admin disabled meanwhile', async () => {
    const { id, tokens } = await newSession(app)
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
    expect((await authed(app, 'PATCH', `/users/${id}`, adminToken, { disabled: true })).statusCode).toBe(200)

    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it('audits a grace re-issue as refresh grace_reissue with the session id', async () => {
    const lines: string[] = []
    const stream = new Writable({
      write(chunk, _encoding, callback) {
        lines.push(...String(chunk).split('\n').filter(Boolean))
        callback()
      },
    })
    const audited = await buildTestApp({}, { audit: pino(stream) })
    try {
      const { id, tokens } = await newSession(audited)
      const sid = decodeClaims(tokens.access_token).sid
      await refreshOk(audited, tokens.refresh_token, sid)
      await refreshOk(audited, tokens.refresh_token, sid)
      expectInvalidRefresh(await refresh(audited, tokens.refresh_token))

      const events = lines
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((r) => r.event === 'refresh' || r.event === 'refresh_reuse')
      expect(events.map((r) => [r.event, r.outcome])).toEqual([
        ['refresh', 'success'],
        ['refresh', 'grace_reissue'],
        ['refresh_reuse', 'family_revoked'],
      ])
      expect(events[1]).toMatchObject({ userId: id, sessionId: sid })
    } finally {
      await audited.close()
    }
  })

  describe('with REFRESH_REUSE_GRACE_SECONDS=1', () => {
    let short: FastifyInstance
    beforeAll(async () => {
      short = await buildTestApp({ REFRESH_REUSE_GRACE_SECONDS: '1' })
    })
    afterAll(async () => {
      await short.close()
    })

    it('revokes the whole session at a reuse after the grace period', async () => {
      const { tokens } = await newSession(short)
      const sid = decodeClaims(tokens.access_token).sid
      const rotated = await refreshOk(short, tokens.refresh_token, sid)
      await expectUserOk(short, rotated.access_token)

      await sleep(1_100)

      expectInvalidRefresh(await refresh(short, tokens.refresh_token))
      await expectSessionRevoked(short, [tokens, rotated])
    })

    it('keeps a grace-issued refresh token to the same rules: its own reuse after the grace revokes', async () => {
      const { tokens } = await newSession(short)
      const sid = decodeClaims(tokens.access_token).sid
      const [a, b] = (
        await Promise.all([refresh(short, tokens.refresh_token), refresh(short, tokens.refresh_token)])
      ).map((r) => r.json<TokenBody>()) as [TokenBody, TokenBody]
      const nextB = await refreshOk(short, b.refresh_token, sid)

      await sleep(1_100)

      await expectUserOk(short, a.access_token)
      expectInvalidRefresh(await refresh(short, b.refresh_token))
      await expectSessionRevoked(short, [tokens, a, b, nextB])
    })
  })
})

describe('POST /token grant_type=refresh_token: refused grants', () => {
  it('answers a missing refresh_token with 400 invalid_request', async () => {
    const res = await postToken(app, { grant_type: 'refresh_token' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Missing parameter 'refresh_token'"))
  })

  it('answers an unknown refresh token with 400 invalid_grant', async () => {
    expectInvalidRefresh(await refresh(app, `rt_${'A'.repeat(43)}`))
  })

  it('answers an access token sent as refresh_token with 400 invalid_grant', async () => {
    const { tokens } = await newSession(app)
    expectInvalidRefresh(await refresh(app, tokens.access_token))
  })

  it('answers a repeated refresh_token parameter with 400 invalid_request', async () => {
    const { tokens } = await newSession(app)
    const form = `grant_type=refresh_token&refresh_token=${tokens.refresh_token}&refresh_token=${tokens.refresh_token}`
    const res = await postToken(app, form)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Parameter 'refresh_token' is repeated"))
  })

  it('rejects a refresh token presented as a Bearer access token with 401 invalid_token', async () => {
    const { tokens } = await newSession(app)
    expectInvalidToken(await getMe(app, `Bearer ${tokens.refresh_token}`))
  })

  it('answers invalid_grant for a user an admin disabled', async () => {
    const { id, tokens } = await newSession(app)
    const patch = await authed(app, 'PATCH', `/users/${id}`, adminToken, { disabled: true })
    expect(patch.statusCode).toBe(200)

    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it('keeps refresh tokens from before a disable dead after the user is enabled again', async () => {
    const { id, username, tokens } = await newSession(app)
    expect((await authed(app, 'PATCH', `/users/${id}`, adminToken, { disabled: true })).statusCode).toBe(200)
    expect((await authed(app, 'PATCH', `/users/${id}`, adminToken, { disabled: false })).statusCode).toBe(200)

    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
    expect((await postToken(app, { username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })

  it('answers invalid_grant for a user who deleted their account', async () => {
    const { tokens } = await newSession(app)
    const del = await authed(app, 'DELETE', '/users/me', tokens.access_token, { password: TEST_PASSWORD })
    expect(del.statusCode).toBe(204)

    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })
})

describe('POST /token grant_type=refresh_token: scope', () => {
  it('grants a narrower scope when asked: an admin session refreshed with scope=user', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    expect(admin.scope).toBe('user admin')

    const res = await refresh(app, admin.refresh_token, { scope: 'user' })

    expect(res.statusCode).toBe(200)
    const body = res.json<TokenBody>()
    expect(body.scope).toBe('user')
    expect(decodeClaims(body.access_token).scope).toBe('user')
    expect((await authed(app, 'GET', '/users', body.access_token)).statusCode).toBe(403)
  })

  it('keeps the granted scope when none is asked', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const res = await refresh(app, admin.refresh_token)
    expect(res.statusCode).toBe(200)
    expect(res.json().scope).toBe('user admin')
    expect((await authed(app, 'GET', '/users', res.json().access_token)).statusCode).toBe(200)
  })

  it('answers a wider scope than the session was granted with 400 invalid_scope', async () => {
    const { tokens } = await newSession(app)

    const res = await refresh(app, tokens.refresh_token, { scope: 'user admin' })

    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_scope', 'The requested scope exceeds the scope granted'))
  })

  it('leaves the refresh token usable after an invalid_scope answer (nothing was rotated)', async () => {
    const { tokens } = await newSession(app)
    expect((await refresh(app, tokens.refresh_token, { scope: 'admin' })).statusCode).toBe(400)

    const res = await refresh(app, tokens.refresh_token)
    expect(res.statusCode).toBe(200)
    expect(res.json().scope).toBe('user')
  })
})

describe('refresh lifetimes (REFRESH_TOKEN_EXPIRE_DAYS, REFRESH_TOKEN_ABSOLUTE_DAYS)', () => {
  // Only Date is faked: the stores and fast-jwt read Date.now(), while sockets and bcrypt run for real.
  afterEach(() => {
    vi.useRealTimers()
  })

  describe('with both at 1 day', () => {
    let short: FastifyInstance
    beforeAll(async () => {
      short = await buildTestApp({ REFRESH_TOKEN_EXPIRE_DAYS: '1', REFRESH_TOKEN_ABSOLUTE_DAYS: '1' })
    })
    afterAll(async () => {
      await short.close()
    })

    it('refreshes within the lifetime', async () => {
      const { tokens } = await newSession(short)
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(Date.now() + DAY_MS - 60_000)

      const res = await refresh(short, tokens.refresh_token)

      expect(res.statusCode).toBe(200)
      expect(res.json().refresh_token).toMatch(REFRESH_TOKEN_PATTERN)
    })

    it('answers invalid_grant once the lifetime is over', async () => {
      const { tokens } = await newSession(short)
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(Date.now() + 2 * DAY_MS)

      expectInvalidRefresh(await refresh(short, tokens.refresh_token))
    })

    it('rejects an access token past its exp (30 minutes) with 401 invalid_token', async () => {
      const { tokens } = await newSession(short)
      await expectUserOk(short, tokens.access_token)
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(Date.now() + 31 * 60_000)

      expectInvalidToken(await getMe(short, `Bearer ${tokens.access_token}`))
    })
  })

  describe('with 1 day per token and 2 days per session', () => {
    let sliding: FastifyInstance
    beforeAll(async () => {
      sliding = await buildTestApp({ REFRESH_TOKEN_EXPIRE_DAYS: '1', REFRESH_TOKEN_ABSOLUTE_DAYS: '2' })
    })
    afterAll(async () => {
      await sliding.close()
    })

    it('answers invalid_grant for a refresh token left unused for more than a day', async () => {
      const { tokens } = await newSession(sliding)
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(Date.now() + DAY_MS + 60_000)

      expectInvalidRefresh(await refresh(sliding, tokens.refresh_token))
    })

    it('never extends a session past its absolute lifetime, however recently it was refreshed', async () => {
      const { tokens } = await newSession(sliding)
      const start = Date.now()
      vi.useFakeTimers({ toFake: ['Date'] })

      vi.setSystemTime(start + 0.9 * DAY_MS)
      const first = await refresh(sliding, tokens.refresh_token)
      expect(first.statusCode).toBe(200)
      vi.setSystemTime(start + 1.8 * DAY_MS)
      const second = await refresh(sliding, first.json().refresh_token)
      expect(second.statusCode).toBe(200)

      // Issued 0.2 days ago, well within its 1-day lifetime, but the session is 2 days old.
      vi.setSystemTime(start + 2 * DAY_MS + 60_000)
      expectInvalidRefresh(await refresh(sliding, second.json().refresh_token))
    })
  })
})

describe('POST /revoke (RFC 7009)', () => {
  it('revokes a refresh token: 200 {} and no-store', async () => {
    const { tokens } = await newSession(app)

    const res = await postRevoke(app, { token: tokens.refresh_token })

    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({})
    expect(res.headers['cache-control']).toBe('no-store')
    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it("kills the access tokens of a revoked refresh token's session", async () => {
    const { tokens } = await newSession(app)
    const rotated = (await refresh(app, tokens.refresh_token)).json<TokenBody>()

    expect((await postRevoke(app, { token: rotated.refresh_token })).statusCode).toBe(200)

    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
    expectInvalidToken(await getMe(app, `Bearer ${rotated.access_token}`))
  })

  it('revokes an access token: 200 {} and the token gets 401 invalid_token', async () => {
    const { tokens } = await newSession(app)

    const res = await postRevoke(app, { token: tokens.access_token })

    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({})
    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
  })

  it("ends the access token's session too (its refresh token)", async () => {
    const { tokens } = await newSession(app)
    expect((await postRevoke(app, { token: tokens.access_token })).statusCode).toBe(200)
    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it("leaves the user's other sessions working", async () => {
    const { username, tokens } = await newSession(app)
    const other = await login(app, username)
    expect((await postRevoke(app, { token: tokens.refresh_token })).statusCode).toBe(200)

    await expectUserOk(app, other.access_token)
    expect((await refresh(app, other.refresh_token)).statusCode).toBe(200)
  })

  it.each([
    ['an unknown refresh token', `rt_${'B'.repeat(43)}`],
    ['an unknown access token', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl'],
    ['garbage', 'not a token at all'],
  ])('answers 200 {} for %s', async (_label, token) => {
    const res = await postRevoke(app, { token })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({})
  })

  it('answers a request without token with 400 invalid_request and exactly error, error_description, detail', async () => {
    const res = await postRevoke(app, { token_type_hint: 'refresh_token' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toStrictEqual(oauthError('invalid_request', "Missing parameter 'token'"))
    expect(Object.keys(res.json()).sort()).toEqual(['detail', 'error', 'error_description'])
  })

  it('answers an empty form with 400 invalid_request', async () => {
    const res = await postRevoke(app, '')
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Missing parameter 'token'"))
  })

  it('answers a repeated token with 400 invalid_request', async () => {
    const res = await postRevoke(app, 'token=a&token=b')
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Parameter 'token' is repeated"))
  })

  it('answers a JSON body with 415 and the OAuth error body', async () => {
    const { tokens } = await newSession(app)
    const res = await app.inject({
      method: 'POST',
      url: '/revoke',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ token: tokens.refresh_token }),
    })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(oauthError('invalid_request', 'Content-Type must be application/x-www-form-urlencoded'))
    // Nothing was revoked.
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
  })

  it('revokes a refresh token sent with token_type_hint=access_token', async () => {
    const { tokens } = await newSession(app)
    const res = await postRevoke(app, { token: tokens.refresh_token, token_type_hint: 'access_token' })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({})
    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it('revokes an access token sent with token_type_hint=refresh_token', async () => {
    const { tokens } = await newSession(app)
    const res = await postRevoke(app, { token: tokens.access_token, token_type_hint: 'refresh_token' })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({})
    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
  })

  it('revokes with the matching hint as well', async () => {
    const { tokens } = await newSession(app)
    expect((await postRevoke(app, { token: tokens.refresh_token, token_type_hint: 'refresh_token' })).statusCode).toBe(
      200,
    )
    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })
})

describe('POST /logout', () => {
  it('answers 204 with an empty body and no-store', async () => {
    const { tokens } = await newSession(app)
    const res = await authed(app, 'POST', '/logout', tokens.access_token)
    expect(res.statusCode).toBe(204)
    expect(res.body).toBe('')
    expect(res.headers['cache-control']).toBe('no-store')
  })

  it('rejects the logged-out access token with 401 invalid_token', async () => {
    const { tokens } = await newSession(app)
    expect((await authed(app, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)

    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
    expectInvalidToken(await authed(app, 'POST', '/logout', tokens.access_token))
  })

  it("ends the session's refresh token", async () => {
    const { tokens } = await newSession(app)
    expect((await authed(app, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)
    expectInvalidRefresh(await refresh(app, tokens.refresh_token))
  })

  it('kills an access token of the same session issued by an earlier refresh', async () => {
    const { tokens } = await newSession(app)
    const rotated = (await refresh(app, tokens.refresh_token)).json<TokenBody>()
    expect((await authed(app, 'POST', '/logout', rotated.access_token)).statusCode).toBe(204)
    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
  })

  it("keeps the same user's other session working", async () => {
    const { username, tokens } = await newSession(app)
    const other = await login(app, username)

    expect((await authed(app, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)

    await expectUserOk(app, other.access_token)
    expect((await refresh(app, other.refresh_token)).statusCode).toBe(200)
  })

  it('answers a request without a token with 401 Not authenticated and a bare challenge', async () => {
    const res = await app.inject({ method: 'POST', url: '/logout' })
    expect(res.statusCode).toBe(401)
    expect(res.json()).toEqual({ detail: 'Not authenticated' })
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })

  it('answers a refresh token as Bearer with 401 invalid_token', async () => {
    const { tokens } = await newSession(app)
    expectInvalidToken(await authed(app, 'POST', '/logout', tokens.refresh_token))
  })
})

describe('the denylist', () => {
  it('drops entries once the tokens they block would have expired anyway', async () => {
    const denylist = new MemoryDenyList()
    const own = await buildTestApp({}, { stores: { denylist } })
    try {
      const { tokens } = await newSession(own)
      expect(denylist.size).toBe(0)
      expect((await authed(own, 'POST', '/logout', tokens.access_token)).statusCode).toBe(204)
      // The access token (by jti) and its session (by sid).
      expect(denylist.size).toBe(2)

      denylist.sweep(nowSeconds())
      expect(denylist.size).toBe(2)
      expectInvalidToken(await getMe(own, `Bearer ${tokens.access_token}`))

      // exp (30 minutes) plus the 5 s clock skew, and a margin: nothing is left to block.
      denylist.sweep(nowSeconds() + 1800 + 5 + 2)
      expect(denylist.size).toBe(0)
    } finally {
      await own.close()
    }
  })
})
