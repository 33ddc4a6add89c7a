// Our own attack suite: forged tokens of every kind (alg none, other algorithms, broken signatures,
// keys named by the token, kid and crit tricks, payloads that are not claims, bad iss, aud, sub,
// typ, time and own claims), aimed at the admin endpoints (forging admin is the prize); claim
// tampering, header tricks, enumeration by message, brute force, mass assignment, oversized and
// malformed input. Each expects the safe answer, and no answer anywhere is a 5xx.
import { constants, generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildApp } from '../src/app.js'
import {
  accessClaims,
  accessHeader,
  authed,
  b64url,
  CHALLENGE_INVALID,
  CHALLENGE_MISSING,
  decodeClaims,
  FORM,
  forgeToken,
  INVALID_GRANT,
  listen,
  login,
  nowSeconds,
  OTHER_SECRET,
  oauthError,
  portOf,
  postToken,
  type RawResponse,
  rawHttp,
  register,
  stableHeaders,
  TEST_PASSWORD,
  TEST_SECRET,
  testConfig,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'
import { recordStatuses } from './statuses.js'

const ADMIN = { ADMIN_USERNAME: 'attack_admin', ADMIN_PASSWORD: 'cobalt-Willow-38-harbor' }
const NOT_AUTHENTICATED = { detail: 'Not authenticated' }
const INVALID_CREDENTIALS = { detail: 'Could not validate credentials' }
const NEED_FORM = oauthError('invalid_request', 'Content-Type must be application/x-www-form-urlencoded')
const NEED_JSON = { detail: 'Content-Type must be application/json' }
const NOT_JSON = { detail: 'Request body is not valid JSON' }
const WRONG = 'not-the-password-99'

/** Every status any app of this file answered (through Fastify, or read off a raw socket). */
const statuses: { status: number; what: string }[] = []

/** The real app, with a hook that records every status it sends; closed in afterAll. */
async function recordedApp(env: Record<string, string> = {}): Promise<FastifyInstance> {
  const app = recordStatuses(await buildApp(testConfig(env)))
  app.addHook('onResponse', async (request, reply) => {
    statuses.push({ status: reply.statusCode, what: `${request.method} ${request.url}` })
  })
  await app.ready()
  return app
}

let app: FastifyInstance
let adminId: string
beforeAll(async () => {
  app = await recordedApp({ ...ADMIN, REGISTER_RATE_LIMIT_MAX: '10000', LOGIN_IP_MAX_FAILURES: '10000' })
  const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
  adminId = decodeClaims(admin.access_token).sub as string
})
afterAll(async () => {
  await app.close()
})

/** 401 invalid_token with the generic body, from inject or from a raw socket. */
function expectInvalidToken(res: LightMyRequestResponse | RawResponse): void {
  expect('statusCode' in res ? res.statusCode : res.status).toBe(401)
  expect(JSON.parse(res.body)).toEqual(INVALID_CREDENTIALS)
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
}

function expectNotAuthenticated(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual(NOT_AUTHENTICATED)
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
}

async function newUser(prefix = 'atk'): Promise<{ id: string; username: string }> {
  const username = uniqueUsername(prefix)
  const res = await register(app, { username, password: TEST_PASSWORD })
  expect(res.statusCode).toBe(201)
  return res.json()
}

const listUsers = (authorization: string) => app.inject({ method: 'GET', url: '/users', headers: { authorization } })

// --- forged tokens -------------------------------------------------------------------------------

/** The claims of a valid admin token: what every forgery below tries to pass off. */
const adminClaims = (): Record<string, unknown> => ({ ...accessClaims(app, adminId), scope: 'user admin' })

const attacker = {
  rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }),
  ec: generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  ed: generateKeyPairSync('ed25519'),
}

type AsymAlg = 'RS256' | 'PS256' | 'ES256' | 'EdDSA'

/** A token signed with the attacker's own asymmetric key, header merged over ours. */
function forgeAsym(alg: AsymAlg, header: Record<string, unknown> = {}): string {
  const input = `${b64url(JSON.stringify({ ...accessHeader(app), alg, ...header }))}.${b64url(JSON.stringify(adminClaims()))}`
  const data = Buffer.from(input)
  const signature =
    alg === 'RS256'
      ? sign('sha256', data, attacker.rsa.privateKey)
      : alg === 'PS256'
        ? sign('sha256', data, {
            key: attacker.rsa.privateKey,
            padding: constants.RSA_PKCS1_PSS_PADDING,
            saltLength: 32,
          })
        : alg === 'ES256'
          ? sign('sha256', data, { key: attacker.ec.privateKey, dsaEncoding: 'ieee-p1363' })
          : sign(null, data, attacker.ed.privateKey)
  return `${input}.${signature.toString('base64url')}`
}

