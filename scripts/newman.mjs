// Runs the Postman collection (postman/) with newman against a live server: `npm run postman`.
//
// With BASE_URL set, runs against that server. Otherwise starts the built server (dist/server.js:
// run `npm run build` first) on a free port of 127.0.0.1 with cheap bcrypt and an admin account
// (ADMIN_USERNAME/ADMIN_PASSWORD, a random password per run), waits for /healthz, runs the
// collection with that account as its adminUsername/adminPassword, then stops the server with SIGTERM.
// Against BASE_URL, the admin credentials come from ADMIN_USERNAME/ADMIN_PASSWORD in this process's
// environment if both are set, else from the environment file; without them the collection skips
// the requests that need the admin scope. Exits non-zero when the server does not start or stop
// cleanly, or when any request, script or assertion fails. The server's output is kept and printed
// only when something fails.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { constants } from 'node:os'
import { fileURLToPath } from 'node:url'
import newman from 'newman'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const COLLECTION = fileURLToPath(new URL('../postman/auth-api.postman_collection.json', import.meta.url))
const ENVIRONMENT = fileURLToPath(new URL('../postman/local.postman_environment.json', import.meta.url))
const SERVER = fileURLToPath(new URL('../dist/server.js', import.meta.url))
const HOST = '127.0.0.1'
const START_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 10_000
const LOG_LINES_KEPT = 200

/** @type {import('node:child_process').ChildProcess | undefined} */
let server
const serverOutput = []

