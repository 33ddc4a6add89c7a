// Test helpers: a fixed test configuration, the real app, a register-and-login shortcut, and a JWT
// forger for crafting hostile tokens (any header, any payload, any algorithm) signed in the test.
import { createHmac, randomUUID } from 'node:crypto'
import { type AddressInfo, connect, createServer } from 'node:net'
import { Writable } from 'node:stream'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { type AppDeps, buildApp } from '../src/app.js'
import { type Config, loadConfig } from '../src/config.js'
import { recordStatuses } from './statuses.js'

/** A fixed, random-looking 256-bit secret (43 base64url characters), used only by tests. */
export const TEST_SECRET = 'c1jCsJlYK1mUdQyC02Klplg2zj8a9NSeOiUblLv2_GM'
/** A second secret of the same shape: tokens signed with it must be refused. */
export const OTHER_SECRET = 'gy4XUUQg-_YLKkPAGUyrn4sJwHf3UW1let_oMVwjaLc'
/** A password that passes the policy (long enough, not common, not a username). */
export const TEST_PASSWORD = 'violet-Harbor-58-quill'

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
export const ISO_UTC_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/

export const REALM = 'fastify-auth-api'
export const CHALLENGE_MISSING = `Bearer realm="${REALM}"`
export const CHALLENGE_INVALID = `Bearer realm="${REALM}", error="invalid_token"`
export const FORM = 'application/x-www-form-urlencoded'

/** An RFC 6749 §5.2 error body as /token and /revoke send it: exactly these three keys. */
export const oauthError = (error: string, description: string) => ({
  error,
  error_description: description,
  detail: description,
})
export const INVALID_GRANT = oauthError('invalid_grant', 'Invalid credentials')

export type Env = Record<string, string | undefined>

export function testConfig(overrides: Env = {}): Config {
  return loadConfig({
    NODE_ENV: 'test',
    JWT_SECRET: TEST_SECRET,
    BCRYPT_ROUNDS: '4',
    AUDIT_LOG: 'false',
    ...overrides,
  })
}

/**
 * The real app (real bcrypt at cost 4, real JWT, real store), ready for inject. The caller closes it.
 * Its statuses are recorded for scripts/check-statuses.mjs (test/statuses.ts).
 */
export async function buildTestApp(overrides: Env = {}, deps: AppDeps = {}): Promise<FastifyInstance> {
  const app = recordStatuses(await buildApp(testConfig(overrides), deps))
  await app.ready()
  return app
}

/** A port the OS reports free on 127.0.0.1: bind port 0, read the port it chose, release it. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo
      probe.close(() => resolve(port))
    })
  })
}

/** The base URL of an app listening on an ephemeral loopback port. */
export async function listen(app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('expected a TCP address')
  return `http://127.0.0.1:${address.port}`
}

let counter = 0
/** A username no other test (in this or any other worker) uses: 3-32 characters, valid charset. */
export function uniqueUsername(prefix = 'user'): string {
  counter += 1
  return `${prefix}_${counter}_${randomUUID().slice(0, 8)}`
}

export function register(
  app: FastifyInstance,
  body: unknown,
  contentType = 'application/json',
): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url: '/register',
    headers: { 'content-type': contentType },
    payload: typeof body === 'string' ? body : JSON.stringify(body),
  })
}

/** POST a form body built from `fields` (a string is sent as is). */
export function postForm(
  app: FastifyInstance,
  url: string,
  fields: Record<string, string> | string,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url,
    headers: { 'content-type': FORM, ...headers },
    payload: typeof fields === 'string' ? fields : new URLSearchParams(fields).toString(),
  })
}

/** POST /token with a form body built from `fields` (a string is sent as is). */
export function postToken(
  app: FastifyInstance,
  fields: Record<string, string> | string,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return postForm(app, '/token', fields, headers)
}

export function getMe(app: FastifyInstance, authorization?: string): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'GET',
    url: '/users/me',
    headers: authorization === undefined ? {} : { authorization },
  })
}