/** An HS256-style forgery of an admin token: header and claims merged over the valid ones. */
const forge = (options: Parameters<typeof forgeToken>[2] = {}) =>
  forgeToken(app, adminId, { ...options, claims: { ...adminClaims(), ...options.claims } })

/** A server that records every request: a jku or x5u header must never make us call it. */
let canary: Server
let canaryUrl: string
let canaryHits = 0
beforeAll(async () => {
  canary = createServer((_req, res) => {
    canaryHits++
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ keys: [attacker.rsa.publicKey.export({ format: 'jwk' })] }))
  })
  await new Promise<void>((resolve) => canary.listen(0, '127.0.0.1', resolve))
  canaryUrl = `http://127.0.0.1:${(canary.address() as AddressInfo).port}`
})
afterAll(async () => {
  await new Promise((resolve) => canary.close(resolve))
})

const now = () => nowSeconds()
const attackerJwk = () => attacker.rsa.publicKey.export({ format: 'jwk' })
const attackerCert = () => (attacker.rsa.publicKey.export({ format: 'der', type: 'spki' }) as Buffer).toString('base64')

const forgedTokens: [string, () => string][] = [
  // alg none in every spelling, with and without a signature (RFC 8725 §3.2, ASVS 9.1.2)
  ['alg none, no signature', () => forge({ header: { alg: 'none' }, signature: '' })],
  ['alg None, no signature', () => forge({ header: { alg: 'None' }, signature: '' })],
  ['alg NONE, no signature', () => forge({ header: { alg: 'NONE' }, signature: '' })],
  ['alg nOnE, no signature', () => forge({ header: { alg: 'nOnE' }, signature: '' })],
  ['alg none with an HS256 signature', () => forge({ header: { alg: 'none' } })],
  ['alg None with an HS256 signature', () => forge({ header: { alg: 'None' } })],
  ['no alg at all', () => forge({ header: { alg: undefined } })],
  // other algorithms than the pinned one
  ['alg HS384 signed with our secret', () => forge({ header: { alg: 'HS384' }, hash: 'sha384' })],
  ['alg HS512 signed with our secret', () => forge({ header: { alg: 'HS512' }, hash: 'sha512' })],
  ['alg RS256 with an HMAC signature made with our secret', () => forge({ header: { alg: 'RS256' } })],
  ['alg ES256 with an HMAC signature made with our secret', () => forge({ header: { alg: 'ES256' } })],
  ['alg PS256 with an HMAC signature made with our secret', () => forge({ header: { alg: 'PS256' } })],
  ['alg RS256 signed with an attacker RSA key', () => forgeAsym('RS256')],
  ['alg PS256 signed with an attacker RSA key', () => forgeAsym('PS256')],
  ['alg ES256 signed with an attacker EC key', () => forgeAsym('ES256')],
  ['alg EdDSA signed with an attacker Ed25519 key', () => forgeAsym('EdDSA')],
  // broken signatures
  ['an empty signature', () => forge({ signature: '' })],
  ['a signature with = padding', () => `${forge()}=`],
  ['a signature with == padding', () => `${forge()}==`],
  [
    'the signature of another token',
    () => `${forge().split('.').slice(0, 2).join('.')}.${forge({ claims: { jti: 'x' } }).split('.')[2]}`,
  ],
  ['a truncated signature', () => forge().slice(0, -2)],
  ['signed with another secret', () => forge({ secret: OTHER_SECRET })],
  ['signed with an empty key', () => forge({ secret: '' })],
  ['signed with the (empty) JWKS document as the HMAC key', () => forge({ secret: '{"keys":[]}' })],
  ['signed with our secret base64url-decoded', () => forge({ secret: Buffer.from(TEST_SECRET, 'base64url') })],
  // keys named by the token itself (RFC 8725 §3.10, ASVS 9.1.3): never used, never fetched
  ['a jwk header with the attacker RSA key, signed with it', () => forgeAsym('RS256', { jwk: attackerJwk() })],
  [
    'a jwk header with an attacker oct key, HS256-signed with it',
    () => forge({ header: { jwk: { kty: 'oct', k: b64url('attacker-secret') } }, secret: 'attacker-secret' }),
  ],
  ['a jku header pointing at the attacker', () => forgeAsym('RS256', { jku: `${canaryUrl}/jwks.json` })],
  ['an x5u header pointing at the attacker', () => forgeAsym('RS256', { x5u: `${canaryUrl}/cert.pem` })],
  ['an x5c header with the attacker key', () => forgeAsym('RS256', { x5c: [attackerCert()] })],
  [
    'a jku header on an HS256 token signed with another secret',
    () => forge({ header: { jku: canaryUrl }, secret: OTHER_SECRET }),
  ],
  // kid tricks
  ['a kid naming another key', () => forge({ header: { kid: 'another-key' } })],
  ['a kid with a path traversal', () => forge({ header: { kid: '../../etc/passwd' } })],
  [
    'a kid with a path traversal, signed with an empty key',
    () => forge({ header: { kid: '../../../../dev/null' }, secret: '' }),
  ],
  ['a SQL-ish kid', () => forge({ header: { kid: "' OR '1'='1' --" } })],
  ['a kid with a NUL', () => forge({ header: { kid: `${app.config.jwt.kid}\u0000` } })],
  ['an empty kid', () => forge({ header: { kid: '' } })],
  ['a numeric kid', () => forge({ header: { kid: 0 } })],
  ['a kid array', () => forge({ header: { kid: [app.config.jwt.kid] } })],
  ['no kid', () => forge({ header: { kid: undefined } })],
  // crit (RFC 7515 §4.1.11)
  ['crit [b64] with b64 false', () => forge({ header: { crit: ['b64'], b64: false } })],
  ['crit [x] with x', () => forge({ header: { crit: ['x'], x: 1 } })],
  ['crit [x] without x', () => forge({ header: { crit: ['x'] } })],
  // payloads that are not a claims object (RFC 7519 §7.2, fast-jwt GHSA-5hjw-83fp-phq9)
  ['a payload that is an array', () => forgeToken(app, adminId, { payload: [adminClaims()] })],
  ['a payload that is a number', () => forgeToken(app, adminId, { payload: 123 })],
  ['a payload that is null', () => forgeToken(app, adminId, { payload: null })],
  ['a payload that is a string', () => forgeToken(app, adminId, { payload: adminId })],
  ['a payload that is true', () => forgeToken(app, adminId, { payload: true })],
  ['a payload that is not JSON', () => forgeToken(app, adminId, { payloadText: '{"sub":' })],
  // iss, aud, sub
  ['iss as an array containing ours', () => forge({ claims: { iss: ['evil', app.config.jwt.issuer] } })],
  ['aud as an array containing ours', () => forge({ claims: { aud: ['another-api', app.config.jwt.audience] } })],
  ['aud as an array of only ours', () => forge({ claims: { aud: [app.config.jwt.audience] } })],
  ['another issuer, signed with our secret', () => forge({ claims: { iss: 'https://evil.example' } })],
  ['another audience, signed with our secret', () => forge({ claims: { aud: 'another-api' } })],
  ['a numeric sub', () => forge({ claims: { sub: 123 } })],
  ['an object sub', () => forge({ claims: { sub: { id: adminId } } })],
  ['sub {"$ne":null}', () => forge({ claims: { sub: { $ne: null } } })],
  ['sub as an array', () => forge({ claims: { sub: [adminId] } })],
  ['the admin username as sub', () => forge({ claims: { sub: ADMIN.ADMIN_USERNAME } })],
  ['an unknown user as sub', () => forge({ claims: { sub: randomUUID() } })],
  // typ (RFC 8725 §3.11, RFC 9068 §4)
  ['no typ', () => forge({ header: { typ: undefined } })],
  ['typ JWT', () => forge({ header: { typ: 'JWT' } })],
  ['typ refresh+jwt', () => forge({ header: { typ: 'refresh+jwt' } })],
  // time claims
  ['exp as a string', () => forge({ claims: { exp: String(now() + 1800) } })],
  ['exp as a float', () => forge({ claims: { exp: now() + 1800.5 } })],
  ['exp in the past beyond the clock skew', () => forge({ claims: { iat: now() - 1900, exp: now() - 60 } })],
  ['no exp', () => forge({ claims: { exp: undefined } })],
  ['nbf in the future beyond the clock skew', () => forge({ claims: { nbf: now() + 120 } })],
  ['iat as a string', () => forge({ claims: { iat: String(now()) } })],
  // our own claims
  ['a stale generation (ver)', () => forge({ claims: { ver: 1 } })],
  ['ver as a string', () => forge({ claims: { ver: '0' } })],
  ['no scope', () => forge({ claims: { scope: undefined } })],
  ['scope as an array', () => forge({ claims: { scope: ['user', 'admin'] } })],
  ['no sid', () => forge({ claims: { sid: undefined } })],
  ['no jti', () => forge({ claims: { jti: undefined } })],
]

