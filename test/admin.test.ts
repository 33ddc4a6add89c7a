// Roles, scopes and the admin endpoints: scope grants at /token, 403 insufficient_scope,
// GET/PATCH/DELETE /users, the first admin (ADMIN_USERNAME/ADMIN_PASSWORD at boot, and the
// create-admin CLI against PostgreSQL), and the absence of default credentials.
import { spawn, spawnSync } from 'node:child_process'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { MemoryUserStore } from '../src/store/users.js'
import {
  authed,
  buildTestApp,
  CHALLENGE_INVALID,
  CHALLENGE_MISSING,
  decodeClaims,
  getMe,
  INVALID_GRANT,
  ISO_UTC_PATTERN,
  login,
  oauthError,
  postToken,
  refresh,
  register,
  stableHeaders,
  TEST_PASSWORD,
  type TokenBody,
  testConfig,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, describeWith, type TestSchema } from './services.js'

const ADMIN = { ADMIN_USERNAME: 'chief_admin', ADMIN_PASSWORD: 'granite-Orchid-63-velvet' }
/** util-linux `script`, which gives a command a pseudo-terminal; without it the terminal tests are skipped. */
const HAS_SCRIPT = spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0
if (!HAS_SCRIPT) console.warn('create-admin terminal tests skipped: util-linux `script` is not installed')
const INSUFFICIENT_SCOPE = { detail: 'Insufficient scope' }
const SCOPE_CHALLENGE = 'Bearer realm="fastify-auth-api", error="insufficient_scope", scope="admin"'
const BCRYPT_HASH = /\$2[aby]\$\d{2}\$/

function expectInvalidToken(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual({ detail: 'Could not validate credentials' })
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
}

/** Every key at any depth of a JSON value. */
function allKeys(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(allKeys)
  if (value && typeof value === 'object') return Object.entries(value).flatMap(([key, v]) => [key, ...allKeys(v)])
  return []
}

function expectNoSecrets(res: LightMyRequestResponse): void {
  const keys = allKeys(res.json())
  expect(keys.filter((k) => /hash|password|secret/i.test(k))).toEqual([])
  expect(res.body).not.toMatch(BCRYPT_HASH)
  expect(res.body).not.toContain(TEST_PASSWORD)
}

/** The admin view of a user just registered with `registerUser`. */
const adminView = (
  user: { id: string; username: string; created_at: string },
  changes: Record<string, unknown> = {},
) => ({
  id: user.id,
  username: user.username,
  email: null,
  email_verified: false,
  created_at: user.created_at,
  roles: ['user'],
  disabled: false,
  mfa_enabled: false,
  ...changes,
})

