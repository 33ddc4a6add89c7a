// The built server (dist/server.js, from `npm run build`, which `npm test` runs first) as a child
// process: zero-config start, refusal to start in production without a secret, graceful SIGTERM;
// every failed boot as one line on stderr; the PostgreSQL schema check; the start-up line.
import { type ChildProcess, spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import { hmacKey } from '../src/keys.js'
import { migrate } from '../src/store/migrate.js'
import { freePort, type JsonBody, readJson, TEST_PASSWORD, TEST_SECRET } from './helpers.js'
import { createTestSchema, describeWith, PG_URL, type TestSchema } from './services.js'
import { startProxy } from './tcp-proxy.js'

const SERVER = fileURLToPath(new URL('../dist/server.js', import.meta.url))
// An empty working directory, so that a developer's .env never leaks into these tests.
const CWD = mkdtempSync(join(tmpdir(), 'auth-boot-'))

interface Started {
  child: ChildProcess
  output: () => string
  stderr: () => string
  exited: Promise<number | null>
}

const children: ChildProcess[] = []

afterEach(() => {
  for (const child of children.splice(0))
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
})
afterAll(() => {
  rmSync(CWD, { recursive: true, force: true })
})

/** Starts dist/server.js with exactly `env` (plus PATH), never the test runner's environment. */
function start(env: Record<string, string>): Started {
  const child = spawn(process.execPath, [SERVER], {
    cwd: CWD,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  let out = ''
  let err = ''
  child.stdout?.on('data', (chunk) => {
    out += chunk
  })
  child.stderr?.on('data', (chunk) => {
    err += chunk
  })
  const exited = new Promise<number | null>((resolveExit) => child.once('exit', (code) => resolveExit(code)))
  return { child, output: () => out + err, stderr: () => err, exited }
}

/** Polls /healthz every 50 ms until the server answers (any status), or fails after `timeoutMs`. */
async function waitUntilServing(base: string, started: Started, timeoutMs = 15_000): Promise<Response> {
  // A fetch that fails means not listening yet; a server that has exited stops the wait at once.
  const attempt = async () => (started.child.exitCode === null ? await fetch(`${base}/healthz`) : undefined)
  const res = await vi.waitFor(attempt, { timeout: timeoutMs, interval: 50 }).catch(() => {
    throw new Error(`server did not start:\n${started.output()}`)
  })
  if (res === undefined) throw new Error(`server exited early:\n${started.output()}`)
  return res
}

describe('dist/server.js', () => {
  it('starts with no configuration, serves /healthz and warns about the generated secret', async () => {
    const port = await freePort()
    const started = start({ PORT: String(port) })
    const base = `http://127.0.0.1:${port}`

    const res = await waitUntilServing(base, started)
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ status: 'ok' })
    expect(started.output()).toContain('JWT_SECRET is not set')
    expect(started.output()).toMatch(/random secret/i)
  })

  it('exits 1 in production without JWT_SECRET, naming the variable on stderr', async () => {
    const port = await freePort()
    const started = start({ PORT: String(port), NODE_ENV: 'production' })

    expect(await started.exited).toBe(1)
    expect(started.stderr()).toContain('JWT_SECRET')
  })

  it('exits 1 for an empty JWT_SECRET without printing a stack', async () => {
    const started = start({ PORT: String(await freePort()), JWT_SECRET: '' })

    expect(await started.exited).toBe(1)
    expect(started.stderr()).toContain('JWT_SECRET')
    expect(started.stderr()).not.toMatch(/\n\s+at /)
  })

  it("exits 1 for a malformed TRUST_PROXY (':::') naming the variable, without a stack", async () => {
    const started = start({ PORT: String(await freePort()), TRUST_PROXY: ':::' })

    expect(await started.exited).toBe(1)
    expect(started.stderr()).toContain('TRUST_PROXY')
    expect(started.stderr()).not.toMatch(/\n\s+at /)
  })

  it('finishes an in-flight login on SIGTERM, then exits 0', async () => {
    const port = await freePort()
    const started = start({
      PORT: String(port),
      JWT_SECRET: TEST_SECRET,
      BCRYPT_ROUNDS: '12',
      LOG_LEVEL: 'info',
    })
    const base = `http://127.0.0.1:${port}`
    await waitUntilServing(base, started)
    const username = 'graceful_user'
    const reg = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password: TEST_PASSWORD }),
    })
    expect(reg.status).toBe(201)

    // A cost-12 compare takes ~200 ms: once the server has logged the incoming /token request, the
    // signal arrives while the password is being checked.
    const login = fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: TEST_PASSWORD }),
    })
    await expect
      .poll(
        () =>
          started
            .output()
            .split('\n')
            .some((line) => line.includes('incoming request') && line.includes('"/token"')),
        { timeout: 10_000, interval: 5 },
      )
      .toBe(true)
    started.child.kill('SIGTERM')

    const res = await login
    const answeredAt = Date.now()
    expect(res.status).toBe(200)
    expect((await readJson(res)).token_type).toBe('bearer')
    expect(await started.exited).toBe(0)
    // Nothing holds the process once the answer is out: by structure, the log ends with the signal,
    // then the login's answer and 'closed' (app.close() resolved; the two may be logged in either
    // order, since the answer's log line is written after the response has gone), after which
    // close-with-grace exits at once...
    const logged = records(started).filter((r) => !r.audit)
    const loginId = logged.find((r) => r.msg === 'incoming request' && r.req?.url === '/token')?.reqId
    const tail = logged.map((r) => (r.reqId === loginId ? `login ${r.msg}` : r.msg)).slice(-3)
    expect(tail[0]).toBe('shutting down')
    expect(tail.slice(1).sort()).toEqual(['closed', 'login request completed'])
    // ...and loosely in time: measured at about 10 ms; a timer, socket or pool left open would take
    // seconds (keep-alive, intervals), a background bcrypt job a whole hash (~0.25 s at cost 12 and more).
    expect(Date.now() - answeredAt).toBeLessThan(1000)
  })
})