describe('forged tokens on GET /users (admin): 401 invalid_token, never 500, nothing fetched', () => {
  it('accepts an admin token forged with our secret, header and claims (control)', async () => {
    const res = await listUsers(`Bearer ${forge()}`)
    expect(res.statusCode).toBe(200)
  })

  it.each(forgedTokens)('rejects %s', async (_label, make) => {
    expectInvalidToken(await listUsers(`Bearer ${make()}`))
  })

  it('never fetched a key from a jku or x5u URL', () => {
    expect(canaryHits).toBe(0)
  })

  it('rejects a refresh token sent as a Bearer token', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    expectInvalidToken(await listUsers(`Bearer ${admin.refresh_token}`))
  })

  it('rejects a token issued in the future beyond the clock skew, and accepts one within it', async () => {
    expectInvalidToken(await listUsers(`Bearer ${forge({ claims: { iat: now() + 60 } })}`))
    expect((await listUsers(`Bearer ${forge({ claims: { iat: now() + 3 } })}`)).statusCode).toBe(200)
  })
})

// --- claim tampering -----------------------------------------------------------------------------

/** A real token with its payload segment replaced and the original signature kept. */
function withPayload(token: string, payload: Record<string, unknown>): string {
  const [header, , signature] = token.split('.')
  return `${header}.${b64url(JSON.stringify(payload))}.${signature}`
}