async function registerUser(app: FastifyInstance, username = uniqueUsername('adm')) {
  const res = await register(app, { username, password: TEST_PASSWORD })
  expect(res.statusCode).toBe(201)
  return res.json() as { id: string; username: string; email: null; email_verified: false; created_at: string }
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

describe('scopes at /token', () => {
  it("grants a normal user the scope 'user' and puts it in the token", async () => {
    const user = await registerUser(app)
    const tokens = await login(app, user.username)
    expect(tokens.scope).toBe('user')
    expect(decodeClaims(tokens.access_token).scope).toBe('user')
  })

  it('answers scope=admin from a normal user with 400 invalid_scope (nothing left to grant)', async () => {
    const user = await registerUser(app)
    const res = await postToken(app, { username: user.username, password: TEST_PASSWORD, scope: 'admin' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_scope', 'None of the requested scopes can be granted'))
  })

  it("grants a normal user asking for 'user admin' only 'user'", async () => {
    const user = await registerUser(app)
    const tokens = await login(app, user.username, TEST_PASSWORD, { scope: 'user admin' })
    expect(tokens.scope).toBe('user')
    expect(decodeClaims(tokens.access_token).scope).toBe('user')
  })

  it("grants the admin 'user admin' by default", async () => {
    const tokens = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    expect(tokens.scope).toBe('user admin')
    expect(decodeClaims(tokens.access_token).scope).toBe('user admin')
  })

  it("grants the admin only 'user' when asked for scope=user, and that token cannot list users", async () => {
    const tokens = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD, { scope: 'user' })
    expect(tokens.scope).toBe('user')
    const res = await authed(app, 'GET', '/users', tokens.access_token)
    expect(res.statusCode).toBe(403)
    expect(res.json()).toEqual(INSUFFICIENT_SCOPE)
  })
})

describe('admin endpoints: authorization', () => {
  const someId = '6f1c1d52-6bb4-4c4e-9d47-2a3c6f7d8e90'
  const endpoints: [string, 'GET' | 'PATCH' | 'DELETE', string, unknown][] = [
    ['GET /users', 'GET', '/users', undefined],
    ['GET /users/:id', 'GET', `/users/${someId}`, undefined],
    ['PATCH /users/:id', 'PATCH', `/users/${someId}`, { disabled: true }],
    ['DELETE /users/:id', 'DELETE', `/users/${someId}`, undefined],
  ]

  it.each(endpoints)(
    'answers %s with a user-scoped token with 403 insufficient_scope',
    async (_l, method, url, body) => {
      const user = await registerUser(app)
      const { access_token } = await login(app, user.username)
      const res = await authed(app, method, url, access_token, body)
      expect(res.statusCode).toBe(403)
      expect(res.json()).toEqual(INSUFFICIENT_SCOPE)
      expect(res.headers['www-authenticate']).toBe(SCOPE_CHALLENGE)
    },
  )

  it.each(endpoints)('answers %s without a token with 401 Not authenticated', async (_l, method, url, body) => {
    const res = await authed(app, method, url, undefined, body)
    expect(res.statusCode).toBe(401)
    expect(res.json()).toEqual({ detail: 'Not authenticated' })
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })

  it.each(endpoints)('answers %s with a bad token with 401 invalid_token', async (_l, method, url, body) => {
    expectInvalidToken(await authed(app, method, url, 'not.a.token', body))
  })

  // /users/me is the caller's own account, never an admin route with id "me": a method it does not
  // have is 405 with its own Allow, whatever token is sent (none, a user's, an admin's).
  it.each([
    ['PATCH', undefined],
    ['PATCH', 'user'],
    ['PATCH', 'admin'],
    ['PUT', 'admin'],
  ] as const)('answers %s /users/me (token: %s) with 405 and the Allow of /users/me', async (method, who) => {
    const token =
      who === 'admin'
        ? adminToken
        : who === 'user'
          ? (await login(app, (await registerUser(app)).username)).access_token
          : undefined
    const res = await app.inject({
      method,
      url: '/users/me',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      payload: JSON.stringify({ roles: ['user'] }),
    })
    expect(res.statusCode).toBe(405)
    expect(res.json()).toEqual({ detail: 'Method Not Allowed' })
    expect(res.headers.allow).toBe('DELETE, GET, HEAD')
  })
})

describe('GET /users', () => {
  let listing: FastifyInstance
  let listingAdmin: string
  let prefix: string
  let names: string[]
  beforeAll(async () => {
    listing = await buildTestApp(ADMIN)
    listingAdmin = (await login(listing, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
    prefix = uniqueUsername('lst').toLowerCase()
    // Mixed case: the list is ordered by the normalised (lower-case) name.
    names = [`${prefix}_c`, `${prefix}_A`, `${prefix}_e`, `${prefix}_B`, `${prefix}_d`]
    for (const name of names) await registerUser(listing, name)
  })
  afterAll(async () => {
    await listing.close()
  })

  const list = (query = '') => authed(listing, 'GET', `/users${query}`, listingAdmin)
  const sortedNames = () => [...names].sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1))

  it('lists every user with total, the default limit 50 and offset 0, never a hash', async () => {
    const res = await list()
    expect(res.statusCode).toBe(200)
    const body = res.json()
    expect(body).toEqual({ items: expect.any(Array), total: 6, limit: 50, offset: 0 })
    expect(body.items.map((u: { username: string }) => u.username)).toEqual([ADMIN.ADMIN_USERNAME, ...sortedNames()])
    expect(body.items[0]).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username: ADMIN.ADMIN_USERNAME,
      email: null,
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
      roles: ['user', 'admin'],
      disabled: false,
      mfa_enabled: false,
    })
    expectNoSecrets(res)
  })

  it('pages with limit and offset', async () => {
    const res = await list('?limit=2&offset=2')
    expect(res.statusCode).toBe(200)
    const body = res.json()
    expect(body).toEqual({ items: expect.any(Array), total: 6, limit: 2, offset: 2 })
    expect(body.items.map((u: { username: string }) => u.username)).toEqual(sortedNames().slice(1, 3))
  })

  it('answers an offset past the end with no items and the total', async () => {
    const res = await list('?offset=100')
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ items: [], total: 6, limit: 50, offset: 100 })
  })

  it('filters by username_prefix, case-insensitively', async () => {
    const res = await list(`?username_prefix=${prefix.toUpperCase()}`)
    expect(res.statusCode).toBe(200)
    const body = res.json()
    expect(body).toEqual({ items: expect.any(Array), total: 5, limit: 50, offset: 0 })
    expect(body.items.map((u: { username: string }) => u.username)).toEqual(sortedNames())
    expectNoSecrets(res)
  })

  it('accepts limit=100', async () => {
    const res = await list('?limit=100')
    expect(res.statusCode).toBe(200)
    expect(res.json().limit).toBe(100)
  })

  it.each([
    ['limit=101', 'limit'],
    ['limit=0', 'limit'],
    ['limit=abc', 'limit'],
    ['offset=-1', 'offset'],
    ['username_prefix=%25', 'username_prefix'],
  ])('answers %s with 422 on that field', async (query, field) => {
    const res = await list(`?${query}`)
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: expect.stringMatching(new RegExp(`^${field}: `)),
      errors: [{ field, message: expect.any(String) }],
    })
  })
})

