// Runs the Postman collection (postman/) with newman against a live server: `npm run postman`.
//
// With BASE_URL set, runs against that server. Otherwise starts the built server (dist/server.js:
// run `npm run build` first) on a free port of 127.0.0.1 with cheap bcrypt, an admin account
// (ADMIN_USERNAME/ADMIN_PASSWORD, a random password per run) and an introspection client
// (INTROSPECTION_CLIENTS=<id>:<secret>, a random hex secret per run), waits for /healthz, runs the
// collection with that account as its adminUsername/adminPassword and that client as its
// introspectionClientId/introspectionClientSecret, then stops the server with SIGTERM.
// Against BASE_URL, the admin credentials come from ADMIN_USERNAME/ADMIN_PASSWORD in this process's
// environment if both are set, else from the environment file, and the introspection client from
// INTROSPECTION_CLIENT_ID/INTROSPECTION_CLIENT_SECRET likewise; without them the collection skips
// the requests that need the admin scope, or the introspection client. Exits non-zero when the
// server does not start or stop cleanly, or when any request, script or assertion fails. The
// server's output is kept and printed only when something fails.
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { constants } from 'node:os'
import { fileURLToPath } from 'node:url'
import newman from 'newman'
import { captureOutput, freePort, HOST, hasExited, killAll, sleep, spawnNode, waitExit } from '../bench/lib/process.mjs'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const COLLECTION = fileURLToPath(new URL('../postman/auth-api.postman_collection.json', import.meta.url))
const ENVIRONMENT = fileURLToPath(new URL('../postman/local.postman_environment.json', import.meta.url))
const SERVER = fileURLToPath(new URL('../dist/server.js', import.meta.url))
const START_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 10_000
const LOG_LINES_KEPT = 200

/**
 * @typedef {import('../bench/lib/process.mjs').Child} Child
 * @typedef {{ username: string, password: string }} Admin
 * @typedef {{ id: string, secret: string }} IntrospectionClient
 */

/** The server this script started, if any. @type {Child | undefined} */
let server
/** Its last LOG_LINES_KEPT lines of output. @type {import('../bench/lib/process.mjs').Output | undefined} */
let serverOutput

/** @param {string} message */
const log = (message) => process.stderr.write(`[newman] ${message}\n`)
/** @param {Child | undefined} child */
const running = (child) => child !== undefined && !hasExited(child)

function printServerOutput() {
  const lines = serverOutput?.tail ?? []
  if (lines.length === 0) return
  log(`server output (last ${lines.length} lines):`)
  process.stderr.write(`${lines.join('\n')}\n`)
}

/** The admin account the started server creates at boot; fresh for every run, never a default. */
function makeAdmin() {
  return {
    username: `pm_admin_${randomBytes(4).toString('hex')}`,
    password: `pm-admin-${randomBytes(16).toString('hex')}`,
  }
}

/**
 * The introspection client the started server accepts (INTROSPECTION_CLIENTS); fresh for every run.
 * The secret is hex, so that HTTP Basic carries it unchanged (RFC 6749 §2.3.1 form-encodes it first).
 */
function makeIntrospectionClient() {
  return { id: `pm-rs-${randomBytes(4).toString('hex')}`, secret: randomBytes(32).toString('hex') }
}

/** Admin credentials for a run against BASE_URL: ADMIN_USERNAME/ADMIN_PASSWORD if both are set. */
function adminFromEnv() {
  const username = process.env.ADMIN_USERNAME?.trim()
  const password = process.env.ADMIN_PASSWORD
  return username && password ? { username, password } : undefined
}

/**
 * The introspection client for a run against BASE_URL: INTROSPECTION_CLIENT_ID/INTROSPECTION_CLIENT_SECRET
 * if both are set (one entry of that server's INTROSPECTION_CLIENTS).
 */
function introspectionClientFromEnv() {
  const id = process.env.INTROSPECTION_CLIENT_ID?.trim()
  const secret = process.env.INTROSPECTION_CLIENT_SECRET
  return id && secret ? { id, secret } : undefined
}

/**
 * True when the environment file fills in every one of `keys`.
 * @param {...string} keys
 */
function environmentHas(...keys) {
  try {
    /** @type {{ values: { key: string, value?: string, enabled?: boolean }[] }} */
    const { values } = JSON.parse(readFileSync(ENVIRONMENT, 'utf8'))
    /** @param {string} key */
    const filled = (key) => values.some((v) => v.key === key && v.enabled !== false && v.value)
    return keys.every(filled)
  } catch {
    return false
  }
}