describe('claim tampering (ASVS 9.1.1): the signature is checked before any claim is used', () => {
  it("rejects a user's real token with scope raised to admin", async () => {
    const user = await newUser()
    const { access_token } = await login(app, user.username)
    const tampered = withPayload(access_token, { ...decodeClaims(access_token), scope: 'user admin' })
    expectInvalidToken(await listUsers(`Bearer ${tampered}`))
  })

  it("rejects a user's real token with sub changed to the admin's id", async () => {
    const user = await newUser()
    const { access_token } = await login(app, user.username)
    const tampered = withPayload(access_token, { ...decodeClaims(access_token), sub: adminId, scope: 'user admin' })
    expectInvalidToken(await listUsers(`Bearer ${tampered}`))
  })

  it('never echoes a tampered value in the response', async () => {
    const user = await newUser()
    const { access_token } = await login(app, user.username)
    const marker = `TAMPERED-${randomUUID()}`
    const tampered = withPayload(access_token, { ...decodeClaims(access_token), sub: marker, name: marker })

    for (const url of ['/users', '/users/me']) {
      const res = await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${tampered}` } })
      expectInvalidToken(res)
      expect(res.body).not.toContain(marker)
      expect(JSON.stringify(res.headers)).not.toContain(marker)
    }
  })

  it.each([
    ['the first', (_n: number) => 0],
    ['a middle', (n: number) => Math.floor(n / 2)],
    ['the last', (n: number) => n - 1],
  ])('rejects a real token with %s payload character flipped', async (_label, position) => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const [header, payload = '', signature] = admin.access_token.split('.')
    const i = position(payload.length)
    const flipped = `${payload.slice(0, i)}${payload[i] === 'A' ? 'B' : 'A'}${payload.slice(i + 1)}`
    expectInvalidToken(await listUsers(`Bearer ${header}.${flipped}.${signature}`))
  })

  it('rejects a real token with the header changed to alg none and the signature dropped', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const [, payload] = admin.access_token.split('.')
    const header = b64url(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid: app.config.jwt.kid }))
    expectInvalidToken(await listUsers(`Bearer ${header}.${payload}.`))
  })
})

// --- header tricks -------------------------------------------------------------------------------

describe('header tricks', () => {
  let port: number
  let adminToken: string
  beforeAll(async () => {
    port = portOf(await listen(app))
    adminToken = (await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)).access_token
  })

  it('accepts the admin token over a real socket (control)', async () => {
    const res = await rawHttp(
      port,
      `GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${adminToken}\r\nConnection: close\r\n\r\n`,
    )
    expect(res.status).toBe(200)
  })

  it.each([
    ['a user token, then the admin token', 'user-first'],
    ['the admin token, then garbage', 'admin-first'],
  ])('rejects two Authorization headers (%s) with 401 invalid_token', async (_label, order) => {
    const user = await newUser()
    const userToken = (await login(app, user.username)).access_token
    const [first, second] = order === 'user-first' ? [userToken, adminToken] : [adminToken, 'garbage']
    const res = await rawHttp(
      port,
      `GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${first}\r\nAuthorization: Bearer ${second}\r\nConnection: close\r\n\r\n`,
    )
    statuses.push({ status: res.status, what: 'raw two Authorization headers' })
    expectInvalidToken(res)
  })

  it('treats "Bearer<TAB>token" as no Bearer credentials: 401 Not authenticated', async () => {
    expectNotAuthenticated(await listUsers(`Bearer\t${adminToken}`))
  })

  it('treats "Bearer<TAB>token" the same over a real socket', async () => {
    const res = await rawHttp(
      port,
      `GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer\t${adminToken}\r\nConnection: close\r\n\r\n`,
    )
    expect(res.status).toBe(401)
    expect(JSON.parse(res.body)).toEqual(NOT_AUTHENTICATED)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })

  it('answers a request header section over 16 KiB with 431 and nothing else', async () => {
    const res = await rawHttp(
      port,
      `GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${adminToken}\r\nX-Padding: ${'a'.repeat(17 * 1024)}\r\nConnection: close\r\n\r\n`,
    )
    statuses.push({ status: res.status, what: 'raw 17 KiB header' })
    expect(res.status).toBe(431)
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(JSON.parse(res.body)).toEqual({ detail: 'Request headers too large' })
  })

  it('answers a 16 KiB Authorization header with 431', async () => {
    const res = await rawHttp(
      port,
      `GET /users/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${'a'.repeat(17 * 1024)}\r\nConnection: close\r\n\r\n`,
    )
    statuses.push({ status: res.status, what: 'raw 17 KiB Authorization' })
    expect(res.status).toBe(431)
  })

  it('ignores a token in the query string', async () => {
    const res = await app.inject({ method: 'GET', url: `/users?access_token=${adminToken}` })
    expectNotAuthenticated(res)
    expect(res.body).not.toContain(adminToken)
  })

  it('ignores a token in a form body', async () => {
    expectNotAuthenticated(
      await app.inject({
        method: 'POST',
        url: '/logout',
        headers: { 'content-type': FORM },
        payload: `access_token=${adminToken}`,
      }),
    )
  })

  it('ignores a token in a JSON body', async () => {
    expectNotAuthenticated(
      await app.inject({
        method: 'PATCH',
        url: `/users/${adminId}`,
        headers: { 'content-type': 'application/json' },
        payload: JSON.stringify({ access_token: adminToken, disabled: true }),
      }),
    )
  })

  it('ignores a token in a cookie', async () => {
    expectNotAuthenticated(
      await app.inject({ method: 'GET', url: '/users', headers: { cookie: `access_token=${adminToken}` } }),
    )
  })

  it('answers Content-Length together with Transfer-Encoding with 400 (no request smuggling)', async () => {
    const res = await rawHttp(
      port,
      `POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${FORM}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /users HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
    )
    statuses.push({ status: res.status, what: 'raw CL + TE' })
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toEqual({ detail: 'Malformed HTTP request' })
  })
})

