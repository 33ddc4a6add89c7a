// CORS over a real socket: preflights (OPTIONS with Origin and Access-Control-Request-Method, as a
// browser sends them) and actual requests from allowed, disallowed and absent origins; the CORS
// headers on error answers (401, 429, 503); `*` in development; CORS_ORIGINS validation. What a
// browser then does with these headers is in browser.test.ts.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../src/config.js'
import { ConfigError } from '../src/errors.js'
import { buildTestApp, type Env, listen, readJson, TEST_PASSWORD, TEST_SECRET, uniqueUsername } from './helpers.js'

const APP_ORIGIN = 'http://app.example'
const DEV_ORIGIN = 'http://localhost:5173'
const EXPOSED = 'Retry-After, WWW-Authenticate, x-request-id'

/** The access-control-* headers of a response, by name. */
function corsHeaders(res: Response): Record<string, string> {
  return Object.fromEntries([...res.headers.entries()].filter(([name]) => name.startsWith('access-control-')))
}

/** The methods of an Allow header. Checked as a set containing these: routes may gain methods. */
const allow = (res: Response) => (res.headers.get('allow') ?? '').split(', ')
const ME_METHODS = ['DELETE', 'GET', 'HEAD']

const vary = (res: Response) => (res.headers.get('vary') ?? '').split(/\s*,\s*/).map((v) => v.toLowerCase())

/** An OPTIONS request as a browser's preflight for `method` (and `headers`, if any) from `origin`. */
function preflight(base: string, path: string, origin: string, method: string, headers?: string): Promise<Response> {
  return fetch(`${base}${path}`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': method,
      ...(headers === undefined ? {} : { 'access-control-request-headers': headers }),
    },
  })
}

async function startApp(env: Env): Promise<{ app: FastifyInstance; base: string }> {
  const app = await buildTestApp(env)
  return { app, base: await listen(app) }
}

describe('CORS_ORIGINS unset (the default): no CORS at all', () => {
  let app: FastifyInstance
  let base: string
  beforeAll(async () => {
    ;({ app, base } = await startApp({}))
  })
  afterAll(async () => {
    await app.close()
  })

  it('does not register @fastify/cors', () => {
    expect(app.hasPlugin('@fastify/cors')).toBe(false)
  })

  it('answers a request with an Origin normally, with no CORS header and no Vary', async () => {
    const res = await fetch(`${base}/healthz`, { headers: { origin: APP_ORIGIN } })
    expect(res.status).toBe(200)
    expect(corsHeaders(res)).toEqual({})
    expect(res.headers.get('vary')).toBeNull()
  })

  it('answers a preflight like any OPTIONS: 405 with Allow, no CORS header', async () => {
    const res = await preflight(base, '/users/me', APP_ORIGIN, 'GET', 'authorization')
    expect(res.status).toBe(405)
    expect(allow(res)).toEqual(expect.arrayContaining(ME_METHODS))
    expect(allow(res)).not.toContain('OPTIONS')
    expect(corsHeaders(res)).toEqual({})
    expect(await res.json()).toEqual({ detail: 'Method Not Allowed' })
  })
})

