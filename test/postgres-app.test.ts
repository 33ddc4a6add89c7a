// The whole app on the PostgreSQL store (STORE=postgres), in process: the HTTP contract holds on
// it, what it acknowledges survives a restart, the database itself keeps usernames unique, the
// migrations run at start are idempotent, and sessions, revocation and the admin endpoints work
// from the tables (the store's own behaviour is in store-contract.test.ts).
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest'
import {
  buildTestApp,
  decodeClaims,
  type Env,
  FORM,
  getMe,
  type PublicUser,
  postToken,
  register,
  registerAndLogin,
  TEST_PASSWORD,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const ADMIN_USERNAME = `admin_${randomUUID().slice(0, 8)}`
const ADMIN_PASSWORD = 'admin-Lantern-93-orchid'

interface Tokens {
  access_token: string
  refresh_token: string
  scope: string
}

/** Polls every 25 ms for at most a second: how soon every instance must enforce a revocation. */
const WITHIN_A_SECOND = { timeout: 1_000, interval: 25 }

describeWith('postgres', 'the app on PostgreSQL (STORE=postgres)', () => {
  let db: TestSchema
  let env: Env
  const apps: FastifyInstance[] = []

  /** An app on the test schema (extra settings merged in), closed after the suite. */
  async function open(extra: Env = {}): Promise<FastifyInstance> {
    const app = await buildTestApp({ ...env, ...extra })
    apps.push(app)
    return app
  }

  async function close(app: FastifyInstance): Promise<void> {
    apps.splice(apps.indexOf(app), 1)
    await app.close()
  }

  beforeAll(async () => {
    // Not migrated: the first app's MIGRATE_ON_START does it.
    db = await createTestSchema({ migrated: false })
    env = { STORE: 'postgres', DATABASE_URL: db.url, MIGRATE_ON_START: 'true' }
  })

  afterAll(async () => {
    await Promise.allSettled(apps.map((app) => app.close()))
    await db?.drop()
  })

  it('registers, logs in and serves /users/me from the database', async () => {
    const app = await open()
    const { user, token, username } = await registerAndLogin(app)
    const me = await getMe(app, `Bearer ${token}`)
    expect(me.statusCode).toBe(200)
    expect(me.json()).toEqual(user)
    const { rows } = await db.pool.query('SELECT id, username, password_hash FROM users WHERE id = $1', [user.id])
    expect(rows).toHaveLength(1)
    expect(rows[0]).toMatchObject({ id: user.id, username })
    expect(rows[0].password_hash).toMatch(/^\$2[aby]\$04\$/)
  })

  it('keeps a registered user across a restart of the app', async () => {
    const first = await open()
    const username = uniqueUsername('durable')
    const reg = await register(first, { username, password: TEST_PASSWORD, email: 'durable@example.com' })
    expect(reg.statusCode).toBe(201)
    await close(first)

    const second = await open()
    const login = await postToken(second, { username, password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
    const me = await getMe(second, `Bearer ${login.json<Tokens>().access_token}`)
    expect(me.statusCode).toBe(200)
    expect(me.json()).toEqual(reg.json())
    expect(me.json<PublicUser>().email).toBe('durable@example.com')
  })

  it('gives one 201 and one 409 when two apps race to register Bob and bob', async () => {
    const [a, b] = await Promise.all([open(), open()])
    for (let round = 0; round < 5; round++) {
      const suffix = randomUUID().slice(0, 8)
      const [first, second] = await Promise.all([
        register(a, { username: `Bob_${suffix}`, password: TEST_PASSWORD }),
        register(b, { username: `bob_${suffix}`, password: TEST_PASSWORD }),
      ])
      expect([first.statusCode, second.statusCode].sort()).toEqual([201, 409])
      const loser = first.statusCode === 409 ? first : second
      expect(loser.json()).toEqual({ detail: 'Username already registered' })
      const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM users WHERE lower(username) = $1', [
        `bob_${suffix}`,
      ])
      expect(rows[0].n).toBe(1)
    }
  })

  it('changes nothing when MIGRATE_ON_START runs again', async () => {
    const app = await open()
    await registerAndLogin(app)
    const snapshot = async () => {
      const migrations = await db.pool.query('SELECT version, name, applied_at FROM schema_migrations ORDER BY version')
      const columns = await db.pool.query(
        `SELECT table_name, column_name, data_type, is_nullable, column_default
         FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position`,
        [db.name],
      )
      const indexes = await db.pool.query(
        'SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname',
        [db.name],
      )
      const users = await db.pool.query('SELECT id, username, password_hash FROM users ORDER BY id')
      return { migrations: migrations.rows, columns: columns.rows, indexes: indexes.rows, users: users.rows }
    }
    const before = await snapshot()
    expect(before.migrations.length).toBeGreaterThan(0)
    expect(before.users.length).toBeGreaterThan(0)
    await close(await open())
    await close(await open())
    expect(await snapshot()).toEqual(before)
  })

  it('answers /readyz 200 with the postgres check, and /healthz 200', async () => {
    const app = await open()
    const ready = await app.inject({ method: 'GET', url: '/readyz' })
    expect(ready.statusCode).toBe(200)
    expect(ready.json()).toEqual({ status: 'ok', checks: { postgres: 'ok' } })
    const live = await app.inject({ method: 'GET', url: '/healthz' })
    expect(live.statusCode).toBe(200)
    expect(live.json()).toEqual({ status: 'ok' })
  })

  it('lists, reads and changes users from PostgreSQL through the admin endpoints', async () => {
    const adminApp = await open({ ADMIN_USERNAME, ADMIN_PASSWORD })
    const other = await open()
    // Registered through another instance: only the shared database can show them to adminApp.
    const prefix = `adm${randomUUID().slice(0, 6)}`
    const registered: PublicUser[] = []
    for (const name of [`${prefix}_c`, `${prefix}_a`, `${prefix}_B`]) {
      const reg = await register(other, { username: name, password: TEST_PASSWORD })
      expect(reg.statusCode).toBe(201)
      registered.push(reg.json<PublicUser>())
    }
    const login = await postToken(adminApp, { username: ADMIN_USERNAME, password: ADMIN_PASSWORD })
    expect(login.statusCode).toBe(200)
    expect(login.json<Tokens>().scope).toBe('user admin')
    const auth = { authorization: `Bearer ${login.json<Tokens>().access_token}` }

    const list = await adminApp.inject({ method: 'GET', url: `/users?username_prefix=${prefix}`, headers: auth })
    expect(list.statusCode).toBe(200)
    expect(list.json()).toMatchObject({ total: 3, limit: 50, offset: 0 })
    expect(list.json<{ items: { username: string }[] }>().items.map((u) => u.username)).toEqual([
      `${prefix}_a`,
      `${prefix}_B`,
      `${prefix}_c`,
    ])
    const page = await adminApp.inject({
      method: 'GET',
      url: `/users?username_prefix=${prefix}&limit=1&offset=1`,
      headers: auth,
    })
    expect(page.json()).toMatchObject({ total: 3, limit: 1, offset: 1, items: [{ username: `${prefix}_B` }] })

    const target = registered[0] as PublicUser
    const read = await adminApp.inject({ method: 'GET', url: `/users/${target.id}`, headers: auth })
    expect(read.statusCode).toBe(200)
    expect(read.json()).toEqual({ ...target, roles: ['user'], disabled: false, mfa_enabled: false })

    const patch = await adminApp.inject({
      method: 'PATCH',
      url: `/users/${target.id}`,
      headers: { ...auth, 'content-type': 'application/json' },
      payload: { disabled: true },
    })
    expect(patch.statusCode).toBe(200)
    expect(patch.json()).toMatchObject({ id: target.id, disabled: true })
    const { rows } = await db.pool.query('SELECT disabled FROM users WHERE id = $1', [target.id])
    expect(rows[0].disabled).toBe(true)
    // The other instance reads the same row: the disabled user cannot log in there.
    const blocked = await postToken(other, { username: target.username, password: TEST_PASSWORD })
    expect(blocked.statusCode).toBe(400)
    expect(blocked.json()).toMatchObject({ error: 'invalid_grant' })
  })

  it('keeps one enabled admin when admins on two instances remove their own admin role at the same moment', async () => {
    // A database of its own: the two admins of each round are its only admins.
    const own = await createTestSchema()
    const ownEnv: Env = { STORE: 'postgres', DATABASE_URL: own.url }
    const first = `first_${randomUUID().slice(0, 8)}`
    const instances = await Promise.all([
      buildTestApp({ ...ownEnv, ADMIN_USERNAME: first, ADMIN_PASSWORD }),
      buildTestApp(ownEnv),
    ])
    interface Admin {
      app: FastifyInstance
      id: string
      token: string
    }
    const logIn = async (app: FastifyInstance, username: string, password: string): Promise<Admin> => {
      const res = await postToken(app, { username, password })
      expect(res.statusCode).toBe(200)
      expect(res.json<Tokens>().scope).toBe('user admin')
      const token = res.json<Tokens>().access_token
      return { app, id: decodeClaims(token).sub as string, token }
    }
    const patch = (admin: Admin, id: string, payload: object) =>
      admin.app.inject({
        method: 'PATCH',
        url: `/users/${id}`,
        headers: { authorization: `Bearer ${admin.token}`, 'content-type': 'application/json' },
        payload,
      })
    try {
      let survivor = await logIn(instances[0], first, ADMIN_PASSWORD)
      for (let round = 0; round < 5; round++) {
        // The admin left by the last round promotes a newcomer, who uses the other instance.
        const home = instances.find((app) => app !== survivor.app) as FastifyInstance
        const username = uniqueUsername('race')
        const reg = await register(home, { username, password: TEST_PASSWORD })
        expect(reg.statusCode).toBe(201)
        expect((await patch(survivor, reg.json<PublicUser>().id, { roles: ['user', 'admin'] })).statusCode).toBe(200)
        const newcomer = await logIn(home, username, TEST_PASSWORD)

        // Each removes its own admin role, on its own instance, at the same moment.
        const [bySurvivor, byNewcomer] = await Promise.all([
          patch(survivor, survivor.id, { roles: ['user'] }),
          patch(newcomer, newcomer.id, { roles: ['user'] }),
        ])

        expect([bySurvivor.statusCode, byNewcomer.statusCode].sort()).toEqual([200, 409])
        expect((bySurvivor.statusCode === 409 ? bySurvivor : byNewcomer).json()).toEqual({
          detail: 'At least one enabled administrator must remain: this change would leave none',
        })
        if (bySurvivor.statusCode === 200) survivor = newcomer
        const { rows } = await own.pool.query(`SELECT id FROM users WHERE 'admin' = ANY(roles) AND NOT disabled`)
        expect(rows).toEqual([{ id: survivor.id }])
      }
    } finally {
      await Promise.allSettled(instances.map((app) => app.close()))
      await own.drop()
    }
  })

  it('rotates refresh tokens and detects reuse on the PostgreSQL session store', async () => {
    // The reuse below comes at once, which the reuse grace (10 s by default) would answer with a
    // new pair: this test pins reuse detection itself, so the grace is off here.
    const app = await open({ REFRESH_REUSE_GRACE_SECONDS: '0' })
    const username = uniqueUsername('refresh')
    expect((await register(app, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
    const login = await postToken(app, { username, password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
    const first = login.json<Tokens>()

    const refreshed = await postToken(app, { grant_type: 'refresh_token', refresh_token: first.refresh_token })
    expect(refreshed.statusCode).toBe(200)
    const second = refreshed.json<Tokens>()
    expect(second.refresh_token).not.toBe(first.refresh_token)
    expect((await getMe(app, `Bearer ${second.access_token}`)).statusCode).toBe(200)
    const family = await db.pool.query(
      `SELECT f.id, f.revoked, count(t.hash)::int AS tokens
       FROM refresh_families f JOIN refresh_tokens t ON t.family_id = f.id
       JOIN users u ON u.id = f.user_id WHERE u.username = $1 GROUP BY f.id`,
      [username],
    )
    expect(family.rows).toEqual([{ id: expect.any(String), revoked: false, tokens: 2 }])

    // The rotated token again: reuse. The whole family dies, the current refresh token included.
    const reuse = await postToken(app, { grant_type: 'refresh_token', refresh_token: first.refresh_token })
    expect(reuse.statusCode).toBe(400)
    expect(reuse.json()).toEqual({
      error: 'invalid_grant',
      error_description: 'Invalid refresh token',
      detail: 'Invalid refresh token',
    })
    const current = await postToken(app, { grant_type: 'refresh_token', refresh_token: second.refresh_token })
    expect(current.statusCode).toBe(400)
    expect(current.json()).toMatchObject({ error: 'invalid_grant' })
    expect((await getMe(app, `Bearer ${second.access_token}`)).statusCode).toBe(401)
    const revoked = await db.pool.query('SELECT revoked FROM refresh_families WHERE id = $1', [family.rows[0].id])
    expect(revoked.rows[0].revoked).toBe(true)

    // A restart changes nothing: the family stays revoked in the table.
    const again = await open()
    const afterRestart = await postToken(again, { grant_type: 'refresh_token', refresh_token: second.refresh_token })
    expect(afterRestart.statusCode).toBe(400)
  })

  it('answers concurrent refreshes with one token, on two instances, with two pairs of one live session', async () => {
    // Two instances, so the two refreshes run on two connections and race in the database.
    const [a, b] = await Promise.all([open(), open()])
    const username = uniqueUsername('grace')
    expect((await register(a, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
    const login = await postToken(a, { username, password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
    const first = login.json<Tokens>()
    const sid = decodeClaims(first.access_token).sid
    const refreshOn = (app: FastifyInstance, refresh_token: string) =>
      postToken(app, { grant_type: 'refresh_token', refresh_token })

    const results = await Promise.all([refreshOn(a, first.refresh_token), refreshOn(b, first.refresh_token)])

    expect(results.map((r) => r.statusCode)).toEqual([200, 200])
    const pairs = results.map((r) => r.json<Tokens>())
    expect(pairs[0]?.refresh_token).not.toBe(pairs[1]?.refresh_token)
    for (const pair of pairs) {
      expect(decodeClaims(pair.access_token).sid).toBe(sid)
      expect((await getMe(a, `Bearer ${pair.access_token}`)).statusCode).toBe(200)
      expect((await getMe(b, `Bearer ${pair.access_token}`)).statusCode).toBe(200)
      // Each new refresh token rotates once more, on either instance.
      const next = await refreshOn(b, pair.refresh_token)
      expect(next.statusCode).toBe(200)
      expect(decodeClaims(next.json<Tokens>().access_token).sid).toBe(sid)
    }
    expect((await getMe(a, `Bearer ${first.access_token}`)).statusCode).toBe(200)
    const family = () =>
      db.pool.query(
        `SELECT f.revoked, count(t.hash)::int AS tokens, (count(*) FILTER (WHERE t.grace_used))::int AS graced
         FROM refresh_families f JOIN refresh_tokens t ON t.family_id = f.id WHERE f.id = $1 GROUP BY f.id`,
        [sid],
      )
    // The login's token, the rotation's, the grace re-issue's, and one rotation of each of those two.
    expect((await family()).rows).toEqual([{ revoked: false, tokens: 5, graced: 1 }])

    // The login's token a third time is a second reuse: the whole session is revoked.
    const third = await refreshOn(a, first.refresh_token)
    expect(third.statusCode).toBe(400)
    expect(third.json()).toMatchObject({ error: 'invalid_grant' })
    expect((await family()).rows).toEqual([{ revoked: true, tokens: 5, graced: 1 }])
    expect((await getMe(a, `Bearer ${pairs[0]?.access_token}`)).statusCode).toBe(401)
  })

  it('enforces /logout and /revoke through the PostgreSQL denylist, on every instance within 1 s', async () => {
    const [a, b] = await Promise.all([open(), open()])
    const { token } = await registerAndLogin(a)
    const bearer = `Bearer ${token}`
    expect((await getMe(b, bearer)).statusCode).toBe(200)

    const logout = await a.inject({ method: 'POST', url: '/logout', headers: { authorization: bearer } })
    expect(logout.statusCode).toBe(204)
    expect((await getMe(a, bearer)).statusCode).toBe(401)
    const { rows } = await db.pool.query('SELECT id FROM revoked_tokens')
    expect(rows.map((r) => r.id)).toEqual(expect.arrayContaining([expect.stringMatching(/^j:/)]))
    await expect.poll(async () => (await getMe(b, bearer)).statusCode, WITHIN_A_SECOND).toBe(401)
    expect((await getMe(b, bearer)).json()).toEqual({ detail: 'Could not validate credentials' })

    // /revoke on B, enforced on A; and on a new instance, which loads the list at start.
    const other = await registerAndLogin(b)
    const revoke = await b.inject({
      method: 'POST',
      url: '/revoke',
      headers: { 'content-type': FORM },
      payload: new URLSearchParams({ token: other.token }).toString(),
    })
    expect(revoke.statusCode).toBe(200)
    await expect.poll(async () => (await getMe(a, `Bearer ${other.token}`)).statusCode, WITHIN_A_SECOND).toBe(401)
    const fresh = await open()
    expect((await getMe(fresh, `Bearer ${other.token}`)).statusCode).toBe(401)
    expect((await getMe(fresh, bearer)).statusCode).toBe(401)
  })
})

describeWith(['postgres', 'redis'], 'the app on PostgreSQL with Redis', () => {
  let db: TestSchema
  const apps: FastifyInstance[] = []
  const prefixes: string[] = []

  /** An app on the schema and Redis under `prefix`, closed after the test. */
  async function open(prefix: string, extra: Env = {}): Promise<FastifyInstance> {
    if (!prefixes.includes(prefix)) prefixes.push(prefix)
    const app = await buildTestApp({
      STORE: 'postgres',
      DATABASE_URL: db.url,
      REDIS_URL,
      REDIS_PREFIX: prefix,
      ...extra,
    })
    apps.push(app)
    return app
  }

  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterEach(async () => {
    await Promise.allSettled(apps.splice(0).map((app) => app.close()))
  })
  afterAll(async () => {
    await Promise.allSettled(prefixes.map(deleteRedisKeys))
    await db?.drop()
  })

  it('answers /readyz 200 with both checks', async () => {
    const app = await open(redisPrefix())
    const ready = await app.inject({ method: 'GET', url: '/readyz' })
    expect(ready.statusCode).toBe(200)
    expect(ready.json()).toEqual({ status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
    const { token } = await registerAndLogin(app)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)
  })

  it('counts the registration cap across instances sharing REDIS_PREFIX, and only those', async () => {
    const shared = redisPrefix()
    const capped = { REGISTER_RATE_LIMIT_MAX: '3' }
    const [a, b] = await Promise.all([open(shared, capped), open(shared, capped)])
    const attempt = (app: FastifyInstance) =>
      register(app, { username: uniqueUsername('cap'), password: TEST_PASSWORD })
    expect((await attempt(a)).statusCode).toBe(201)
    expect((await attempt(b)).statusCode).toBe(201)
    expect((await attempt(a)).statusCode).toBe(201)
    for (const app of [a, b]) {
      const over = await attempt(app)
      expect(over.statusCode).toBe(429)
      expect(over.json()).toEqual({ detail: expect.stringMatching(/^Too many requests/) })
    }
    // Another deployment on the same Redis, under its own prefix, has a count of its own.
    const elsewhere = await open(redisPrefix(), capped)
    expect((await attempt(elsewhere)).statusCode).toBe(201)
  })
})