// --- enumeration by message ----------------------------------------------------------------------

describe('enumeration by message (ASVS 6.3.8): the same status, body and headers', () => {
  // Each compared attempt is the first for its name, so even the rate-limit headers match.
  const attempt = (username: string, password = WRONG) => postToken(app, { username, password })

  function expectSame(a: LightMyRequestResponse, b: LightMyRequestResponse): void {
    expect(a.statusCode).toBe(b.statusCode)
    expect(a.body).toBe(b.body)
    expect(stableHeaders(a.headers)).toEqual(stableHeaders(b.headers))
  }

  it('answers an unknown user exactly like a wrong password', async () => {
    const known = await newUser()
    const wrong = await attempt(known.username)
    const unknown = await attempt(uniqueUsername('ghost'))
    expect(wrong.statusCode).toBe(400)
    expect(wrong.json()).toEqual(INVALID_GRANT)
    expectSame(unknown, wrong)
  })

  it('answers a username that could never exist exactly like a wrong password', async () => {
    const known = await newUser()
    const wrong = await attempt(known.username)
    const impossible = await attempt(`no such user ${randomUUID()}`)
    expectSame(impossible, wrong)
  })

  it("answers a disabled user's right password exactly like a wrong password", async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const victim = await newUser()
    expect((await authed(app, 'PATCH', `/users/${victim.id}`, admin.access_token, { disabled: true })).statusCode).toBe(
      200,
    )
    const known = await newUser()
    expectSame(await attempt(victim.username, TEST_PASSWORD), await attempt(known.username))
  })

  it('answers a locked unknown name exactly like a locked real account', async () => {
    const small = await recordedApp({ LOGIN_MAX_FAILURES: '3', LOGIN_LOCKOUT_SECONDS: '30' })
    try {
      const username = uniqueUsername('lock')
      expect((await register(small, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
      const ghost = uniqueUsername('ghost')
      for (let i = 0; i < 3; i++) {
        expectSame(
          await postToken(small, { username: ghost, password: WRONG }),
          await postToken(small, { username, password: WRONG }),
        )
      }
      const lockedKnown = await postToken(small, { username, password: TEST_PASSWORD })
      const lockedGhost = await postToken(small, { username: ghost, password: TEST_PASSWORD })
      expect(lockedKnown.statusCode).toBe(429)
      expect(lockedKnown.headers['retry-after']).toBe('30')
      expectSame(lockedGhost, lockedKnown)
    } finally {
      await small.close()
    }
  })
})

// --- brute force ---------------------------------------------------------------------------------

describe('brute force (summary; throttle.test.ts has the details)', () => {
  it('locks an account with the defaults after 10 failures: the 11th attempt gets 429 even with the right password', async () => {
    const user = await newUser()
    for (let i = 0; i < 10; i++)
      expect((await postToken(app, { username: user.username, password: WRONG })).statusCode).toBe(400)

    const res = await postToken(app, { username: user.username, password: TEST_PASSWORD })

    expect(res.statusCode).toBe(429)
    expect(res.json()).toEqual(oauthError('temporarily_unavailable', 'Too many failed login attempts; try again later'))
    expect(res.headers['retry-after']).toBe('60')
  })
})

// --- mass assignment -----------------------------------------------------------------------------

describe('mass assignment (ASVS 15.3.3): privileged fields at /register are ignored', () => {
  const sentId = '00000000-0000-4000-8000-000000000000'
  const privileged = {
    id: sentId,
    role: 'admin',
    roles: ['user', 'admin'],
    is_admin: true,
    isAdmin: true,
    is_superuser: true,
    disabled: true,
    created_at: '2000-01-01T00:00:00.000Z',
    email_verified: true,
    token_version: 99,
    tokenVersion: 99,
    ver: 99,
    scope: 'admin',
    password_hash: '$2b$04$abcdefghijklmnopqrstuuJ1yjhz6yXb5Oq2dG6o3uHj2zQ6cC8a',
  }
  let user: { id: string; username: string; created_at: string }
  let token: string
  beforeAll(async () => {
    const username = uniqueUsername('mass')
    const res = await register(app, { username, password: TEST_PASSWORD, ...privileged })
    expect(res.statusCode).toBe(201)
    user = res.json()
    token = (await login(app, username)).access_token
  })

  it('answers 201 with only id, username, email, email_verified and created_at, none of them taken from the request', () => {
    expect(user).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username: user.username,
      email: null,
      email_verified: false,
      created_at: expect.any(String),
    })
    expect(user.id).not.toBe(sentId)
    expect(user.created_at).not.toBe(privileged.created_at)
  })

  it("gives the user only the scope 'user' and generation 0", () => {
    expect(decodeClaims(token)).toMatchObject({ sub: user.id, scope: 'user', ver: 0 })
  })

  it('gets 403 on the admin endpoints', async () => {
    const res = await authed(app, 'GET', '/users', token)
    expect(res.statusCode).toBe(403)
    expect(res.json()).toEqual({ detail: 'Insufficient scope' })
  })

  it('is stored as an enabled user with roles [user]', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const res = await authed(app, 'GET', `/users/${user.id}`, admin.access_token)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ ...user, roles: ['user'], disabled: false, mfa_enabled: false })
    expect((await authed(app, 'GET', `/users/${sentId}`, admin.access_token)).statusCode).toBe(404)
  })

  it('answers scope=admin at /token with invalid_scope', async () => {
    const res = await postToken(app, { username: user.username, password: TEST_PASSWORD, scope: 'admin' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_scope', 'None of the requested scopes can be granted'))
  })

  it('ignores fields other than disabled and roles in an admin PATCH', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const target = await newUser()
    const res = await authed(app, 'PATCH', `/users/${target.id}`, admin.access_token, {
      disabled: false,
      username: 'renamed',
      id: sentId,
      password_hash: privileged.password_hash,
    })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toMatchObject({ id: target.id, username: target.username, roles: ['user'], disabled: false })
    expect((await postToken(app, { username: target.username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })
})

// --- oversized and malformed input ---------------------------------------------------------------

function inject(options: InjectOptions): Promise<LightMyRequestResponse> {
  return app.inject(options)
}
const json = (url: string, payload: string, method: 'POST' | 'PATCH' = 'POST', headers: Record<string, string> = {}) =>
  inject({ method, url, headers: { 'content-type': 'application/json', ...headers }, payload })

describe('oversized input (bodyLimit 16 KiB)', () => {
  it('answers a 20 KiB /register body of the right shape with 413', async () => {
    const res = await json(
      '/register',
      JSON.stringify({ username: uniqueUsername(), password: TEST_PASSWORD, email: null, pad: 'x'.repeat(20 * 1024) }),
    )
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual({ detail: 'Request body too large' })
  })

  it('answers a 20 KiB /token form of the right shape with 413 invalid_request', async () => {
    const res = await postToken(app, { username: uniqueUsername(), password: 'x'.repeat(20 * 1024) })
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual(oauthError('invalid_request', 'Request body too large'))
  })

  it('answers a 100 KiB username with 413 (no such body is ever within the limit)', async () => {
    const res = await json('/register', JSON.stringify({ username: 'u'.repeat(100 * 1024), password: TEST_PASSWORD }))
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual({ detail: 'Request body too large' })
  })

  it('answers a 20 KiB /revoke form with 413 invalid_request', async () => {
    const res = await inject({
      method: 'POST',
      url: '/revoke',
      headers: { 'content-type': FORM },
      payload: `token=${'t'.repeat(20 * 1024)}`,
    })
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual(oauthError('invalid_request', 'Request body too large'))
  })

  it('answers a 10 KB username at /token with invalid_grant', async () => {
    const res = await postToken(app, { username: 'u'.repeat(10_000), password: WRONG })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(INVALID_GRANT)
  })
})

describe('malformed input', () => {
  it('answers an 8000-deep JSON array at /register with 422 (it parses, and is not an object)', async () => {
    const res = await json('/register', `${'['.repeat(8000)}${']'.repeat(8000)}`)
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'body: Invalid input: expected object, received array',
      errors: [{ field: '', message: 'Invalid input: expected object, received array' }],
    })
  })

  it('answers a deeply nested username with 422', async () => {
    const res = await json(
      '/register',
      `{"username":${'['.repeat(8000)}${']'.repeat(8000)},"password":"${TEST_PASSWORD}"}`,
    )
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'username: Invalid input: expected string, received array',
      errors: [{ field: 'username', message: 'Invalid input: expected string, received array' }],
    })
  })

  it('answers a deeply nested PATCH body with 4xx', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const target = await newUser()
    const res = await json(`/users/${target.id}`, `{"roles":${'['.repeat(5000)}${']'.repeat(5000)}}`, 'PATCH', {
      authorization: `Bearer ${admin.access_token}`,
    })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({ detail: expect.stringMatching(/^roles/), errors: expect.any(Array) })
  })

  it.each([
    ['__proto__', `{"__proto__":{"isAdmin":true},"username":"proto_user","password":"${TEST_PASSWORD}"}`],
    [
      'constructor.prototype',
      `{"constructor":{"prototype":{"isAdmin":true}},"username":"ctor_user","password":"${TEST_PASSWORD}"}`,
    ],
    [
      'a nested __proto__',
      `{"username":"nested_proto","password":"${TEST_PASSWORD}","email":null,"x":{"__proto__":{"isAdmin":true}}}`,
    ],
  ])('answers a %s body at /register with 400 and pollutes nothing', async (_label, payload) => {
    const res = await json('/register', payload)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined()
  })

  it('answers a __proto__ PATCH body with 400 and leaves the user as it was', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const target = await newUser()
    const res = await json(
      `/users/${target.id}`,
      '{"disabled":false,"__proto__":{"roles":["user","admin"]}}',
      'PATCH',
      {
        authorization: `Bearer ${admin.access_token}`,
      },
    )
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
    expect((await login(app, target.username)).scope).toBe('user')
  })

  it('pollutes nothing through a __proto__ form field at /token', async () => {
    const user = await newUser()
    const res = await postToken(
      app,
      `__proto__[isAdmin]=true&constructor[prototype][isAdmin]=true&username=${user.username}&password=${TEST_PASSWORD}`,
    )
    expect(res.statusCode).toBe(200)
    expect(res.json().scope).toBe('user')
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined()
  })

  it.each([
    ['username', (u: string) => `username=${u}&username=admin&password=${TEST_PASSWORD}`],
    ['password', (u: string) => `username=${u}&password=${TEST_PASSWORD}&password=x`],
    [
      'grant_type',
      (u: string) => `grant_type=password&grant_type=refresh_token&username=${u}&password=${TEST_PASSWORD}`,
    ],
    ['scope', (u: string) => `username=${u}&password=${TEST_PASSWORD}&scope=user&scope=admin`],
  ])('answers a repeated %s at /token with 400 invalid_request', async (field, form) => {
    const user = await newUser()
    const res = await postToken(app, form(user.username))
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', `Parameter '${field}' is repeated`))
  })

  it.each([
    ['malformed percent-encoding', 'username=%ZZ&password=%A'],
    ['a NUL in the username', 'username=adm%00in&password=admin'],
  ])('answers %s at /token with invalid_grant', async (_label, form) => {
    const res = await postToken(app, form)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(INVALID_GRANT)
  })

  // Escapes that decode to bytes which are not UTF-8 are refused as such, never decoded to U+FFFD
  // or kept as literal text (test/encoding.test.ts has the whole kind).
  it.each([
    ['a truncated percent-encoded sequence', 'username=%ZZ&password=%E0%A4%A'],
    ['invalid UTF-8', 'username=%C3%28&password=%FF%FE'],
  ])('answers %s at /token with 400 invalid_request', async (_label, form) => {
    const res = await postToken(app, form)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', 'Request body is not valid UTF-8'))
  })

  it('answers malformed JSON on PATCH with 400', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const target = await newUser()
    const res = await json(`/users/${target.id}`, '{"disabled": tru', 'PATCH', {
      authorization: `Bearer ${admin.access_token}`,
    })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
  })
})