describe('GET /users/:id', () => {
  it('answers 200 with the admin view of the user', async () => {
    const user = await registerUser(app)
    const res = await authed(app, 'GET', `/users/${user.id}`, adminToken)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(adminView(user))
    expectNoSecrets(res)
  })

  it('answers an unknown id with 404 {"detail":"User not found"}', async () => {
    const res = await authed(app, 'GET', '/users/0b5e4a3c-2d1f-4e6a-8b7c-9d0e1f2a3b4c', adminToken)
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'User not found' })
  })

  it('answers an id that is not a UUID with 422', async () => {
    const res = await authed(app, 'GET', '/users/not-a-uuid', adminToken)
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'id: must be a user id (UUID)',
      errors: [{ field: 'id', message: 'must be a user id (UUID)' }],
    })
  })
})

describe('PATCH /users/:id', () => {
  const patch = (id: string, body: unknown) => authed(app, 'PATCH', `/users/${id}`, adminToken, body)

  it('disables a user: 200 with the user, never a hash', async () => {
    const user = await registerUser(app)
    const res = await patch(user.id, { disabled: true })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(adminView(user, { disabled: true }))
    expectNoSecrets(res)
  })

  it("rejects a disabled user's access tokens with 401", async () => {
    const user = await registerUser(app)
    const tokens = await login(app, user.username)
    expect((await patch(user.id, { disabled: true })).statusCode).toBe(200)
    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
  })

  it('answers the right password of a disabled user exactly like a wrong password', async () => {
    const user = await registerUser(app)
    expect((await patch(user.id, { disabled: true })).statusCode).toBe(200)
    const other = await registerUser(app)

    // Each is the first login attempt for its name, so the rate-limit headers match too.
    const disabled = await postToken(app, { username: user.username, password: TEST_PASSWORD })
    const wrong = await postToken(app, { username: other.username, password: 'not-the-password-99' })

    expect(disabled.statusCode).toBe(400)
    expect(disabled.json()).toEqual(INVALID_GRANT)
    expect(wrong.statusCode).toBe(400)
    expect(disabled.body).toBe(wrong.body)
    expect(stableHeaders(disabled.headers)).toEqual(stableHeaders(wrong.headers))
  })

  it('lets a user log in again once enabled', async () => {
    const user = await registerUser(app)
    expect((await patch(user.id, { disabled: true })).statusCode).toBe(200)

    const res = await patch(user.id, { disabled: false })

    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(adminView(user))
    const tokens = await login(app, user.username)
    expect((await getMe(app, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
  })

  it("makes a user admin with roles ['user','admin']: the next login gets the admin scope", async () => {
    const user = await registerUser(app)
    const res = await patch(user.id, { roles: ['user', 'admin'] })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(adminView(user, { roles: ['user', 'admin'] }))

    const tokens = await login(app, user.username)
    expect(tokens.scope).toBe('user admin')
    expect((await authed(app, 'GET', `/users/${user.id}`, tokens.access_token)).statusCode).toBe(200)
  })

  it("rejects the user's access tokens from before a role change", async () => {
    const user = await registerUser(app)
    const before = await login(app, user.username)
    expect((await patch(user.id, { roles: ['user', 'admin'] })).statusCode).toBe(200)
    expectInvalidToken(await getMe(app, `Bearer ${before.access_token}`))
  })

  it('takes the admin scope away with roles [user]: old admin tokens die, refreshes grant only user', async () => {
    const user = await registerUser(app)
    expect((await patch(user.id, { roles: ['user', 'admin'] })).statusCode).toBe(200)
    const asAdmin = await login(app, user.username)
    expect(asAdmin.scope).toBe('user admin')

    expect((await patch(user.id, { roles: ['user'] })).statusCode).toBe(200)

    expectInvalidToken(await authed(app, 'GET', '/users', asAdmin.access_token))
    const refreshed = await refresh(app, asAdmin.refresh_token)
    expect(refreshed.statusCode).toBe(200)
    expect(refreshed.json().scope).toBe('user')
    expect((await authed(app, 'GET', '/users', refreshed.json().access_token)).statusCode).toBe(403)
  })

  it('answers an empty body with 422', async () => {
    const user = await registerUser(app)
    const res = await patch(user.id, {})
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'body: send disabled and/or roles',
      errors: [{ field: '', message: 'send disabled and/or roles' }],
    })
  })

  it.each([
    ['an unknown role', { roles: ['root'] }, 'roles.0'],
    ['no roles', { roles: [] }, 'roles'],
    ['disabled as a string', { disabled: 'true' }, 'disabled'],
  ])('answers %s with 422', async (_label, body, field) => {
    const user = await registerUser(app)
    const res = await patch(user.id, body)
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: expect.stringMatching(new RegExp(`^${field.replace('.', '\\.')}: `)),
      errors: [{ field, message: expect.any(String) }],
    })
  })

  it('answers an unknown id with 404', async () => {
    const res = await patch('0b5e4a3c-2d1f-4e6a-8b7c-9d0e1f2a3b4c', { disabled: true })
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'User not found' })
  })

  it('answers a form body with 415', async () => {
    const user = await registerUser(app)
    const res = await app.inject({
      method: 'PATCH',
      url: `/users/${user.id}`,
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/x-www-form-urlencoded' },
      payload: 'disabled=true',
    })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual({ detail: 'Content-Type must be application/json' })
  })
})