export interface PublicUser {
  id: string
  username: string
  email: string | null
  email_verified: boolean
  created_at: string
}

export interface LoggedIn {
  user: PublicUser
  username: string
  password: string
  token: string
}

/** Registers a fresh user (unique name unless given) and logs in; fails loudly if either step does. */
export async function registerAndLogin(
  app: FastifyInstance,
  username = uniqueUsername(),
  password = TEST_PASSWORD,
): Promise<LoggedIn> {
  const reg = await register(app, { username, password })
  if (reg.statusCode !== 201) throw new Error(`register failed: ${reg.statusCode} ${reg.body}`)
  const login = await postToken(app, { username, password })
  if (login.statusCode !== 200) throw new Error(`login failed: ${login.statusCode} ${login.body}`)
  return {
    user: reg.json<PublicUser>(),
    username,
    password,
    token: login.json<{ access_token: string }>().access_token,
  }
}

// --- JWT forging -------------------------------------------------------------------------------

export const b64url = (value: string | Buffer): string => Buffer.from(value).toString('base64url')
const encodeJson = (value: unknown): string => b64url(JSON.stringify(value))

/** Drops keys whose value is undefined, so `{ ...claims, exp: undefined }` removes `exp`. */
function compact(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== undefined))
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** The header our server issues: HS256, typ at+jwt, the configured kid. */
export function accessHeader(app: FastifyInstance): Record<string, unknown> {
  return { alg: 'HS256', typ: 'at+jwt', kid: app.config.jwt.kid }
}

/** The claims our server issues for `sub`, valid for 30 minutes from now. */
export function accessClaims(app: FastifyInstance, sub: string): Record<string, unknown> {
  const iat = nowSeconds()
  return {
    sub,
    iss: app.config.jwt.issuer,
    aud: app.config.jwt.audience,
    iat,
    exp: iat + 1800,
    jti: randomUUID(),
    scope: 'user',
    sid: randomUUID(),
    ver: 0,
  }
}

export interface ForgeOptions {
  /** Merged over accessHeader(app); an undefined value removes the key. */
  header?: Record<string, unknown>
  /** Merged over accessClaims(app, sub); an undefined value removes the key. */
  claims?: Record<string, unknown>
  /** Replaces the whole payload (arrays, numbers, null...): `claims` is then ignored. */
  payload?: unknown
  /** Replaces the payload segment's text before encoding (for a payload that is not JSON). */
  payloadText?: string
  /** The HMAC key; TEST_SECRET by default. */
  secret?: string | Buffer
  /** The HMAC hash; sha256 (HS256) by default, whatever the header says. */
  hash?: 'sha256' | 'sha384' | 'sha512'
  /** Replaces the signature segment ('' for an unsigned token). */
  signature?: string
}

/**
 * Builds a compact JWS by hand (node:crypto HMAC), so that tests can craft what no JWT library will
 * sign: alg none, unknown crit, non-object payloads, a header that lies about the algorithm.
 */
export function forgeToken(app: FastifyInstance, sub: string, options: ForgeOptions = {}): string {
  const header = compact({ ...accessHeader(app), ...options.header })
  const payload = 'payload' in options ? options.payload : compact({ ...accessClaims(app, sub), ...options.claims })
  const payloadSegment = options.payloadText !== undefined ? b64url(options.payloadText) : encodeJson(payload)
  const signingInput = `${encodeJson(header)}.${payloadSegment}`
  const signature =
    options.signature ??
    createHmac(options.hash ?? 'sha256', options.secret ?? TEST_SECRET)
      .update(signingInput)
      .digest('base64url')
  return `${signingInput}.${signature}`
}

/** A parsed JSON body. Tests check bodies by value (toEqual), so the type is loose on purpose. */
// biome-ignore lint/suspicious/noExplicitAny: bodies are checked by value, not by type
export type JsonBody = Record<string, any>