describe('CORS_ORIGINS lists origins', () => {
  let app: FastifyInstance
  let base: string
  beforeAll(async () => {
    ;({ app, base } = await startApp({ CORS_ORIGINS: `${APP_ORIGIN}, ${DEV_ORIGIN}` }))
  })
  afterAll(async () => {
    await app.close()
  })

  describe('preflights', () => {
    it.each([
      [APP_ORIGIN, '/users/me', 'GET', 'authorization'],
      [DEV_ORIGIN, '/register', 'POST', 'content-type'],
      [APP_ORIGIN, '/users/me/password', 'POST', 'authorization, content-type'],
      [APP_ORIGIN, '/users/00000000-0000-4000-8000-000000000000', 'PATCH', 'authorization, content-type'],
    ])('from %s for %s (%s) → 204 with the CORS preflight headers, no credentials', async (origin, path, method, h) => {
      const res = await preflight(base, path, origin, method, h)

      expect(res.status).toBe(204)
      expect(await res.text()).toBe('')
      const cors = corsHeaders(res)
      expect(cors).toEqual({
        'access-control-allow-origin': origin,
        'access-control-allow-methods': expect.any(String),
        'access-control-allow-headers': 'Authorization, Content-Type',
        'access-control-max-age': '600',
      })
      const methods = cors['access-control-allow-methods']?.split(', ')
      // Every method the routes have, and only those (OPTIONS is the preflight itself).
      expect(methods).toEqual(expect.arrayContaining(['GET', 'HEAD', 'POST', 'PATCH', 'DELETE']))
      expect(methods).not.toContain('OPTIONS')
      expect(vary(res)).toContain('origin')
    })

    it('is answered before authentication: no 401 for a preflight of a protected route', async () => {
      const res = await preflight(base, '/users', APP_ORIGIN, 'GET', 'authorization')
      expect(res.status).toBe(204)
      expect(res.headers.get('www-authenticate')).toBeNull()
    })

    it.each([
      ['another site', 'http://evil.example'],
      ['another scheme', 'https://app.example'],
      ['another port', 'http://app.example:8080'],
      ['a subdomain', 'http://sub.app.example'],
      ['a suffix', 'http://app.example.evil.example'],
      ['the opaque origin', 'null'],
    ])('from %s (%s) → the normal answer, 405 with Allow, and no CORS header', async (_label, origin) => {
      const res = await preflight(base, '/users/me', origin, 'GET', 'authorization')

      expect(res.status).toBe(405)
      expect(allow(res)).toEqual(expect.arrayContaining(ME_METHODS))
      expect(allow(res)).not.toContain('OPTIONS')
      expect(corsHeaders(res)).toEqual({})
      expect(await res.json()).toEqual({ detail: 'Method Not Allowed' })
    })
  })

  describe('OPTIONS that are not preflights', () => {
    it('without an Origin: 405 with Allow, as without CORS', async () => {
      const res = await fetch(`${base}/token`, { method: 'OPTIONS' })
      expect(res.status).toBe(405)
      expect(res.headers.get('allow')).toBe('POST')
      expect(corsHeaders(res)).toEqual({})
    })

    it('on an unknown path: 404, not 405 (the CORS route does not claim every path)', async () => {
      const res = await fetch(`${base}/no/such/path`, { method: 'OPTIONS' })
      expect(res.status).toBe(404)
      expect(await res.json()).toEqual({ detail: 'Not Found' })
    })

    it('from an allowed origin without Access-Control-Request-Method: 405 with Allow, readable by the page', async () => {
      const res = await fetch(`${base}/token`, { method: 'OPTIONS', headers: { origin: APP_ORIGIN } })
      expect(res.status).toBe(405)
      expect(res.headers.get('allow')).toBe('POST')
      expect(corsHeaders(res)).toEqual({
        'access-control-allow-origin': APP_ORIGIN,
        'access-control-expose-headers': EXPOSED,
      })
    })

    it('adds OPTIONS to no Allow header and no route to the OpenAPI document', async () => {
      const res = await fetch(`${base}/`, { method: 'DELETE' })
      expect(res.headers.get('allow')).toBe('GET, HEAD')
      const doc = await readJson(await fetch(`${base}/openapi.json`))
      expect(Object.keys(doc.paths)).not.toContain('*')
      for (const operations of Object.values(doc.paths))
        expect(Object.keys(operations as object)).not.toContain('options')
    })
  })

  describe('actual requests', () => {
    it('from an allowed origin: Allow-Origin (that origin), Expose-Headers, Vary, and the security headers', async () => {
      const res = await fetch(`${base}/`, { headers: { origin: DEV_ORIGIN } })

      expect(res.status).toBe(200)
      expect(corsHeaders(res)).toEqual({
        'access-control-allow-origin': DEV_ORIGIN,
        'access-control-expose-headers': EXPOSED,
      })
      expect(vary(res)).toContain('origin')
      expect(res.headers.get('content-security-policy')).toContain("default-src 'none'")
      expect(res.headers.get('cross-origin-resource-policy')).toBe('same-origin')
      expect(res.headers.get('x-content-type-options')).toBe('nosniff')
      expect(res.headers.get('cache-control')).toBe('no-store')
    })

    it('register, token (form) and /users/me (Bearer) from an allowed origin all carry Allow-Origin', async () => {
      const username = uniqueUsername('cors')
      const headers = { origin: APP_ORIGIN }
      const reg = await fetch(`${base}/register`, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify({ username, password: TEST_PASSWORD }),
      })
      const login = await fetch(`${base}/token`, {
        method: 'POST',
        headers,
        body: new URLSearchParams({ username, password: TEST_PASSWORD }),
      })
      const token = (await readJson(login)).access_token as string
      const me = await fetch(`${base}/users/me`, { headers: { ...headers, authorization: `Bearer ${token}` } })

      expect([reg.status, login.status, me.status]).toEqual([201, 200, 200])
      for (const res of [reg, login, me]) expect(res.headers.get('access-control-allow-origin')).toBe(APP_ORIGIN)
      expect((await readJson(me)).username).toBe(username)
    })

    it('a 401 carries WWW-Authenticate and the CORS headers that let the page read it', async () => {
      const res = await fetch(`${base}/users/me`, { headers: { origin: APP_ORIGIN } })
      expect(res.status).toBe(401)
      expect(res.headers.get('www-authenticate')).toBe('Bearer realm="fastify-auth-api"')
      expect(corsHeaders(res)).toEqual({
        'access-control-allow-origin': APP_ORIGIN,
        'access-control-expose-headers': EXPOSED,
      })
    })

    it('a 404 carries them too', async () => {
      const res = await fetch(`${base}/no/such/path`, { headers: { origin: APP_ORIGIN } })
      expect(res.status).toBe(404)
      expect(res.headers.get('access-control-allow-origin')).toBe(APP_ORIGIN)
    })

    it('from a disallowed origin: the normal answer, with no CORS header (the browser hides it)', async () => {
      const res = await fetch(`${base}/users/me`, { headers: { origin: 'http://evil.example' } })
      expect(res.status).toBe(401)
      expect(corsHeaders(res)).toEqual({})
      expect(vary(res)).toContain('origin')
    })

    it('without an Origin: no CORS header, but Vary: Origin, so that a cache keeps the answers apart', async () => {
      const res = await fetch(`${base}/.well-known/jwks.json`)
      expect(res.status).toBe(200)
      expect(res.headers.get('cache-control')).toMatch(/public/)
      expect(corsHeaders(res)).toEqual({})
      expect(vary(res)).toContain('origin')
    })
  })
})