describe('Content-Type tricks (Fastify CVE-2025-32442, CVE-2026-25223, CVE-2026-33806): 415, or fully validated', () => {
  const formTypes = [
    ' application/x-www-form-urlencoded',
    'application/x-www-form-urlencoded\tfoo',
    'APPLICATION/X-WWW-FORM-URLENCODED ; x',
  ]
  const tokenWith = (contentType: string, payload: string) =>
    inject({ method: 'POST', url: '/token', headers: { 'content-type': contentType }, payload })

  /** Either refused as a media type, or answered exactly as the form would be. */
  function expect415Or(res: LightMyRequestResponse, status: number, body: unknown): void {
    if (res.statusCode === 415) expect(res.json()).toEqual(NEED_FORM)
    else {
      expect(res.statusCode).toBe(status)
      expect(res.json()).toEqual(body)
    }
  }

  it.each(formTypes)('validates a repeated password sent as %j', async (contentType) => {
    const user = await newUser()
    const res = await tokenWith(contentType, `username=${user.username}&password=${TEST_PASSWORD}&password=x`)
    expect415Or(res, 400, oauthError('invalid_request', "Parameter 'password' is repeated"))
  })

  it.each(formTypes)('validates an unsupported grant_type sent as %j', async (contentType) => {
    const res = await tokenWith(contentType, 'grant_type=client_credentials&client_id=x')
    expect415Or(
      res,
      400,
      oauthError(
        'unsupported_grant_type',
        'grant_type must be password, refresh_token, http://auth0.com/oauth/grant-type/mfa-otp or http://auth0.com/oauth/grant-type/mfa-recovery-code',
      ),
    )
  })

  it.each(formTypes)('checks the password of a login sent as %j', async (contentType) => {
    const user = await newUser()
    const res = await tokenWith(contentType, `username=${user.username}&password=${WRONG}`)
    expect415Or(res, 400, INVALID_GRANT)
  })

  it.each(formTypes)('refuses a JSON body declared as %j', async (contentType) => {
    const user = await newUser()
    const res = await tokenWith(contentType, JSON.stringify({ username: user.username, password: TEST_PASSWORD }))
    expect415Or(res, 400, oauthError('invalid_request', "Missing parameter 'username'"))
  })

  it.each([' application/json', 'application/json\tfoo', 'APPLICATION/JSON ; x'])(
    'answers /register with %j: 415, or the schema is enforced',
    async (contentType) => {
      const res = await inject({
        method: 'POST',
        url: '/register',
        headers: { 'content-type': contentType },
        payload: JSON.stringify({ username: 'bad name!', password: TEST_PASSWORD, roles: ['admin'] }),
      })
      if (res.statusCode === 415) expect(res.json()).toEqual(NEED_JSON)
      else {
        expect(res.statusCode).toBe(422)
        expect(res.json()).toEqual({
          detail: 'username: must be 3-32 characters of A-Z a-z 0-9 . _ - and start with a letter or digit',
          errors: [
            {
              field: 'username',
              message: 'must be 3-32 characters of A-Z a-z 0-9 . _ - and start with a letter or digit',
            },
          ],
        })
      }
    },
  )

  it.each(['text/plain', 'application/x-www-form-urlencoded-evil', 'multipart/form-data; boundary=x', ''])(
    'answers /token with Content-Type %j with 415',
    async (contentType) => {
      const res = await tokenWith(contentType, `username=a&password=b`)
      expect(res.statusCode).toBe(415)
      expect(res.json()).toEqual(NEED_FORM)
    },
  )
})

// --- never a 5xx ---------------------------------------------------------------------------------

describe('no 5xx anywhere (ASVS 16.5.4)', () => {
  it('answered every request of this file below 500', () => {
    expect(statuses.length).toBeGreaterThan(150)
    expect(statuses.filter((s) => s.status >= 500)).toEqual([])
  })
})
