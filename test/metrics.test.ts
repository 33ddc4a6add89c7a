// Prometheus metrics (src/metrics.ts, src/plugins/metrics.ts), read the way Prometheus reads them:
// GET /metrics on the separate listener, the exposition text parsed here. Each test makes known
// requests over real HTTP and checks the exact counts they leave; labels never carry a username,
// an address, a token or a raw path; nothing is served, hooked or opened when METRICS_PORT is unset.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import { ConfigError } from '../src/errors.js'
import { buildTestApp, FORM, freePort, listen, TEST_PASSWORD, testConfig, uniqueUsername } from './helpers.js'

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string })
  .version
const WRONG = 'not-the-Password-1'

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** The samples of a Prometheus text exposition (version 0.0.4): `name{a="b",...} value`. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!match) throw new Error(`not an exposition line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[key as string] = (value as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) })
  }
  return samples
}

/** Every series of `name` as `labels → value`, the labels written `a=b,c=d` in the order given. */
function series(samples: Sample[], name: string, keys: string[]): Record<string, number> {
  return Object.fromEntries(
    samples.filter((s) => s.name === name).map((s) => [keys.map((k) => `${k}=${s.labels[k]}`).join(','), s.value]),
  )
}

/** The value of the one sample of `name` whose labels are exactly `labels`. */
function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort())
  return samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value
}

interface Scrape {
  status: number
  contentType: string | null
  text: string
  samples: Sample[]
}

async function scrape(app: FastifyInstance, path = '/metrics', init: RequestInit = {}): Promise<Scrape> {
  const address = app.metricsAddress
  if (!address) throw new Error('metrics are not listening')
  const res = await fetch(`http://127.0.0.1:${address.port}${path}`, init)
  const text = await res.text()
  return {
    status: res.status,
    contentType: res.headers.get('content-type'),
    text,
    samples: res.status === 200 ? parseExposition(text) : [],
  }
}

