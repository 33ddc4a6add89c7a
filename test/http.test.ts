// Everything that crosses the wire, over a real socket with fetch: 404/405, security headers, the
// meta routes, the OpenAPI document and Swagger UI, the generic 500, and the audit log.
import type { FastifyInstance } from 'fastify'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { MemoryUserStore } from '../src/store/users.js'
import {
  buildTestApp,
  type JsonBody,
  lineCollector,
  listen,
  readJson,
  TEST_PASSWORD,
  testConfig,
  uniqueUsername,
} from './helpers.js'
import { recordStatuses } from './statuses.js'

const JSON_UTF8 = 'application/json; charset=utf-8'

describe('HTTP basics over a real socket', () => {
  let app: FastifyInstance
  let base: string
  beforeAll(async () => {
    app = await buildTestApp()
    base = await listen(app)
  })
  afterAll(async () => {
    await app.close()
  })

  it('answers GET / with the welcome message and the docs path', async () => {
    const res = await fetch(`${base}/`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(JSON_UTF8)
    expect(await res.json()).toEqual({ message: expect.stringMatching(/\S/), docs: '/docs' })
  })

  it('answers GET /healthz with {"status":"ok"}', async () => {
    const res = await fetch(`${base}/healthz`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(JSON_UTF8)
    expect(await res.json()).toEqual({ status: 'ok' })
  })

  it('answers an unknown path with 404 {"detail":"Not Found"}', async () => {
    const res = await fetch(`${base}/no/such/path`)
    expect(res.status).toBe(404)
    expect(res.headers.get('content-type')).toBe(JSON_UTF8)
    expect(await res.json()).toEqual({ detail: 'Not Found' })
  })

  it('answers an unknown path with another method with 404 too', async () => {
    const res = await fetch(`${base}/no/such/path`, { method: 'POST' })
    expect(res.status).toBe(404)
    expect(await res.json()).toEqual({ detail: 'Not Found' })
  })

  // Allow is checked as a set that must contain the route's methods: later features add methods
  // to some of these paths (DELETE /users/me), which must not break this contract.
  it.each([
    ['POST', '/', ['GET', 'HEAD']],
    ['DELETE', '/', ['GET', 'HEAD']],
    ['GET', '/token', ['POST']],
    ['PUT', '/token', ['POST']],
    ['GET', '/register', ['POST']],
    ['PUT', '/users/me', ['GET', 'HEAD']],
    ['PATCH', '/healthz', ['GET', 'HEAD']],
  ])('answers %s %s with 405 and an Allow header listing %s', async (method, path, allowed) => {
    const res = await fetch(`${base}${path}`, { method })
    expect(res.status).toBe(405)
    const allow = (res.headers.get('allow') ?? '').split(', ')
    expect(allow).toEqual(expect.arrayContaining(allowed))
    expect(allow).not.toContain(method)
    expect(await res.json()).toEqual({ detail: 'Method Not Allowed' })
  })

  it('answers HEAD / like GET without a body', async () => {
    const res = await fetch(`${base}/`, { method: 'HEAD' })
    expect(res.status).toBe(200)
    expect(await res.text()).toBe('')
  })

  it.each(['/healthz', '/no/such/path', '/users/me'])('sends the security headers on %s', async (path) => {
    const res = await fetch(`${base}${path}`)
    expect(res.headers.get('x-content-type-options')).toBe('nosniff')
    expect(res.headers.get('content-security-policy')).toContain("default-src 'none'")
    expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'")
    expect(res.headers.get('x-frame-options')).toBe('DENY')
    expect(res.headers.get('referrer-policy')).toBe('no-referrer')
    expect(res.headers.get('x-powered-by')).toBeNull()
    expect(res.headers.get('server')).toBeNull()
  })

  it('gives every response a request id', async () => {
    const a = await fetch(`${base}/healthz`)
    const b = await fetch(`${base}/healthz`)
    expect(a.headers.get('x-request-id')).toEqual(expect.any(String))
    expect(a.headers.get('x-request-id')).not.toBe(b.headers.get('x-request-id'))
  })

  it('serves an OpenAPI 3 document at /openapi.json', async () => {
    const res = await fetch(`${base}/openapi.json`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(JSON_UTF8)
    const doc = await readJson(res)
    expect(doc.openapi).toMatch(/^3\./)
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining(['/', '/healthz', '/register', '/token', '/users/me']),
    )
    expect(Object.keys(doc.paths['/token'].post.requestBody.content)).toEqual(['application/x-www-form-urlencoded'])
    expect(Object.keys(doc.paths['/register'].post.requestBody.content)).toEqual(['application/json'])
  })

  it('declares the OAuth2 password flow with tokenUrl /token and requires it on /users/me', async () => {
    const doc = await readJson(await fetch(`${base}/openapi.json`))
    const schemes: Record<string, { type: string; flows?: { password?: { tokenUrl: string } } }> =
      doc.components.securitySchemes
    const oauth = Object.entries(schemes).filter(([, s]) => s.type === 'oauth2' && s.flows?.password)
    expect(oauth).toHaveLength(1)
    const [name, scheme] = oauth[0] as [string, { flows: { password: { tokenUrl: string } } }]
    expect(scheme.flows.password.tokenUrl).toBe('/token')
    const security: Record<string, unknown>[] = doc.paths['/users/me'].get.security
    expect(security.some((requirement) => name in requirement)).toBe(true)
  })

  it('declares one relative server, so that Swagger UI calls the origin it was loaded from', async () => {
    const doc = await readJson(await fetch(`${base}/openapi.json`))
    expect(doc.servers).toEqual([{ url: '/', description: expect.any(String) }])
  })

  // The operationIds are a contract: client generators name their methods after them. A new route
  // adds its own (checked below for form and uniqueness); these never change.
  const OPERATION_IDS: Record<string, string> = {
    'GET /': 'welcome',
    'GET /healthz': 'health',
    'GET /readyz': 'ready',
    'GET /.well-known/jwks.json': 'getJwks',
    'POST /register': 'register',
    'POST /token': 'token',
    'POST /revoke': 'revoke',
    'POST /logout': 'logout',
    'GET /users/me': 'getCurrentUser',
    'POST /users/me/password': 'changePassword',
    'DELETE /users/me': 'deleteCurrentUser',
    'GET /users': 'listUsers',
    'GET /users/{id}': 'getUser',
    'PATCH /users/{id}': 'updateUser',
    'DELETE /users/{id}': 'deleteUser',
  }
  const BEARER = { OAuth2PasswordBearer: [] }
  const ADMIN = { OAuth2PasswordBearer: ['admin'] }
  type Operation = { operationId?: string; summary?: string; security?: unknown[]; responses: Record<string, JsonBody> }
  async function operations(): Promise<[string, Operation][]> {
    const doc = await readJson(await fetch(`${base}/openapi.json`))
    return Object.entries(doc.paths as Record<string, Record<string, Operation>>).flatMap(([path, item]) =>
      Object.entries(item).map(([method, op]): [string, Operation] => [`${method.toUpperCase()} ${path}`, op]),
    )
  }

  it('names every operation with a unique camelCase operationId and a summary; the known ones keep theirs', async () => {
    const ops = await operations()
    const ids = Object.fromEntries(ops.map(([name, op]) => [name, op.operationId]))
    expect(ids).toMatchObject(OPERATION_IDS)
    for (const [name, op] of ops) {
      expect(op.operationId, name).toMatch(/^[a-z][A-Za-z0-9]*$/)
      expect(op.summary, name).toMatch(/\S/)
    }
    expect(new Set(Object.values(ids)).size).toBe(ops.length)
  })

  it('states the security of every operation: [] when public, the OAuth2 scheme (and scope) otherwise', async () => {
    const ops = Object.fromEntries(await operations())
    const publicOps = ['GET /', 'GET /healthz', 'GET /readyz', 'GET /.well-known/jwks.json', 'POST /register']
    for (const name of [...publicOps, 'POST /token', 'POST /revoke']) expect(ops[name]?.security, name).toEqual([])
    for (const name of ['POST /logout', 'GET /users/me', 'POST /users/me/password', 'DELETE /users/me'])
      expect(ops[name]?.security, name).toEqual([BEARER])
    for (const name of ['GET /users', 'GET /users/{id}', 'PATCH /users/{id}', 'DELETE /users/{id}'])
      expect(ops[name]?.security, name).toEqual([ADMIN])
    // Never left out: an operation without `security` would say nothing about what it needs.
    for (const [name, op] of Object.entries(ops)) expect(op.security, name).toEqual(expect.any(Array))
  })

  it('describes every response (never "Default Response") with x-request-id and Cache-Control', async () => {
    for (const [name, op] of await operations())
      for (const [status, response] of Object.entries(op.responses)) {
        expect(response.description, `${name} ${status}`).toMatch(/\S/)
        expect(response.description, `${name} ${status}`).not.toBe('Default Response')
        expect(Object.keys(response.headers ?? {}), `${name} ${status}`).toEqual(
          expect.arrayContaining(['x-request-id', 'Cache-Control']),
        )
      }
  })

  it('documents the headers of each error: WWW-Authenticate, Allow, Retry-After', async () => {
    const has = (response: JsonBody | undefined, header: string) =>
      Object.keys(response?.headers ?? {}).includes(header)
    for (const [name, op] of await operations()) {
      const { responses, security = [] } = op
      // Every operation lists 405 (another method on its path) and 500.
      expect(Object.keys(responses), name).toEqual(expect.arrayContaining(['405', '500']))
      expect(has(responses['405'], 'Allow'), `${name} 405`).toBe(true)
      // A protected operation can answer 401, one that needs the admin scope 403 too; both with the
      // Bearer challenge.
      if (security.length > 0) expect(has(responses['401'], 'WWW-Authenticate'), `${name} 401`).toBe(true)
      if (JSON.stringify(security).includes('"admin"'))
        expect(has(responses['403'], 'WWW-Authenticate'), `${name} 403`).toBe(true)
      // Every 401 and 403 is a Bearer refusal, but for /token's 403 `mfa_required`: an OAuth error
      // body, no challenge (the client authenticated; a second factor is due).
      for (const status of ['401', '403'])
        if (responses[status] && !(name === 'POST /token' && status === '403'))
          expect(has(responses[status], 'WWW-Authenticate'), `${name} ${status}`).toBe(true)
      if (responses['429']) expect(has(responses['429'], 'Retry-After'), `${name} 429`).toBe(true)
      // A 503 sheds load or reports a store that cannot be reached: retry later. Not the readiness
      // probe's: it reports, and the orchestrator polls on its own schedule.
      if (responses['503'] && name !== 'GET /readyz')
        expect(has(responses['503'], 'Retry-After'), `${name} 503`).toBe(true)
    }
  })

  it('configures Swagger UI to load /openapi.json, the document its top bar then names', async () => {
    const res = await fetch(`${base}/docs/static/swagger-initializer.js`)
    expect(res.status).toBe(200)
    expect(await res.text()).toContain('"urls":[{"url":"/openapi.json","name":"/openapi.json"}]')
  })

  it('serves Swagger UI at /docs as HTML', async () => {
    const res = await fetch(`${base}/docs`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/html/)
    expect(await res.text()).toMatch(/swagger/i)
  })
})

describe('DOCS_ENABLED=false', () => {
  let app: FastifyInstance
  let base: string
  beforeAll(async () => {
    app = await buildTestApp({ DOCS_ENABLED: 'false' })
    base = await listen(app)
  })
  afterAll(async () => {
    await app.close()
  })

  it.each(['/docs', '/openapi.json', '/docs/static/index.html'])('answers %s with 404', async (path) => {
    const res = await fetch(`${base}${path}`)
    expect(res.status).toBe(404)
    expect(await res.json()).toEqual({ detail: 'Not Found' })
  })

  it('still serves the API', async () => {
    const res = await fetch(`${base}/healthz`)
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ status: 'ok' })
  })
})

