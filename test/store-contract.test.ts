// The store contract: one suite per interface, run against the in-memory stores (the reference
// behaviour) and against the PostgreSQL and Redis ones, so that they stay interchangeable. Plus what
// only a shared store has to do: migrations, races between instances, entries seen across instances.
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { type CounterStore, MemoryCounterStore } from '../src/store/counters.js'
import { defaultMigrationsDir, migrate } from '../src/store/migrate.js'
import { PostgresDenyList, PostgresSessionStore, PostgresUserStore } from '../src/store/postgres.js'
import { createRedis, RedisCounterStore, RedisDenyList, redisReady } from '../src/store/redis.js'
import { type DenyList, MemoryDenyList, MemorySessionStore, type SessionStore } from '../src/store/sessions.js'
import { MemoryUserStore, type NewUser, type UserStore } from '../src/store/users.js'
import { createTestSchema, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const run = promisify(execFile)
const nowSeconds = () => Date.now() / 1000

/** A user as the service would hand it to the store (whole milliseconds, as a Date round-trips). */
function newUser(username: string, overrides: Partial<NewUser> = {}): NewUser {
  return {
    id: randomUUID(),
    username,
    email: null,
    passwordHash: `$2b$04$${randomUUID()}`,
    createdAt: new Date(Math.floor(Date.now() / 1000) * 1000 - 12_345),
    roles: ['user'],
    ...overrides,
  }
}

/** How many users `store` holds: the total of a list of every user. */
async function userCount(store: UserStore): Promise<number> {
  return (await store.list({ limit: 1, offset: 0 })).total
}

/** Keeps a store per test and closes it after. */
function perTest<T extends { close(): Promise<void> }>(make: () => Promise<T>): () => T {
  let current: T | undefined
  beforeEach(async () => {
    current = await make()
  })
  afterEach(async () => {
    await current?.close()
    current = undefined
  })
  return () => current as T
}

// --- users -------------------------------------------------------------------------------------

function userStoreContract(make: () => Promise<UserStore>): void {
  const store = perTest(make)

  it('creates a user with the defaults: enabled, token version 0', async () => {
    const input = newUser('Alice', { email: 'alice@example.com', roles: ['user', 'admin'] })
    const created = await store().create(input)
    expect(created).toEqual({ ...input, disabled: false, tokenVersion: 0 })
    expect(await userCount(store())).toBe(1)
  })

  it('returns records the caller cannot change', async () => {
    const created = await store().create(newUser('frozen'))
    expect(Object.isFrozen(created)).toBe(true)
    expect(Object.isFrozen(created?.roles)).toBe(true)
    expect(Object.isFrozen(await store().findByUsername('frozen'))).toBe(true)
  })

  it('finds a user by id, and nothing for an unknown or malformed id', async () => {
    const input = newUser('bob.by-id', { email: 'b@example.com' })
    await store().create(input)
    expect(await store().findById(input.id)).toEqual({ ...input, disabled: false, tokenVersion: 0 })
    expect(await store().findById(randomUUID())).toBeUndefined()
    expect(await store().findById('not-a-uuid')).toBeUndefined()
  })

  it('finds a user by username in any case', async () => {
    const input = newUser('MixedCase_1')
    await store().create(input)
    for (const name of ['MixedCase_1', 'mixedcase_1', 'MIXEDCASE_1']) {
      expect((await store().findByUsername(name))?.id).toBe(input.id)
    }
    expect(await store().findByUsername('mixedcase_2')).toBeUndefined()
  })

  it('returns null for a username taken in another case, and keeps the first account', async () => {
    const first = newUser('Carol')
    await store().create(first)
    expect(await store().create(newUser('carol'))).toBeNull()
    expect(await store().create(newUser('CAROL'))).toBeNull()
    expect(await userCount(store())).toBe(1)
    expect((await store().findByUsername('carol'))?.username).toBe('Carol')
  })

  it('applies a patch and keeps every field it does not name', async () => {
    const input = newUser('dave', { email: 'dave@example.com' })
    await store().create(input)
    const updated = await store().update(input.id, { passwordHash: 'new-hash', roles: ['user', 'admin'] })
    const expected = { ...input, passwordHash: 'new-hash', roles: ['user', 'admin'], disabled: false, tokenVersion: 0 }
    expect(updated).toEqual(expected)
    expect(await store().update(input.id, { disabled: true })).toEqual({ ...expected, disabled: true })
    expect(await store().update(input.id, {})).toEqual({ ...expected, disabled: true })
    expect(await store().findById(input.id)).toEqual({ ...expected, disabled: true })
  })

  it('returns undefined when updating an unknown user', async () => {
    expect(await store().update(randomUUID(), { disabled: true })).toBeUndefined()
    expect(await store().update('not-a-uuid', { disabled: true })).toBeUndefined()
  })

  it('bumps the token version by one each time', async () => {
    const input = newUser('erin')
    await store().create(input)
    expect((await store().update(input.id, { bumpTokenVersion: true }))?.tokenVersion).toBe(1)
    expect((await store().update(input.id, { bumpTokenVersion: true, disabled: true }))?.tokenVersion).toBe(2)
    expect((await store().update(input.id, { bumpTokenVersion: false }))?.tokenVersion).toBe(2)
    expect((await store().findById(input.id))?.tokenVersion).toBe(2)
  })

  it('deletes a user and frees the name for a new account', async () => {
    const input = newUser('Frank')
    await store().create(input)
    expect(await store().delete(input.id)).toBe(true)
    expect(await store().findById(input.id)).toBeUndefined()
    expect(await store().findByUsername('frank')).toBeUndefined()
    expect(await store().delete(input.id)).toBe(false)
    expect(await store().delete('not-a-uuid')).toBe(false)
    const again = newUser('FRANK')
    expect((await store().create(again))?.id).toBe(again.id)
    expect(await userCount(store())).toBe(1)
  })

  it('lists in normalised-username order with prefix, limit, offset and total', async () => {
    // Byte order, not a locale's: '-' < '.' < digits < '_' < letters.
    for (const name of ['alice', 'Al.ex', 'al_x', 'al-y', 'Al9', 'bob', 'zed']) await store().create(newUser(name))
    const names = async (query: Parameters<UserStore['list']>[0]) => {
      const { items, total } = await store().list(query)
      return { names: items.map((u) => u.username), total }
    }
    expect(await names({ limit: 10, offset: 0 })).toEqual({
      names: ['al-y', 'Al.ex', 'Al9', 'al_x', 'alice', 'bob', 'zed'],
      total: 7,
    })
    expect(await names({ limit: 2, offset: 1, usernamePrefix: 'AL' })).toEqual({ names: ['Al.ex', 'Al9'], total: 5 })
    expect(await names({ limit: 2, offset: 4, usernamePrefix: 'al' })).toEqual({ names: ['alice'], total: 5 })
    expect(await names({ limit: 5, offset: 10, usernamePrefix: 'al' })).toEqual({ names: [], total: 5 })
    expect(await names({ limit: 5, offset: 0, usernamePrefix: 'b' })).toEqual({ names: ['bob'], total: 1 })
    expect(await names({ limit: 5, offset: 0, usernamePrefix: 'nobody' })).toEqual({ names: [], total: 0 })
  })

  it('matches the prefix literally: % _ and \\ are not wildcards', async () => {
    for (const name of ['a_b', 'axb', 'a%c', 'a\\d', 'aed']) await store().create(newUser(name))
    const total = async (usernamePrefix: string) => (await store().list({ limit: 10, offset: 0, usernamePrefix })).total
    expect(await total('a_')).toBe(1)
    expect(await total('a%')).toBe(1)
    expect(await total('%')).toBe(0)
    expect(await total('_')).toBe(0)
    expect(await total('a\\')).toBe(1)
    expect(await total('a')).toBe(5)
  })

  it('counts users in the total of a list', async () => {
    expect(await userCount(store())).toBe(0)
    await store().create(newUser('one'))
    await store().create(newUser('two'))
    expect(await userCount(store())).toBe(2)
  })
}

// --- refresh-token families --------------------------------------------------------------------

interface SessionHarness {
  sessions: SessionStore
  /** A user id families can belong to (the PostgreSQL store requires the user to exist). */
  addUser(): Promise<string>
  close(): Promise<void>
}

function sessionStoreContract(make: () => Promise<SessionHarness>): void {
  const harness = perTest(make)
  const sessions = () => harness().sessions
  const inAnHour = () => new Date(Math.floor(Date.now() / 1000) * 1000 + 3_600_000)
  const token = () => ({ hash: randomUUID().replaceAll('-', ''), expiresAt: inAnHour() })

  async function family(userId?: string, absoluteExpiresAt = inAnHour()) {
    const owner = userId ?? (await harness().addUser())
    const first = token()
    const fam = {
      id: randomUUID(),
      userId: owner,
      scope: 'user',
      createdAt: new Date(Math.floor(Date.now() / 1000) * 1000),
      absoluteExpiresAt,
    }
    await sessions().createFamily(fam, first)
    return { fam, first }
  }

  it('creates a family whose first token can be found', async () => {
    const { fam, first } = await family()
    expect(await sessions().findToken(first.hash)).toEqual({
      token: { hash: first.hash, familyId: fam.id, expiresAt: first.expiresAt, rotated: false },
      family: { ...fam, revoked: false },
    })
    expect(await sessions().findToken('unknown')).toBeUndefined()
  })

  it('rotates once: the old token is marked rotated and cannot rotate again', async () => {
    const { fam, first } = await family()
    const second = token()
    expect(await sessions().rotate(fam.id, first.hash, second)).toBe(true)
    expect((await sessions().findToken(first.hash))?.token.rotated).toBe(true)
    expect((await sessions().findToken(second.hash))?.token).toEqual({
      hash: second.hash,
      familyId: fam.id,
      expiresAt: second.expiresAt,
      rotated: false,
    })
    expect(await sessions().rotate(fam.id, first.hash, token())).toBe(false)
    expect(await sessions().rotate(fam.id, second.hash, token())).toBe(true)
  })

  it('lets exactly one of two concurrent rotations of the same token win', async () => {
    const { fam, first } = await family()
    const results = await Promise.all([
      sessions().rotate(fam.id, first.hash, token()),
      sessions().rotate(fam.id, first.hash, token()),
    ])
    expect(results.filter(Boolean)).toHaveLength(1)
  })

  it('refuses to rotate an unknown token or one of another family', async () => {
    const a = await family()
    const b = await family()
    expect(await sessions().rotate(a.fam.id, 'unknown', token())).toBe(false)
    expect(await sessions().rotate(a.fam.id, b.first.hash, token())).toBe(false)
    expect(await sessions().rotate(randomUUID(), a.first.hash, token())).toBe(false)
    expect((await sessions().findToken(b.first.hash))?.token.rotated).toBe(false)
  })

  it('refuses to rotate in a revoked family', async () => {
    const { fam, first } = await family()
    await sessions().revokeFamily(fam.id)
    expect((await sessions().findToken(first.hash))?.family.revoked).toBe(true)
    expect(await sessions().rotate(fam.id, first.hash, token())).toBe(false)
    await sessions().revokeFamily(randomUUID())
  })

  it("revokes all of one user's families and returns their ids", async () => {
    const userId = await harness().addUser()
    const a = await family(userId)
    const b = await family(userId)
    const other = await family()
    const revoked = await sessions().revokeAllForUser(userId)
    expect(revoked.sort()).toEqual([a.fam.id, b.fam.id].sort())
    expect((await sessions().findToken(a.first.hash))?.family.revoked).toBe(true)
    expect((await sessions().findToken(b.first.hash))?.family.revoked).toBe(true)
    expect((await sessions().findToken(other.first.hash))?.family.revoked).toBe(false)
    expect(await sessions().revokeAllForUser(userId)).toEqual([])
    expect(await sessions().revokeAllForUser(randomUUID())).toEqual([])
  })

  it('sweeps families past their absolute lifetime, with all their tokens', async () => {
    const old = await family(undefined, new Date(Date.now() - 1_000))
    const rotatedTo = token()
    await sessions().rotate(old.fam.id, old.first.hash, rotatedTo)
    const live = await family()
    await sessions().sweep(new Date())
    expect(await sessions().findToken(old.first.hash)).toBeUndefined()
    expect(await sessions().findToken(rotatedTo.hash)).toBeUndefined()
    expect((await sessions().findToken(live.first.hash))?.family.id).toBe(live.fam.id)
  })
}

// --- counters ----------------------------------------------------------------------------------

function counterStoreContract(make: () => Promise<CounterStore>): void {
  const counters = perTest(make)
  const key = () => `k:${randomUUID()}`

  it('starts a counter at delta with the given lifetime', async () => {
    const k = key()
    const first = await counters().incr(k, 1, 60_000)
    expect(first.value).toBe(1)
    expect(first.ttlMs).toBeGreaterThan(59_000)
    expect(first.ttlMs).toBeLessThanOrEqual(60_000)
    expect((await counters().incr(key(), 5, 60_000)).value).toBe(5)
  })

  it('adds to a live counter and keeps its expiry (a fixed window)', async () => {
    const k = key()
    const first = await counters().incr(k, 1, 60_000)
    await sleep(20)
    const second = await counters().incr(k, 2, 120_000)
    expect(second.value).toBe(3)
    expect(second.ttlMs).toBeLessThanOrEqual(first.ttlMs)
    expect(second.ttlMs).toBeLessThanOrEqual(60_000)
    // A negative delta undoes an increment (the throttle gives back a slot it did not use).
    expect((await counters().incr(k, -1, 60_000)).value).toBe(2)
  })

  it('gets a live counter, and nothing for an unknown one', async () => {
    const k = key()
    await counters().incr(k, 4, 60_000)
    const got = await counters().get(k)
    expect(got?.value).toBe(4)
    expect(got?.ttlMs).toBeGreaterThan(59_000)
    expect(await counters().get(key())).toBeUndefined()
  })

  it('sets a key only if absent', async () => {
    const k = key()
    expect(await counters().setIfAbsent(k, 60_000)).toBe(true)
    expect(await counters().setIfAbsent(k, 60_000)).toBe(false)
    expect((await counters().get(k))?.value).toBe(1)
  })

  it('deletes keys', async () => {
    const [a, b, c] = [key(), key(), key()]
    await counters().incr(a, 1, 60_000)
    await counters().incr(b, 1, 60_000)
    await counters().setIfAbsent(c, 60_000)
    await counters().delete(a, b, c)
    await counters().delete()
    expect(await counters().get(a)).toBeUndefined()
    expect(await counters().get(b)).toBeUndefined()
    expect(await counters().setIfAbsent(c, 60_000)).toBe(true)
  })

  it('forgets a counter once its lifetime is over', async () => {
    const [k, flag] = [key(), key()]
    await counters().incr(k, 3, 100)
    await counters().setIfAbsent(flag, 100)
    await sleep(250)
    expect(await counters().get(k)).toBeUndefined()
    expect((await counters().incr(k, 1, 60_000)).value).toBe(1)
    expect(await counters().setIfAbsent(flag, 60_000)).toBe(true)
  })
}

// --- denylist ----------------------------------------------------------------------------------

function denyListContract(make: () => Promise<DenyList>): void {
  const list = perTest(make)

  it('reports an added id, and no other', async () => {
    expect(list().healthy()).toBe(true)
    const id = randomUUID()
    await list().add(id, nowSeconds() + 60)
    expect(list().has(id)).toBe(true)
    expect(list().has(randomUUID())).toBe(false)
  })

  it('ignores an entry that has already expired', async () => {
    const id = randomUUID()
    await list().add(id, nowSeconds() - 1)
    expect(list().has(id)).toBe(false)
  })

  it('drops an entry once it expires', async () => {
    const id = randomUUID()
    await list().add(id, nowSeconds() + 0.3)
    expect(list().has(id)).toBe(true)
    await sleep(400)
    expect(list().has(id)).toBe(false)
  })

  it('keeps the later expiry of an id added twice', async () => {
    const id = randomUUID()
    await list().add(id, nowSeconds() + 60)
    await list().add(id, nowSeconds() + 0.1)
    await sleep(200)
    expect(list().has(id)).toBe(true)
  })
}

/** What a denylist shared by instances adds: additions seen elsewhere, existing entries loaded. */
function sharedDenyListContract(make: () => Promise<DenyList>): void {
  const opened: DenyList[] = []
  const open = async () => {
    const list = await make()
    opened.push(list)
    await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000, interval: 20 })
    return list
  }
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((l) => l.close()))
  })

  it('makes an addition on one instance visible on another within a second', async () => {
    const [a, b] = [await open(), await open()]
    const id = randomUUID()
    const started = Date.now()
    await a.add(id, nowSeconds() + 60)
    await vi.waitFor(() => expect(b.has(id)).toBe(true), { timeout: 1_000, interval: 10 })
    expect(Date.now() - started).toBeLessThan(1_000)
  })

  it('loads the live entries that existed before it started', async () => {
    const a = await open()
    const [live, expired] = [randomUUID(), randomUUID()]
    await a.add(live, nowSeconds() + 60)
    await a.add(expired, nowSeconds() + 0.2)
    await sleep(300)
    const later = await open()
    expect(later.has(live)).toBe(true)
    expect(later.has(expired)).toBe(false)
  })
}

