// Passwords as users type them: one preparation (RFC 8265 OpaqueString: NFC, non-ASCII spaces
// mapped to U+0020, control characters refused) on every path a password enters; new passwords
// that equal the account's own details; and hashes of another bcrypt cost, re-hashed on login (but
// not during shutdown) without letting a wrong password on such an account answer faster than an
// unknown user's.
import bcrypt from 'bcrypt'
import type { FastifyInstance } from 'fastify'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { buildApp } from '../src/app.js'
import { MemoryUserStore } from '../src/store/users.js'
import {
  authed,
  buildTestApp,
  INVALID_GRANT,
  listen,
  postToken,
  register,
  registerAndLogin,
  TEST_PASSWORD,
  testConfig,
  uniqueUsername,
} from './helpers.js'

const NFC = 'Gr\u00fc\u00dfe-Kuchenteig-7'
const NFD = 'Gru\u0308\u00dfe-Kuchenteig-7'

const invalid = (field: string, message: string) => ({
  detail: `${field}: ${message}`,
  errors: [{ field, message }],
})

describe('password preparation (RFC 8265 OpaqueString)', () => {
  let app: FastifyInstance
  beforeAll(async () => {
    app = await buildTestApp()
  })
  afterAll(async () => {
    await app.close()
  })

  it('logs in with the NFD form of a password registered in NFC, and the other way round', async () => {
    const a = uniqueUsername()
    expect((await register(app, { username: a, password: NFC })).statusCode).toBe(201)
    expect((await postToken(app, { username: a, password: NFD })).statusCode).toBe(200)
    expect((await postToken(app, { username: a, password: NFC })).statusCode).toBe(200)

    const b = uniqueUsername()
    expect((await register(app, { username: b, password: NFD })).statusCode).toBe(201)
    expect((await postToken(app, { username: b, password: NFC })).statusCode).toBe(200)
  })

  it('maps non-ASCII spaces to U+0020 before hashing and before comparing', async () => {
    const username = uniqueUsername()
    // U+3000 IDEOGRAPHIC SPACE and U+00A0 NO-BREAK SPACE.
    expect((await register(app, { username, password: 'amber\u3000harbor\u00a0quill' })).statusCode).toBe(201)
    expect((await postToken(app, { username, password: 'amber harbor quill' })).statusCode).toBe(200)
    expect((await postToken(app, { username, password: 'amber\u2003harbor\u2002quill' })).statusCode).toBe(200)
    expect((await postToken(app, { username, password: 'amberharborquill' })).json()).toEqual(INVALID_GRANT)
  })

  it.each([
    ['a NUL', 'violet-Harbor\u0000-58'],
    ['a tab', 'violet-Harbor\t58-quill'],
    ['a newline', 'violet-Harbor\n58-quill'],
    ['DEL', 'violet-Harbor\u007f58-quill'],
  ])('refuses a new password with %s (a control character) with 422', async (_label, password) => {
    const username = uniqueUsername()
    const res = await register(app, { username, password })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must not contain control characters'))
    // Nothing stored: the name is still free.
    expect((await register(app, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
  })

  it('refuses invisible and unassigned code points in a new password with 422', async () => {
    for (const password of ['violet\u200bHarbor-58-quill', 'violet-Harbor-58-\u0378quill']) {
      const res = await register(app, { username: uniqueUsername(), password })
      expect(res.statusCode).toBe(422)
      expect(res.json()).toEqual(
        invalid('password', 'must not contain unassigned, invisible or non-character code points'),
      )
    }
  })

  it('answers a login with a control character like a wrong password, after one bcrypt compare', async () => {
    const { username } = await registerAndLogin(app)
    await app.hasher.dummyHash()
    const compare = vi.spyOn(bcrypt, 'compare')
    try {
      const res = await postToken(app, { username, password: `${TEST_PASSWORD}\u0001` })
      expect(res.statusCode).toBe(400)
      expect(res.json()).toEqual(INVALID_GRANT)
      expect(compare).toHaveBeenCalledTimes(1)
    } finally {
      compare.mockRestore()
    }
  })

  it('counts the 72-byte limit and the minimum length on the prepared form', async () => {
    // 24 × "ü" is 48 bytes as NFC (2 each) but 72 as NFD (3 each): fine either way.
    const nfd24 = 'u\u0308'.repeat(24)
    expect((await register(app, { username: uniqueUsername(), password: nfd24 })).statusCode).toBe(201)
    // 25 × "ü" as NFD would be 75 bytes unprepared: accepted, since the prepared form is 50 bytes.
    const nfd25 = `${'u\u0308'.repeat(25)}`
    const username = uniqueUsername()
    expect((await register(app, { username, password: nfd25 })).statusCode).toBe(201)
    expect((await postToken(app, { username, password: '\u00fc'.repeat(25) })).statusCode).toBe(200)
    // "e" + U+0301 seven times is 14 code points unprepared but 7 prepared: too short for 8.
    const short = 'e\u0301'.repeat(7)
    const res = await register(app, { username: uniqueUsername(), password: short })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must be at least 8 characters'))
  })

  it('prepares the current and the new password of a password change, and the password of a deletion', async () => {
    const username = uniqueUsername()
    expect((await register(app, { username, password: NFC })).statusCode).toBe(201)
    const token = (await postToken(app, { username, password: NFC })).json().access_token as string
    const change = await authed(app, 'POST', '/users/me/password', token, {
      current_password: NFD,
      new_password: 'cobalt\u3000Willow-38',
    })
    expect(change.statusCode).toBe(204)
    const next = await postToken(app, { username, password: 'cobalt Willow-38' })
    expect(next.statusCode).toBe(200)
    const del = await authed(app, 'DELETE', '/users/me', next.json().access_token, {
      password: 'cobalt\u00a0Willow-38',
    })
    expect(del.statusCode).toBe(204)
  })

  it('refuses a new password with a control character on a password change with 422, nothing changed', async () => {
    const { username, token } = await registerAndLogin(app)
    const res = await authed(app, 'POST', '/users/me/password', token, {
      current_password: TEST_PASSWORD,
      new_password: 'cobalt-Willow\u000738',
    })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('new_password', 'must not contain control characters'))
    expect((await postToken(app, { username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })
})

describe("new passwords that equal the account's own details", () => {
  let app: FastifyInstance
  beforeAll(async () => {
    app = await buildTestApp()
  })
  afterAll(async () => {
    await app.close()
  })

  const SAME_AS_EMAIL = 'must not be the same as the e-mail address or its local part'

  it.each([
    ['the e-mail address', (email: string) => email],
    ['the e-mail address in another case', (email: string) => email.toUpperCase()],
    ['the local part', (email: string) => email.split('@')[0] as string],
  ])('refuses a password equal to %s at registration with 422', async (_label, pick) => {
    const email = `${uniqueUsername('Mail')}@example.com`
    const res = await register(app, { username: uniqueUsername(), email, password: pick(email) })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', SAME_AS_EMAIL))
  })

  it('refuses a new password equal to the e-mail address on a password change, nothing changed', async () => {
    const username = uniqueUsername()
    const email = `${username}.box@example.org`
    expect((await register(app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    const token = (await postToken(app, { username, password: TEST_PASSWORD })).json().access_token as string
    for (const next of [email, email.split('@')[0]]) {
      const res = await authed(app, 'POST', '/users/me/password', token, {
        current_password: TEST_PASSWORD,
        new_password: next,
      })
      expect(res.statusCode).toBe(422)
      expect(res.json()).toEqual(invalid('new_password', SAME_AS_EMAIL))
    }
    expect((await postToken(app, { username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })

  it('refuses a new password equal to the username on a password change (any case)', async () => {
    const { username, token } = await registerAndLogin(app, uniqueUsername('Longer_name'))
    const res = await authed(app, 'POST', '/users/me/password', token, {
      current_password: TEST_PASSWORD,
      new_password: username.toUpperCase(),
    })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('new_password', 'must not be the same as the username'))
  })
})

// Two apps on one store: the first hashes at cost 4, the second is configured with cost 5, as after
// a restart with BCRYPT_ROUNDS raised. Timing is checked by structure: which compares ran, at which cost.
describe('a changed bcrypt cost', () => {
  const store = new MemoryUserStore()
  let cheap: FastifyInstance
  let current: FastifyInstance
  beforeAll(async () => {
    cheap = await buildTestApp({ BCRYPT_ROUNDS: '4' }, { stores: { users: store } })
    current = await buildTestApp({ BCRYPT_ROUNDS: '5' }, { stores: { users: store } })
    await current.hasher.dummyHash()
  })
  afterEach(() => {
    vi.restoreAllMocks()
  })
  afterAll(async () => {
    await cheap.close()
    await current.close()
  })

  async function storedCost(username: string): Promise<number> {
    const user = await store.findByUsername(username)
    return bcrypt.getRounds(user?.passwordHash as string)
  }

  it('re-hashes a right password at the configured cost after the login, which still answers 200', async () => {
    const username = uniqueUsername()
    expect((await register(cheap, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
    expect(await storedCost(username)).toBe(4)
    const hash = vi.spyOn(bcrypt, 'hash')

    const res = await postToken(current, { username, password: TEST_PASSWORD })

    expect(res.statusCode).toBe(200)
    await vi.waitFor(async () => expect(await storedCost(username)).toBe(5))
    expect(hash).toHaveBeenCalledTimes(1)
    expect(hash.mock.calls[0]?.[1]).toBe(5)
    // The new hash works, and a login at the configured cost re-hashes nothing.
    hash.mockClear()
    expect((await postToken(current, { username, password: TEST_PASSWORD })).statusCode).toBe(200)
    expect(hash).not.toHaveBeenCalled()
  })

  it('follows a wrong password on a cheaper hash with a compare at the configured cost', async () => {
    const username = uniqueUsername()
    expect((await register(cheap, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
    const compare = vi.spyOn(bcrypt, 'compare')

    const res = await postToken(current, { username, password: 'not-the-Password-1' })

    expect(res.json()).toEqual(INVALID_GRANT)
    const costs = compare.mock.calls.map((call) => bcrypt.getRounds(call[1] as unknown as string))
    expect(costs).toEqual([4, 5])
    // Nothing re-hashed on a failure.
    expect(await storedCost(username)).toBe(4)
  })

  it('costs an unknown user one compare at the configured cost, no more', async () => {
    const compare = vi.spyOn(bcrypt, 'compare')
    const res = await postToken(current, { username: uniqueUsername(), password: 'not-the-Password-1' })
    expect(res.json()).toEqual(INVALID_GRANT)
    expect(compare.mock.calls.map((call) => bcrypt.getRounds(call[1] as unknown as string))).toEqual([5])
  })

  // A re-hash started during shutdown would hold the process's exit until bcrypt finishes (exit
  // waits for libuv's thread pool): with SIGTERM during such a login, the server exited a whole
  // hash after answering.
  it('starts no re-hash once the app is closing; the login in flight still answers 200', async () => {
    const username = uniqueUsername()
    expect((await register(cheap, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
    const app = await buildApp(testConfig({ BCRYPT_ROUNDS: '5' }), { stores: { users: store } })
    let closed: Promise<void> | undefined
    // Closing begins while the login is in flight, as when SIGTERM arrives during it.
    app.addHook('preHandler', async (request) => {
      if (request.url === '/token') closed = app.close()
    })
    const base = await listen(app)
    const hash = vi.spyOn(bcrypt, 'hash')

    const res = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: TEST_PASSWORD }),
    })

    expect(res.status).toBe(200)
    await closed
    expect(hash).not.toHaveBeenCalled()
    expect(await storedCost(username)).toBe(4)
  })
})