describe('unexpected errors', () => {
  const SECRET_DETAIL = 'connection to db://admin:hunter2@10.0.0.7 refused'
  class BrokenStore extends MemoryUserStore {
    override async findByUsername(): Promise<never> {
      throw new Error(SECRET_DETAIL)
    }
  }

  let app: FastifyInstance
  let base: string
  const log = lineCollector()
  beforeAll(async () => {
    app = recordStatuses(
      await buildApp(testConfig(), {
        stores: { users: new BrokenStore() },
        logger: { level: 'error', stream: log.stream },
      }),
    )
    base = await listen(app)
  })
  afterAll(async () => {
    await app.close()
  })

  it('answers a failing store on /register with 500 {"detail":"Internal Server Error"} and leaks nothing', async () => {
    const res = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: uniqueUsername(), password: TEST_PASSWORD }),
    })
    const text = await res.text()

    expect(res.status).toBe(500)
    expect(res.headers.get('content-type')).toBe(JSON_UTF8)
    expect(JSON.parse(text)).toEqual({ detail: 'Internal Server Error' })
    expect(text).not.toContain('hunter2')
    expect(text).not.toMatch(/at .*\.(ts|js):\d+/)
  })

  it('answers a failing store on /token with 500 and the three OAuth keys, leaking nothing', async () => {
    const res = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username: uniqueUsername(), password: TEST_PASSWORD }),
    })
    const text = await res.text()

    expect(res.status).toBe(500)
    expect(JSON.parse(text)).toEqual({
      error: expect.any(String),
      error_description: 'Internal Server Error',
      detail: 'Internal Server Error',
    })
    expect(text).not.toContain('hunter2')
  })

  it('logs the real error with the request id', async () => {
    const res = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: uniqueUsername(), password: TEST_PASSWORD }),
    })
    const requestId = res.headers.get('x-request-id')
    expect(res.status).toBe(500)

    const entry = log.records().find((r) => r.reqId === requestId && r.err !== undefined)
    expect(entry).toBeDefined()
    expect(JSON.stringify(entry)).toContain(SECRET_DETAIL)
  })
})