/** What each failed boot must look like: exit 1, one line on stderr naming the cause, no stack, no secret. */
async function expectOneLine(started: Started, names: (string | RegExp)[], secrets: string[] = []): Promise<string> {
  expect(await started.exited).toBe(1)
  const stderr = started.stderr()
  const lines = stderr.split('\n').filter(Boolean)
  expect(lines, stderr).toHaveLength(1)
  const line = lines[0] as string
  expect(line).toMatch(/^cannot start: /)
  for (const name of names) expect(line).toMatch(typeof name === 'string' ? new RegExp(escapeRegExp(name)) : name)
  expect(stderr).not.toMatch(/\n\s+at /)
  for (const secret of secrets) expect(started.output()).not.toContain(secret)
  return line
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** The JSON log lines the process wrote so far. */
function records(started: Started): JsonBody[] {
  return started
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as JsonBody)
}

/** The start-up line, once written; fails if the process exits first. */
async function startupRecord(started: Started, timeoutMs = 15_000): Promise<JsonBody> {
  return vi.waitFor(
    () => {
      if (started.child.exitCode !== null) throw new Error(`server exited early:\n${started.output()}`)
      const record = records(started).find((r) => r.event === 'startup')
      if (!record) throw new Error('no start-up line yet')
      return record
    },
    { timeout: timeoutMs, interval: 50 },
  )
}

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string })
  .version
/** The highest migration version this server ships, as the schema messages name it. */
const SHIPPED = Math.max(
  ...readdirSync(new URL('../migrations/', import.meta.url))
    .map((f) => /^(\d+)_/.exec(f)?.[1])
    .filter((v): v is string => v !== undefined)
    .map(Number),
)

function keyFiles(): { dir: string; priv: string; pub: string } {
  const dir = mkdtempSync(join(tmpdir(), 'boot-keys-'))
  const pair = generateKeyPairSync('ed25519')
  const priv = join(dir, 'private.pem')
  const pub = join(dir, 'public.pem')
  writeFileSync(priv, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string)
  writeFileSync(pub, pair.publicKey.export({ format: 'pem', type: 'spki' }) as string)
  return { dir, priv, pub }
}