function registerUser(base: string, username: string): Promise<Response> {
  return fetch(`${base}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password: TEST_PASSWORD }),
  })
}

function token(base: string, fields: Record<string, string>): Promise<Response> {
  return fetch(`${base}/token`, {
    method: 'POST',
    headers: { 'content-type': FORM },
    body: new URLSearchParams(fields),
  })
}

function get(base: string, path: string, accessToken?: string): Promise<Response> {
  return fetch(`${base}${path}`, accessToken ? { headers: { authorization: `Bearer ${accessToken}` } } : {})
}

let apps: FastifyInstance[] = []
afterEach(async () => {
  await Promise.all(apps.map((a) => a.close()))
  apps = []
})

async function metricsApp(env: Record<string, string> = {}): Promise<{ app: FastifyInstance; base: string }> {
  const app = await buildTestApp({ METRICS_PORT: '0', ...env })
  apps.push(app)
  return { app, base: await listen(app) }
}

describe('GET /metrics on the metrics listener', () => {
  it('counts logins, refreshes, verifications and requests exactly, by bounded labels only', async () => {
    const { app, base } = await metricsApp({ LOGIN_MAX_FAILURES: '2' })
    const alice = uniqueUsername('alice')
    const bob = uniqueUsername('bob')
    expect((await registerUser(base, alice)).status).toBe(201)
    expect((await registerUser(base, bob)).status).toBe(201)

    // Logins: one success, three wrong passwords (bob's second locks bob), one refused as locked.
    const login = await token(base, { username: alice, password: TEST_PASSWORD })
    expect(login.status).toBe(200)
    const { access_token: access, refresh_token: refresh } = (await login.json()) as Record<string, string>
    expect((await token(base, { username: alice, password: WRONG })).status).toBe(400)
    expect((await token(base, { username: bob, password: WRONG })).status).toBe(400)
    expect((await token(base, { username: bob, password: WRONG })).status).toBe(400)
    expect((await token(base, { username: bob, password: TEST_PASSWORD })).status).toBe(429)

    // Verifications: in full, from the cache twice, and one forged token.
    expect((await get(base, '/users/me', access)).status).toBe(200)
    expect((await get(base, '/users/me', access)).status).toBe(200)
    const someId = randomUUID()
    expect((await get(base, `/users/${someId}`, access)).status).toBe(403)
    expect((await get(base, '/users/me', 'abc.def.ghi')).status).toBe(401)

    // Refreshes: a rotation, the grace re-issue of the spent token, then its reuse; and a made-up token.
    const rotated = await token(base, { grant_type: 'refresh_token', refresh_token: refresh as string })
    expect(rotated.status).toBe(200)
    const { refresh_token: rotatedRefresh } = (await rotated.json()) as Record<string, string>
    expect((await token(base, { grant_type: 'refresh_token', refresh_token: refresh as string })).status).toBe(200)
    expect((await token(base, { grant_type: 'refresh_token', refresh_token: refresh as string })).status).toBe(400)
    expect((await token(base, { grant_type: 'refresh_token', refresh_token: `rt_${'x'.repeat(43)}` })).status).toBe(400)

    // No route: the label is `unmatched`, never the path. /metrics is not served on the public port.
    expect((await get(base, '/nope/123')).status).toBe(404)
    expect((await get(base, '/metrics')).status).toBe(404)

    const { status, contentType, text, samples } = await scrape(app)
    expect(status).toBe(200)
    expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8')

    expect(series(samples, 'auth_logins_total', ['outcome'])).toEqual({
      'outcome=success': 1,
      'outcome=mfa_required': 0,
      'outcome=invalid': 3,
      'outcome=locked': 1,
      'outcome=throttled': 0,
      'outcome=shed': 0,
      'outcome=unavailable': 0,
      'outcome=error': 0,
    })
    expect(series(samples, 'auth_refreshes_total', ['outcome'])).toEqual({
      'outcome=success': 1,
      'outcome=invalid': 1,
      'outcome=reuse_detected': 1,
      'outcome=grace_reissue': 1,
      'outcome=unavailable': 0,
      'outcome=error': 0,
    })
    expect(series(samples, 'auth_token_verifications_total', ['result'])).toEqual({
      'result=valid': 3,
      'result=invalid': 1,
    })
    expect(sampleValue(samples, 'auth_token_cache_hits_total')).toBe(2)
    expect(series(samples, 'auth_store_errors_total', ['store'])).toEqual({ 'store=postgres': 0, 'store=redis': 0 })

    // One series per route pattern, method and status class; _count is the number of requests.
    const userRoute = samples.find(
      (s) => s.name === 'auth_http_request_duration_seconds_count' && s.labels.route?.startsWith('/users/:id'),
    )?.labels.route as string
    expect(userRoute).toBeDefined()
    expect(series(samples, 'auth_http_request_duration_seconds_count', ['route', 'method', 'status_class'])).toEqual({
      'route=/register,method=POST,status_class=2xx': 2,
      'route=/token,method=POST,status_class=2xx': 3,
      'route=/token,method=POST,status_class=4xx': 6,
      'route=/users/me,method=GET,status_class=2xx': 2,
      'route=/users/me,method=GET,status_class=4xx': 1,
      [`route=${userRoute},method=GET,status_class=4xx`]: 1,
      'route=unmatched,method=GET,status_class=4xx': 2,
    })
    const bucket = (le: string) =>
      sampleValue(samples, 'auth_http_request_duration_seconds_bucket', {
        route: '/token',
        method: 'POST',
        status_class: '2xx',
        le,
      })
    expect(bucket('+Inf')).toBe(3)

    // The hash gate: nothing waiting now; every job that ran waited (zero or more) once.
    expect(sampleValue(samples, 'auth_hash_queue_length')).toBe(0)
    expect(sampleValue(samples, 'auth_hash_shed_total')).toBe(0)
    // Two registrations, one compare per login that reached the password check (success, three wrong).
    expect(sampleValue(samples, 'auth_hash_wait_seconds_count')).toBe(6)

    // Build info and the process and event-loop metrics, all under the auth_ prefix.
    expect(sampleValue(samples, 'auth_build_info', { version: VERSION })).toBe(1)
    expect(samples.some((s) => s.name === 'auth_process_cpu_user_seconds_total')).toBe(true)
    expect(samples.some((s) => s.name === 'auth_nodejs_eventloop_lag_seconds')).toBe(true)
    expect(samples.every((s) => s.name.startsWith('auth_'))).toBe(true)

    // No personal data and nothing a client chose: no username, address, token, id or raw path.
    for (const secret of [alice, bob, access, refresh, rotatedRefresh, 'abc.def.ghi', someId, '/nope', '127.0.0.1'])
      expect(text).not.toContain(secret as string)
  })

  it('counts the per-address limit and the per-account request cap as throttled, not locked', async () => {
    const { app, base } = await metricsApp({ LOGIN_RATE_LIMIT_PER_MINUTE: '1', LOGIN_IP_MAX_FAILURES: '1' })
    const first = uniqueUsername()
    expect((await token(base, { username: first, password: WRONG })).status).toBe(400)
    // The same name again: the request cap (1 a minute) refuses it before the handler.
    expect((await token(base, { username: first, password: WRONG })).status).toBe(429)
    // Another name from the same address: the address is at its failure limit.
    expect((await token(base, { username: uniqueUsername(), password: WRONG })).status).toBe(429)

    const { samples } = await scrape(app)
    expect(series(samples, 'auth_logins_total', ['outcome'])).toMatchObject({
      'outcome=invalid': 1,
      'outcome=throttled': 2,
      'outcome=locked': 0,
    })
  })

  it('counts shed logins and the hash gate that shed them', async () => {
    // One hash at a time, none may wait: of concurrent logins, those that find the slot taken are shed.
    const { app, base } = await metricsApp({ HASH_CONCURRENCY: '1', HASH_QUEUE_MAX: '0', BCRYPT_ROUNDS: '8' })
    const username = uniqueUsername()
    expect((await registerUser(base, username)).status).toBe(201)
    const statuses = (
      await Promise.all(Array.from({ length: 6 }, () => token(base, { username, password: WRONG })))
    ).map((res) => res.status)
    const shed = statuses.filter((s) => s === 503).length
    const checked = statuses.filter((s) => s === 400).length
    expect(shed).toBeGreaterThan(0)
    expect(shed + checked).toBe(6)

    const { samples } = await scrape(app)
    expect(series(samples, 'auth_logins_total', ['outcome'])).toMatchObject({
      'outcome=shed': shed,
      'outcome=invalid': checked,
    })
    expect(sampleValue(samples, 'auth_hash_shed_total')).toBe(shed)
    expect(sampleValue(samples, 'auth_hash_wait_seconds_count')).toBe(1 + checked)
    expect(sampleValue(samples, 'auth_hash_queue_length')).toBe(0)
  })

  it('counts StoreUnavailableError by store: PostgreSQL down', async () => {
    const { app, base } = await metricsApp({
      STORE: 'postgres',
      DATABASE_URL: 'postgres://postgres@127.0.0.1:1/test',
      STORE_TIMEOUT_MS: '500',
    })
    expect((await token(base, { username: uniqueUsername(), password: WRONG })).status).toBe(503)
    const { samples } = await scrape(app)
    expect(sampleValue(samples, 'auth_logins_total', { outcome: 'unavailable' })).toBe(1)
    expect(sampleValue(samples, 'auth_store_errors_total', { store: 'postgres' })).toBeGreaterThanOrEqual(1)
    expect(sampleValue(samples, 'auth_store_errors_total', { store: 'redis' })).toBe(0)
  })

  it('counts StoreUnavailableError by store: Redis down, while logins fall back to local counters', async () => {
    const { app, base } = await metricsApp({ REDIS_URL: 'redis://127.0.0.1:1', STORE_TIMEOUT_MS: '200' })
    const username = uniqueUsername()
    expect((await registerUser(base, username)).status).toBe(201)
    expect((await token(base, { username, password: TEST_PASSWORD })).status).toBe(200)
    const { samples } = await scrape(app)
    expect(sampleValue(samples, 'auth_logins_total', { outcome: 'success' })).toBe(1)
    expect(sampleValue(samples, 'auth_store_errors_total', { store: 'redis' })).toBeGreaterThanOrEqual(1)
    expect(sampleValue(samples, 'auth_store_errors_total', { store: 'postgres' })).toBe(0)
  })

  it('answers only GET /metrics: any other path or method is 404', async () => {
    const { app } = await metricsApp()
    expect((await scrape(app, '/metrics?name=x')).status).toBe(200)
    for (const [path, method] of [
      ['/', 'GET'],
      ['/healthz', 'GET'],
      ['/metrics/', 'GET'],
      ['/metrics', 'POST'],
      ['/metrics', 'DELETE'],
    ] as const) {
      expect((await scrape(app, path, { method })).status, `${method} ${path}`).toBe(404)
    }
  })

  it('keeps one registry per app: two apps in one process count apart', async () => {
    const one = await metricsApp()
    const two = await metricsApp()
    expect(one.app.metricsAddress?.port).not.toBe(two.app.metricsAddress?.port)
    expect((await get(one.base, '/nope')).status).toBe(404)
    const count = (s: Scrape) =>
      sampleValue(s.samples, 'auth_http_request_duration_seconds_count', {
        route: 'unmatched',
        method: 'GET',
        status_class: '4xx',
      })
    expect(count(await scrape(one.app))).toBe(1)
    expect(count(await scrape(two.app))).toBeUndefined()
  })

  it('closes the metrics listener with the app', async () => {
    const { app } = await metricsApp()
    const port = app.metricsAddress?.port as number
    await app.close()
    apps = []
    expect(app.metricsAddress).toBeNull()
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow()
  })

  it('fails the start when the metrics port is taken', async () => {
    const port = await freePort()
    const blocker: Server = createServer()
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve))
    const app = await buildApp(testConfig({ METRICS_PORT: String(port) }))
    try {
      await expect(app.ready()).rejects.toThrow(/EADDRINUSE/)
    } finally {
      await app.close()
      await new Promise((resolve) => blocker.close(resolve))
    }
  })
})

describe('metrics off (METRICS_PORT unset)', () => {
  it('opens no second listener and the app works as before', async () => {
    const app = await buildTestApp()
    apps.push(app)
    const base = await listen(app)
    expect(app.metricsAddress).toBeNull()
    const username = uniqueUsername()
    expect((await registerUser(base, username)).status).toBe(201)
    const login = await token(base, { username, password: TEST_PASSWORD })
    expect(login.status).toBe(200)
    const { access_token: access } = (await login.json()) as Record<string, string>
    expect((await get(base, '/users/me', access)).status).toBe(200)
    expect((await get(base, '/metrics')).status).toBe(404)
  })

  it('refuses METRICS_PORT equal to PORT: metrics are never on the public port', () => {
    expect(() => testConfig({ PORT: '8000', METRICS_PORT: '8000' })).toThrow(ConfigError)
    expect(() => testConfig({ PORT: '8000', METRICS_PORT: '8000' })).toThrow(/METRICS_PORT: must differ from PORT/)
    expect(testConfig({ METRICS_PORT: '9464' }).metrics).toEqual({ port: 9464, host: '127.0.0.1' })
    expect(testConfig().metrics).toEqual({ port: null, host: '127.0.0.1' })
  })
})
