// README's deployment block, run as written, command by command in one shell, on a fresh copy of
// this working tree (its tracked and new files as they are now, no node_modules/ and no dist/),
// against a real PostgreSQL (a new, empty schema: the block's `npm run migrate` creates the tables)
// and Redis (a random key prefix). Then, over HTTP: the admin the block created logs in, a new user
// registers, logs in and reads /users/me; SIGTERM ends the server with exit code 0. Also: the
// `npm ci` printed no EBADENGINE warning, the pruned tree holds no compiler or test tool, and
// `npm start` on the built tree starts without compiling.
//
// The block's own `npm ci` and the build it triggers are most of the time: 30 to 45 s in all on a
// quiet machine, two minutes or more on a busy one (hence the generous timeout). npm may answer from
// its cache (prefer-offline): the same packages as the lockfile says, fewer round trips.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it, vi } from 'vitest'
import { freePort, readJson, TEST_PASSWORD } from './helpers.js'
import { createTestSchema, deleteRedisKeys, describeWith, REDIS_URL, redisPrefix, type TestSchema } from './services.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const ADMIN_PASSWORD = 'basalt-Meadow-41-lantern'
/** The block's npm ci and build, on a machine that runs other test files at the same time. */
const BLOCK_TIMEOUT_MS = 300_000

/** The commands of README's deployment block, comments and blank lines left out. */
function deploymentCommands(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const block = readme.split('<!-- deployment:start -->')[1]?.split('<!-- deployment:end -->')[0]
  if (!block) throw new Error('README has no deployment block (<!-- deployment:start --> … <!-- deployment:end -->)')
  const commands: string[] = []
  let continuing = false
  for (const line of block.replace(/```(sh)?/g, '').split('\n')) {
    if (continuing) commands[commands.length - 1] += `\n${line}`
    else if (line.trim() !== '' && !line.trimStart().startsWith('#')) commands.push(line)
    else continue
    continuing = line.endsWith('\\')
  }
  return commands
}

/** `text` with `from` replaced by `to`; fails when `from` is not in it, so README cannot drift silently. */
function replaceOnce(text: string, from: string, to: string): string {
  if (!text.includes(from)) throw new Error(`README's deployment block no longer contains ${from}`)
  return text.replace(from, () => to)
}

const shellQuote = (value: string) => `'${value.replaceAll("'", "'\\''")}'`

/** This working tree as a fresh clone would have it, with uncommitted changes: tracked and new files. */
function copyWorkingTree(to: string): void {
  const listed = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
    cwd: ROOT,
    encoding: 'utf8',
  })
  if (listed.status !== 0) throw new Error(`git ls-files failed: ${listed.stderr}`)
  for (const file of listed.stdout.split('\0').filter(Boolean)) {
    // A tracked file deleted in the working tree is not part of it.
    if (!existsSync(join(ROOT, file))) continue
    mkdirSync(dirname(join(to, file)), { recursive: true })
    copyFileSync(join(ROOT, file), join(to, file))
  }
}

/**
 * What a shell on a fresh machine would have: PATH (without any node_modules/.bin that `npm test`
 * put there, which would lend this checkout's compiler to the copy), HOME (npm's cache and
 * settings) and the locale; nothing else of the test runner's environment (NODE_ENV, npm_config_*).
 */