/** The JSON body of a fetch Response. */
export async function readJson(res: Response): Promise<JsonBody> {
  return (await res.json()) as JsonBody
}

/** Response headers minus the ones that differ on every response by design. */
export function stableHeaders(headers: Headers | Record<string, unknown>): Record<string, unknown> {
  const entries = headers instanceof Headers ? [...headers.entries()] : Object.entries(headers)
  return Object.fromEntries(entries.filter(([name]) => name !== 'date' && name !== 'x-request-id'))
}

// --- Sessions, accounts and admin --------------------------------------------------------------

/** An opaque refresh token: the rt_ prefix and at least 256 random bits in base64url (43 characters). */
export const REFRESH_TOKEN_PATTERN = /^rt_[A-Za-z0-9_-]{43,}$/

/** The body of a successful /token answer. */
export interface TokenBody {
  access_token: string
  token_type: 'bearer'
  expires_in: number
  refresh_token: string
  scope: string
}

/** The Authorization header of a Bearer token. */
export const bearer = (token: string): { authorization: string } => ({ authorization: `Bearer ${token}` })

/** The password grant; fails loudly unless it answers 200. `fields` adds scope and the like. */
export async function login(
  app: FastifyInstance,
  username: string,
  password = TEST_PASSWORD,
  fields: Record<string, string> = {},
): Promise<TokenBody> {
  const res = await postToken(app, { username, password, ...fields })
  if (res.statusCode !== 200) throw new Error(`login failed: ${res.statusCode} ${res.body}`)
  return res.json<TokenBody>()
}

/** POST /token with grant_type=refresh_token (and `fields`, e.g. scope). */
export function refresh(
  app: FastifyInstance,
  refreshToken: string,
  fields: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return postToken(app, { grant_type: 'refresh_token', refresh_token: refreshToken, ...fields })
}

/** POST /revoke with a form body built from `fields` (a string is sent as is). */
export function postRevoke(
  app: FastifyInstance,
  fields: Record<string, string> | string,
  headers: Record<string, string> = {},
): Promise<LightMyRequestResponse> {
  return postForm(app, '/revoke', fields, headers)
}

/** A request with a Bearer token and, when `body` is given, a JSON body. */
export function authed(
  app: FastifyInstance,
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  url: string,
  token: string | undefined,
  body?: unknown,
): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = token === undefined ? {} : bearer(token)
  if (body !== undefined) headers['content-type'] = 'application/json'
  return app.inject({
    method,
    url,
    headers,
    ...(body === undefined ? {} : { payload: typeof body === 'string' ? body : JSON.stringify(body) }),
  })
}

/** The claims of a JWT, decoded without verification (for assertions on what we issued). */
export function decodeClaims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8'))
}

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
}

/**
 * Writes `request` as is (CRLFs included; send `Connection: close`) to a new socket and reads until
 * the server closes it: for what no HTTP client sends (two Authorization headers, Content-Length with Transfer-Encoding).
 * A Buffer is written byte for byte (bytes that are not UTF-8 in a header or the request line).
 */
export function rawHttp(port: number, request: string | Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let data = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk) => {
      data += chunk
    })
    socket.on('error', reject)
    socket.on('close', () => {
      const split = data.indexOf('\r\n\r\n')
      const head = split === -1 ? data : data.slice(0, split)
      const body = split === -1 ? '' : data.slice(split + 4)
      const [statusLine = '', ...headerLines] = head.split('\r\n')
      const headers: Record<string, string> = {}
      for (const line of headerLines) {
        const colon = line.indexOf(':')
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body })
    })
    socket.write(request)
  })
}

/** The port of an app started with listen(). */
export function portOf(base: string): number {
  return Number(new URL(base).port)
}

/** A Writable that keeps every log line, parsed. */
export function lineCollector(): { stream: Writable; lines: string[]; records: () => Record<string, unknown>[] } {
  const lines: string[] = []
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(...String(chunk).split('\n').filter(Boolean))
      callback()
    },
  })
  return { stream, lines, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) }
}