// --- the in-memory reference -------------------------------------------------------------------

describe('memory stores', () => {
  describe('MemoryUserStore', () => userStoreContract(async () => new MemoryUserStore()))
  describe('MemorySessionStore', () =>
    sessionStoreContract(async () => ({
      sessions: new MemorySessionStore(),
      addUser: async () => randomUUID(),
      close: async () => {},
    })))
  describe('MemoryCounterStore', () => counterStoreContract(async () => new MemoryCounterStore()))
  describe('MemoryDenyList', () => denyListContract(async () => new MemoryDenyList()))
})

// --- PostgreSQL --------------------------------------------------------------------------------

describeWith('postgres', 'PostgreSQL stores', () => {
  let db: TestSchema
  beforeAll(async () => {
    db = await createTestSchema()
  })
  afterAll(async () => {
    await db?.drop()
  })

  describe('PostgresUserStore', () => {
    userStoreContract(async () => {
      await db.truncate()
      return new PostgresUserStore(db.pool)
    })

    it('gives one account when two instances race to register Bob and bob', async () => {
      await db.truncate()
      const [a, b] = [new PostgresUserStore(db.newPool()), new PostgresUserStore(db.newPool())]
      for (let i = 0; i < 10; i++) {
        const results = await Promise.all([a.create(newUser(`Bob${i}`)), b.create(newUser(`bob${i}`))])
        expect(results.filter((r) => r !== null)).toHaveLength(1)
      }
      expect(await userCount(a)).toBe(10)
    })

    it('enforces case-insensitive uniqueness in the database itself', async () => {
      await db.truncate()
      const insert = (name: string) =>
        db.pool.query(`INSERT INTO users (id, username, username_key, password_hash) VALUES ($1, $2, lower($2), 'x')`, [
          randomUUID(),
          name,
        ])
      await insert('Zoe')
      await expect(insert('zoe')).rejects.toMatchObject({ code: '23505' })
    })

    it('answers ping', async () => {
      await expect(new PostgresUserStore(db.pool).ping()).resolves.toBeUndefined()
    })
  })

  describe('PostgresSessionStore', () => {
    sessionStoreContract(async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      return {
        sessions: new PostgresSessionStore(db.pool),
        addUser: async () => {
          const user = newUser(`u_${randomUUID().slice(0, 8)}`)
          await users.create(user)
          return user.id
        },
        close: async () => {},
      }
    })

    it("drops a user's families and tokens with the user", async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      const sessions = new PostgresSessionStore(db.pool)
      const user = newUser('leaving')
      await users.create(user)
      const now = new Date()
      await sessions.createFamily(
        {
          id: randomUUID(),
          userId: user.id,
          scope: 'user',
          createdAt: now,
          absoluteExpiresAt: new Date(+now + 60_000),
        },
        { hash: 'h-leaving', expiresAt: new Date(+now + 60_000) },
      )
      await users.delete(user.id)
      expect(await sessions.findToken('h-leaving')).toBeUndefined()
    })

    it('reports a constraint violation as it is, not as unavailability', async () => {
      const sessions = new PostgresSessionStore(db.pool)
      const now = new Date()
      const err = await sessions
        .createFamily(
          { id: randomUUID(), userId: randomUUID(), scope: 'user', createdAt: now, absoluteExpiresAt: now },
          { hash: randomUUID(), expiresAt: now },
        )
        .catch((e: unknown) => e)
      expect(err).toMatchObject({ code: '23503' })
    })
  })

  describe('PostgresDenyList', () => {
    // Each list gets a pool of its own, as each instance would (drop() ends them).
    const make = async () => new PostgresDenyList(db.newPool())
    describe('contract', () => {
      denyListContract(async () => {
        await db.truncate()
        const list = await make()
        await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000, interval: 20 })
        return list
      })
    })
    describe('shared', () => sharedDenyListContract(make))
  })

  describe('migrations', () => {
    it('finds the migrations directory from the package root', () => {
      expect(defaultMigrationsDir()).toMatch(/[/\\]migrations$/)
      expect(existsSync(defaultMigrationsDir())).toBe(true)
    })

    it('changes nothing when run again', async () => {
      expect(await migrate(db.pool)).toEqual([])
      const { rows } = await db.pool.query('SELECT version, name FROM schema_migrations ORDER BY version')
      expect(rows).toEqual([{ version: '1', name: '001_initial' }])
    })

    it('applies each migration once when two instances start at the same time', async () => {
      const fresh = await createTestSchema({ migrated: false })
      try {
        const results = await Promise.all([migrate(fresh.newPool()), migrate(fresh.newPool())])
        expect(results.flat()).toEqual(['001_initial'])
        const { rows } = await fresh.pool.query('SELECT count(*)::int AS n FROM users')
        expect(rows).toEqual([{ n: 0 }])
      } finally {
        await fresh.drop()
      }
    })

    it('runs from the command line (npm run migrate) and exits 0, twice', async () => {
      const fresh = await createTestSchema({ migrated: false })
      try {
        const cli = () =>
          run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'], {
            env: { ...process.env, DATABASE_URL: fresh.url },
          })
        expect((await cli()).stdout.trim()).toBe('migrate: applied 001_initial')
        expect((await cli()).stdout.trim()).toBe('migrate: up to date')
      } finally {
        await fresh.drop()
      }
    })
  })
})

