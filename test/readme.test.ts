// Runs README's curl walkthroughs, command by command, against a live server (dist/server.js),
// and checks each output against the `# ...` line that follows the command in README: the main one,
// the account recovery one, which reads its tokens from the server's log as README says, the
// two-factor one, which computes TOTP codes with otpauth as README says, and the sessions and
// introspection ones, the latter with the introspection client README starts the server with.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { freePort } from './helpers.js'

interface Step {
  command: string
  expected: string[]
}

/** The commands of README's block between `<!-- name:start -->` and `<!-- name:end -->`. */
function walkthroughSteps(name = 'walkthrough'): Step[] {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const block = readme.split(`<!-- ${name}:start -->`)[1]?.split(`<!-- ${name}:end -->`)[0]
  if (!block) throw new Error(`README has no ${name} block`)
  const lines = block.replace(/```(sh)?/g, '').split('\n')
  const steps: Step[] = []
  let current: Step | undefined
  let continuing = false
  for (const line of lines) {
    if (continuing && current) {
      current.command += `\n${line}`
      continuing = line.endsWith('\\')
      continue
    }
    if (line.startsWith('# ') && /^# [{H]/.test(line) && current) current.expected.push(line.slice(2))
    else if (line.trim() !== '' && !line.startsWith('#')) {
      current = { command: line, expected: [] }
      steps.push(current)
      continuing = line.endsWith('\\')
    }
  }
  return steps
}

function toRegExp(expected: string): RegExp {
  const escaped = expected
    .replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    .replaceAll('<uuid>', '[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}')
    .replaceAll('<ISO-8601>', '\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z')
    .replaceAll('<jwt>', '[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+')
    .replaceAll('<refresh-token>', 'rt_[A-Za-z0-9_-]{43}')
    .replaceAll('<base32>', '[A-Z2-7]{32}')
    .replaceAll('<recovery-code>', '[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}')
    .replaceAll('<seconds>', '\\d{10}')
  return new RegExp(`^${escaped}$`)
}

/**
 * Starts dist/server.js for the enclosing describe block (beforeAll, stopped in afterAll) as README's
 * reader runs it: cheap bcrypt, silent logs, `env` on top, and the variables named in `drop` taken
 * out of this process's environment first, so that the defaults README's outputs show apply.
 * `base` is set once /healthz answers (every 100 ms for at most 10 s).
 */
function readmeServer(env: Record<string, string> = {}, drop: readonly string[] = []): { base: string } {
  const handle = { base: '' }
  let server: ChildProcess | undefined
  beforeAll(async () => {
    const port = await freePort()
    handle.base = `http://127.0.0.1:${port}`
    const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !drop.includes(name)))
    server = spawn(process.execPath, ['dist/server.js'], {
      env: {
        ...inherited,
        NODE_ENV: 'test',
        PORT: String(port),
        BCRYPT_ROUNDS: '4',
        LOG_LEVEL: 'silent',
        AUDIT_LOG: 'false',
        ...env,
      },
      stdio: 'ignore',
    })
    await vi
      .waitFor(async () => expect((await fetch(`${handle.base}/healthz`)).ok).toBe(true), {
        timeout: 10_000,
        interval: 100,
      })
      .catch((cause: unknown) => {
        throw new Error('server did not start', { cause })
      })
  })
  afterAll(() => {
    server?.kill('SIGTERM')
  })
  return handle
}

describe('README walkthrough', () => {
  const server = readmeServer()

  it('gives the outputs README shows, for every command', () => {
    const steps = walkthroughSteps()
    expect(steps.length).toBeGreaterThanOrEqual(5)
    const outputs = runSteps(steps, server.base)
    // The token captured in step 2 was used by step 3, which printed alice's account.
    const me = steps.findIndex((s) => s.command.includes('/users/me -H'))
    expect(outputs[me]).toContain('"username":"alice"')
  })
})

/**
 * Runs `steps` as one bash script in `cwd`, with README's base URL replaced by `base`, and checks
 * each command's output against the lines README shows for it. The script is killed after `timeoutMs`.
 * `env` adds to this process's environment what README has the reader export before the block.
 */
function runSteps(
  steps: Step[],
  base: string,
  cwd?: string,
  timeoutMs = 30_000,
  env: Record<string, string> = {},
): string[] {
  const script = steps
    .map((s, i) => `echo "__STEP_${i}__"\n${s.command.replaceAll('http://127.0.0.1:8000', base)}\necho`)
    .join('\n')
  const run = spawnSync('bash', ['-eo', 'pipefail', '-c', script], {
    encoding: 'utf8',
    timeout: timeoutMs,
    cwd,
    env: { ...process.env, ...env },
  })
  expect(run.status, run.stderr).toBe(0)
  const outputs = run.stdout.split(/__STEP_\d+__\n/).slice(1)
  expect(outputs).toHaveLength(steps.length)
  steps.forEach((step, i) => {
    const output = (outputs[i] ?? '').trim()
    for (const expected of step.expected) {
      if (expected.startsWith('{')) expect(output, step.command).toMatch(toRegExp(expected))
      else for (const part of expected.split(' ... ')) expect(output.toLowerCase()).toContain(part.toLowerCase())
    }
  })
  return outputs
}

