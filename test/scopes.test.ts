// Scopes are a set (RFC 6749 §3.3): on every grant repeats collapse, the granted scope lists each
// scope once in a fixed order, and a `scope` parameter longer than the bound is invalid_scope.
// Whatever a client sends, no token we issue is too large for our own server to accept back.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  buildTestApp,
  decodeClaims,
  getMe,
  login,
  oauthError,
  postToken,
  refresh,
  registerAndLogin,
  TEST_PASSWORD,
} from './helpers.js'

const ADMIN = { ADMIN_USERNAME: 'scopes_admin', ADMIN_PASSWORD: 'granite-Orchid-63-velvet' }
const TOO_LONG = oauthError('invalid_scope', 'scope must be at most 256 characters')

describe('scopes on /token', () => {
  let app: FastifyInstance
  beforeAll(async () => {
    app = await buildTestApp(ADMIN)
  })
  afterAll(async () => {
    await app.close()
  })

  it('collapses repeated scopes at login and lists each once, in a fixed order', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD, { scope: 'admin user admin user user' })
    expect(admin.scope).toBe('user admin')
    expect(decodeClaims(admin.access_token).scope).toBe('user admin')
  })

  it('collapses repeated scopes on a refresh (scope=user user) and signs the set', async () => {
    const { username } = await registerAndLogin(app)
    const tokens = await login(app, username)
    const res = await refresh(app, tokens.refresh_token, { scope: 'user user' })
    expect(res.statusCode).toBe(200)
    expect(res.json().scope).toBe('user')
    expect(decodeClaims(res.json().access_token).scope).toBe('user')
  })

  it('narrows on a refresh in the fixed order whatever order was asked', async () => {
    const tokens = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const res = await refresh(app, tokens.refresh_token, { scope: 'admin user admin' })
    expect(res.statusCode).toBe(200)
    expect(res.json().scope).toBe('user admin')
  })

  it('refuses a scope parameter longer than 256 characters at login and on a refresh, with invalid_scope', async () => {
    const { username } = await registerAndLogin(app)
    const long = Array(2700).fill('user').join(' ')
    const atLogin = await postToken(app, { username, password: TEST_PASSWORD, scope: long })
    expect(atLogin.statusCode).toBe(400)
    expect(atLogin.json()).toEqual(TOO_LONG)

    const tokens = await login(app, username)
    const atRefresh = await refresh(app, tokens.refresh_token, { scope: long })
    expect(atRefresh.statusCode).toBe(400)
    expect(atRefresh.json()).toEqual(TOO_LONG)
    // The refused refresh spent nothing: the same refresh token still works.
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
  })

  it('issues tokens our own server accepts back, whatever the scope parameter (up to the bound)', async () => {
    const { username } = await registerAndLogin(app)
    const scope = Array(51).fill('user').join(' ').slice(0, 256)
    const tokens = await login(app, username, TEST_PASSWORD, { scope })
    expect(tokens.scope).toBe('user')
    const again = await refresh(app, tokens.refresh_token, { scope })
    expect(again.statusCode).toBe(200)
    expect((await getMe(app, `Bearer ${again.json().access_token}`)).statusCode).toBe(200)
  })
})