describe('audit log', () => {
  let app: FastifyInstance
  let base: string
  const audit = lineCollector()
  beforeAll(async () => {
    app = recordStatuses(await buildApp(testConfig(), { audit: pino(audit.stream) }))
    base = await listen(app)
  })
  afterAll(async () => {
    await app.close()
  })

  const loginEvents = () => audit.records().filter((r) => r.event === 'login')

  it('records a login success and a login failure with username, ip and outcome, and never the password', async () => {
    const username = uniqueUsername()
    const wrong = 'wrong-Password-77'
    const reg = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password: TEST_PASSWORD }),
    })
    expect(reg.status).toBe(201)

    const ok = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: TEST_PASSWORD }),
    })
    const bad = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: wrong }),
    })
    expect(ok.status).toBe(200)
    expect(bad.status).toBe(400)
    const token = (await readJson(ok)).access_token as string

    const events = loginEvents().filter((e) => e.username === username)
    expect(events).toEqual([
      expect.objectContaining({ event: 'login', outcome: 'success', username, ip: '127.0.0.1' }),
      expect.objectContaining({ event: 'login', outcome: 'failure', username, ip: '127.0.0.1' }),
    ])
    for (const line of audit.lines) {
      expect(line).not.toContain(TEST_PASSWORD)
      expect(line).not.toContain(wrong)
      expect(line).not.toContain(token)
    }
  })

  it('records a failure for an unknown user the same way', async () => {
    const username = uniqueUsername('ghost')
    const res = await fetch(`${base}/token`, { method: 'POST', body: new URLSearchParams({ username, password: 'x' }) })
    expect(res.status).toBe(400)

    expect(loginEvents().filter((e) => e.username === username)).toEqual([
      expect.objectContaining({ event: 'login', outcome: 'failure', username, ip: '127.0.0.1' }),
    ])
  })

  it('keeps a username with a newline on one JSON line', async () => {
    const username = 'evil\n{"level":60,"event":"login","outcome":"success"}'
    const res = await fetch(`${base}/token`, { method: 'POST', body: new URLSearchParams({ username, password: 'x' }) })
    expect(res.status).toBe(400)

    const forged = audit.records().filter((r) => r.outcome === 'success' && r.username === undefined)
    expect(forged).toEqual([])
    expect(loginEvents().some((e) => e.username === username && e.outcome === 'failure')).toBe(true)
  })
})
