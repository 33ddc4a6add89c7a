// The store contract: one suite per interface, run against the in-memory stores (the reference
// behaviour) and against the PostgreSQL and Redis ones, so that they stay interchangeable. Plus what
// only a shared store has to do: migrations, races between instances, entries seen across instances.
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { EmailTakenError, LastAdminError } from '../src/errors.js'
import { CachedUserStore } from '../src/store/cache.js'
import { type CounterStore, MemoryCounterStore } from '../src/store/counters.js'
import { MemoryMfaStore, type MfaStore, type SealedSecret } from '../src/store/mfa.js'
import { defaultMigrationsDir, migrate } from '../src/store/migrate.js'
import {
  PostgresDenyList,
  PostgresMfaStore,
  PostgresOneTimeTokenStore,
  PostgresSessionStore,
  PostgresUserStore,
} from '../src/store/postgres.js'
import { createRedis, RedisCounterStore, RedisDenyList, redisReady } from '../src/store/redis.js'
import { type DenyList, MemoryDenyList, MemorySessionStore, type SessionStore } from '../src/store/sessions.js'
import {
  MemoryOneTimeTokenStore,
  type OneTimeTokenPurpose,
  type OneTimeTokenRecord,
  type OneTimeTokenStore,
} from '../src/store/tokens.js'
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
    expect(created).toEqual({ ...input, emailVerified: false, disabled: false, tokenVersion: 0 })
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
    expect(await store().findById(input.id)).toEqual({
      ...input,
      emailVerified: false,
      disabled: false,
      tokenVersion: 0,
    })
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
    const expected = {
      ...input,
      emailVerified: false,
      passwordHash: 'new-hash',
      roles: ['user', 'admin'],
      disabled: false,
      tokenVersion: 0,
    }
    expect(updated).toEqual(expected)
    expect(await store().update(input.id, { disabled: true })).toEqual({ ...expected, disabled: true })
    expect(await store().update(input.id, {})).toEqual({ ...expected, disabled: true })
    expect(await store().findById(input.id)).toEqual({ ...expected, disabled: true })
  })

  it('returns undefined when updating an unknown user', async () => {
    expect(await store().update(randomUUID(), { disabled: true })).toBeUndefined()
    expect(await store().update('not-a-uuid', { disabled: true })).toBeUndefined()
  })

  it('replaces the password hash only while it is still the expected one, keeping the token version', async () => {
    const input = newUser('hank')
    await store().create(input)
    expect(await store().replacePasswordHash(input.id, input.passwordHash, 'rehashed')).toBe(true)
    expect(await store().findById(input.id)).toEqual({
      ...input,
      emailVerified: false,
      passwordHash: 'rehashed',
      disabled: false,
      tokenVersion: 0,
    })
    // A password change landed first: the re-hash of the old password must not undo it.
    await store().update(input.id, { passwordHash: 'changed', bumpTokenVersion: true })
    expect(await store().replacePasswordHash(input.id, 'rehashed', 'stale')).toBe(false)
    expect((await store().findById(input.id))?.passwordHash).toBe('changed')
    expect(await store().replacePasswordHash(randomUUID(), 'changed', 'x')).toBe(false)
    expect(await store().replacePasswordHash('not-a-uuid', 'changed', 'x')).toBe(false)
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

  describe('e-mail addresses: one account per address, in any case', () => {
    it('finds a user by address in any case, and nothing for another address', async () => {
      const input = newUser('finn', { email: 'Finn.Mail@Example.com' })
      await store().create(input)
      for (const email of ['Finn.Mail@Example.com', 'finn.mail@example.com', 'FINN.MAIL@EXAMPLE.COM'])
        expect((await store().findByEmail(email))?.id).toBe(input.id)
      expect(await store().findByEmail('finn.mail2@example.com')).toBeUndefined()
    })

    it('throws EmailTakenError for an address taken in another case, storing nothing, and keeps the first', async () => {
      const first = newUser('gale', { email: 'gale@example.com' })
      await store().create(first)
      await expect(store().create(newUser('gale2', { email: 'GALE@example.COM' }))).rejects.toBeInstanceOf(
        EmailTakenError,
      )
      expect(await userCount(store())).toBe(1)
      expect(await store().findByUsername('gale2')).toBeUndefined()
      expect((await store().findByEmail('gale@example.com'))?.id).toBe(first.id)
    })

    it('answers a taken name (null) before a taken address, and lets any number of accounts have none', async () => {
      await store().create(newUser('hope', { email: 'hope@example.com' }))
      expect(await store().create(newUser('HOPE', { email: 'hope@example.com' }))).toBeNull()
      expect(await store().create(newUser('nomail1'))).not.toBeNull()
      expect(await store().create(newUser('nomail2'))).not.toBeNull()
    })

    it('changes the address and its verification, freeing the old address', async () => {
      const input = newUser('ivy', { email: 'ivy@example.com' })
      await store().create(input)
      expect(await store().update(input.id, { emailVerified: true })).toMatchObject({
        email: 'ivy@example.com',
        emailVerified: true,
      })
      const moved = await store().update(input.id, { email: 'ivy@example.org', emailVerified: true })
      expect(moved).toEqual({
        ...input,
        email: 'ivy@example.org',
        emailVerified: true,
        disabled: false,
        tokenVersion: 0,
      })
      expect((await store().findByEmail('IVY@example.org'))?.id).toBe(input.id)
      expect(await store().findByEmail('ivy@example.com')).toBeUndefined()
      expect(await store().create(newUser('ivy2', { email: 'ivy@example.com' }))).not.toBeNull()
      // The same address in another case is the account's own: no conflict.
      expect(await store().update(input.id, { email: 'Ivy@Example.org' })).toMatchObject({ email: 'Ivy@Example.org' })
    })

    it("refuses to change to another account's address, changing nothing", async () => {
      const [a, b] = [newUser('jade', { email: 'jade@example.com' }), newUser('kai', { email: 'kai@example.com' })]
      await store().create(a)
      await store().create(b)
      await expect(
        store().update(a.id, { email: 'KAI@example.com', emailVerified: true, bumpTokenVersion: true }),
      ).rejects.toBeInstanceOf(EmailTakenError)
      expect(await store().findById(a.id)).toMatchObject({
        email: 'jade@example.com',
        emailVerified: false,
        tokenVersion: 0,
      })
      expect((await store().findByEmail('kai@example.com'))?.id).toBe(b.id)
    })

    it('frees the address of a deleted account', async () => {
      const input = newUser('lee', { email: 'lee@example.com' })
      await store().create(input)
      expect(await store().delete(input.id)).toBe(true)
      expect(await store().findByEmail('lee@example.com')).toBeUndefined()
      expect(await store().create(newUser('lee2', { email: 'Lee@example.com' }))).not.toBeNull()
    })

    it('keeps the verification through a password re-hash', async () => {
      const input = newUser('mo', { email: 'mo@example.com' })
      await store().create(input)
      await store().update(input.id, { emailVerified: true })
      expect(await store().replacePasswordHash(input.id, input.passwordHash, 'rehashed')).toBe(true)
      expect(await store().findById(input.id)).toMatchObject({ emailVerified: true, email: 'mo@example.com' })
    })
  })

  describe('keepAnAdmin: never leaves no enabled admin', () => {
    const keep = { keepAnAdmin: true }
    const admin = (name: string) => newUser(name, { roles: ['user', 'admin'] })

    /** The ids of the enabled admins. */
    async function enabledAdmins(): Promise<string[]> {
      const { items } = await store().list({ limit: 100, offset: 0 })
      return items.filter((u) => u.roles.includes('admin') && !u.disabled).map((u) => u.id)
    }

    it.each([
      [
        'removing the admin role of',
        (s: UserStore, id: string) => s.update(id, { roles: ['user'], bumpTokenVersion: true }, keep),
      ],
      ['disabling', (s: UserStore, id: string) => s.update(id, { disabled: true, bumpTokenVersion: true }, keep)],
      ['deleting', (s: UserStore, id: string) => s.delete(id, keep)],
    ])('refuses %s the only enabled admin with LastAdminError, and changes nothing', async (_label, change) => {
      const only = admin('only_admin')
      const created = await store().create(only)
      await store().create(newUser('plain'))
      await expect(change(store(), only.id)).rejects.toBeInstanceOf(LastAdminError)
      expect(await store().findById(only.id)).toEqual(created)
      expect(await enabledAdmins()).toEqual([only.id])
    })

    it('does the same change without the option (the boot admin and tools do not ask for it)', async () => {
      const only = admin('unguarded')
      await store().create(only)
      expect((await store().update(only.id, { roles: ['user'] }))?.roles).toEqual(['user'])
      expect(await enabledAdmins()).toEqual([])
    })

    it('lets changes through that keep an enabled admin', async () => {
      const [a, b] = [admin('admin_a'), admin('admin_b')]
      const plain = newUser('plain_user')
      for (const u of [a, b, plain]) await store().create(u)
      // Changes that do not take admin status away, on the only admin or on anyone.
      expect((await store().update(a.id, { roles: ['user', 'admin'], disabled: false }, keep))?.roles).toEqual([
        'user',
        'admin',
      ])
      expect((await store().update(a.id, { passwordHash: 'h2', bumpTokenVersion: true }, keep))?.tokenVersion).toBe(1)
      expect((await store().update(plain.id, { disabled: true }, keep))?.disabled).toBe(true)
      expect(await store().delete(plain.id, keep)).toBe(true)
      // One of two admins may go; then the other may not.
      expect((await store().update(b.id, { roles: ['user'] }, keep))?.roles).toEqual(['user'])
      await expect(store().update(a.id, { disabled: true }, keep)).rejects.toBeInstanceOf(LastAdminError)
      // b is no admin any more: deleting it takes no admin away.
      expect(await store().delete(b.id, keep)).toBe(true)
      expect(await enabledAdmins()).toEqual([a.id])
    })

    it('does not count a disabled admin, and counts it again once enabled', async () => {
      const [a, b] = [admin('enabled_admin'), admin('disabled_admin')]
      for (const u of [a, b]) await store().create(u)
      await store().update(b.id, { disabled: true }, keep)
      await expect(store().update(a.id, { roles: ['user'] }, keep)).rejects.toBeInstanceOf(LastAdminError)
      await expect(store().delete(a.id, keep)).rejects.toBeInstanceOf(LastAdminError)
      await store().update(b.id, { disabled: false }, keep)
      expect(await store().delete(a.id, keep)).toBe(true)
      expect(await enabledAdmins()).toEqual([b.id])
    })

    it('answers an unknown user as without the option (undefined, false), and a store with no admin lets non-admins change', async () => {
      expect(await store().update(randomUUID(), { disabled: true }, keep)).toBeUndefined()
      expect(await store().update('not-a-uuid', { roles: ['user'] }, keep)).toBeUndefined()
      expect(await store().delete(randomUUID(), keep)).toBe(false)
      const plain = newUser('no_admins_here')
      await store().create(plain)
      expect((await store().update(plain.id, { disabled: true }, keep))?.disabled).toBe(true)
      expect(await store().delete(plain.id, keep)).toBe(true)
    })

    it('lets exactly one of two concurrent demotions of the last two admins through', async () => {
      const [a, b] = [admin('race_a'), admin('race_b')]
      for (const u of [a, b]) await store().create(u)
      const results = await Promise.allSettled([
        store().update(a.id, { roles: ['user'] }, keep),
        store().update(b.id, { roles: ['user'] }, keep),
      ])
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
      const refused = results.filter((r) => r.status === 'rejected')
      expect(refused).toHaveLength(1)
      expect((refused[0] as PromiseRejectedResult).reason).toBeInstanceOf(LastAdminError)
      expect(await enabledAdmins()).toHaveLength(1)
    })
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
  /** A request that got tokens, now (what the service records with each refresh). */
  const used = (userAgent: string | null = 'agent/2', ip: string | null = '198.51.100.2') => ({
    userAgent,
    ip,
    at: new Date(),
  })

  async function family(
    userId?: string,
    absoluteExpiresAt = inAnHour(),
    overrides: { createdAt?: Date; first?: { hash: string; expiresAt: Date } } = {},
  ) {
    const owner = userId ?? (await harness().addUser())
    const first = overrides.first ?? token()
    const createdAt = overrides.createdAt ?? new Date(Math.floor(Date.now() / 1000) * 1000)
    const fam = {
      id: randomUUID(),
      userId: owner,
      scope: 'user',
      createdAt,
      absoluteExpiresAt,
      lastUsedAt: createdAt,
      userAgent: 'agent/1',
      ip: '192.0.2.1',
    }
    await sessions().createFamily(fam, first)
    return { fam, first }
  }

  it('creates a family whose first token can be found', async () => {
    const { fam, first } = await family()
    expect(await sessions().findToken(first.hash)).toEqual({
      token: {
        hash: first.hash,
        familyId: fam.id,
        expiresAt: first.expiresAt,
        rotated: false,
        rotatedAt: null,
        graceUsed: false,
      },
      family: { ...fam, revoked: false },
    })
    expect(await sessions().findToken('unknown')).toBeUndefined()
  })

  it('rotates once: the old token is marked rotated and cannot rotate again', async () => {
    const { fam, first } = await family()
    const second = token()
    const before = Date.now()
    expect(await sessions().rotate(fam.id, first.hash, second, used())).toBe(true)
    const rotated = (await sessions().findToken(first.hash))?.token
    expect(rotated).toMatchObject({ rotated: true, graceUsed: false })
    // rotatedAt: when rotate() ran, on this process's clock (the one the grace is measured by).
    expect(rotated?.rotatedAt?.getTime()).toBeGreaterThanOrEqual(before)
    expect(rotated?.rotatedAt?.getTime()).toBeLessThanOrEqual(Date.now())
    expect((await sessions().findToken(second.hash))?.token).toEqual({
      hash: second.hash,
      familyId: fam.id,
      expiresAt: second.expiresAt,
      rotated: false,
      rotatedAt: null,
      graceUsed: false,
    })
    expect(await sessions().rotate(fam.id, first.hash, token(), used())).toBe(false)
    expect(await sessions().rotate(fam.id, second.hash, token(), used())).toBe(true)
  })

  it('lets exactly one of two concurrent rotations of the same token win', async () => {
    const { fam, first } = await family()
    const results = await Promise.all([
      sessions().rotate(fam.id, first.hash, token(), used()),
      sessions().rotate(fam.id, first.hash, token(), used()),
    ])
    expect(results.filter(Boolean)).toHaveLength(1)
  })

  it('refuses to rotate an unknown token or one of another family', async () => {
    const a = await family()
    const b = await family()
    expect(await sessions().rotate(a.fam.id, 'unknown', token(), used())).toBe(false)
    expect(await sessions().rotate(a.fam.id, b.first.hash, token(), used())).toBe(false)
    expect(await sessions().rotate(randomUUID(), a.first.hash, token(), used())).toBe(false)
    expect((await sessions().findToken(b.first.hash))?.token.rotated).toBe(false)
  })

  it('refuses to rotate in a revoked family', async () => {
    const { fam, first } = await family()
    await sessions().revokeFamily(fam.id)
    expect((await sessions().findToken(first.hash))?.family.revoked).toBe(true)
    expect(await sessions().rotate(fam.id, first.hash, token(), used())).toBe(false)
    await sessions().revokeFamily(randomUUID())
  })

  describe('reissueWithinGrace (the refresh reuse grace)', () => {
    const secondsAgo = (seconds: number) => new Date(Date.now() - seconds * 1000)

    /** A family whose first token was rotated just now to `second`. */
    async function rotatedFamily() {
      const { fam, first } = await family()
      const second = token()
      expect(await sessions().rotate(fam.id, first.hash, second, used())).toBe(true)
      return { fam, first, second }
    }

    it('re-issues once for a token rotated at or after rotatedAfter, marking its grace used', async () => {
      const { fam, first } = await rotatedFamily()
      const third = token()

      expect(await sessions().reissueWithinGrace(fam.id, first.hash, third, secondsAgo(10), used())).toBe(true)

      expect((await sessions().findToken(first.hash))?.token).toMatchObject({ rotated: true, graceUsed: true })
      expect((await sessions().findToken(third.hash))?.token).toEqual({
        hash: third.hash,
        familyId: fam.id,
        expiresAt: third.expiresAt,
        rotated: false,
        rotatedAt: null,
        graceUsed: false,
      })
      // Its one grace is spent.
      const fourth = token()
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, fourth, secondsAgo(10), used())).toBe(false)
      expect(await sessions().findToken(fourth.hash)).toBeUndefined()
    })

    it('refuses a token rotated before rotatedAfter, and spends nothing', async () => {
      const { fam, first } = await rotatedFamily()
      const late = token()
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, late, new Date(Date.now() + 60_000), used())).toBe(
        false,
      )
      expect(await sessions().findToken(late.hash)).toBeUndefined()
      expect((await sessions().findToken(first.hash))?.token.graceUsed).toBe(false)
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, token(), secondsAgo(10), used())).toBe(true)
    })

    it('refuses a token not rotated, an unknown one, one of another family, and an unknown family', async () => {
      const a = await rotatedFamily()
      const b = await rotatedFamily()
      const since = secondsAgo(10)
      expect(await sessions().reissueWithinGrace(a.fam.id, a.second.hash, token(), since, used())).toBe(false)
      expect(await sessions().reissueWithinGrace(a.fam.id, 'unknown', token(), since, used())).toBe(false)
      expect(await sessions().reissueWithinGrace(a.fam.id, b.first.hash, token(), since, used())).toBe(false)
      expect(await sessions().reissueWithinGrace(randomUUID(), a.first.hash, token(), since, used())).toBe(false)
      expect((await sessions().findToken(b.first.hash))?.token.graceUsed).toBe(false)
      expect((await sessions().findToken(a.first.hash))?.token.graceUsed).toBe(false)
    })

    it('refuses in a revoked family', async () => {
      const { fam, first } = await rotatedFamily()
      await sessions().revokeFamily(fam.id)
      const next = token()
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, next, secondsAgo(10), used())).toBe(false)
      expect(await sessions().findToken(next.hash)).toBeUndefined()
    })

    it('leaves two tokens that may rotate, each once: the rotated-to one and the re-issued one', async () => {
      const { fam, first, second } = await rotatedFamily()
      const third = token()
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, third, secondsAgo(10), used())).toBe(true)

      expect(await sessions().rotate(fam.id, second.hash, token(), used())).toBe(true)
      expect(await sessions().rotate(fam.id, third.hash, token(), used())).toBe(true)
      expect(await sessions().rotate(fam.id, second.hash, token(), used())).toBe(false)
      expect(await sessions().rotate(fam.id, third.hash, token(), used())).toBe(false)
      expect(await sessions().rotate(fam.id, first.hash, token(), used())).toBe(false)
      // Each of them has a grace of its own.
      expect(await sessions().reissueWithinGrace(fam.id, second.hash, token(), secondsAgo(10), used())).toBe(true)
      expect(await sessions().reissueWithinGrace(fam.id, third.hash, token(), secondsAgo(10), used())).toBe(true)
    })

    it('lets exactly one of many concurrent re-issues of one token succeed', async () => {
      const { fam, first } = await rotatedFamily()
      const nexts = Array.from({ length: 20 }, token)
      const since = secondsAgo(10)

      const results = await Promise.all(
        nexts.map((n) => sessions().reissueWithinGrace(fam.id, first.hash, n, since, used())),
      )

      expect(results.filter(Boolean)).toHaveLength(1)
      const found = await Promise.all(nexts.map((n) => sessions().findToken(n.hash)))
      expect(found.filter((f) => f !== undefined)).toHaveLength(1)
      expect(found[results.indexOf(true)]?.token.familyId).toBe(fam.id)
    })

    it('lets exactly one of two concurrent refreshes rotate and the other re-issue', async () => {
      // What the service does: rotate, and when that loses, reissueWithinGrace. Both succeed.
      const { fam, first } = await family()
      const attempt = async () => {
        if (await sessions().rotate(fam.id, first.hash, token(), used())) return 'rotated'
        return (await sessions().reissueWithinGrace(fam.id, first.hash, token(), secondsAgo(10), used()))
          ? 'reissued'
          : 'refused'
      }
      const outcomes = await Promise.all([attempt(), attempt(), attempt()])
      expect(outcomes.sort()).toEqual(['refused', 'reissued', 'rotated'])
    })

    it('sweeps re-issued tokens with their family', async () => {
      const old = await family(undefined, new Date(Date.now() - 1_000))
      const second = token()
      const third = token()
      expect(await sessions().rotate(old.fam.id, old.first.hash, second, used())).toBe(true)
      expect(await sessions().reissueWithinGrace(old.fam.id, old.first.hash, third, secondsAgo(10), used())).toBe(true)
      await sessions().sweep(new Date())
      for (const t of [old.first, second, third]) expect(await sessions().findToken(t.hash)).toBeUndefined()
    })
  })

  describe('what a session shows its user (lastUsedAt, userAgent, ip)', () => {
    it('finds a family by id, revoked or not, and nothing for an unknown id', async () => {
      const { fam } = await family()
      expect(await sessions().findFamily(fam.id)).toEqual({ ...fam, revoked: false })
      await sessions().revokeFamily(fam.id)
      expect(await sessions().findFamily(fam.id)).toEqual({ ...fam, revoked: true })
      expect(await sessions().findFamily(randomUUID())).toBeUndefined()
      expect(await sessions().findFamily('not-a-uuid')).toBeUndefined()
    })

    it('records the client of each rotation and grace re-issue, and nothing for one refused', async () => {
      const { fam, first } = await family()
      const second = token()
      const rotation = used('agent/2', '198.51.100.2')
      expect(await sessions().rotate(fam.id, first.hash, second, rotation)).toBe(true)
      const afterRotation = {
        ...fam,
        revoked: false,
        lastUsedAt: rotation.at,
        userAgent: 'agent/2',
        ip: '198.51.100.2',
      }
      expect(await sessions().findFamily(fam.id)).toEqual(afterRotation)
      expect((await sessions().findToken(second.hash))?.family).toEqual(afterRotation)

      // A refused rotation (the token is spent) records nothing.
      expect(await sessions().rotate(fam.id, first.hash, token(), used('thief/1', '203.0.113.9'))).toBe(false)
      expect(await sessions().findFamily(fam.id)).toEqual(afterRotation)

      const reissue = used(null, null)
      expect(
        await sessions().reissueWithinGrace(fam.id, first.hash, token(), new Date(Date.now() - 10_000), reissue),
      ).toBe(true)
      expect(await sessions().findFamily(fam.id)).toEqual({
        ...afterRotation,
        lastUsedAt: reissue.at,
        userAgent: null,
        ip: null,
      })
    })

    it('records nothing in a revoked family', async () => {
      const { fam, first } = await family()
      await sessions().revokeFamily(fam.id)
      expect(await sessions().rotate(fam.id, first.hash, token(), used())).toBe(false)
      expect(await sessions().findFamily(fam.id)).toEqual({ ...fam, revoked: true })
    })

    it("lists a user's live sessions, newest first, each with what it shows and when it ends", async () => {
      const userId = await harness().addUser()
      const base = Math.floor(Date.now() / 1000) * 1000
      const older = await family(userId, inAnHour(), { createdAt: new Date(base - 2_000) })
      // Its token ends before its absolute lifetime: that is when it ends.
      const soon = new Date(base + 600_000)
      const newer = await family(userId, inAnHour(), {
        createdAt: new Date(base - 1_000),
        first: { hash: randomUUID(), expiresAt: soon },
      })
      await family() // another user's

      expect(await sessions().listActive(userId, new Date())).toEqual([
        { ...newer.fam, expiresAt: soon },
        { ...older.fam, expiresAt: older.first.expiresAt },
      ])
      expect(await sessions().listActive(randomUUID(), new Date())).toEqual([])
      expect(await sessions().listActive('not-a-uuid', new Date())).toEqual([])
    })

    it('orders sessions started in the same instant the same way in every store (by id, descending)', async () => {
      const userId = await harness().addUser()
      const createdAt = new Date(Math.floor(Date.now() / 1000) * 1000)
      const ids: string[] = []
      for (let i = 0; i < 5; i++) ids.push((await family(userId, inAnHour(), { createdAt })).fam.id)
      const listed = (await sessions().listActive(userId, new Date())).map((s) => s.id)
      expect(listed).toEqual([...ids].sort().reverse())
    })

    it('ends a session at its absolute lifetime when that comes before its token expires', async () => {
      const userId = await harness().addUser()
      const absolute = new Date(Math.floor(Date.now() / 1000) * 1000 + 60_000)
      const { fam } = await family(userId, absolute)
      expect((await sessions().listActive(userId, new Date())).map((s) => [s.id, s.expiresAt])).toEqual([
        [fam.id, absolute],
      ])
    })

    it('leaves out sessions revoked, past their absolute lifetime, or with no token left that works', async () => {
      const userId = await harness().addUser()
      const now = new Date()
      const live = await family(userId)
      const revoked = await family(userId)
      await sessions().revokeFamily(revoked.fam.id)
      await family(userId, new Date(+now - 1_000)) // past its absolute lifetime
      await family(userId, inAnHour(), { first: { hash: randomUUID(), expiresAt: new Date(+now - 1_000) } }) // idle too long
      expect((await sessions().listActive(userId, now)).map((s) => s.id)).toEqual([live.fam.id])
      // Measured at the instant given, not the store's clock.
      expect((await sessions().listActive(userId, new Date(+now + 7_200_000))).map((s) => s.id)).toEqual([])
    })

    it('ends with the latest of its tokens not rotated: after a rotation the new one, after a re-issue the later one', async () => {
      const userId = await harness().addUser()
      const base = Math.floor(Date.now() / 1000) * 1000
      const at = (ms: number) => ({ hash: randomUUID(), expiresAt: new Date(base + ms) })
      const { fam, first } = await family(userId, new Date(base + 7_200_000))
      const expiries = async () => (await sessions().listActive(userId, new Date())).map((s) => s.expiresAt)

      const second = at(1_200_000)
      expect(await sessions().rotate(fam.id, first.hash, second, used())).toBe(true)
      expect(await expiries()).toEqual([second.expiresAt])
      // The grace re-issue leaves two tokens not rotated: the later one counts.
      const third = at(2_400_000)
      expect(await sessions().reissueWithinGrace(fam.id, first.hash, third, new Date(base - 60_000), used())).toBe(true)
      expect(await expiries()).toEqual([third.expiresAt])
      // Rotated tokens stop counting, however late they would have expired.
      expect(await sessions().rotate(fam.id, second.hash, at(600_000), used())).toBe(true)
      expect(await expiries()).toEqual([third.expiresAt])
      const last = at(900_000)
      expect(await sessions().rotate(fam.id, third.hash, last, used())).toBe(true)
      expect(await expiries()).toEqual([last.expiresAt])
    })

    it('holds no token in what it lists, not even a hash', async () => {
      const userId = await harness().addUser()
      const { first } = await family(userId)
      const [session] = await sessions().listActive(userId, new Date())
      expect(Object.keys(session ?? {}).sort()).toEqual(
        [
          'absoluteExpiresAt',
          'createdAt',
          'expiresAt',
          'id',
          'ip',
          'lastUsedAt',
          'scope',
          'userAgent',
          'userId',
        ].sort(),
      )
      expect(JSON.stringify(session)).not.toContain(first.hash)
    })
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
    await sessions().rotate(old.fam.id, old.first.hash, rotatedTo, used())
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

// --- one-time tokens (password reset, e-mail verification) -------------------------------------

interface OneTimeTokenHarness {
  tokens: OneTimeTokenStore
  /** A user id tokens can belong to (the PostgreSQL store requires the user to exist). */
  addUser(): Promise<string>
  close(): Promise<void>
}

function oneTimeTokenStoreContract(make: () => Promise<OneTimeTokenHarness>): void {
  const harness = perTest(make)
  const tokens = () => harness().tokens
  // Whole milliseconds, as a Date round-trips through PostgreSQL; `now` is the caller's clock.
  const now = new Date(Math.floor(Date.now() / 1000) * 1000)
  const later = (ms: number) => new Date(+now + ms)

  async function token(
    purpose: OneTimeTokenPurpose = 'password_reset',
    overrides: Partial<OneTimeTokenRecord> = {},
  ): Promise<OneTimeTokenRecord> {
    return {
      hash: randomUUID().replaceAll('-', ''),
      purpose,
      userId: overrides.userId ?? (await harness().addUser()),
      email: 'owner@example.com',
      userVersion: 3,
      createdAt: now,
      expiresAt: later(30 * 60_000),
      ...overrides,
    }
  }

  it('finds an issued token, unchanged, until it is consumed, then never again', async () => {
    const t = await token()
    expect(await tokens().issue(t)).toBe(true)
    expect(await tokens().find(t.hash, 'password_reset', now)).toEqual(t)
    expect(await tokens().find(t.hash, 'password_reset', now)).toEqual(t)
    expect(await tokens().consume(t.hash, 'password_reset', now)).toEqual(t)
    expect(await tokens().consume(t.hash, 'password_reset', now)).toBeUndefined()
    expect(await tokens().find(t.hash, 'password_reset', now)).toBeUndefined()
  })

  it('refuses a token for the other purpose, and leaves it usable for its own', async () => {
    const t = await token('email_verify')
    await tokens().issue(t)
    expect(await tokens().find(t.hash, 'password_reset', now)).toBeUndefined()
    expect(await tokens().consume(t.hash, 'password_reset', now)).toBeUndefined()
    expect(await tokens().consume(t.hash, 'email_verify', now)).toEqual(t)
  })

  it('refuses a token from its expiry on, by the clock the caller gives', async () => {
    const t = await token('password_reset', { expiresAt: later(60_000) })
    await tokens().issue(t)
    expect(await tokens().find(t.hash, 'password_reset', later(59_999))).toEqual(t)
    expect(await tokens().find(t.hash, 'password_reset', later(60_000))).toBeUndefined()
    expect(await tokens().consume(t.hash, 'password_reset', later(60_000))).toBeUndefined()
    expect(await tokens().consume(t.hash, 'password_reset', later(59_999))).toEqual(t)
  })

  it("keeps one live token per account and purpose: a new one ends the earlier, and no other's", async () => {
    const userId = await harness().addUser()
    const other = await token('password_reset')
    const [first, second] = [await token('password_reset', { userId }), await token('password_reset', { userId })]
    const verification = await token('email_verify', { userId })
    for (const t of [other, first, verification, second]) expect(await tokens().issue(t)).toBe(true)
    expect(await tokens().find(first.hash, 'password_reset', now)).toBeUndefined()
    expect(await tokens().consume(first.hash, 'password_reset', now)).toBeUndefined()
    expect(await tokens().find(second.hash, 'password_reset', now)).toEqual(second)
    expect(await tokens().find(verification.hash, 'email_verify', now)).toEqual(verification)
    expect(await tokens().find(other.hash, 'password_reset', now)).toEqual(other)
  })

  it('lets exactly one of many concurrent consumes of one token have it', async () => {
    const t = await token()
    await tokens().issue(t)
    const results = await Promise.all(Array.from({ length: 10 }, () => tokens().consume(t.hash, 'password_reset', now)))
    expect(results.filter((r) => r !== undefined)).toEqual([t])
  })

  it('leaves one live token when two are issued for one account at once', async () => {
    const userId = await harness().addUser()
    const issued = await Promise.all(Array.from({ length: 6 }, () => token('email_verify', { userId })))
    await Promise.all(issued.map((t) => tokens().issue(t)))
    const live = await Promise.all(issued.map((t) => tokens().find(t.hash, 'email_verify', now)))
    expect(live.filter((t) => t !== undefined)).toHaveLength(1)
  })

  it('sweeps expired tokens only, and says how many', async () => {
    const [expired, live] = [await token('password_reset', { expiresAt: later(1000) }), await token('email_verify')]
    await tokens().issue(expired)
    await tokens().issue(live)
    expect(await tokens().sweep(later(1000))).toBe(1)
    expect(await tokens().sweep(later(1000))).toBe(0)
    expect(await tokens().find(live.hash, 'email_verify', now)).toEqual(live)
    expect(await tokens().find(expired.hash, 'password_reset', now)).toBeUndefined()
  })
}

// --- second factors (TOTP) ---------------------------------------------------------------------

interface MfaHarness {
  mfa: MfaStore
  /** A user id a factor can belong to (the PostgreSQL store requires the user to exist). */
  addUser(): Promise<string>
  close(): Promise<void>
}

function mfaStoreContract(make: () => Promise<MfaHarness>): void {
  const harness = perTest(make)
  const mfa = () => harness().mfa
  // Whole milliseconds, as a Date round-trips through PostgreSQL.
  const now = new Date(Math.floor(Date.now() / 1000) * 1000)
  const sealed = (keyId = 'k1'): SealedSecret => ({ keyId, ciphertext: randomUUID().replaceAll('-', '') })
  const codes = (n: number) => Array.from({ length: n }, () => randomUUID().replaceAll('-', ''))

  /** A user with a confirmed factor: lastStep `step`, recovery codes `codeHashes`. */
  async function active(step = 1000, codeHashes = codes(3)) {
    const userId = await harness().addUser()
    const secret = sealed()
    expect(await mfa().setPending(userId, secret, now)).toBe(true)
    expect(await mfa().activate(userId, secret.ciphertext, step, codeHashes)).toBe(true)
    return { userId, secret, codeHashes }
  }

  /** A user whose enrolment waits for its first code. */
  async function pending() {
    const userId = await harness().addUser()
    const secret = sealed()
    expect(await mfa().setPending(userId, secret, now)).toBe(true)
    return { userId, secret }
  }

  it('has nothing for an account without a second factor', async () => {
    const userId = await harness().addUser()
    expect(await mfa().get(userId)).toBeUndefined()
    expect(await mfa().get(randomUUID())).toBeUndefined()
    expect(await mfa().activate(userId, 'anything', 1, [])).toBe(false)
    expect(await mfa().useStep(userId, 1)).toBe(false)
    expect(await mfa().delete(userId)).toBe(false)
  })

  it('stores a pending secret: inactive, no step accepted yet, no recovery codes', async () => {
    const { userId, secret } = await pending()
    expect(await mfa().get(userId)).toEqual({
      userId,
      secret,
      active: false,
      lastStep: -1,
      recoveryCodesLeft: 0,
      createdAt: now,
    })
  })

  it('replaces a pending secret with a newer enrolment, and refuses to confirm the older one', async () => {
    const { userId, secret: first } = await pending()
    const second = sealed('k2')
    const later = new Date(+now + 60_000)
    expect(await mfa().setPending(userId, second, later)).toBe(true)
    expect(await mfa().get(userId)).toMatchObject({ secret: second, active: false, lastStep: -1, createdAt: later })
    expect(await mfa().activate(userId, first.ciphertext, 10, codes(2))).toBe(false)
    expect(await mfa().get(userId)).toMatchObject({ secret: second, active: false, lastStep: -1, recoveryCodesLeft: 0 })
  })

  it('confirms the pending secret: active, with its step and its recovery codes', async () => {
    const { userId, secret } = await pending()
    expect(await mfa().activate(userId, secret.ciphertext, 58_000_123, codes(10))).toBe(true)
    expect(await mfa().get(userId)).toEqual({
      userId,
      secret,
      active: true,
      lastStep: 58_000_123,
      recoveryCodesLeft: 10,
      createdAt: now,
    })
    // Once: a second confirmation (a replayed request) changes nothing.
    expect(await mfa().activate(userId, secret.ciphertext, 58_000_200, codes(1))).toBe(false)
    expect(await mfa().get(userId)).toMatchObject({ lastStep: 58_000_123, recoveryCodesLeft: 10 })
  })

  it('keeps an active factor when an enrolment is started again', async () => {
    const { userId, secret } = await active(500)
    const before = await mfa().get(userId)
    expect(await mfa().setPending(userId, sealed('k2'), new Date(+now + 1000))).toBe(false)
    expect(await mfa().get(userId)).toEqual(before)
    expect((await mfa().get(userId))?.secret).toEqual(secret)
  })

  it('gives one winner when an enrolment and a confirmation race', async () => {
    const { userId, secret } = await pending()
    const next = sealed('k2')
    const [activated, replaced] = await Promise.all([
      mfa().activate(userId, secret.ciphertext, 7, codes(2)),
      mfa().setPending(userId, next, now),
    ])
    const record = await mfa().get(userId)
    // Whichever runs first wins: a confirmation first leaves the enrolment an active factor it may
    // not replace; an enrolment first leaves the confirmation a ciphertext that no longer matches.
    expect([activated, replaced].filter(Boolean)).toHaveLength(1)
    if (activated) expect(record).toMatchObject({ secret, active: true, lastStep: 7, recoveryCodesLeft: 2 })
    else expect(record).toMatchObject({ secret: next, active: false, lastStep: -1, recoveryCodesLeft: 0 })
  })

  it('accepts each time step once, and never an older one', async () => {
    const { userId } = await active(1000)
    expect(await mfa().useStep(userId, 1001)).toBe(true)
    expect(await mfa().useStep(userId, 1001)).toBe(false)
    expect(await mfa().useStep(userId, 1000)).toBe(false)
    expect(await mfa().useStep(userId, 999)).toBe(false)
    expect((await mfa().get(userId))?.lastStep).toBe(1001)
    expect(await mfa().useStep(userId, 1003)).toBe(true)
    expect(await mfa().useStep(userId, 1002)).toBe(false)
    expect((await mfa().get(userId))?.lastStep).toBe(1003)
  })

  it('lets exactly one of many concurrent uses of one code through', async () => {
    const { userId } = await active(1000)
    const results = await Promise.all(Array.from({ length: 5 }, () => mfa().useStep(userId, 1001)))
    expect(results.filter(Boolean)).toHaveLength(1)
    expect((await mfa().get(userId))?.lastStep).toBe(1001)
  })

  it('spends a recovery code once; an unknown one never', async () => {
    const { userId, codeHashes } = await active(1000, codes(3))
    const [first, second] = codeHashes as [string, string, string]
    expect(await mfa().useRecoveryCode(userId, first)).toBe(true)
    expect(await mfa().useRecoveryCode(userId, first)).toBe(false)
    expect(await mfa().useRecoveryCode(userId, 'not-a-code')).toBe(false)
    expect((await mfa().get(userId))?.recoveryCodesLeft).toBe(2)
    // Another account's code is not this one's.
    const other = await active(1000, codes(1))
    expect(await mfa().useRecoveryCode(other.userId, second)).toBe(false)
    expect(await mfa().useRecoveryCode(userId, second)).toBe(true)
  })

  it('lets exactly one of many concurrent spends of one recovery code through', async () => {
    const { userId, codeHashes } = await active(1000, codes(2))
    const code = codeHashes[0] as string
    const results = await Promise.all(Array.from({ length: 5 }, () => mfa().useRecoveryCode(userId, code)))
    expect(results.filter(Boolean)).toHaveLength(1)
    expect((await mfa().get(userId))?.recoveryCodesLeft).toBe(1)
  })

  it('accepts no code, spends no recovery code and replaces none while the enrolment is pending', async () => {
    const { userId, secret } = await pending()
    expect(await mfa().useStep(userId, 5)).toBe(false)
    expect(await mfa().useRecoveryCode(userId, 'any')).toBe(false)
    expect(await mfa().replaceRecoveryCodes(userId, codes(4))).toBe(false)
    expect(await mfa().get(userId)).toMatchObject({ secret, active: false, lastStep: -1, recoveryCodesLeft: 0 })
  })

  it('replaces every recovery code of an active factor', async () => {
    const { userId, codeHashes } = await active(1000, codes(3))
    const fresh = codes(5)
    expect(await mfa().replaceRecoveryCodes(userId, fresh)).toBe(true)
    expect((await mfa().get(userId))?.recoveryCodesLeft).toBe(5)
    expect(await mfa().useRecoveryCode(userId, codeHashes[0] as string)).toBe(false)
    expect(await mfa().useRecoveryCode(userId, fresh[0] as string)).toBe(true)
    expect(await mfa().replaceRecoveryCodes(userId, [])).toBe(true)
    expect((await mfa().get(userId))?.recoveryCodesLeft).toBe(0)
    expect(await mfa().replaceRecoveryCodes(randomUUID(), codes(1))).toBe(false)
  })

  it('deletes a factor, pending or active, with its codes', async () => {
    const { userId, codeHashes } = await active(1000, codes(2))
    const waiting = await pending()
    expect(await mfa().delete(userId)).toBe(true)
    expect(await mfa().delete(userId)).toBe(false)
    expect(await mfa().get(userId)).toBeUndefined()
    expect(await mfa().useRecoveryCode(userId, codeHashes[0] as string)).toBe(false)
    expect(await mfa().delete(waiting.userId)).toBe(true)
    expect(await mfa().get(waiting.userId)).toBeUndefined()
    // Enrolling again starts from nothing.
    const secret = sealed()
    expect(await mfa().setPending(userId, secret, now)).toBe(true)
    expect(await mfa().get(userId)).toMatchObject({ secret, active: false, lastStep: -1, recoveryCodesLeft: 0 })
  })

  it('tells which of some accounts have an active factor, ignoring ids that are not UUIDs', async () => {
    const [on, alsoOn] = [await active(), await active()]
    const waiting = await pending()
    const without = await harness().addUser()
    const ids = [on.userId, waiting.userId, without, 'not-a-uuid', '', randomUUID(), alsoOn.userId]
    expect(await mfa().activeAmong(ids)).toEqual(new Set([on.userId, alsoOn.userId]))
    expect(await mfa().activeAmong([])).toEqual(new Set())
    expect(await mfa().activeAmong(['not-a-uuid'])).toEqual(new Set())
  })
}

// --- the in-memory reference -------------------------------------------------------------------

describe('memory stores', () => {
  describe('MemoryUserStore', () => userStoreContract(async () => new MemoryUserStore()))
  // The cache in front of a store changes nothing a caller can see through it (options included).
  describe('CachedUserStore', () => userStoreContract(async () => new CachedUserStore(new MemoryUserStore(), 60_000)))
  it('CachedUserStore reads past its cache when asked for a fresh record (a change made elsewhere)', async () => {
    const inner = new MemoryUserStore()
    const cached = new CachedUserStore(inner, 60_000)
    const user = newUser('elsewhere')
    await cached.create(user)
    expect((await cached.findById(user.id))?.tokenVersion).toBe(0)
    // Another instance changes the record: this cache does not know.
    await inner.update(user.id, { bumpTokenVersion: true })
    expect((await cached.findById(user.id))?.tokenVersion).toBe(0)
    expect((await cached.findById(user.id, { fresh: true }))?.tokenVersion).toBe(1)
    expect((await cached.findById(user.id))?.tokenVersion).toBe(1)
  })
  describe('MemorySessionStore', () =>
    sessionStoreContract(async () => ({
      sessions: new MemorySessionStore(),
      addUser: async () => randomUUID(),
      close: async () => {},
    })))
  describe('MemoryCounterStore', () => counterStoreContract(async () => new MemoryCounterStore()))
  describe('MemoryDenyList', () => denyListContract(async () => new MemoryDenyList()))
  describe('MemoryOneTimeTokenStore', () =>
    oneTimeTokenStoreContract(async () => ({
      tokens: new MemoryOneTimeTokenStore(),
      addUser: async () => randomUUID(),
      close: async () => {},
    })))
  describe('MemoryMfaStore', () =>
    mfaStoreContract(async () => ({
      mfa: new MemoryMfaStore(),
      addUser: async () => randomUUID(),
      close: async () => {},
    })))
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

    it('keeps an enabled admin when two instances demote, disable and delete the last two admins at once', async () => {
      const [a, b] = [new PostgresUserStore(db.newPool()), new PostgresUserStore(db.newPool())]
      const keep = { keepAnAdmin: true }
      for (let round = 0; round < 10; round++) {
        await db.truncate()
        const admins = [newUser(`admin_x${round}`), newUser(`admin_y${round}`)].map((u) => ({
          ...u,
          roles: ['user', 'admin'] as const,
        }))
        for (const u of admins) await a.create(u)
        // Every way of taking an admin away, for both admins, from both instances, all at once.
        const changes = admins.flatMap(({ id }) =>
          [a, b].flatMap((s) => [
            () => s.update(id, { roles: ['user'], bumpTokenVersion: true }, keep),
            () => s.update(id, { disabled: true, bumpTokenVersion: true }, keep),
            () => s.delete(id, keep),
          ]),
        )
        const results = await Promise.allSettled(changes.map((change) => change()))
        // Refusals are LastAdminError only: no deadlock, no timeout.
        for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(LastAdminError)
        expect(results.some((r) => r.status === 'rejected')).toBe(true)
        const { rows } = await db.pool.query(
          `SELECT id, token_version FROM users WHERE 'admin' = ANY(roles) AND NOT disabled`,
        )
        expect(rows).toHaveLength(1)
        // The survivor was never changed, not even its token version.
        expect(rows[0].token_version).toBe(0)
      }
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

    it('gives one account when two instances race to register one address in two cases', async () => {
      await db.truncate()
      const [a, b] = [new PostgresUserStore(db.newPool()), new PostgresUserStore(db.newPool())]
      for (let i = 0; i < 10; i++) {
        const results = await Promise.allSettled([
          a.create(newUser(`race_a${i}`, { email: `race${i}@example.com` })),
          b.create(newUser(`race_b${i}`, { email: `RACE${i}@example.com` })),
        ])
        expect(results.filter((r) => r.status === 'fulfilled' && r.value !== null)).toHaveLength(1)
        const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult
        expect(refused.reason).toBeInstanceOf(EmailTakenError)
      }
      expect(await userCount(a)).toBe(10)
    })

    it('enforces one account per address, in any case, in the database itself', async () => {
      await db.truncate()
      const insert = (name: string, email: string) =>
        db.pool.query(
          `INSERT INTO users (id, username, username_key, email, email_key, password_hash)
           VALUES ($1, $2, lower($2), $3, lower($3), 'x')`,
          [randomUUID(), name, email],
        )
      await insert('nia', 'Nia@example.com')
      await expect(insert('nia2', 'nia@EXAMPLE.com')).rejects.toMatchObject({
        code: '23505',
        constraint: 'users_email_key_unique',
      })
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
          lastUsedAt: now,
          userAgent: null,
          ip: null,
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
          {
            id: randomUUID(),
            userId: randomUUID(),
            scope: 'user',
            createdAt: now,
            absoluteExpiresAt: now,
            lastUsedAt: now,
            userAgent: null,
            ip: null,
          },
          { hash: randomUUID(), expiresAt: now },
        )
        .catch((e: unknown) => e)
      expect(err).toMatchObject({ code: '23503' })
    })
  })

  describe('PostgresOneTimeTokenStore', () => {
    oneTimeTokenStoreContract(async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      return {
        tokens: new PostgresOneTimeTokenStore(db.pool),
        addUser: async () => {
          const user = newUser(`u_${randomUUID().slice(0, 8)}`)
          await users.create(user)
          return user.id
        },
        close: async () => {},
      }
    })

    it("issues nothing for an account that does not exist, and drops an account's tokens with it", async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      const tokens = new PostgresOneTimeTokenStore(db.pool)
      const inAnHour = new Date(Date.now() + 3_600_000)
      const record = (userId: string): OneTimeTokenRecord => ({
        hash: randomUUID(),
        purpose: 'password_reset',
        userId,
        email: 'gone@example.com',
        userVersion: 0,
        createdAt: new Date(),
        expiresAt: inAnHour,
      })
      expect(await tokens.issue(record(randomUUID()))).toBe(false)
      const user = newUser('leaving_tokens')
      await users.create(user)
      const t = record(user.id)
      expect(await tokens.issue(t)).toBe(true)
      await users.delete(user.id)
      expect(await tokens.find(t.hash, 'password_reset', new Date())).toBeUndefined()
    })
  })

  describe('PostgresMfaStore', () => {
    mfaStoreContract(async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      return {
        mfa: new PostgresMfaStore(db.pool),
        addUser: async () => {
          const user = newUser(`u_${randomUUID().slice(0, 8)}`)
          await users.create(user)
          return user.id
        },
        close: async () => {},
      }
    })

    it("stores nothing for an account that does not exist, and drops an account's factor with it", async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      const mfa = new PostgresMfaStore(db.pool)
      const secret = { keyId: 'k1', ciphertext: 'sealed' }
      expect(await mfa.setPending(randomUUID(), secret, new Date())).toBe(false)
      expect(await mfa.setPending('not-a-uuid', secret, new Date())).toBe(false)
      const user = newUser('leaving_mfa')
      await users.create(user)
      expect(await mfa.setPending(user.id, secret, new Date())).toBe(true)
      expect(await mfa.activate(user.id, 'sealed', 1, ['h1', 'h2'])).toBe(true)
      await users.delete(user.id)
      expect(await mfa.get(user.id)).toBeUndefined()
      const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM mfa_recovery_codes')
      expect(rows).toEqual([{ n: 0 }])
    })

    it('keeps only the hashes it is given, and the sealed secret, never anything else', async () => {
      await db.truncate()
      const users = new PostgresUserStore(db.pool)
      const mfa = new PostgresMfaStore(db.pool)
      const user = newUser('stored_mfa')
      await users.create(user)
      await mfa.setPending(user.id, { keyId: 'k9', ciphertext: 'c1' }, new Date())
      await mfa.activate(user.id, 'c1', 42, ['h1', 'h2', 'h1'])
      const totp = await db.pool.query('SELECT key_id, secret, active, last_step FROM mfa_totp')
      expect(totp.rows).toEqual([{ key_id: 'k9', secret: 'c1', active: true, last_step: '42' }])
      const stored = await db.pool.query('SELECT code_hash FROM mfa_recovery_codes ORDER BY code_hash')
      expect(stored.rows).toEqual([{ code_hash: 'h1' }, { code_hash: 'h2' }])
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
      expect(rows).toEqual([
        { version: '1', name: '001_initial' },
        { version: '2', name: '002_refresh_reuse_grace' },
        { version: '3', name: '003_account_recovery' },
        { version: '4', name: '004_mfa' },
        { version: '5', name: '005_session_metadata' },
      ])
    })

    it('applies each migration once when two instances start at the same time', async () => {
      const fresh = await createTestSchema({ migrated: false })
      try {
        const results = await Promise.all([migrate(fresh.newPool()), migrate(fresh.newPool())])
        expect(results.flat()).toEqual([
          '001_initial',
          '002_refresh_reuse_grace',
          '003_account_recovery',
          '004_mfa',
          '005_session_metadata',
        ])
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
        expect((await cli()).stdout.trim()).toBe(
          'migrate: applied 001_initial, 002_refresh_reuse_grace, 003_account_recovery, 004_mfa, 005_session_metadata',
        )
        expect((await cli()).stdout.trim()).toBe('migrate: up to date')
      } finally {
        await fresh.drop()
      }
    })

    it('upgrades a database at 001: tokens rotated before 002 have no grace, sessions keep working, addresses are keyed (003)', async () => {
      const fresh = await createTestSchema({ migrated: false })
      const only001 = mkdtempSync(join(tmpdir(), 'migrations-001-'))
      try {
        copyFileSync(join(defaultMigrationsDir(), '001_initial.sql'), join(only001, '001_initial.sql'))
        expect(await migrate(fresh.pool, only001)).toEqual(['001_initial'])
        const user = newUser('upgraded')
        // As the code of 001 wrote it: today's store also writes the columns of 003.
        await fresh.pool.query(
          `INSERT INTO users (id, username, username_key, email, password_hash) VALUES ($1, $2, lower($2), $3, 'x')`,
          [user.id, user.username, 'Upgraded@Example.com'],
        )
        const now = new Date()
        const inAnHour = new Date(+now + 3_600_000)
        // A session as the code before 002 left it: its first token rotated, the second current.
        await fresh.pool.query(
          `INSERT INTO refresh_families (id, user_id, scope, created_at, absolute_expires_at, current_hash)
           VALUES ('fam-001', $1, 'user', $2, $3, 'h-second')`,
          [user.id, now, inAnHour],
        )
        await fresh.pool.query(
          `INSERT INTO refresh_tokens (hash, family_id, expires_at, rotated)
           VALUES ('h-first', 'fam-001', $1, true), ('h-second', 'fam-001', $1, false)`,
          [inAnHour],
        )

        expect(await migrate(fresh.pool)).toEqual([
          '002_refresh_reuse_grace',
          '003_account_recovery',
          '004_mfa',
          '005_session_metadata',
        ])

        // 003: an address stored before it is found in any case, and is not verified.
        expect(await new PostgresUserStore(fresh.pool).findByEmail('upgraded@example.com')).toMatchObject({
          id: user.id,
          email: 'Upgraded@Example.com',
          emailVerified: false,
        })

        const sessions = new PostgresSessionStore(fresh.pool)
        expect((await sessions.findToken('h-first'))?.token).toMatchObject({ rotatedAt: null, graceUsed: false })
        // 005: a session from before it was last used when it started, by a client nobody recorded.
        expect(await sessions.findFamily('fam-001')).toMatchObject({ lastUsedAt: now, userAgent: null, ip: null })
        const since = new Date(Date.now() - 3_600_000)
        const client = { userAgent: 'agent/5', ip: '192.0.2.5', at: new Date() }
        expect(
          await sessions.reissueWithinGrace('fam-001', 'h-first', { hash: 'h-x', expiresAt: inAnHour }, since, client),
        ).toBe(false)
        expect(await sessions.rotate('fam-001', 'h-second', { hash: 'h-third', expiresAt: inAnHour }, client)).toBe(
          true,
        )
        expect(await sessions.findFamily('fam-001')).toMatchObject({ lastUsedAt: client.at, userAgent: 'agent/5' })
        expect((await sessions.listActive(user.id, new Date())).map((s) => s.id)).toEqual(['fam-001'])
      } finally {
        rmSync(only001, { recursive: true, force: true })
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