describe('DELETE /users/:id', () => {
  const remove = (id: string) => authed(app, 'DELETE', `/users/${id}`, adminToken)

  it('answers 204 with an empty body, then 404 for the same id', async () => {
    const user = await registerUser(app)
    const res = await remove(user.id)
    expect(res.statusCode).toBe(204)
    expect(res.body).toBe('')

    const again = await authed(app, 'GET', `/users/${user.id}`, adminToken)
    expect(again.statusCode).toBe(404)
    expect(again.json()).toEqual({ detail: 'User not found' })
    expect((await remove(user.id)).statusCode).toBe(404)
  })

  it("kills the deleted user's access and refresh tokens", async () => {
    const user = await registerUser(app)
    const tokens = await login(app, user.username)
    expect((await remove(user.id)).statusCode).toBe(204)

    expectInvalidToken(await getMe(app, `Bearer ${tokens.access_token}`))
    const res = await refresh(app, tokens.refresh_token)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_grant', 'Invalid refresh token'))
  })

  it('frees the username: it registers again with a new id', async () => {
    const user = await registerUser(app)
    expect((await remove(user.id)).statusCode).toBe(204)
    const again = await registerUser(app, user.username)
    expect(again.id).not.toBe(user.id)
    expect(again.username).toBe(user.username)
  })

  it('answers an unknown id with 404', async () => {
    const res = await remove('0b5e4a3c-2d1f-4e6a-8b7c-9d0e1f2a3b4c')
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'User not found' })
  })
})

