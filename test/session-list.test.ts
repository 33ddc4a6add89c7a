// Sessions a user can see and end (routes/sessions.ts), over HTTP: GET and DELETE
// /users/me/sessions, DELETE /users/me/sessions/{id}, and the admin's GET and DELETE
// /users/{id}/sessions. The same suite runs on the in-memory stores and on PostgreSQL with Redis;
// then two apps on one PostgreSQL schema and one Redis prefix, as two instances: a session ended on
// one is refused on the other.
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  authed,
  bearer,
  buildTestApp,
  decodeClaims,
  type Env,
  FORM,
  getMe,
  ISO_UTC_PATTERN,
  lineCollector,
  postRevoke,
  register,
  TEST_PASSWORD,
  type TokenBody,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const ADMIN_USERNAME = `admin_${randomUUID().slice(0, 8)}`
const ADMIN_PASSWORD = 'admin-Lantern-93-orchid'
const ADMIN = { ADMIN_USERNAME, ADMIN_PASSWORD }
const REFRESH_TTL_MS = 14 * 86_400_000 // REFRESH_TOKEN_EXPIRE_DAYS' default
/** How soon the other instance must refuse a token of an ended session (README, Deployment). */
const WITHIN_A_SECOND = { timeout: 1_000, interval: 10 }

interface SessionBody {
  id: string
  created_at: string
  last_used_at: string
  expires_at: string
  user_agent: string | null
  ip: string | null
  current: boolean
}

interface Client {
  /** The User-Agent header; undefined sends none. */
  userAgent?: string | undefined
  remoteAddress?: string
  headers?: Record<string, string>
}

/** POST /token from this client. */
function tokenAs(
  app: FastifyInstance,
  fields: Record<string, string>,
  client: Client,
): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url: '/token',
    headers: { 'content-type': FORM, 'user-agent': client.userAgent, ...client.headers },
    payload: new URLSearchParams(fields).toString(),
    ...(client.remoteAddress === undefined ? {} : { remoteAddress: client.remoteAddress }),
  })
}

/** A password grant from this client; fails loudly unless 200. */
async function loginAs(
  app: FastifyInstance,
  username: string,
  client: Client = { userAgent: 'Test/1' },
  password = TEST_PASSWORD,
): Promise<TokenBody> {
  const res = await tokenAs(app, { username, password }, client)
  if (res.statusCode !== 200) throw new Error(`login failed: ${res.statusCode} ${res.body}`)
  return res.json<TokenBody>()
}

function refreshAs(app: FastifyInstance, refreshToken: string, client: Client): Promise<LightMyRequestResponse> {
  return tokenAs(app, { grant_type: 'refresh_token', refresh_token: refreshToken }, client)
}

/** A new account; its username. */
async function newUser(app: FastifyInstance, prefix = 'sess'): Promise<{ id: string; username: string }> {
  const username = uniqueUsername(prefix)
  const res = await register(app, { username, password: TEST_PASSWORD })
  if (res.statusCode !== 201) throw new Error(`register failed: ${res.statusCode} ${res.body}`)
  return { id: res.json<{ id: string }>().id, username }
}

/** GET /users/me/sessions with this access token; fails loudly unless 200. */
async function mySessions(app: FastifyInstance, accessToken: string): Promise<SessionBody[]> {
  const res = await authed(app, 'GET', '/users/me/sessions', accessToken)
  if (res.statusCode !== 200) throw new Error(`list failed: ${res.statusCode} ${res.body}`)
  return res.json<{ items: SessionBody[] }>().items
}

const sid = (tokens: TokenBody) => decodeClaims(tokens.access_token).sid as string

/**
 * Until Date.now() has moved on: two sessions started one after the other then have different
 * created_at, so "newest first" has one answer. A wait for the clock, not a timing assertion.
 */
async function nextMillisecond(): Promise<void> {
  const start = Date.now()
  while (Date.now() <= start) await sleep(1)
}

async function expectSessionDead(app: FastifyInstance, tokens: TokenBody): Promise<void> {
  expect((await getMe(app, `Bearer ${tokens.access_token}`)).statusCode).toBe(401)
  const res = await refreshAs(app, tokens.refresh_token, {})
  expect(res.statusCode).toBe(400)
  expect(res.json()).toMatchObject({ error: 'invalid_grant' })
}