// --- Redis -------------------------------------------------------------------------------------

describeWith('redis', 'Redis stores', () => {
  describe('RedisCounterStore', () => {
    counterStoreContract(async () => {
      const store = new RedisCounterStore(REDIS_URL, { prefix: redisPrefix() })
      await store.ready()
      return store
    })

    it('shares counters between instances (one limit across instances)', async () => {
      const prefix = redisPrefix()
      const [ra, rb] = [createRedis(REDIS_URL), createRedis(REDIS_URL)]
      try {
        await Promise.all([redisReady(ra), redisReady(rb)])
        const [a, b] = [new RedisCounterStore(ra, { prefix }), new RedisCounterStore(rb, { prefix })]
        await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).incr('login:bob', 1, 60_000)))
        expect((await a.get('login:bob'))?.value).toBe(10)
        expect((await b.get('login:bob'))?.value).toBe(10)
        await a.ping()
      } finally {
        ra.disconnect()
        rb.disconnect()
      }
    })
  })

  describe('RedisDenyList', () => {
    describe('contract', () => {
      denyListContract(async () => {
        const list = new RedisDenyList(REDIS_URL, { prefix: redisPrefix() })
        await vi.waitFor(() => expect(list.healthy()).toBe(true), { timeout: 3_000, interval: 20 })
        return list
      })
    })
    describe('shared', () => {
      let prefix = redisPrefix()
      beforeEach(() => {
        prefix = redisPrefix()
      })
      sharedDenyListContract(async () => new RedisDenyList(REDIS_URL, { prefix }))
    })
  })
})