describe('CORS headers on the answers of the limits and of outages', () => {
  it('a 429 (registration cap) carries Retry-After and the CORS headers', async () => {
    const { app, base } = await startApp({ CORS_ORIGINS: APP_ORIGIN, REGISTER_RATE_LIMIT_MAX: '1' })
    try {
      const send = () =>
        fetch(`${base}/register`, {
          method: 'POST',
          headers: { origin: APP_ORIGIN, 'content-type': 'application/json' },
          body: JSON.stringify({ username: uniqueUsername('cap'), password: TEST_PASSWORD }),
        })
      expect((await send()).status).toBe(201)
      const res = await send()

      expect(res.status).toBe(429)
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/)
      expect(corsHeaders(res)).toEqual({
        'access-control-allow-origin': APP_ORIGIN,
        'access-control-expose-headers': EXPOSED,
      })
    } finally {
      await app.close()
    }
  })

  it('a 503 (database unreachable) carries Retry-After and the CORS headers', async () => {
    const { app, base } = await startApp({
      CORS_ORIGINS: APP_ORIGIN,
      STORE: 'postgres',
      DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test',
    })
    try {
      const res = await fetch(`${base}/token`, {
        method: 'POST',
        headers: { origin: APP_ORIGIN },
        body: new URLSearchParams({ username: uniqueUsername('down'), password: TEST_PASSWORD }),
      })

      expect(res.status).toBe(503)
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/)
      expect(await res.json()).toMatchObject({ error: 'temporarily_unavailable' })
      expect(corsHeaders(res)).toEqual({
        'access-control-allow-origin': APP_ORIGIN,
        'access-control-expose-headers': EXPOSED,
      })
    } finally {
      await app.close()
    }
  })
})