describe('the last administrator', () => {
  const LAST_ADMIN = { detail: 'At least one enabled administrator must remain: this change would leave none' }

  /** An app of its own whose only admin is ADMIN_USERNAME, logged in. */
  async function withOnlyAdmin(): Promise<{ own: FastifyInstance; id: string; tokens: TokenBody }> {
    const own = await buildTestApp(ADMIN)
    const tokens = await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    return { own, id: decodeClaims(tokens.access_token).sub as string, tokens }
  }

  /** Registers a user, makes it an admin through `token`, and logs it in. */
  async function secondAdmin(own: FastifyInstance, token: string) {
    const user = await registerUser(own)
    const promoted = await authed(own, 'PATCH', `/users/${user.id}`, token, { roles: ['user', 'admin'] })
    expect(promoted.statusCode).toBe(200)
    const tokens = await login(own, user.username)
    expect(tokens.scope).toBe('user admin')
    return { ...user, token: tokens.access_token }
  }

  /** The enabled admins, as the admin endpoints list them. */
  async function enabledAdmins(own: FastifyInstance, token: string): Promise<string[]> {
    const res = await authed(own, 'GET', '/users?limit=100', token)
    expect(res.statusCode).toBe(200)
    return res
      .json()
      .items.filter((u: { roles: string[]; disabled: boolean }) => u.roles.includes('admin') && !u.disabled)
      .map((u: { id: string }) => u.id)
  }

  const refusals: [string, (own: FastifyInstance, id: string, token: string) => Promise<LightMyRequestResponse>][] = [
    [
      'removing its own admin role',
      (own, id, token) => authed(own, 'PATCH', `/users/${id}`, token, { roles: ['user'] }),
    ],
    ['disabling itself', (own, id, token) => authed(own, 'PATCH', `/users/${id}`, token, { disabled: true })],
    [
      'removing its role and disabling itself at once',
      (own, id, token) => authed(own, 'PATCH', `/users/${id}`, token, { roles: ['user'], disabled: true }),
    ],
    ['deleting itself with DELETE /users/{id}', (own, id, token) => authed(own, 'DELETE', `/users/${id}`, token)],
    [
      'deleting itself with DELETE /users/me and its right password',
      (own, _id, token) => authed(own, 'DELETE', '/users/me', token, { password: ADMIN.ADMIN_PASSWORD }),
    ],
  ]

  it.each(refusals)('answers the only admin %s with 409, and changes nothing', async (_label, attempt) => {
    const { own, id, tokens } = await withOnlyAdmin()
    try {
      const before = await authed(own, 'GET', `/users/${id}`, tokens.access_token)
      expect(before.statusCode).toBe(200)

      const res = await attempt(own, id, tokens.access_token)

      expect(res.statusCode).toBe(409)
      expect(res.json()).toEqual(LAST_ADMIN)
      // Nothing changed: the same token still works (no generation bump, no session ended), the
      // record is as it was, the refresh token still refreshes, and the password still logs in.
      const after = await authed(own, 'GET', `/users/${id}`, tokens.access_token)
      expect(after.statusCode).toBe(200)
      expect(after.json()).toEqual(before.json())
      expect(after.json()).toMatchObject({ roles: ['user', 'admin'], disabled: false })
      expect((await getMe(own, `Bearer ${tokens.access_token}`)).statusCode).toBe(200)
      const refreshed = await refresh(own, tokens.refresh_token)
      expect(refreshed.statusCode).toBe(200)
      expect(refreshed.json().scope).toBe('user admin')
      expect((await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).scope).toBe('user admin')
    } finally {
      await own.close()
    }
  })

  it('lets the only admin make changes that keep it an enabled admin', async () => {
    const { own, id } = await withOnlyAdmin()
    try {
      for (const body of [
        { roles: ['admin', 'user'] },
        { disabled: false },
        { roles: ['user', 'admin'], disabled: false },
      ]) {
        // A role change ends the access tokens from before it (as for any user): log in each time.
        const token = (await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
        const res = await authed(own, 'PATCH', `/users/${id}`, token, body)
        expect(res.statusCode).toBe(200)
        expect(res.json()).toMatchObject({ id, roles: ['user', 'admin'], disabled: false })
      }
    } finally {
      await own.close()
    }
  })

  it('lets one of two admins demote the other (200), and then refuses to demote itself (409)', async () => {
    const { own, id, tokens } = await withOnlyAdmin()
    try {
      const other = await secondAdmin(own, tokens.access_token)
      const demoted = await authed(own, 'PATCH', `/users/${other.id}`, tokens.access_token, { roles: ['user'] })
      expect(demoted.statusCode).toBe(200)
      expect(demoted.json()).toEqual(adminView(other, { roles: ['user'] }))

      const self = await authed(own, 'PATCH', `/users/${id}`, tokens.access_token, { roles: ['user'] })
      expect(self.statusCode).toBe(409)
      expect(self.json()).toEqual(LAST_ADMIN)
      expect(await enabledAdmins(own, tokens.access_token)).toEqual([id])
    } finally {
      await own.close()
    }
  })

  it('lets an admin delete itself while another admin remains, by either route', async () => {
    const { own, tokens } = await withOnlyAdmin()
    try {
      const second = await secondAdmin(own, tokens.access_token)
      const third = await secondAdmin(own, tokens.access_token)
      const byId = await authed(own, 'DELETE', `/users/${second.id}`, second.token)
      expect(byId.statusCode).toBe(204)
      const me = await authed(own, 'DELETE', '/users/me', third.token, { password: TEST_PASSWORD })
      expect(me.statusCode).toBe(204)
      expect((await enabledAdmins(own, tokens.access_token)).length).toBe(1)
    } finally {
      await own.close()
    }
  })

  it('does not count a disabled admin: the other admin then cannot demote, disable or delete itself', async () => {
    const { own, id, tokens } = await withOnlyAdmin()
    try {
      const other = await secondAdmin(own, tokens.access_token)
      const disabled = await authed(own, 'PATCH', `/users/${other.id}`, tokens.access_token, { disabled: true })
      expect(disabled.statusCode).toBe(200)
      expect(disabled.json()).toEqual(adminView(other, { roles: ['user', 'admin'], disabled: true }))

      for (const [, attempt] of refusals) {
        const res = await attempt(own, id, tokens.access_token)
        expect(res.statusCode).toBe(409)
        expect(res.json()).toEqual(LAST_ADMIN)
      }
      // Enabling the other admin again makes the change possible.
      expect(
        (await authed(own, 'PATCH', `/users/${other.id}`, tokens.access_token, { disabled: false })).statusCode,
      ).toBe(200)
      expect((await authed(own, 'PATCH', `/users/${id}`, tokens.access_token, { roles: ['user'] })).statusCode).toBe(
        200,
      )
    } finally {
      await own.close()
    }
  })

  it('gives exactly one 200 and one 409 when two admins demote each other at the same moment', async () => {
    const { own, id } = await withOnlyAdmin()
    try {
      for (let round = 0; round < 6; round++) {
        // Each round starts with two admins: chief_admin and a new one.
        const chief = (await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
        const other = await secondAdmin(own, chief)
        const demoteOther = () => authed(own, 'PATCH', `/users/${other.id}`, chief, { roles: ['user'] })
        const demoteChief = () => authed(own, 'PATCH', `/users/${id}`, other.token, { roles: ['user'] })

        // Both requests in flight at once; which one is sent first alternates.
        const [byChief, byOther] =
          round % 2 === 0
            ? await Promise.all([demoteOther(), demoteChief()])
            : (await Promise.all([demoteChief(), demoteOther()])).reverse()

        const statuses = [byChief?.statusCode, byOther?.statusCode]
        expect([...statuses].sort()).toEqual([200, 409])
        expect((byChief?.statusCode === 409 ? byChief : byOther)?.json()).toEqual(LAST_ADMIN)
        const [survivor, survivorToken] = byChief?.statusCode === 200 ? [id, chief] : [other.id, other.token]
        expect(await enabledAdmins(own, survivorToken)).toEqual([survivor])
        if (survivor !== id) {
          // The new admin won: it gives chief_admin the role back, and chief_admin demotes it.
          expect(
            (await authed(own, 'PATCH', `/users/${id}`, other.token, { roles: ['user', 'admin'] })).statusCode,
          ).toBe(200)
          const again = (await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
          expect((await authed(own, 'PATCH', `/users/${other.id}`, again, { roles: ['user'] })).statusCode).toBe(200)
        }
      }
      const last = (await login(own, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
      expect(await enabledAdmins(own, last)).toEqual([id])
    } finally {
      await own.close()
    }
  })
})

describe('the first admin: ADMIN_USERNAME and ADMIN_PASSWORD at boot', () => {
  it('creates the account as an admin', async () => {
    const own = await buildTestApp({ ADMIN_USERNAME: 'boot_admin', ADMIN_PASSWORD: ADMIN.ADMIN_PASSWORD })
    try {
      const tokens = await login(own, 'boot_admin', ADMIN.ADMIN_PASSWORD)
      expect(tokens.scope).toBe('user admin')
    } finally {
      await own.close()
    }
  })

  it('promotes an existing account that has the same password', async () => {
    const store = new MemoryUserStore()
    const first = await buildTestApp({}, { stores: { users: store } })
    const user = await registerUser(first)
    expect((await login(first, user.username)).scope).toBe('user')
    await first.close()

    const second = await buildTestApp(
      { ADMIN_USERNAME: user.username, ADMIN_PASSWORD: TEST_PASSWORD },
      { stores: { users: store } },
    )
    try {
      const tokens = await login(second, user.username)
      expect(tokens.scope).toBe('user admin')
      const me = await authed(second, 'GET', `/users/${user.id}`, tokens.access_token)
      expect(me.statusCode).toBe(200)
      expect(me.json()).toEqual(adminView(user, { roles: ['user', 'admin'] }))
    } finally {
      await second.close()
    }
  })

  it('refuses to start (ready rejects) when the account exists with another password, and promotes nobody', async () => {
    const store = new MemoryUserStore()
    const first = await buildTestApp({}, { stores: { users: store } })
    const user = await registerUser(first)

    const second = await buildApp(
      testConfig({ ADMIN_USERNAME: user.username, ADMIN_PASSWORD: 'someone-Else-77-entirely' }),
      { stores: { users: store } },
    )
    await expect(second.ready()).rejects.toThrow(/ADMIN_USERNAME/)
    await second.close().catch(() => {})

    try {
      const tokens = await login(first, user.username)
      expect(tokens.scope).toBe('user')
      const res = await postToken(first, { username: user.username, password: 'someone-Else-77-entirely' })
      expect(res.statusCode).toBe(400)
    } finally {
      await first.close()
    }
  })

  it.each([
    ['admin', 'admin'],
    ['root', 'root'],
    ['administrator', 'password'],
    ['sa', 'sa'],
    ['admin', ''],
  ])('has no default account: %s/%s gets invalid_grant or invalid_request', async (username, password) => {
    const own = await buildTestApp()
    try {
      const res = await postToken(own, { username, password })
      expect(res.statusCode).toBe(400)
      expect(res.json()).toEqual(
        password === '' ? oauthError('invalid_request', "Missing parameter 'password'") : INVALID_GRANT,
      )
    } finally {
      await own.close()
    }
  })
})

interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs the create-admin CLI from the sources with `env` (on a clean base) and `stdin`. */
function runCreateAdmin(args: string[], env: Record<string, string>, stdin = ''): Promise<CliResult> {
  const base: Record<string, string> = {}
  for (const name of ['PATH', 'HOME', 'TMPDIR', 'LANG']) {
    const value = process.env[name]
    if (value !== undefined) base[name] = value
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/create-admin.ts', ...args], {
      cwd: new URL('..', import.meta.url).pathname,
      env: { ...base, NODE_ENV: 'development', LOG_LEVEL: 'silent', AUDIT_LOG: 'false', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => {
      stdout += chunk
    })
    child.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
    child.stdin.end(stdin)
  })
}

// Each run starts a Node process (~1.5 s): the four run concurrently, on their own usernames.
describeWith('postgres', 'npm run create-admin (PostgreSQL)', () => {
  let schema: TestSchema
  let env: Record<string, string>
  beforeAll(async () => {
    schema = await createTestSchema()
    env = { STORE: 'postgres', DATABASE_URL: schema.url, BCRYPT_ROUNDS: '4' }
  })
  afterAll(async () => {
    await schema?.drop()
  })

  it.concurrent('creates an admin from a password on stdin (exit 0), and the server then grants it the admin scope', async ({
    expect,
  }) => {
    const result = await runCreateAdmin(['--username', 'cli_admin'], env, `${ADMIN.ADMIN_PASSWORD}\n`)
    expect(result).toEqual({ code: 0, stdout: 'create-admin: cli_admin is an admin\n', stderr: '' })

    const server = await buildTestApp(env)
    try {
      const tokens = await login(server, 'cli_admin', ADMIN.ADMIN_PASSWORD)
      expect(tokens.scope).toBe('user admin')
    } finally {
      await server.close()
    }
  })

  it.concurrent('exits 1 for an existing account and another password, and promotes nobody', async ({ expect }) => {
    const server = await buildTestApp(env)
    try {
      const user = await registerUser(server)
      const result = await runCreateAdmin(['--username', user.username], env, 'someone-Else-77-entirely\n')
      expect(result.code).toBe(1)
      expect(result.stderr).toMatch(/^create-admin: ADMIN_USERNAME: the account exists with another password/)
      expect(result.stdout).toBe('')
      expect((await login(server, user.username)).scope).toBe('user')
    } finally {
      await server.close()
    }
  })

  it.concurrent('refuses a --password argument (exit 1)', async ({ expect }) => {
    const result = await runCreateAdmin(['--username', 'cli_arg', '--password', ADMIN.ADMIN_PASSWORD], env)
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/^create-admin: usage: /)
    expect(result.stderr).not.toContain(ADMIN.ADMIN_PASSWORD)
  })

  it.concurrent('refuses STORE=memory (exit 1): nothing would persist', async ({ expect }) => {
    const result = await runCreateAdmin(['--username', 'cli_mem'], { BCRYPT_ROUNDS: '4', STORE: 'memory' }, 'x\n')
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/^create-admin: STORE=memory keeps nothing/)
  })

  // At a terminal: `script` (util-linux) runs the CLI on a pseudo-terminal, and each answer is typed
  // once its prompt shows. Enter sends a carriage return, as a terminal does.
  describe.skipIf(!HAS_SCRIPT)('at a terminal', () => {
    it.concurrent('asks twice without echo, needs no Ctrl-D, and creates the admin', async ({ expect }) => {
      const result = await runCreateAdminAtTerminal('tty_admin', env, [ADMIN.ADMIN_PASSWORD, ADMIN.ADMIN_PASSWORD])
      expect(result).toEqual({
        code: 0,
        output: 'Password: \r\nPassword again: \r\ncreate-admin: tty_admin is an admin\r\n',
      })
      expect(result.output).not.toContain(ADMIN.ADMIN_PASSWORD)

      const server = await buildTestApp(env)
      try {
        expect((await login(server, 'tty_admin', ADMIN.ADMIN_PASSWORD)).scope).toBe('user admin')
      } finally {
        await server.close()
      }
    })

    it.concurrent('exits 1 when the two passwords differ, and creates nobody', async ({ expect }) => {
      const result = await runCreateAdminAtTerminal('tty_mismatch', env, [
        ADMIN.ADMIN_PASSWORD,
        'granite-Orchid-63-velvex',
      ])
      expect(result.code).toBe(1)
      expect(result.output).toContain('create-admin: the two passwords differ: nothing changed')
      expect(result.output).not.toContain('granite-Orchid')
      const server = await buildTestApp(env)
      try {
        expect((await postToken(server, { username: 'tty_mismatch', password: ADMIN.ADMIN_PASSWORD })).json()).toEqual(
          INVALID_GRANT,
        )
      } finally {
        await server.close()
      }
    })

    it.concurrent('stops on Ctrl-C (exit 130)', async ({ expect }) => {
      const result = await runCreateAdminAtTerminal('tty_interrupted', env, ['\u0003'], { enter: false })
      expect(result).toEqual({ code: 130, output: 'Password: \r\n' })
    })
  })
})

/**
 * Runs the create-admin CLI from the sources on a pseudo-terminal: `answers[i]` is typed (then
 * Enter, unless `enter` is false) once the i-th prompt has shown. `output` is everything the
 * terminal showed, the CLI's stdout and stderr together, with the terminal's \r\n line ends.
 */
function runCreateAdminAtTerminal(
  username: string,
  env: Record<string, string>,
  answers: string[],
  { enter = true } = {},
): Promise<{ code: number | null; output: string }> {
  const base: Record<string, string> = {}
  for (const name of ['PATH', 'HOME', 'TMPDIR', 'LANG']) {
    const value = process.env[name]
    if (value !== undefined) base[name] = value
  }
  const command = `'${process.execPath}' --import tsx src/cli/create-admin.ts --username ${username}`
  return new Promise((resolve, reject) => {
    // -q: no "Script started" lines; -e: its exit code is the command's; -c: the command; no log file.
    const child = spawn('script', ['-qec', command, '/dev/null'], {
      cwd: new URL('..', import.meta.url).pathname,
      env: { ...base, SHELL: '/bin/sh', NODE_ENV: 'development', LOG_LEVEL: 'silent', AUDIT_LOG: 'false', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let output = ''
    let typed = 0
    const collect = (chunk: Buffer) => {
      output += chunk
      const prompts = output.match(/Password( again)?: /g)?.length ?? 0
      while (typed < Math.min(prompts, answers.length)) child.stdin.write(`${answers[typed++]}${enter ? '\r' : ''}`)
    }
    child.stdout.on('data', collect)
    child.stderr.on('data', collect)
    child.on('error', reject)
    // stdin stays open until the end: `script` would pass its end on to the terminal as Ctrl-D.
    child.on('close', (code) => {
      child.stdin.end()
      resolve({ code, output })
    })
  })
}