function cleanEnv(): Record<string, string> {
  const path = (process.env.PATH ?? '')
    .split(':')
    .filter((dir) => !dir.includes('node_modules'))
    .join(':')
  const env: Record<string, string> = { PATH: path }
  for (const name of ['HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[name]
    if (value !== undefined) env[name] = value
  }
  return env
}

interface Running {
  child: ChildProcess
  output: () => string
  exited: Promise<number | null>
}

/** Starts `command` with bash in `cwd`, in a process group of its own (killed whole on failure). */
function startShell(command: string, cwd: string, env: Record<string, string>): Running {
  const child = spawn('bash', ['-eo', 'pipefail', '-c', command], {
    cwd,
    env,
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout?.on('data', (chunk) => {
    output += chunk
  })
  child.stderr?.on('data', (chunk) => {
    output += chunk
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return { child, output: () => output, exited }
}

function killGroup(running: Running | undefined): void {
  const pid = running?.child.pid
  if (pid === undefined) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // Already gone.
  }
}

/** Polls GET /healthz until it answers 200; fails at once, with the output, if the shell exits first. */
async function waitUntilServing(base: string, running: Running, timeout: number): Promise<void> {
  const failure = (why: string) => new Error(`${why}; the output's end:\n${running.output().slice(-6000)}`)
  const serving = vi.waitFor(
    async () => {
      if (running.child.exitCode !== null) return
      expect((await fetch(`${base}/healthz`)).status).toBe(200)
    },
    { timeout, interval: 250 },
  )
  await Promise.race([serving, running.exited]).catch(() => {
    throw failure(`no answer from ${base}/healthz within ${timeout / 1000} s`)
  })
  if (running.child.exitCode !== null) throw failure(`exited with code ${running.child.exitCode} before serving`)
}

const form = (fields: Record<string, string>) => ({ method: 'POST', body: new URLSearchParams(fields) })

describeWith(['postgres', 'redis'], "README's deployment block, on a fresh copy", () => {
  let dir: string
  let schema: TestSchema
  const prefix = redisPrefix()
  const started: Running[] = []

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'auth-deploy-'))
    copyWorkingTree(dir)
    schema = await createTestSchema({ migrated: false })
  })

  afterAll(async () => {
    for (const running of started) killGroup(running)
    await schema?.drop()
    await deleteRedisKeys(prefix)
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it(
    'builds, prunes, migrates, creates the admin and serves; a user logs in; SIGTERM exits 0',
    async () => {
      const commands = deploymentCommands()
      const port = await freePort()
      const base = `http://127.0.0.1:${port}`
      // The block's placeholders, each of which must still be in README: this test's database and
      // Redis, a loopback address and a free port; and the last command, the server, exec'd, so that
      // the shell becomes node and SIGTERM reaches node as it would under a service manager.
      const last = commands.length - 1
      const server = replaceOnce(commands[last] ?? '', 'HOST=0.0.0.0', `HOST=127.0.0.1 PORT=${port}`)
      commands[last] = replaceOnce(server, 'node dist/server.js', 'exec node dist/server.js')
      const script = commands
        .map((command, i) => {
          let line = command
          if (command.includes('DATABASE_URL=')) {
            line = replaceOnce(line, 'postgres://auth:…@db:5432/auth', shellQuote(schema.url))
            line = replaceOnce(line, 'redis://cache:6379', shellQuote(REDIS_URL))
          }
          // A marker before each command, for the log and for knowing which command runs.
          return `echo __STEP_${i}__ ${shellQuote(command.split(/\s+#/)[0] ?? '')}\n${line}`
        })
        .join('\n')
      const createAdmin = commands.findIndex((c) => c.includes('npm run create-admin'))
      expect(createAdmin, 'the block creates the admin').toBeGreaterThan(0)
      expect(commands.join('\n')).toContain('npm prune --omit=dev')

      const env = { ...cleanEnv(), REDIS_PREFIX: prefix, npm_config_prefer_offline: 'true' }
      const shell = startShell(script, dir, env)
      started.push(shell)
      // `npm run create-admin` reads the password from stdin (not a terminal here): given once its
      // step starts, so that no earlier command could have read it.
      const typed = vi.waitFor(
        () => {
          const waiting = shell.child.exitCode === null && !shell.output().includes(`__STEP_${createAdmin}__`)
          if (waiting) throw new Error('not yet')
          shell.child.stdin?.end(`${ADMIN_PASSWORD}\n`)
        },
        { timeout: BLOCK_TIMEOUT_MS, interval: 100 },
      )
      await waitUntilServing(base, shell, BLOCK_TIMEOUT_MS)
      await typed
      const output = shell.output()

      // npm ci: Node 20 satisfies every engines field (the overrides in package.json), and its
      // prepare step built dist/; the prune then removed every dev dependency.
      expect(output).not.toContain('EBADENGINE')
      expect(output).toContain('ensure-built: dist/ has not been built: building dist/ (esbuild)')
      for (const tool of ['typescript', 'vitest', '@biomejs/biome', 'tsx', 'newman']) {
        expect(existsSync(join(dir, 'node_modules', tool)), `${tool} after the prune`).toBe(false)
      }
      expect(existsSync(join(dir, 'node_modules', 'fastify'))).toBe(true)
      expect(output).toContain('create-admin: admin is an admin')

      // Both stores answer.
      const ready = await fetch(`${base}/readyz`)
      expect(ready.status, JSON.stringify(await ready.clone().json())).toBe(200)

      const admin = await fetch(`${base}/token`, form({ username: 'admin', password: ADMIN_PASSWORD }))
      expect(admin.status).toBe(200)
      expect((await readJson(admin)).scope).toBe('user admin')

      const reg = await fetch(`${base}/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'deployed_user', password: TEST_PASSWORD }),
      })
      expect(reg.status).toBe(201)
      const login = await fetch(`${base}/token`, form({ username: 'deployed_user', password: TEST_PASSWORD }))
      expect(login.status).toBe(200)
      const { access_token: token } = await readJson(login)
      const me = await fetch(`${base}/users/me`, { headers: { authorization: `Bearer ${token}` } })
      expect(me.status).toBe(200)
      expect((await readJson(me)).username).toBe('deployed_user')

      shell.child.kill('SIGTERM')
      expect(await shell.exited, shell.output().slice(-3000)).toBe(0)
    },
    BLOCK_TIMEOUT_MS + 30_000,
  )

  it('npm start on that built tree starts without compiling; a changed source without the compiler is refused', async () => {
    // Built and unchanged since: prestart finds dist/ up to date (no compiler needed, none is left).
    const port = await freePort()
    const npmStart = startShell('npm start', dir, { ...cleanEnv(), PORT: String(port), LOG_LEVEL: 'warn' })
    started.push(npmStart)
    await waitUntilServing(`http://127.0.0.1:${port}`, npmStart, 30_000)
    expect(npmStart.output()).toContain('> node scripts/ensure-built.mjs')
    expect(npmStart.output()).not.toContain('building dist/')
    // The whole group: SIGTERM to npm alone would leave node running (README, Shutdown).
    process.kill(-(npmStart.child.pid as number), 'SIGTERM')
    await npmStart.exited

    // A source changed after the build, and no compiler to rebuild with: an error that says how to
    // build, never a start from the stale dist/.
    const later = new Date(Date.now() + 5_000)
    utimesSync(join(dir, 'src', 'server.ts'), later, later)
    const check = spawnSync(process.execPath, ['scripts/ensure-built.mjs'], { cwd: dir, encoding: 'utf8' })
    expect(check.status).toBe(1)
    expect(check.stderr).toContain('src/server.ts changed since the last build')
    expect(check.stderr).toContain('npm prune --omit=dev')
  })
})