async function expectSessionAlive(app: FastifyInstance, tokens: TokenBody): Promise<void> {
  expect((await getMe(app, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
}

/** The suite, on an app built with `env()` (read once the suite starts). */
function sessionSuite(env: () => Env): void {
  let app: FastifyInstance
  let adminToken: string

  beforeAll(async () => {
    app = await buildTestApp({ ...ADMIN, ...env() })
    adminToken = (await loginAs(app, ADMIN_USERNAME, {}, ADMIN_PASSWORD)).access_token
  })

  afterAll(async () => {
    await app?.close()
  })

  describe('GET /users/me/sessions', () => {
    it('lists each login as a session, newest first, the current one marked, with its User-Agent (cut to 256) and address', async () => {
      const { username } = await newUser(app)
      const first = await loginAs(app, username, { userAgent: 'Firefox/128', remoteAddress: '192.0.2.10' })
      await nextMillisecond()
      const longAgent = `Agent/${'x'.repeat(300)}`
      const second = await loginAs(app, username, { userAgent: longAgent, remoteAddress: '198.51.100.20' })

      const seenByFirst = await mySessions(app, first.access_token)
      expect(seenByFirst).toEqual([
        {
          id: sid(second),
          created_at: expect.stringMatching(ISO_UTC_PATTERN),
          last_used_at: expect.stringMatching(ISO_UTC_PATTERN),
          expires_at: expect.stringMatching(ISO_UTC_PATTERN),
          user_agent: longAgent.slice(0, 256),
          ip: '198.51.100.20',
          current: false,
        },
        {
          id: sid(first),
          created_at: expect.stringMatching(ISO_UTC_PATTERN),
          last_used_at: expect.stringMatching(ISO_UTC_PATTERN),
          expires_at: expect.stringMatching(ISO_UTC_PATTERN),
          user_agent: 'Firefox/128',
          ip: '192.0.2.10',
          current: true,
        },
      ])
      expect(seenByFirst[0]?.user_agent).toHaveLength(256)
      expect(seenByFirst[0]?.id).toMatch(UUID_PATTERN)
      expect(Date.parse(seenByFirst[0]?.created_at ?? '')).toBeGreaterThan(Date.parse(seenByFirst[1]?.created_at ?? ''))
      for (const session of seenByFirst) {
        // Not refreshed yet: last used when it started, and it ends with its refresh token.
        expect(session.last_used_at).toBe(session.created_at)
        expect(Date.parse(session.expires_at)).toBe(Date.parse(session.created_at) + REFRESH_TTL_MS)
      }

      // The same list from the other session: only `current` moves.
      const seenBySecond = await mySessions(app, second.access_token)
      expect(seenBySecond.map((s) => [s.id, s.current])).toEqual([
        [sid(second), true],
        [sid(first), false],
      ])
      // No token of any kind in the answer.
      const raw = (await authed(app, 'GET', '/users/me/sessions', first.access_token)).body
      for (const secret of [first.refresh_token, second.refresh_token, first.access_token, second.access_token])
        expect(raw).not.toContain(secret)
    })

    it('shows a client that sent no User-Agent as null', async () => {
      const { username } = await newUser(app)
      const tokens = await loginAs(app, username, { userAgent: undefined })
      expect((await mySessions(app, tokens.access_token))[0]).toMatchObject({ user_agent: null, ip: '127.0.0.1' })
    })

    it('records each refresh: last_used_at, user_agent and ip change; id and created_at stay', async () => {
      const { username } = await newUser(app)
      const tokens = await loginAs(app, username, { userAgent: 'Old/1', remoteAddress: '192.0.2.1' })
      const [before] = await mySessions(app, tokens.access_token)
      await nextMillisecond()

      const res = await refreshAs(app, tokens.refresh_token, { userAgent: 'New/2', remoteAddress: '203.0.113.5' })
      expect(res.statusCode).toBe(200)
      const refreshed = res.json<TokenBody>()
      const [after] = await mySessions(app, refreshed.access_token)

      expect(after).toMatchObject({
        id: sid(tokens),
        created_at: before?.created_at,
        user_agent: 'New/2',
        ip: '203.0.113.5',
        current: true,
      })
      expect(Date.parse(after?.last_used_at ?? '')).toBeGreaterThan(Date.parse(before?.last_used_at ?? ''))
      // Its expiry moved with its new refresh token.
      expect(Date.parse(after?.expires_at ?? '')).toBe(Date.parse(after?.last_used_at ?? '') + REFRESH_TTL_MS)

      // A refresh without a User-Agent says so: the list describes the last request.
      const again = await refreshAs(app, refreshed.refresh_token, { userAgent: undefined })
      expect(again.statusCode).toBe(200)
      expect((await mySessions(app, again.json<TokenBody>().access_token))[0]).toMatchObject({
        user_agent: null,
        ip: '127.0.0.1',
      })
    })

    it('leaves out sessions that were logged out, revoked or ended by a password change', async () => {
      const { username } = await newUser(app)
      const loggedOut = await loginAs(app, username)
      const revoked = await loginAs(app, username)
      const kept = await loginAs(app, username)
      expect((await mySessions(app, kept.access_token)).map((s) => s.id).sort()).toEqual(
        [sid(loggedOut), sid(revoked), sid(kept)].sort(),
      )

      expect((await authed(app, 'POST', '/logout', loggedOut.access_token)).statusCode).toBe(204)
      expect((await postRevoke(app, { token: revoked.refresh_token })).statusCode).toBe(200)
      expect((await mySessions(app, kept.access_token)).map((s) => s.id)).toEqual([sid(kept)])

      // A password change ends every session: the new login is then the only one.
      const change = await authed(app, 'POST', '/users/me/password', kept.access_token, {
        current_password: TEST_PASSWORD,
        new_password: 'copper-Meadow-71-falcon',
      })
      expect(change.statusCode).toBe(204)
      const fresh = await loginAs(app, username, {}, 'copper-Meadow-71-falcon')
      expect((await mySessions(app, fresh.access_token)).map((s) => s.id)).toEqual([sid(fresh)])
    })

    it('needs an access token', async () => {
      for (const [method, url] of [
        ['GET', '/users/me/sessions'],
        ['DELETE', '/users/me/sessions'],
        ['DELETE', `/users/me/sessions/${randomUUID()}`],
      ] as const) {
        const res = await authed(app, method, url, undefined)
        expect(res.statusCode, `${method} ${url}`).toBe(401)
        expect(res.json()).toEqual({ detail: 'Not authenticated' })
      }
    })
  })

  describe('DELETE /users/me/sessions/{id}', () => {
    it("ends that session: its refresh token and access token stop working; the caller's goes on", async () => {
      const { username } = await newUser(app)
      const mine = await loginAs(app, username, { userAgent: 'Laptop/1' })
      const lost = await loginAs(app, username, { userAgent: 'LostPhone/1' })

      const res = await authed(app, 'DELETE', `/users/me/sessions/${sid(lost)}`, mine.access_token)
      expect(res.statusCode).toBe(204)
      expect(res.body).toBe('')

      expect((await getMe(app, `Bearer ${lost.access_token}`)).statusCode).toBe(401)
      const refused = await refreshAs(app, lost.refresh_token, {})
      expect(refused.statusCode).toBe(400)
      expect(refused.json()).toMatchObject({ error: 'invalid_grant' })

      await expectSessionAlive(app, mine)
      expect((await mySessions(app, mine.access_token)).map((s) => s.id)).toEqual([sid(mine)])
      const next = await refreshAs(app, mine.refresh_token, {})
      expect(next.statusCode).toBe(200)

      // Ended once: a second time it is not found.
      const again = await authed(app, 'DELETE', `/users/me/sessions/${sid(lost)}`, next.json<TokenBody>().access_token)
      expect(again.statusCode).toBe(404)
      expect(again.json()).toEqual({ detail: 'Session not found' })
    })

    it('takes the id in any case, as a UUID is the same in any case', async () => {
      const { username } = await newUser(app)
      const mine = await loginAs(app, username)
      const other = await loginAs(app, username)
      const res = await authed(app, 'DELETE', `/users/me/sessions/${sid(other).toUpperCase()}`, mine.access_token)
      expect(res.statusCode).toBe(204)
      await expectSessionDead(app, other)
      await expectSessionAlive(app, mine)
    })

    it('ends the current session too, if asked: that is logging out', async () => {
      const { username } = await newUser(app)
      const tokens = await loginAs(app, username)
      expect((await authed(app, 'DELETE', `/users/me/sessions/${sid(tokens)}`, tokens.access_token)).statusCode).toBe(
        204,
      )
      await expectSessionDead(app, tokens)
    })

    it("answers 404 for another user's session, which keeps working, and for an unknown id; 422 for a non-UUID", async () => {
      const alice = await newUser(app, 'alice')
      const bob = await newUser(app, 'bob')
      const aliceTokens = await loginAs(app, alice.username)
      const bobTokens = await loginAs(app, bob.username)

      for (const id of [sid(bobTokens), randomUUID()]) {
        const res = await authed(app, 'DELETE', `/users/me/sessions/${id}`, aliceTokens.access_token)
        expect(res.statusCode).toBe(404)
        expect(res.json()).toEqual({ detail: 'Session not found' })
      }
      await expectSessionAlive(app, bobTokens)
      expect((await mySessions(app, bobTokens.access_token)).map((s) => s.id)).toEqual([sid(bobTokens)])
      expect((await refreshAs(app, bobTokens.refresh_token, {})).statusCode).toBe(200)

      const bad = await authed(app, 'DELETE', '/users/me/sessions/not-a-session', aliceTokens.access_token)
      expect(bad.statusCode).toBe(422)
      expect(bad.json()).toMatchObject({ errors: [expect.objectContaining({ field: 'id' })] })
    })
  })

  describe('DELETE /users/me/sessions', () => {
    it('ends every other session of the caller; the current one goes on', async () => {
      const { username } = await newUser(app)
      const other = await newUser(app, 'other')
      const a = await loginAs(app, username)
      const current = await loginAs(app, username)
      const c = await loginAs(app, username)
      const stranger = await loginAs(app, other.username)

      const res = await authed(app, 'DELETE', '/users/me/sessions', current.access_token)
      expect(res.statusCode).toBe(204)
      expect(res.body).toBe('')

      await expectSessionDead(app, a)
      await expectSessionDead(app, c)
      await expectSessionAlive(app, current)
      await expectSessionAlive(app, stranger)
      expect((await mySessions(app, current.access_token)).map((s) => [s.id, s.current])).toEqual([
        [sid(current), true],
      ])
      expect((await refreshAs(app, current.refresh_token, {})).statusCode).toBe(200)
      // Nothing else to end: still 204.
      expect((await authed(app, 'DELETE', '/users/me/sessions', current.access_token)).statusCode).toBe(204)
    })
  })

  describe('admin: GET and DELETE /users/{id}/sessions', () => {
    it("lists a user's sessions (current always false) and ends them all: every token dies, the account stays", async () => {
      const user = await newUser(app)
      const first = await loginAs(app, user.username, { userAgent: 'One/1' })
      await nextMillisecond()
      const second = await loginAs(app, user.username, { userAgent: 'Two/2' })

      const listed = await authed(app, 'GET', `/users/${user.id}/sessions`, adminToken)
      expect(listed.statusCode).toBe(200)
      expect(listed.json<{ items: SessionBody[] }>().items.map((s) => [s.id, s.user_agent, s.current])).toEqual([
        [sid(second), 'Two/2', false],
        [sid(first), 'One/1', false],
      ])
      // The user's own view says the same, but for `current`.
      const own = await mySessions(app, first.access_token)
      expect(own.map(({ current: _c, ...rest }) => rest)).toEqual(
        listed.json<{ items: SessionBody[] }>().items.map(({ current: _c, ...rest }) => rest),
      )

      const ended = await authed(app, 'DELETE', `/users/${user.id}/sessions`, adminToken)
      expect(ended.statusCode).toBe(204)
      expect(ended.body).toBe('')
      await expectSessionDead(app, first)
      await expectSessionDead(app, second)
      const after = await authed(app, 'GET', `/users/${user.id}/sessions`, adminToken)
      expect(after.json()).toEqual({ items: [] })

      // The account is untouched: a new login works at once, and so do its tokens.
      const back = await loginAs(app, user.username)
      await expectSessionAlive(app, back)
      expect((await refreshAs(app, back.refresh_token, {})).statusCode).toBe(200)
      // The admin's own session was not touched.
      expect((await getMe(app, `Bearer ${adminToken}`)).statusCode).toBe(200)
    })

    it('marks no session current, not even the admin looking at their own', async () => {
      const adminId = (await getMe(app, `Bearer ${adminToken}`)).json<{ id: string }>().id
      const res = await authed(app, 'GET', `/users/${adminId}/sessions`, adminToken)
      expect(res.statusCode).toBe(200)
      const items = res.json<{ items: SessionBody[] }>().items
      expect(items.map((s) => s.id)).toContain(decodeClaims(adminToken).sid)
      expect(items.every((s) => s.current === false)).toBe(true)
    })

    it('refuses a non-admin (403), answers 404 for an unknown user and 422 for an id that is not a UUID', async () => {
      const caller = await newUser(app, 'caller')
      const target = await newUser(app, 'target')
      const callerTokens = await loginAs(app, caller.username)
      const targetTokens = await loginAs(app, target.username)

      for (const method of ['GET', 'DELETE'] as const) {
        const res = await authed(app, method, `/users/${target.id}/sessions`, callerTokens.access_token)
        expect(res.statusCode, method).toBe(403)
        expect(res.json()).toEqual({ detail: 'Insufficient scope' })
        expect((await authed(app, method, `/users/${target.id}/sessions`, undefined)).statusCode).toBe(401)

        const unknown = await authed(app, method, `/users/${randomUUID()}/sessions`, adminToken)
        expect(unknown.statusCode, method).toBe(404)
        expect(unknown.json()).toEqual({ detail: 'User not found' })

        const bad = await authed(app, method, '/users/not-a-uuid/sessions', adminToken)
        expect(bad.statusCode, method).toBe(422)
        expect(bad.json()).toMatchObject({ errors: [expect.objectContaining({ field: 'id' })] })
      }
      await expectSessionAlive(app, targetTokens)
    })
  })
}

describe('sessions on the in-memory stores', () => {
  sessionSuite(() => ({}))

  it('records the address TRUST_PROXY gives, and ignores X-Forwarded-For from anyone else', async () => {
    const app = await buildTestApp({ TRUST_PROXY: '127.0.0.1' })
    try {
      const { username } = await newUser(app)
      const viaProxy = await loginAs(app, username, { headers: { 'x-forwarded-for': '203.0.113.77' } })
      const direct = await loginAs(app, username, {
        remoteAddress: '192.0.2.50',
        headers: { 'x-forwarded-for': '203.0.113.88' },
      })
      const byId = new Map((await mySessions(app, viaProxy.access_token)).map((s) => [s.id, s.ip]))
      expect(byId.get(sid(viaProxy))).toBe('203.0.113.77')
      expect(byId.get(sid(direct))).toBe('192.0.2.50')
    } finally {
      await app.close()
    }
  })

  it('audits each ending without any token', async () => {
    const audit = lineCollector()
    const app = await buildTestApp(ADMIN, { audit: pino(audit.stream) })
    try {
      const admin = await loginAs(app, ADMIN_USERNAME, {}, ADMIN_PASSWORD)
      const user = await newUser(app)
      const [a, b, c] = [
        await loginAs(app, user.username),
        await loginAs(app, user.username),
        await loginAs(app, user.username),
      ]
      const d = await loginAs(app, user.username)

      expect((await authed(app, 'DELETE', `/users/me/sessions/${sid(b)}`, a.access_token)).statusCode).toBe(204)
      expect((await authed(app, 'DELETE', '/users/me/sessions', a.access_token)).statusCode).toBe(204)
      expect((await authed(app, 'DELETE', `/users/${user.id}/sessions`, admin.access_token)).statusCode).toBe(204)

      const events = audit.records().filter((r) => String(r.event).includes('session'))
      expect(events).toEqual([
        expect.objectContaining({ event: 'session_end', userId: user.id, sessionId: sid(b), ip: '127.0.0.1' }),
        // c and d: the other two still live.
        expect.objectContaining({ event: 'sessions_end_others', userId: user.id, sessionId: sid(a), count: 2 }),
        // a, the last one left.
        expect.objectContaining({ event: 'admin_sessions_end', targetId: user.id, by: expect.any(String), count: 1 }),
      ])
      for (const tokens of [admin, a, b, c, d])
        for (const secret of [tokens.access_token, tokens.refresh_token])
          for (const line of audit.lines) expect(line).not.toContain(secret)
    } finally {
      await app.close()
    }
  })
})

describeWith(['postgres', 'redis'], 'sessions on PostgreSQL and Redis', () => {
  let db: TestSchema
  let prefix: string

  beforeAll(async () => {
    db = await createTestSchema()
    prefix = redisPrefix()
  })

  afterAll(async () => {
    if (prefix) await deleteRedisKeys(prefix)
    await db?.drop()
  })

  const env = (): Env => ({ STORE: 'postgres', DATABASE_URL: db.url, REDIS_URL, REDIS_PREFIX: prefix })

  describe('one instance', () => sessionSuite(env))

  describe('two instances on one database and one Redis', () => {
    let a: FastifyInstance
    let b: FastifyInstance

    beforeAll(async () => {
      // One after the other: each makes sure of the admin account at start.
      a = await buildTestApp({ ...ADMIN, ...env() })
      b = await buildTestApp({ ...ADMIN, ...env() })
    })

    afterAll(async () => {
      await Promise.allSettled([a?.close(), b?.close()])
    })

    const meOn = async (app: FastifyInstance, tokens: TokenBody) =>
      (await app.inject({ method: 'GET', url: '/users/me', headers: bearer(tokens.access_token) })).statusCode

    it('ends a session on A: B refuses its access token, lists it no more, and refuses its refresh token', async () => {
      const { username } = await newUser(a)
      const here = await loginAs(a, username, { userAgent: 'OnA/1' })
      const there = await loginAs(b, username, { userAgent: 'OnB/1' })
      // Both instances list both sessions, wherever they started.
      for (const app of [a, b])
        expect((await mySessions(app, here.access_token)).map((s) => s.id).sort()).toEqual(
          [sid(here), sid(there)].sort(),
        )
      expect(await meOn(b, there)).toBe(200)

      expect((await authed(a, 'DELETE', `/users/me/sessions/${sid(there)}`, here.access_token)).statusCode).toBe(204)

      await expect.poll(() => meOn(b, there), WITHIN_A_SECOND).toBe(401)
      expect((await refreshAs(b, there.refresh_token, {})).statusCode).toBe(400)
      expect((await mySessions(b, here.access_token)).map((s) => s.id)).toEqual([sid(here)])
      expect(await meOn(b, here)).toBe(200)
    })

    it('ends the other sessions on B: their tokens are refused on A; the current one works on both', async () => {
      const { username } = await newUser(a)
      const others = [await loginAs(a, username), await loginAs(b, username)]
      const current = await loginAs(a, username)

      expect((await authed(b, 'DELETE', '/users/me/sessions', current.access_token)).statusCode).toBe(204)

      for (const tokens of others) await expect.poll(() => meOn(a, tokens), WITHIN_A_SECOND).toBe(401)
      for (const app of [a, b]) expect(await meOn(app, current)).toBe(200)
    })

    it("ends all of a user's sessions by an admin on A: every token of them is refused on B", async () => {
      const user = await newUser(b)
      const sessions = [await loginAs(a, user.username), await loginAs(b, user.username)]
      const admin = await loginAs(a, ADMIN_USERNAME, {}, ADMIN_PASSWORD)

      expect((await authed(a, 'DELETE', `/users/${user.id}/sessions`, admin.access_token)).statusCode).toBe(204)

      for (const tokens of sessions) {
        await expect.poll(() => meOn(b, tokens), WITHIN_A_SECOND).toBe(401)
        expect((await refreshAs(b, tokens.refresh_token, {})).statusCode).toBe(400)
      }
      const listed = await authed(b, 'GET', `/users/${user.id}/sessions`, admin.access_token)
      expect(listed.json()).toEqual({ items: [] })
      // The account itself works on both at once.
      const back = await loginAs(b, user.username)
      for (const app of [a, b]) expect(await meOn(app, back)).toBe(200)
    })
  })
})
