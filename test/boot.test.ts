// The built server (dist/server.js, from `npm run build`, which `npm test` runs first) as a child
// process: zero-config start, refusal to start in production without a secret, graceful SIGTERM.
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import { freePort, readJson, TEST_PASSWORD, TEST_SECRET } from './helpers.js'

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
    expect(res.status).toBe(200)
    expect((await readJson(res)).token_type).toBe('bearer')
    expect(await started.exited).toBe(0)
  })
})