describe('dist/server.js: every failed boot is one line naming its cause', () => {
  it.each([
    ["PORT='8000 '", { PORT: '8000 ' }, 'PORT: must be a whole number in decimal digits'],
    ['PORT=1e3', { PORT: '1e3' }, 'PORT: must be a whole number in decimal digits'],
    ["JWT_ISSUER='   '", { JWT_ISSUER: '   ' }, 'JWT_ISSUER: must not be blank'],
    ["AUTH_REALM='a\"b'", { AUTH_REALM: 'a"b' }, 'AUTH_REALM: must not contain " or \\'],
  ])('%s', async (_label, env, expected) => {
    await expectOneLine(start(env), [`cannot start: ${expected}`])
  })

  it('a production JWT_SECRET that is long but repetitive (42 × a), without printing it', async () => {
    const secret = 'a'.repeat(42)
    await expectOneLine(
      start({ NODE_ENV: 'production', JWT_SECRET: secret }),
      ['JWT_SECRET: is too repetitive'],
      [secret],
    )
  })

  it('several problems: one line each, and nothing else', async () => {
    const started = start({ PORT: 'abc', BCRYPT_ROUNDS: '99' })
    expect(await started.exited).toBe(1)
    expect(started.stderr().split('\n').filter(Boolean)).toEqual([
      expect.stringMatching(/^cannot start: PORT: /),
      expect.stringMatching(/^cannot start: BCRYPT_ROUNDS: /),
    ])
  })

  it('ADMIN_PASSWORD too short: names ADMIN_PASSWORD, never the password', async () => {
    const password = 'Xq7!pw'
    await expectOneLine(
      start({ PORT: '0', JWT_SECRET: TEST_SECRET, ADMIN_USERNAME: 'root_admin', ADMIN_PASSWORD: password }),
      ['cannot start: ADMIN_PASSWORD: must be at least 8 characters'],
      [password],
    )
  })

  it("ADMIN_USERNAME='a b': blames ADMIN_USERNAME and says what the rules are", async () => {
    await expectOneLine(start({ PORT: '0', ADMIN_USERNAME: 'a b', ADMIN_PASSWORD: TEST_PASSWORD }), [
      /^cannot start: ADMIN_USERNAME: does not follow the username rules \(3 to 32 characters/,
    ])
  })

  it('a HOST that does not resolve: names HOST and the name', async () => {
    await expectOneLine(start({ PORT: '0', HOST: 'no-such-host.invalid' }), [
      'cannot start: HOST: no-such-host.invalid does not resolve',
    ])
  })

  it('a PORT already in use: names PORT and the address', async () => {
    const port = await freePort()
    const taken = createServer()
    await new Promise<void>((resolve) => taken.listen(port, '127.0.0.1', resolve))
    try {
      await expectOneLine(start({ PORT: String(port) }), [
        `cannot start: PORT: 127.0.0.1:${port} is already in use by another process (EADDRINUSE)`,
      ])
    } finally {
      await new Promise((resolve) => taken.close(resolve))
    }
  })

  it('a missing JWT_PRIVATE_KEY_FILE: names the variable and the path', async () => {
    const { dir } = keyFiles()
    const missing = join(dir, 'nope.pem')
    await expectOneLine(start({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: missing }), [
      `cannot start: JWT_PRIVATE_KEY_FILE: cannot read ${missing} (no such file)`,
    ])
  })

  it('an unreadable JWT_PUBLIC_KEY_FILE (a directory): names the variable', async () => {
    const files = keyFiles()
    const directory = join(files.dir, 'public.d')
    mkdirSync(directory)
    await expectOneLine(
      start({ JWT_ALGORITHM: 'EdDSA', JWT_PRIVATE_KEY_FILE: files.priv, JWT_PUBLIC_KEY_FILE: directory }),
      [`cannot start: JWT_PUBLIC_KEY_FILE: cannot read ${directory} (is a directory)`],
    )
  })

  it('key files with HS256 are refused, not ignored', async () => {
    const files = keyFiles()
    await expectOneLine(start({ JWT_SECRET: TEST_SECRET, JWT_PRIVATE_KEY_FILE: files.priv }), [
      /^cannot start: JWT_PRIVATE_KEY_FILE: set, but JWT_ALGORITHM is HS256/,
    ])
  })

  it('MIGRATE_ON_START=true with PostgreSQL unreachable: names MIGRATE_ON_START, never the password', async () => {
    const password = 'pw-Never-Printed-41'
    await expectOneLine(
      start({
        PORT: '0',
        STORE: 'postgres',
        DATABASE_URL: `postgres://auth:${password}@127.0.0.1:1/auth`,
        MIGRATE_ON_START: 'true',
      }),
      ['cannot start: MIGRATE_ON_START: PostgreSQL at 127.0.0.1:1/auth is not reachable (ECONNREFUSED)'],
      [password],
    )
  })
})

describe('dist/server.js: the start-up line', () => {
  it('names version, real address, store, Redis, algorithm and key id, docs: with PORT=0 and LOG_LEVEL=warn', async () => {
    const started = start({ PORT: '0', LOG_LEVEL: 'warn', JWT_SECRET: TEST_SECRET })
    const startup = await startupRecord(started)
    expect(startup).toMatchObject({
      event: 'startup',
      version: VERSION,
      env: 'development',
      url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/),
      store: 'memory',
      redis: 'off',
      jwt: { algorithm: 'HS256', kid: hmacKey(TEST_SECRET).kid, previousKids: [] },
      docs: `${startup.url}/docs`,
      mfa: 'on (key from JWT_SECRET)',
    })
    expect(startup.url).not.toMatch(/:0$/)
    // The real port: the server answers there.
    expect((await fetch(`${startup.url}/healthz`)).status).toBe(200)
    expect(startup.msg).toBe(`fastify-auth-server ${VERSION} listening on ${startup.url}, docs at ${startup.url}/docs`)
  })

  it('in production with a key file: no JWT_SECRET needed, the start-up line survives the warn default, and the in-memory store is warned about', async () => {
    const files = keyFiles()
    const started = start({
      PORT: '0',
      NODE_ENV: 'production',
      JWT_ALGORITHM: 'EdDSA',
      JWT_PRIVATE_KEY_FILE: files.priv,
      JWT_PUBLIC_KEY_FILE: files.pub,
    })
    const startup = await startupRecord(started)
    const jwks = await readJson(await fetch(`${startup.url}/.well-known/jwks.json`))
    expect(startup).toMatchObject({
      env: 'production',
      docs: 'off',
      jwt: { algorithm: 'EdDSA', kid: jwks.keys[0].kid },
      // No HS256 secret to derive a key from, and no MFA_ENCRYPTION_KEY.
      mfa: 'off (no MFA_ENCRYPTION_KEY)',
    })
    expect((await fetch(`${startup.url}/users/me/mfa`)).status).toBe(404)
    await vi.waitFor(() =>
      expect(records(started)).toContainEqual(
        expect.objectContaining({
          level: 40,
          msg: expect.stringMatching(/^STORE=memory in production: .* lost at restart/),
        }),
      ),
    )
  })

  it('writes nothing with LOG_LEVEL=silent', async () => {
    const port = await freePort()
    const started = start({ PORT: String(port), LOG_LEVEL: 'silent', JWT_SECRET: TEST_SECRET })
    await waitUntilServing(`http://127.0.0.1:${port}`, started)
    expect(started.output()).toBe('')
  })

  it.skipIf(!existsSync('/usr/bin/script'))(
    'in a terminal in development: pino-pretty lines, the first ones with the URL of the API and of /docs',
    async () => {
      // `script` gives the server a pseudo-terminal as stdout, as a developer's shell would. The shell
      // prints its pid, which exec hands to the server: the test stops the server itself, since a
      // server whose terminal vanishes under it (script killed first) is left retrying its writes.
      const child = spawn('script', ['-qec', `echo "pid=$$"; exec ${process.execPath} ${SERVER}`, '/dev/null'], {
        cwd: CWD,
        env: { PATH: process.env.PATH ?? '', PORT: '0', TERM: 'dumb', NO_COLOR: '1' },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      children.push(child)
      let out = ''
      child.stdout?.on('data', (chunk) => {
        out += chunk
      })
      const lines = () =>
        out
          // biome-ignore lint/suspicious/noControlCharactersInRegex: colour codes, should a terminal get them
          .replace(/\u001b\[[0-9;]*m/g, '')
          .split(/\r?\n/)
          .filter((line) => line.trim() !== '')
      await vi.waitFor(() => expect(lines().some((l) => l.includes('/docs'))).toBe(true), { timeout: 15_000 })
      const first = lines().filter((l) => /^\[[\d:]+\] [A-Z]+:/.test(l))
      expect(first[0]).toMatch(/INFO: Server listening at http:\/\/127\.0\.0\.1:\d+$/)
      expect(first[1]).toMatch(
        /INFO: fastify-auth-server \S+ listening on http:\/\/127\.0\.0\.1:(\d+), docs at http:\/\/127\.0\.0\.1:\1\/docs$/,
      )
      expect(lines().filter((l) => l.startsWith('{'))).toEqual([])
      const exited = new Promise((resolveExit) => child.once('exit', resolveExit))
      process.kill(Number(/pid=(\d+)/.exec(out)?.[1]), 'SIGTERM')
      await exited
    },
  )
})

describeWith('postgres', 'dist/server.js and the PostgreSQL schema', () => {
  const schemas: TestSchema[] = []
  const password = 'pw-Not-In-Any-Log-63'
  afterAll(async () => {
    await Promise.all(schemas.map((s) => s.drop()))
  })

  async function schema(migrated: boolean): Promise<TestSchema> {
    const db = await createTestSchema({ migrated })
    schemas.push(db)
    return db
  }

  /** The schema's DATABASE_URL with a password (trust auth ignores it) that must never be printed. */
  function urlOf(db: TestSchema, port?: number): string {
    const url = new URL(db.url)
    url.password = password
    if (port !== undefined) url.port = String(port)
    return url.toString()
  }

  const env = (url: string) => ({
    PORT: '0',
    JWT_SECRET: TEST_SECRET,
    BCRYPT_ROUNDS: '4',
    STORE: 'postgres',
    DATABASE_URL: url,
  })

  it('refuses a database never migrated: one line naming `npm run migrate` and MIGRATE_ON_START', async () => {
    const db = await schema(false)
    const line = await expectOneLine(
      start(env(urlOf(db))),
      ['PostgreSQL schema is behind', 'npm run migrate', 'MIGRATE_ON_START', `version ${SHIPPED}`],
      [password],
    )
    expect(line).toContain('version 0 (never migrated)')
  })

  it('refuses a database a newer server migrated (an applied migration it does not ship), naming both versions', async () => {
    const db = await schema(true)
    await db.pool.query("INSERT INTO schema_migrations (version, name) VALUES ('999', '999_from_the_future')")
    await expectOneLine(
      start({ ...env(urlOf(db)), MIGRATE_ON_START: 'true' }),
      ['PostgreSQL schema is ahead', 'version 999 (999_from_the_future)', `version ${SHIPPED} (`],
      [password],
    )
  })

  it('with MIGRATE_ON_START=true migrates, serves, and prints no credential of DATABASE_URL', async () => {
    const db = await schema(false)
    const started = start({ ...env(urlOf(db)), MIGRATE_ON_START: 'true', LOG_LEVEL: 'warn' })
    const startup = await startupRecord(started)
    expect(startup).toMatchObject({ store: 'postgres', database: '127.0.0.1:5432/test', redis: 'off' })
    expect((await fetch(`${startup.url}/readyz`)).status).toBe(200)
    const reg = await fetch(`${startup.url}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'migrated_user', password: TEST_PASSWORD }),
    })
    expect(reg.status).toBe(201)
    expect(started.output()).not.toContain(password)
    expect(started.output()).not.toContain('postgres:')
  })

  it('PostgreSQL down at boot, then up on an unmigrated schema: 503 and a log line (never a 500), then serves once migrated', async () => {
    const db = await schema(false)
    const target = new URL(PG_URL)
    const proxy = await startProxy(target.hostname, Number(target.port || 5432))
    await proxy.stop()
    try {
      const started = start(env(urlOf(db, proxy.port)))
      const startup = await startupRecord(started)
      const base = startup.url as string
      expect((await fetch(`${base}/healthz`)).status).toBe(200)
      expect((await fetch(`${base}/readyz`)).status).toBe(503)

      await proxy.start()
      // The first connection runs the check; its failure is logged once, naming the fix.
      await vi.waitFor(
        () =>
          expect(records(started)).toContainEqual(
            expect.objectContaining({
              level: 50,
              msg: expect.stringMatching(/behind.*npm run migrate.*MIGRATE_ON_START/),
            }),
          ),
        { timeout: 10_000, interval: 100 },
      )
      const register = () =>
        fetch(`${base}/register`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ username: 'late_user', password: TEST_PASSWORD }),
        })
      const refused = await register()
      expect(refused.status).toBe(503)
      expect(refused.headers.get('retry-after')).not.toBeNull()
      expect((await fetch(`${base}/readyz`)).status).toBe(503)

      await migrate(db.pool)
      // Checked again at most every few seconds: then the same server serves.
      await vi.waitFor(async () => expect((await register()).status).toBe(201), { timeout: 15_000, interval: 500 })
      expect((await fetch(`${base}/readyz`)).status).toBe(200)
      expect(started.output()).not.toContain(password)
    } finally {
      await proxy.stop()
    }
  }, 45_000)
})
