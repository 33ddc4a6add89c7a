// Two server processes (node dist/server.js) on different ports, sharing one PostgreSQL schema and
// one Redis key prefix, as two instances behind a load balancer would: what one instance does,
// the other sees at once or within a second. Needs `npm run build` (npm test builds first).
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it, vi } from 'vitest'
import { FORM, freePort, type JsonBody, readJson, TEST_PASSWORD, TEST_SECRET, uniqueUsername } from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const SERVER = fileURLToPath(new URL('../dist/server.js', import.meta.url))

const ADMIN_USERNAME = `admin_${randomUUID().slice(0, 8)}`
const ADMIN_PASSWORD = 'admin-Lantern-93-orchid'
const NEW_PASSWORD = 'copper-Meadow-71-falcon'
const LOGIN_MAX_FAILURES = 6
/** How long a change on one instance may take to be enforced on the other: a second (README, Deployment). */
const PROPAGATION_MS = 1_000
/** Polls every 10 ms for at most PROPAGATION_MS. */
const PROPAGATION = { timeout: PROPAGATION_MS, interval: 10 }

/** Set MULTI_INSTANCE_FIGURES=1 to print how long each change took to reach the other instance. */
const figures: Record<string, number> = {}

interface Instance {
  readonly name: string
  readonly url: string
  readonly child: ChildProcess
  /** The last few kilobytes of its stdout and stderr, for the error if it fails to start. */
  output(): string
}

const children = new Set<ChildProcess>()
// If the worker goes away without afterAll (a crash, a kill), the servers go with it.
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})