describe('CORS_ORIGINS=* (development only)', () => {
  let app: FastifyInstance
  let base: string
  beforeAll(async () => {
    ;({ app, base } = await startApp({ NODE_ENV: 'development', CORS_ORIGINS: '*' }))
  })
  afterAll(async () => {
    await app.close()
  })

  it('answers any origin with Allow-Origin: * and never credentials', async () => {
    const res = await fetch(`${base}/users/me`, { headers: { origin: 'http://anything.example:3000' } })
    expect(res.status).toBe(401)
    expect(corsHeaders(res)).toEqual({
      'access-control-allow-origin': '*',
      'access-control-expose-headers': EXPOSED,
    })
  })

  it('accepts the preflight of any origin', async () => {
    const res = await preflight(base, '/users/me', 'http://anything.example:3000', 'GET', 'authorization')
    expect(res.status).toBe(204)
    expect(res.headers.get('access-control-allow-origin')).toBe('*')
    expect(res.headers.get('access-control-allow-credentials')).toBeNull()
  })
})

describe('CORS_ORIGINS validation', () => {
  const PRODUCTION = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET }

  function problems(env: Env): string[] {
    try {
      loadConfig(env)
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      return (err as ConfigError).problems
    }
    throw new Error('expected loadConfig to throw')
  }

  it.each([
    ['', []],
    [' , ', []],
    ['https://app.example.com', ['https://app.example.com']],
    ['https://app.example.com, http://localhost:5173', ['https://app.example.com', 'http://localhost:5173']],
    ['http://127.0.0.1:3000,http://[::1]:3000', ['http://127.0.0.1:3000', 'http://[::1]:3000']],
    ['https://a.example,https://a.example', ['https://a.example']],
    ['https://xn--bcher-kva.example', ['https://xn--bcher-kva.example']],
  ])('accepts CORS_ORIGINS=%j', (value, expected) => {
    expect(loadConfig({ CORS_ORIGINS: value }).corsOrigins).toEqual(expected)
  })

  it('defaults to no origins', () => {
    expect(loadConfig({}).corsOrigins).toEqual([])
  })

  it.each([
    ['a trailing slash', 'https://app.example.com/'],
    ['a path', 'https://app.example.com/app'],
    ['no scheme', 'app.example.com'],
    ['another scheme', 'ftp://app.example.com'],
    ['an upper-case host', 'https://App.Example.com'],
    ['a default port', 'https://app.example.com:443'],
    ['a Unicode host (browsers send punycode)', 'https://bücher.example'],
    ['the opaque origin', 'null'],
    ['a wildcard subdomain', 'https://*.example.com'],
    ['* among origins', '*, https://app.example.com'],
    ['one bad entry among good ones', 'https://a.example, nope'],
  ])('refuses %s, naming CORS_ORIGINS and not the value', (_label, value) => {
    const found = problems({ CORS_ORIGINS: value })
    expect(found).toEqual([expect.stringMatching(/^CORS_ORIGINS: .*scheme:\/\/host\[:port\]/)])
    expect(found[0]).not.toContain(value)
  })

  it('refuses * in production, naming CORS_ORIGINS', () => {
    expect(problems({ ...PRODUCTION, CORS_ORIGINS: '*' })).toEqual([expect.stringMatching(/^CORS_ORIGINS: \* /)])
  })

  it('accepts * in development and test', () => {
    expect(loadConfig({ NODE_ENV: 'development', CORS_ORIGINS: '*' }).corsOrigins).toBe('*')
    expect(loadConfig({ NODE_ENV: 'test', CORS_ORIGINS: '*' }).corsOrigins).toBe('*')
  })

  it('accepts a list of origins in production', () => {
    expect(loadConfig({ ...PRODUCTION, CORS_ORIGINS: 'https://app.example.com' }).corsOrigins).toEqual([
      'https://app.example.com',
    ])
  })
})
