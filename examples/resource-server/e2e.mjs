// End-to-end run of the example against the real auth server: `npm run example:e2e` at the root.
//
// Needs the built auth server (`npm run build` at the root: this script builds nothing) and the
// example's own dependencies (`npm ci --prefix examples/resource-server`). It generates an Ed25519
// key pair in a temporary directory, starts dist/server.js with it (EdDSA, so that the JWKS lists a
// key) and with one introspection client, starts this example twice (MODE=jwks and
// MODE=introspection), then plays a user's session against both and checks each answer, ending
// with the trade-off the README documents: after a logout the introspection instance refuses the
// token at once, while the jwks instance still takes it (until it expires).
//
// Exits 0 with one summary line; on any failure, 1 with what was expected, what came, and the end of
// every child's output. Children are stopped on every way out; the whole run is bounded (60 s).
import { spawn } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const ROOT = path.resolve(HERE, '../..')
const AUTH_SERVER = path.join(ROOT, 'dist/server.js')
const EXAMPLE = path.join(HERE, 'server.js')
const HOST = '127.0.0.1'
const RUN_TIMEOUT_MS = 60_000
const START_TIMEOUT_MS = 15_000
const REQUEST_TIMEOUT_MS = 5_000
const OUTPUT_LINES_KEPT = 40
const CLIENT_ID = 'notes'

/**
 * @typedef {{ name: string, child: import('node:child_process').ChildProcess, tail: string[], url: string }} Started
 * @typedef {{ status: number, headers: Headers, body: any }} Answer
 */

/** Every child started, for the clean-up. @type {Started[]} */
const started = []
let checks = 0
/** @type {string | undefined} */
let workDir

class Failure extends Error {}

/** @param {string} message */
const log = (message) => process.stderr.write(`[example:e2e] ${message}\n`)

/**
 * @param {unknown} condition
 * @param {string} what  what was expected, said so that the failure reads as a sentence
 * @param {unknown} [got]
 */
function check(condition, what, got) {
  checks++
  if (!condition) throw new Failure(`expected ${what}${got === undefined ? '' : `; got ${JSON.stringify(got)}`}`)
}