describe('README account recovery walkthrough', () => {
  let server: ChildProcess
  let base: string
  let dir: string

  beforeAll(async () => {
    const port = await freePort()
    base = `http://127.0.0.1:${port}`
    // As README says: the server in development without SMTP_URL, its output in server.log.
    dir = mkdtempSync(join(tmpdir(), 'recovery-walkthrough-'))
    const log = openSync(join(dir, 'server.log'), 'a')
    const { SMTP_URL: _smtp, ...env } = process.env
    server = spawn(process.execPath, [fileURLToPath(new URL('../dist/server.js', import.meta.url))], {
      cwd: dir,
      env: { ...env, NODE_ENV: 'development', PORT: String(port), BCRYPT_ROUNDS: '4', LOG_LEVEL: 'info' },
      stdio: ['ignore', log, log],
    })
    await vi
      .waitFor(async () => expect((await fetch(`${base}/healthz`)).ok).toBe(true), { timeout: 10_000, interval: 100 })
      .catch((cause: unknown) => {
        throw new Error('server did not start', { cause })
      })
  })

  afterAll(() => {
    server?.kill('SIGTERM')
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('gives the outputs README shows, following the links from the log', () => {
    const steps = walkthroughSteps('recovery-walkthrough')
    expect(steps.length).toBeGreaterThanOrEqual(8)
    runSteps(steps, base, dir)
  })
})

describe('README two-factor walkthrough', () => {
  // As README says: `npm start` with no settings, so MFA is on with a key derived from the
  // generated HS256 secret, and the issuer in the otpauth:// URI is the default realm. The
  // server's own clock: the codes are computed from real time, like an app's.
  const server = readmeServer({}, [
    'JWT_ALGORITHM',
    'JWT_SECRET',
    'JWT_PRIVATE_KEY_FILE',
    'JWT_PREVIOUS_KEYS',
    'MFA_ENCRYPTION_KEY',
    'MFA_ISSUER',
    'AUTH_REALM',
  ])

  // Step 6 waits for the next 30-second TOTP period (a code works once, and step 4 spent the
  // current one): up to 30 s of the run are that wait, so the limits leave room for it.
  it('gives the outputs README shows, computing the codes with otpauth', { timeout: 90_000 }, () => {
    const steps = walkthroughSteps('mfa')
    expect(steps.length).toBeGreaterThanOrEqual(10)
    // From the repository root, where README says to run it: `require('otpauth')` resolves there.
    const outputs = runSteps(steps, server.base, fileURLToPath(new URL('..', import.meta.url)), 75_000)
    // The password alone was refused once MFA was on, and a code then got tokens.
    expect(outputs.some((o) => o.includes('"error":"mfa_required"'))).toBe(true)
    const otp = steps.findIndex((s) => s.command.includes('-d "otp=$CODE"'))
    expect(outputs[otp]).toMatch(/^\{"access_token":/)
  })
})

describe('README sessions and introspection walkthroughs', () => {
  // As README says: a secret of 64 hex digits (openssl rand -hex 32), in NOTES_SECRET for the
  // server's INTROSPECTION_CLIENTS and for the shell that runs the blocks.
  const notesSecret = randomBytes(32).toString('hex')
  // README's server is `npm start` on 127.0.0.1:8000, whose discovery document takes its URLs from
  // the request's origin, http://127.0.0.1:8000. This one listens elsewhere, so PUBLIC_URL gives
  // its document the URLs README shows. No SMTP_URL: mail is logged (on), as README's server has it.
  // The defaults README's outputs show: issuer, audience, realm, and MFA on (its grants listed).
  const server = readmeServer({ PUBLIC_URL: 'http://127.0.0.1:8000', INTROSPECTION_CLIENTS: `notes:${notesSecret}` }, [
    'SMTP_URL',
    'JWT_ISSUER',
    'JWT_AUDIENCE',
    'AUTH_REALM',
    'JWT_ALGORITHM',
    'JWT_PRIVATE_KEY_FILE',
    'MFA_ENCRYPTION_KEY',
  ])

  it('gives the outputs README shows for the sessions a user sees and ends', () => {
    const steps = walkthroughSteps('sessions')
    expect(steps.length).toBeGreaterThanOrEqual(10)
    const outputs = runSteps(steps, server.base)
    // The phone's session was found by the laptop's list, and ending it was a 204.
    const end = steps.findIndex((s) => s.command.includes('/users/me/sessions/$PHONE_SESSION -H'))
    expect(outputs[end]).toContain('204 No Content')
  })

  it('gives the outputs README shows for discovery and introspection', () => {
    const steps = walkthroughSteps('introspection')
    expect(steps.length).toBeGreaterThanOrEqual(10)
    const outputs = runSteps(steps, server.base, undefined, 30_000, { NOTES_SECRET: notesSecret })
    expect(outputs.filter((o) => o.includes('"active":true'))).toHaveLength(2)
  })

  it('serves the discovery document README shows', async () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
    const block = readme.split('<!-- discovery-document:start -->')[1]?.split('<!-- discovery-document:end -->')[0]
    if (!block) throw new Error('README has no discovery-document block')
    const shown = JSON.parse(block.replace(/```(json)?/g, ''))
    const served = await (await fetch(`${server.base}/.well-known/oauth-authorization-server`)).json()
    expect(served).toEqual(shown)
  })
})
