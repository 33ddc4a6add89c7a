// Runs README's curl walkthroughs, command by command, against a live server (dist/server.js),
// and checks each output against the `# ...` line that follows the command in README: the main one,
// and the account recovery one, which reads its tokens from the server's log as README says.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
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
  return new RegExp(`^${escaped}$`)
}

describe('README walkthrough', () => {
  let server: ChildProcess
  let base: string

  beforeAll(async () => {
    const port = await freePort()
    base = `http://127.0.0.1:${port}`
    server = spawn(process.execPath, ['dist/server.js'], {
      env: {
        ...process.env,
        NODE_ENV: 'test',
        PORT: String(port),
        BCRYPT_ROUNDS: '4',
        LOG_LEVEL: 'silent',
        AUDIT_LOG: 'false',
      },
      stdio: 'ignore',
    })
    // Every 100 ms for at most 10 s, until /healthz answers 2xx (a failed fetch means not listening yet).
    await vi
      .waitFor(async () => expect((await fetch(`${base}/healthz`)).ok).toBe(true), { timeout: 10_000, interval: 100 })
      .catch((cause: unknown) => {
        throw new Error('server did not start', { cause })
      })
  })

  afterAll(() => {
    server?.kill('SIGTERM')
  })

  it('gives the outputs README shows, for every command', () => {
    const steps = walkthroughSteps()
    expect(steps.length).toBeGreaterThanOrEqual(5)
    const outputs = runSteps(steps, base)
    // The token captured in step 2 was used by step 3, which printed alice's account.
    const me = steps.findIndex((s) => s.command.includes('/users/me -H'))
    expect(outputs[me]).toContain('"username":"alice"')
  })
})

/**
 * Runs `steps` as one bash script in `cwd`, with README's base URL replaced by `base`, and checks
 * each command's output against the lines README shows for it.
 */
function runSteps(steps: Step[], base: string, cwd?: string): string[] {
  const script = steps
    .map((s, i) => `echo "__STEP_${i}__"\n${s.command.replaceAll('http://127.0.0.1:8000', base)}\necho`)
    .join('\n')
  const run = spawnSync('bash', ['-eo', 'pipefail', '-c', script], { encoding: 'utf8', timeout: 30_000, cwd })
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