/** @returns {Promise<number>} a port the OS reports free right now */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, HOST, () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address())
      srv.close(() => resolve(port))
    })
  })
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Starts `node script` in the work directory (so that no developer's .env is read) with only `env`
 * and PATH/HOME, keeps the end of its output, and resolves once GET /healthz answers 200.
 * @param {string} name
 * @param {string} script
 * @param {Record<string, string>} env
 * @returns {Promise<Started>}
 */
async function start(name, script, env) {
  const port = await freePort()
  const child = spawn(process.execPath, [script], {
    cwd: workDir,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: workDir, ...env, HOST, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  /** @type {Started} */
  const s = { name, child, tail: [], url: `http://${HOST}:${port}` }
  started.push(s)
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8')
    stream?.on('data', (/** @type {string} */ chunk) => {
      for (const line of chunk.split('\n')) if (line.trim()) s.tail.push(line)
      s.tail.splice(0, Math.max(0, s.tail.length - OUTPUT_LINES_KEPT))
    })
  }
  child.on('error', (err) => s.tail.push(`spawn error: ${err.message}`))

  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Failure(`${name} exited (${child.exitCode ?? child.signalCode}) before it answered /healthz`)
    try {
      const res = await fetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      if (res.status === 200) return s
    } catch {}
    await sleep(50)
  }
  throw new Failure(`${name} did not answer /healthz within ${START_TIMEOUT_MS / 1000} s`)
}

/**
 * One request; the body parsed as JSON when it is JSON.
 * @param {string} url
 * @param {RequestInit} [init]
 * @returns {Promise<Answer>}
 */
async function request(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
  const text = await res.text()
  let body = text
  try {
    body = JSON.parse(text)
  } catch {}
  return { status: res.status, headers: res.headers, body }
}

/**
 * GET /notes with `token` as a bearer token (none when undefined).
 * @param {Started} example
 * @param {string | undefined} token
 */
function getNotes(example, token) {
  return request(`${example.url}/notes`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
}

/**
 * @param {string} baseUrl
 * @param {string} username
 * @param {string} password
 * @param {string} [scope]
 */
async function login(baseUrl, username, password, scope) {
  const form = new URLSearchParams({ grant_type: 'password', username, password, ...(scope ? { scope } : {}) })
  const res = await request(`${baseUrl}/token`, { method: 'POST', body: form })
  check(res.status === 200, `POST /token as ${username} to answer 200`, res)
  return /** @type {{ access_token: string, refresh_token: string, scope: string }} */ (res.body)
}

/**
 * A token shaped exactly like the auth server's, signed by a key it never had: the signature is
 * the only thing wrong with it. jose comes from this example's own dependencies.
 * @param {string} realToken  whose header and claims are copied
 */
async function forge(realToken) {
  const { SignJWT, decodeJwt, decodeProtectedHeader } = await import('jose')
  const { privateKey } = generateKeyPairSync('ed25519')
  const header = decodeProtectedHeader(realToken)
  return new SignJWT(decodeJwt(realToken))
    .setProtectedHeader({ alg: 'EdDSA', typ: 'at+jwt', kid: /** @type {string} */ (header.kid) })
    .sign(privateKey)
}

/**
 * The 401 of RFC 6750 §3 with our realm; `error` when credentials were sent.
 * @param {Answer} res
 * @param {string} what
 * @param {boolean} withError
 */
function expectChallenge(res, what, withError) {
  const challenge = res.headers.get('www-authenticate') ?? ''
  check(res.status === 401, `${what}: 401`, { status: res.status, body: res.body })
  check(challenge.startsWith('Bearer realm="notes"'), `${what}: a Bearer challenge with realm="notes"`, challenge)
  check(
    challenge.includes('error="invalid_token"') === withError,
    `${what}: ${withError ? 'error="invalid_token"' : 'no error code (no credentials were sent)'}`,
    challenge,
  )
}

async function main() {
  if (!existsSync(AUTH_SERVER))
    throw new Failure(`${path.relative(process.cwd(), AUTH_SERVER)} not found: run \`npm run build\` at the root first`)
  for (const dep of ['fastify', 'jose'])
    if (!existsSync(path.join(HERE, 'node_modules', dep)))
      throw new Failure(
        `the example's dependencies are not installed: run \`npm ci --prefix examples/resource-server\``,
      )

  workDir = mkdtempSync(path.join(tmpdir(), 'notes-e2e-'))
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const privateKeyFile = path.join(workDir, 'jwt-private.pem')
  const publicKeyFile = path.join(workDir, 'jwt-public.pem')
  writeFileSync(privateKeyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 })
  writeFileSync(publicKeyFile, publicKey.export({ format: 'pem', type: 'spki' }))
  // 32 random bytes in base64url: 43 characters, over the auth server's 32-character minimum.
  const clientSecret = randomBytes(32).toString('base64url')
  const admin = { username: `e2e_admin_${randomBytes(4).toString('hex')}`, password: randomBytes(18).toString('hex') }

  const auth = await start('auth server', AUTH_SERVER, {
    NODE_ENV: 'test',
    BCRYPT_ROUNDS: '4',
    JWT_ALGORITHM: 'EdDSA',
    JWT_PRIVATE_KEY_FILE: privateKeyFile,
    JWT_PUBLIC_KEY_FILE: publicKeyFile,
    // With an asymmetric algorithm MFA needs a key of its own, or it is off: keep the server whole.
    MFA_ENCRYPTION_KEY: randomBytes(32).toString('hex'),
    INTROSPECTION_CLIENTS: `${CLIENT_ID}:${clientSecret}`,
    // An account whose token can lack the scope `user` (scope=admin alone), for the 403.
    ADMIN_USERNAME: admin.username,
    ADMIN_PASSWORD: admin.password,
  })
  const common = { AUTH_SERVER_URL: auth.url, LOG_LEVEL: 'info' }
  const [jwks, introspection] = await Promise.all([
    start('example (jwks)', EXAMPLE, { ...common, MODE: 'jwks' }),
    start('example (introspection)', EXAMPLE, {
      ...common,
      MODE: 'introspection',
      INTROSPECTION_CLIENT_ID: CLIENT_ID,
      INTROSPECTION_CLIENT_SECRET: clientSecret,
    }),
  ])
  const examples = /** @type {const} */ ([jwks, introspection])

  // A user, logged in.
  const user = { username: `e2e_${randomBytes(4).toString('hex')}`, password: randomBytes(18).toString('hex') }
  const registered = await request(`${auth.url}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(user),
  })
  check(registered.status === 201, 'POST /register to answer 201', registered)
  const userId = registered.body.id
  const tokens = await login(auth.url, user.username, user.password)
  check(tokens.scope.split(' ').includes('user'), 'the login to grant the scope user', tokens.scope)

  // The owner's notes, in both modes; the username only where the auth server tells it.
  for (const example of examples) {
    const res = await getNotes(example, tokens.access_token)
    check(res.status === 200, `${example.name}: GET /notes with the token to answer 200`, res)
    check(res.body.owner === userId, `${example.name}: owner to be the user's id ${userId}`, res.body.owner)
    check(Array.isArray(res.body.notes) && res.body.notes.length > 0, `${example.name}: a list of notes`, res.body)
  }
  check(
    (await getNotes(introspection, tokens.access_token)).body.username === user.username,
    `the introspection instance to return the username ${user.username}`,
  )

  // What must not open the notes, in both modes.
  const forged = await forge(tokens.access_token)
  const adminTokens = await login(auth.url, admin.username, admin.password, 'admin')
  check(adminTokens.scope === 'admin', 'the admin login with scope=admin to grant only admin', adminTokens.scope)
  for (const example of examples) {
    expectChallenge(await getNotes(example, undefined), `${example.name}, no token`, false)
    expectChallenge(await getNotes(example, 'garbage'), `${example.name}, a garbage token`, true)
    expectChallenge(await getNotes(example, forged), `${example.name}, a token signed by another key`, true)
    // The introspection endpoint vouches for refresh tokens too: the example must still refuse one.
    expectChallenge(await getNotes(example, tokens.refresh_token), `${example.name}, the refresh token`, true)
    const res = await getNotes(example, adminTokens.access_token)
    const challenge = res.headers.get('www-authenticate') ?? ''
    check(res.status === 403, `${example.name}: a token without the scope user to get 403`, res)
    check(challenge.includes('error="insufficient_scope"'), `${example.name}: error="insufficient_scope"`, challenge)
  }

  // Logout, then the documented trade-off.
  const logout = await request(`${auth.url}/logout`, {
    method: 'POST',
    headers: { authorization: `Bearer ${tokens.access_token}` },
  })
  check(logout.status === 204, 'POST /logout to answer 204', logout)
  expectChallenge(
    await getNotes(introspection, tokens.access_token),
    `${introspection.name}, right after the logout (the revocation is seen at once)`,
    true,
  )
  const stale = await getNotes(jwks, tokens.access_token)
  check(
    stale.status === 200 && stale.body.owner === userId,
    `${jwks.name}: still 200 right after the logout (a revocation shows only at the token's expiry)`,
    { status: stale.status, body: stale.body },
  )
}

/** SIGTERM to every child, SIGKILL to those still running after 3 s; then the work directory goes. */
async function cleanUp() {
  await Promise.all(
    started.map(async ({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
      await exited
      clearTimeout(timer)
    }),
  )
  if (workDir) rmSync(workDir, { recursive: true, force: true })
}

// Last resort (an exception in a handler, process.exit elsewhere): no child outlives this script.
process.on('exit', () => {
  for (const { child } of started) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
})
for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM'])) {
  process.once(signal, async () => {
    log(`${signal}: stopping`)
    await cleanUp()
    process.exit(1)
  })
}

const t0 = performance.now()
/** @type {NodeJS.Timeout | undefined} */
let timer
const timeout = new Promise((_, reject) => {
  timer = setTimeout(() => reject(new Failure(`not done within ${RUN_TIMEOUT_MS / 1000} s`)), RUN_TIMEOUT_MS)
})
let failed = false
try {
  await Promise.race([main(), timeout])
} catch (err) {
  failed = true
  log(`FAILED: ${err instanceof Failure ? err.message : /** @type {Error} */ (err).stack}`)
  for (const s of started) {
    log(`--- ${s.name} (${s.url}), last ${s.tail.length} lines of output:`)
    process.stderr.write(`${s.tail.join('\n')}\n`)
  }
} finally {
  clearTimeout(timer)
  await cleanUp()
}
if (failed) process.exit(1)
console.log(
  `example:e2e passed: ${checks} checks in ${((performance.now() - t0) / 1000).toFixed(1)} s; jwks and introspection both serve the owner's notes and refuse bad tokens; after logout introspection refused the token at once, jwks still accepted it (until expiry)`,
)
