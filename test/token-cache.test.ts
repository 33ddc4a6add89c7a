// The cache of verified tokens (plugins/auth.ts): a token accepted once is accepted from the cache
// only until its exp plus the clock skew, exactly as the verifier would decide; revocation and the
// user checks still apply to a cached token.
import type { FastifyInstance } from 'fastify'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { buildTestApp, CHALLENGE_INVALID, getMe, registerAndLogin } from './helpers.js'

describe('verified-token cache', () => {
  let app: FastifyInstance
  beforeAll(async () => {
    app = await buildTestApp({ ACCESS_TOKEN_EXPIRE_MINUTES: '1', JWT_CLOCK_SKEW_SECONDS: '5' })
  })
  afterAll(async () => {
    await app.close()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('accepts a cached token up to exp + skew and refuses it from then on', async () => {
    const { token } = await registerAndLogin(app)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200) // now cached
    const { exp } = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString()) as { exp: number }

    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime((exp + 5) * 1000 - 500)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)

    vi.setSystemTime((exp + 5) * 1000 + 500)
    const res = await getMe(app, `Bearer ${token}`)
    expect(res.statusCode).toBe(401)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
    expect(res.json()).toEqual({ detail: 'Could not validate credentials' })
  })

  it('still refuses a cached token once it is revoked', async () => {
    const { token } = await registerAndLogin(app)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)
    const logout = await app.inject({ method: 'POST', url: '/logout', headers: { authorization: `Bearer ${token}` } })
    expect(logout.statusCode).toBe(204)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(401)
  })
})