const log = (message) => process.stderr.write(`[newman] ${message}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const running = (child) => child !== undefined && child.exitCode === null && child.signalCode === null

/** A port the OS reports free on HOST right now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.unref()
    probe.on('error', reject)
    probe.listen(0, HOST, () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

function keepOutput(chunk) {
  for (const line of chunk.toString('utf8').split('\n')) if (line) serverOutput.push(line)
  if (serverOutput.length > LOG_LINES_KEPT) serverOutput.splice(0, serverOutput.length - LOG_LINES_KEPT)
}

function printServerOutput() {
  if (serverOutput.length === 0) return
  log(`server output (last ${serverOutput.length} lines):`)
  process.stderr.write(`${serverOutput.join('\n')}\n`)
}

/** The admin account the started server creates at boot; fresh for every run, never a default. */
function makeAdmin() {
  return {
    username: `pm_admin_${randomBytes(4).toString('hex')}`,
    password: `pm-admin-${randomBytes(16).toString('hex')}`,
  }
}

/** Admin credentials for a run against BASE_URL: ADMIN_USERNAME/ADMIN_PASSWORD if both are set. */
function adminFromEnv() {
  const username = process.env.ADMIN_USERNAME?.trim()
  const password = process.env.ADMIN_PASSWORD
  return username && password ? { username, password } : undefined
}

/** True when the environment file fills in both adminUsername and adminPassword. */
function environmentHasAdmin() {
  try {
    const { values } = JSON.parse(readFileSync(ENVIRONMENT, 'utf8'))
    const filled = (key) => values.some((v) => v.key === key && v.enabled !== false && v.value)
    return filled('adminUsername') && filled('adminPassword')
  } catch {
    return false
  }
}

function startServer(port, admin) {
  if (!existsSync(SERVER)) throw new Error('dist/server.js not found: run `npm run build` first')
  const child = spawn(process.execPath, [SERVER], {
    cwd: ROOT,
    env: {
      ...process.env,
      PORT: String(port),
      HOST,
      NODE_ENV: 'test',
      BCRYPT_ROUNDS: '4',
      // The collection checks /openapi.json and the docs link on GET /.
      DOCS_ENABLED: 'true',
      // The Admin folder logs in as this account (created at boot).
      ADMIN_USERNAME: admin.username,
      ADMIN_PASSWORD: admin.password,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.on('data', keepOutput)
  child.stderr.on('data', keepOutput)
  child.on('error', (err) => keepOutput(`spawn error: ${err.message}`))
  return child
}

/** Polls GET /healthz until it answers 200; fails after START_TIMEOUT_MS or as soon as the child exits. */
async function waitForHealthy(baseUrl, child) {
  const deadline = Date.now() + START_TIMEOUT_MS
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (child !== undefined && !running(child)) {
      throw new Error(`server exited (code ${child.exitCode}, signal ${child.signalCode}) before it was healthy`)
    }
    try {
      const res = await fetch(`${baseUrl}/healthz`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      if (res.status === 200) return
      last = `status ${res.status}`
    } catch (err) {
      last = err.cause?.code ?? err.cause?.message ?? err.message
    }
    await sleep(100)
  }
  throw new Error(`${baseUrl}/healthz did not answer 200 within ${START_TIMEOUT_MS / 1000} s (last: ${last})`)
}

/** SIGTERM, then wait for the exit; SIGKILL if it takes too long. Resolves to true on a clean exit 0. */
async function stopServer(child) {
  if (child === undefined) return true
  if (!running(child)) return child.exitCode === 0
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  let timer
  const inTime = await Promise.race([
    exited.then(() => true),
    new Promise((resolve) => {
      timer = setTimeout(resolve, STOP_TIMEOUT_MS, false)
    }),
  ])
  clearTimeout(timer)
  if (!inTime) {
    log(`server did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM: killing it`)
    child.kill('SIGKILL')
    await exited
    return false
  }
  if (child.exitCode !== 0) log(`server exited with code ${child.exitCode} (signal ${child.signalCode}) after SIGTERM`)
  return child.exitCode === 0
}

/** `admin`, when given, overrides the environment file's adminUsername/adminPassword. */
function runNewman(baseUrl, admin) {
  const envVar = [{ key: 'baseUrl', value: baseUrl }]
  if (admin) {
    envVar.push({ key: 'adminUsername', value: admin.username }, { key: 'adminPassword', value: admin.password })
  }
  return new Promise((resolve, reject) => {
    newman.run(
      {
        collection: COLLECTION,
        environment: ENVIRONMENT,
        envVar,
        reporters: ['cli'],
        timeoutRequest: 10_000,
        timeout: 5 * 60_000,
      },
      (err, summary) => (err ? reject(err) : resolve(summary)),
    )
  })
}

/** True when the run had no failure of any kind and ran at least one assertion. */
function passed(summary) {
  const { stats, failures, error } = summary.run
  if (error) log(`run error: ${error.message ?? error}`)
  if (stats.assertions.total === 0) log('no assertion ran')
  return (
    !error &&
    failures.length === 0 &&
    stats.assertions.total > 0 &&
    stats.assertions.failed === 0 &&
    stats.requests.failed === 0 &&
    stats.testScripts.failed === 0 &&
    stats.prerequestScripts.failed === 0
  )
}

async function main() {
  let ok = false
  try {
    let baseUrl = process.env.BASE_URL?.trim().replace(/\/+$/, '')
    let admin
    if (baseUrl) {
      log(`running against BASE_URL ${baseUrl}`)
      admin = adminFromEnv()
      if (!admin && !environmentHasAdmin()) {
        log('no admin credentials (ADMIN_USERNAME/ADMIN_PASSWORD or the environment file): admin requests are skipped')
      }
    } else {
      const port = await freePort()
      baseUrl = `http://${HOST}:${port}`
      admin = makeAdmin()
      server = startServer(port, admin)
      log(`started dist/server.js (pid ${server.pid}) on ${baseUrl} with admin ${admin.username}`)
    }
    await waitForHealthy(baseUrl, server)
    ok = passed(await runNewman(baseUrl, admin))
  } catch (err) {
    log(`error: ${err.message}`)
  } finally {
    const stoppedCleanly = await stopServer(server)
    ok = ok && stoppedCleanly
  }
  if (!ok && server !== undefined) printServerOutput()
  log(ok ? 'passed' : 'FAILED')
  return ok ? 0 : 1
}

// Never leave the server behind: on Ctrl-C or SIGTERM stop it first; at exit kill it if it still runs.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    log(`${signal}: stopping`)
    await stopServer(server)
    process.exit(128 + constants.signals[signal])
  })
}
process.on('exit', () => {
  if (running(server)) server.kill('SIGKILL')
})

process.exitCode = await main()