/** Starts `node dist/server.js` with exactly `env` (plus PATH) and waits until /healthz answers. */
async function startInstance(name: string, env: Record<string, string>): Promise<Instance> {
  const port = await freePort()
  // A scratch working directory: a developer's .env in the repo must not change the settings.
  const child = spawn(process.execPath, [SERVER], {
    cwd: tmpdir(),
    env: { PATH: process.env.PATH ?? '', HOST: '127.0.0.1', PORT: String(port), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  child.once('exit', () => children.delete(child))
  let output = ''
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-8_000)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const instance: Instance = { name, url: `http://127.0.0.1:${port}`, child, output: () => output }

  // Until /healthz answers 200 (a failed fetch means not listening yet), for at most 15 s; an
  // instance that has exited stops the wait at once.
  const exited = () => child.exitCode !== null || child.signalCode !== null
  const serving = async () => {
    if (exited()) return false
    expect((await fetch(`${instance.url}/healthz`)).status).toBe(200)
    return true
  }
  if (await vi.waitFor(serving, { timeout: 15_000, interval: 50 }).catch(() => false)) return instance
  throw new Error(`instance ${name} did not start (exit ${child.exitCode ?? child.signalCode}):\n${output}`)
}

/** SIGTERM (a graceful shutdown), then SIGKILL if it has not exited after 5 s. */
async function stopInstance(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
  await exited
  clearTimeout(timer)
}

function registerOn(instance: Instance, username: string, password = TEST_PASSWORD): Promise<Response> {
  return fetch(`${instance.url}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  })
}

function tokenOn(instance: Instance, fields: Record<string, string>): Promise<Response> {
  return fetch(`${instance.url}/token`, {
    method: 'POST',
    headers: { 'content-type': FORM },
    body: new URLSearchParams(fields).toString(),
  })
}

async function loginOn(instance: Instance, username: string, password = TEST_PASSWORD): Promise<JsonBody> {
  const res = await tokenOn(instance, { username, password })
  const body = await readJson(res)
  if (res.status !== 200) throw new Error(`login on ${instance.name}: ${res.status} ${JSON.stringify(body)}`)
  return body
}

async function meStatus(instance: Instance, accessToken: string): Promise<number> {
  const res = await fetch(`${instance.url}/users/me`, { headers: { authorization: `Bearer ${accessToken}` } })
  await res.arrayBuffer()
  return res.status
}

/** How long `wait` took to resolve, in ms (the figures MULTI_INSTANCE_FIGURES prints). */
async function elapsedMs(wait: () => PromiseLike<unknown>): Promise<number> {
  const started = Date.now()
  await wait()
  return Date.now() - started
}

describeWith(['postgres', 'redis'], 'two server processes sharing PostgreSQL and Redis', () => {
  let db: TestSchema
  let prefix: string
  let a: Instance
  let b: Instance

  beforeAll(async () => {
    if (!existsSync(SERVER)) throw new Error('dist/server.js is missing: run `npm run build` first')
    db = await createTestSchema({ migrated: false })
    prefix = redisPrefix()
    const env = {
      NODE_ENV: 'test',
      JWT_SECRET: TEST_SECRET,
      BCRYPT_ROUNDS: '4',
      LOG_LEVEL: 'warn',
      AUDIT_LOG: 'false',
      DOCS_ENABLED: 'false',
      LOGIN_MAX_FAILURES: String(LOGIN_MAX_FAILURES),
      STORE: 'postgres',
      DATABASE_URL: db.url,
      REDIS_URL,
      REDIS_PREFIX: prefix,
    }
    // A migrates the empty schema and creates the admin; B starts on what A left.
    a = await startInstance('A', { ...env, MIGRATE_ON_START: 'true', ADMIN_USERNAME, ADMIN_PASSWORD })
    b = await startInstance('B', env)
  })

  afterAll(async () => {
    await Promise.all([...children].map(stopInstance))
    if (process.env.MULTI_INSTANCE_FIGURES) console.info('multi-instance figures (ms):', figures)
    if (prefix) await deleteRedisKeys(prefix)
    await db?.drop()
  })

  it('runs both instances on the same stores', async () => {
    for (const instance of [a, b]) {
      const ready = await fetch(`${instance.url}/readyz`)
      expect(ready.status).toBe(200)
      expect(await readJson(ready)).toEqual({ status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
    }
  })

  it('registers on A and logs in on B', async () => {
    const username = uniqueUsername('ab')
    const reg = await registerOn(a, username)
    expect(reg.status).toBe(201)
    const user = await readJson(reg)
    const tokens = await loginOn(b, username)
    for (const instance of [a, b]) {
      const me = await fetch(`${instance.url}/users/me`, {
        headers: { authorization: `Bearer ${tokens.access_token}` },
      })
      expect(me.status).toBe(200)
      expect(await readJson(me)).toEqual(user)
    }
  })

  it('enforces a /logout on A on B within a second', async () => {
    const username = uniqueUsername('logout')
    expect((await registerOn(a, username)).status).toBe(201)
    const { access_token } = await loginOn(a, username)
    expect(await meStatus(b, access_token)).toBe(200)

    const logout = await fetch(`${a.url}/logout`, {
      method: 'POST',
      headers: { authorization: `Bearer ${access_token}` },
    })
    expect(logout.status).toBe(204)
    figures.logoutAtoB = await elapsedMs(() => expect.poll(() => meStatus(b, access_token), PROPAGATION).toBe(401))
    expect(await meStatus(a, access_token)).toBe(401)
  })

  it('enforces a /revoke of a refresh token on A on B within a second', async () => {
    const username = uniqueUsername('revoke')
    expect((await registerOn(b, username)).status).toBe(201)
    const { access_token, refresh_token } = await loginOn(b, username)
    expect(await meStatus(b, access_token)).toBe(200)

    const revoke = await fetch(`${a.url}/revoke`, {
      method: 'POST',
      headers: { 'content-type': FORM },
      body: new URLSearchParams({ token: refresh_token }).toString(),
    })
    expect(revoke.status).toBe(200)
    // The session is gone: its access token on B, and its refresh token on either instance.
    figures.revokeAtoB = await elapsedMs(() => expect.poll(() => meStatus(b, access_token), PROPAGATION).toBe(401))
    const refresh = await tokenOn(b, { grant_type: 'refresh_token', refresh_token })
    expect(refresh.status).toBe(400)
    expect(await readJson(refresh)).toMatchObject({ error: 'invalid_grant' })
  })

  it("ends A's tokens within a second when the password changes on B", async () => {
    const username = uniqueUsername('pwchange')
    expect((await registerOn(a, username)).status).toBe(201)
    const onA = await loginOn(a, username)
    // A has now read the user (and may keep the record in its cache for USER_CACHE_TTL_MS).
    expect(await meStatus(a, onA.access_token)).toBe(200)
    const onB = await loginOn(b, username)

    const change = await fetch(`${b.url}/users/me/password`, {
      method: 'POST',
      headers: { authorization: `Bearer ${onB.access_token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ current_password: TEST_PASSWORD, new_password: NEW_PASSWORD }),
    })
    expect(change.status).toBe(204)
    figures.passwordChangeBtoA = await elapsedMs(() =>
      expect.poll(() => meStatus(a, onA.access_token), PROPAGATION).toBe(401),
    )
    expect(await meStatus(b, onB.access_token)).toBe(401)
    const refresh = await tokenOn(a, { grant_type: 'refresh_token', refresh_token: onA.refresh_token })
    expect(refresh.status).toBe(400)

    const oldPassword = await tokenOn(a, { username, password: TEST_PASSWORD })
    expect(oldPassword.status).toBe(400)
    const fresh = await loginOn(a, username, NEW_PASSWORD)
    expect(await meStatus(b, fresh.access_token)).toBe(200)
  })

  it('adds up failed logins on A and B to one limit', async () => {
    const username = uniqueUsername('throttle')
    expect((await registerOn(a, username)).status).toBe(201)
    const half = LOGIN_MAX_FAILURES / 2
    for (const instance of [a, b]) {
      for (let i = 0; i < half; i++) {
        const res = await tokenOn(instance, { username, password: 'wrong-Password-00' })
        expect(res.status, `failure ${i + 1} on ${instance.name}`).toBe(400)
        expect(await readJson(res)).toMatchObject({ error: 'invalid_grant' })
      }
    }
    // Six failures in all: the account is locked on both instances, even for the right password.
    for (const instance of [a, b]) {
      const res = await tokenOn(instance, { username, password: TEST_PASSWORD })
      expect(res.status, `after the limit on ${instance.name}`).toBe(429)
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0)
      expect(await readJson(res)).toMatchObject({ error: 'temporarily_unavailable' })
    }
  })

  it('creates exactly one account when both instances register the same name at once', async () => {
    const admin = await loginOn(a, ADMIN_USERNAME, ADMIN_PASSWORD)
    expect(admin.scope).toBe('user admin')
    for (let round = 0; round < 3; round++) {
      const name = `race_${randomUUID().slice(0, 8)}`
      const passwords = { A: 'amber-Thistle-42-ridge', B: 'cobalt-Willow-87-stone' }
      // Different case on each instance: the database compares the normalised name.
      const responses = await Promise.all([
        registerOn(a, name, passwords.A),
        registerOn(b, name.toUpperCase().replace('RACE', 'Race'), passwords.B),
      ])
      const statuses = responses.map((r) => r.status)
      expect(statuses.slice().sort()).toEqual([201, 409])
      const bodies = await Promise.all(responses.map(readJson))
      expect(bodies[statuses.indexOf(409)]).toEqual({ detail: 'Username already registered' })
      const winner = statuses[0] === 201 ? passwords.A : passwords.B
      const loser = statuses[0] === 201 ? passwords.B : passwords.A

      const list = await fetch(`${b.url}/users?username_prefix=${name}`, {
        headers: { authorization: `Bearer ${admin.access_token}` },
      })
      expect(list.status).toBe(200)
      const listed = await readJson(list)
      expect(listed.total).toBe(1)
      expect(listed.items).toEqual([
        { ...bodies[statuses.indexOf(201)], roles: ['user'], disabled: false, mfa_enabled: false },
      ])
      // Only the winner's password opens the one account, on either instance.
      expect((await tokenOn(b, { username: name, password: winner })).status).toBe(200)
      expect((await tokenOn(a, { username: name, password: loser })).status).toBe(400)
    }
  })
})