/**
 * Starts dist/server.js on `port`, its output kept in serverOutput.
 * @param {number} port
 * @param {Admin} admin
 * @param {IntrospectionClient} client
 */
function startServer(port, admin, client) {
  if (!existsSync(SERVER)) throw new Error('dist/server.js not found: run `npm run build` first')
  const child = spawnNode([SERVER], {
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
      // The introspection requests authenticate as this client (HTTP Basic).
      INTROSPECTION_CLIENTS: `${client.id}:${client.secret}`,
    },
  })
  const output = captureOutput(child, { keep: LOG_LINES_KEPT, maxLineLength: Number.POSITIVE_INFINITY })
  child.on('error', (err) => output.add(`spawn error: ${err.message}`))
  serverOutput = output
  return child
}

/**
 * Polls GET /healthz until it answers 200; fails after START_TIMEOUT_MS or as soon as the child exits.
 * @param {string} baseUrl
 * @param {Child | undefined} child  the server this script started, if any
 */
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
      const { cause, message } = /** @type {Error & { cause?: { code?: string, message?: string } }} */ (err)
      last = cause?.code ?? cause?.message ?? message
    }
    await sleep(100)
  }
  throw new Error(`${baseUrl}/healthz did not answer 200 within ${START_TIMEOUT_MS / 1000} s (last: ${last})`)
}

/**
 * SIGTERM, then wait for the exit; SIGKILL if it takes too long. Resolves to true on a clean exit 0.
 * @param {Child | undefined} child
 */
async function stopServer(child) {
  if (child === undefined) return true
  if (!running(child)) return child.exitCode === 0
  child.kill('SIGTERM')
  if (!(await waitExit(child, STOP_TIMEOUT_MS))) {
    log(`server did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM: killing it`)
    child.kill('SIGKILL')
    await waitExit(child)
    return false
  }
  if (child.exitCode !== 0) log(`server exited with code ${child.exitCode} (signal ${child.signalCode}) after SIGTERM`)
  return child.exitCode === 0
}

/**
 * `admin`, when given, overrides the environment file's adminUsername/adminPassword, and `client`
 * its introspectionClientId/introspectionClientSecret.
 * @param {string} baseUrl
 * @param {Admin | undefined} admin
 * @param {IntrospectionClient | undefined} client
 * @returns {Promise<import('newman').Summary>}
 */
function runNewman(baseUrl, admin, client) {
  const envVar = [{ key: 'baseUrl', value: baseUrl }]
  if (admin) {
    envVar.push({ key: 'adminUsername', value: admin.username }, { key: 'adminPassword', value: admin.password })
  }
  if (client) {
    envVar.push(
      { key: 'introspectionClientId', value: client.id },
      { key: 'introspectionClientSecret', value: client.secret },
    )
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

/**
 * True when the run had no failure of any kind and ran at least one assertion.
 * @param {import('newman').Summary} summary
 */
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
    let client
    if (baseUrl) {
      log(`running against BASE_URL ${baseUrl}`)
      admin = adminFromEnv()
      if (!admin && !environmentHas('adminUsername', 'adminPassword')) {
        log('no admin credentials (ADMIN_USERNAME/ADMIN_PASSWORD or the environment file): admin requests are skipped')
      }
      client = introspectionClientFromEnv()
      if (!client && !environmentHas('introspectionClientId', 'introspectionClientSecret')) {
        log(
          'no introspection client (INTROSPECTION_CLIENT_ID/INTROSPECTION_CLIENT_SECRET or the environment file): introspection requests are skipped',
        )
      }
    } else {
      const port = await freePort()
      baseUrl = `http://${HOST}:${port}`
      admin = makeAdmin()
      client = makeIntrospectionClient()
      server = startServer(port, admin, client)
      log(
        `started dist/server.js (pid ${server.pid}) on ${baseUrl} with admin ${admin.username} and introspection client ${client.id}`,
      )
    }
    await waitForHealthy(baseUrl, server)
    ok = passed(await runNewman(baseUrl, admin, client))
  } catch (err) {
    log(`error: ${/** @type {Error} */ (err).message}`)
  } finally {
    const stoppedCleanly = await stopServer(server)
    ok = ok && stoppedCleanly
  }
  if (!ok && server !== undefined) printServerOutput()
  log(ok ? 'passed' : 'FAILED')
  return ok ? 0 : 1
}

// Never leave the server behind: on Ctrl-C or SIGTERM stop it first; at exit kill it if it still runs.
for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM'])) {
  process.once(signal, async () => {
    log(`${signal}: stopping`)
    await stopServer(server)
    process.exit(128 + constants.signals[signal])
  })
}
process.on('exit', killAll)

process.exitCode = await main()
