// GET /users/me: the bearer-token contract (RFC 6750 §3, RFC 9068, RFC 8725): the 200 body, the
// two 401 challenges, and every forged or broken token, each built in the test itself.
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { generateKeyPair, SignJWT } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  accessClaims,
  accessHeader,
  b64url,
  buildTestApp,
  CHALLENGE_INVALID,
  CHALLENGE_MISSING,
  forgeToken,
  getMe,
  type LoggedIn,
  listen,
  nowSeconds,
  OTHER_SECRET,
  postToken,
  rawHttp,
  register,
  registerAndLogin,
  TEST_PASSWORD,
  uniqueUsername,
} from './helpers.js'

const NOT_AUTHENTICATED = { detail: 'Not authenticated' }
const INVALID_CREDENTIALS = { detail: 'Could not validate credentials' }

let app: FastifyInstance
let alice: LoggedIn
let bob: LoggedIn
let rsaPrivateKey: Awaited<ReturnType<typeof generateKeyPair>>['privateKey']
beforeAll(async () => {
  app = await buildTestApp()
  alice = await registerAndLogin(app)
  bob = await registerAndLogin(app)
  rsaPrivateKey = (await generateKeyPair('RS256')).privateKey
})
afterAll(async () => {
  await app.close()
})

function expectInvalidToken(res: Awaited<ReturnType<typeof getMe>>): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual(INVALID_CREDENTIALS)
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
}

function expectNotAuthenticated(res: Awaited<ReturnType<typeof getMe>>): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual(NOT_AUTHENTICATED)
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
}

/** header.payload.signature with the payload replaced and the original signature kept. */
function withPayload(token: string, payload: unknown): string {
  const [header, , signature] = token.split('.')
  return `${header}.${b64url(JSON.stringify(payload))}.${signature}`
}

describe('GET /users/me: success', () => {
  it('returns 200 with exactly id, username, email, email_verified and created_at, and no-store', async () => {
    const res = await getMe(app, `Bearer ${alice.token}`)

    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(res.headers['cache-control']).toBe('no-store')
    expect(res.json()).toEqual(alice.user)
    expect(Object.keys(res.json()).sort()).toEqual(['created_at', 'email', 'email_verified', 'id', 'username'])
  })

  it('returns the registered email', async () => {
    const username = uniqueUsername('mail')
    const reg = await register(app, { username, email: 'mail@example.org', password: TEST_PASSWORD })
    const login = await postToken(app, { username, password: TEST_PASSWORD })
    const res = await getMe(app, `Bearer ${login.json().access_token}`)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(reg.json())
    expect(res.json().email).toBe('mail@example.org')
  })

  it.each(['bearer', 'BEARER', 'BeArEr'])('matches the scheme case-insensitively (%s)', async (scheme) => {
    const res = await getMe(app, `${scheme} ${alice.token}`)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(alice.user)
  })

  it("accepts a token forged by the test with the server's own secret, header and claims (control)", async () => {
    const res = await getMe(app, `Bearer ${forgeToken(app, alice.user.id)}`)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(alice.user)
  })

  it('accepts a token that expired within the 5 s clock skew', async () => {
    const now = nowSeconds()
    const token = forgeToken(app, alice.user.id, { claims: { iat: now - 1802, exp: now - 2 } })
    const res = await getMe(app, `Bearer ${token}`)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(alice.user)
  })

  it("answers with the token's user, ignoring ?username= and X-User-Id", async () => {
    const res = await app.inject({
      method: 'GET',
      url: `/users/me?username=${bob.username}&sub=${bob.user.id}`,
      headers: { authorization: `Bearer ${alice.token}`, 'x-user-id': bob.user.id },
    })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(alice.user)
  })

  it('answers HEAD with a token like GET, without a body', async () => {
    const res = await app.inject({
      method: 'HEAD',
      url: '/users/me',
      headers: { authorization: `Bearer ${alice.token}` },
    })
    expect(res.statusCode).toBe(200)
    expect(res.body).toBe('')
    expect(res.headers['cache-control']).toBe('no-store')
  })
})

describe('GET /users/me: no credentials → 401 Not authenticated, no error code', () => {
  it('answers a request without an Authorization header', async () => {
    expectNotAuthenticated(await getMe(app))
  })

  it('answers an empty Authorization header', async () => {
    expectNotAuthenticated(await getMe(app, ''))
  })

  it('answers the Basic scheme', async () => {
    expectNotAuthenticated(await getMe(app, 'Basic xyz'))
  })

  it('answers another scheme carrying a valid token', async () => {
    expectNotAuthenticated(await getMe(app, `Token ${alice.token}`))
  })

  it('ignores a token in the query string', async () => {
    const res = await app.inject({ method: 'GET', url: `/users/me?access_token=${alice.token}` })
    expectNotAuthenticated(res)
    expect(res.body).not.toContain(alice.token)
  })

  it('answers HEAD without a token with 401', async () => {
    const res = await app.inject({ method: 'HEAD', url: '/users/me' })
    expect(res.statusCode).toBe(401)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })
})

describe('GET /users/me: a malformed Bearer header → 401 invalid_token', () => {
  it.each([
    ['Bearer alone', () => 'Bearer'],
    ['two spaces before the token', () => `Bearer  ${alice.token}`],
    ['a token followed by another word', () => `Bearer ${alice.token} extra`],
    ['characters outside the b64token set', () => 'Bearer abc$def.ghi'],
    ['garbage', () => 'Bearer not-a-jwt'],
    ['three garbage segments', () => 'Bearer abc.def.ghi'],
    ['only two segments', () => `Bearer ${alice.token.split('.').slice(0, 2).join('.')}`],
    ['four segments', () => `Bearer ${alice.token}.abc`],
  ])('answers %s', async (_label, header) => {
    expectInvalidToken(await getMe(app, header()))
  })
})

type Forge = () => string | Promise<string>

const now = () => nowSeconds()
const badTokens: [string, Forge][] = [
  ['signed with another secret', () => forgeToken(app, alice.user.id, { secret: OTHER_SECRET })],
  ['signed with an empty key', () => forgeToken(app, alice.user.id, { secret: '' })],
  [
    'a payload changed after signing (another user)',
    () => withPayload(alice.token, { ...accessClaims(app, bob.user.id) }),
  ],
  ['alg none and no signature', () => forgeToken(app, alice.user.id, { header: { alg: 'none' }, signature: '' })],
  ['alg None and no signature', () => forgeToken(app, alice.user.id, { header: { alg: 'None' }, signature: '' })],
  ['alg NONE and no signature', () => forgeToken(app, alice.user.id, { header: { alg: 'NONE' }, signature: '' })],
  ['alg nOnE and no signature', () => forgeToken(app, alice.user.id, { header: { alg: 'nOnE' }, signature: '' })],
  ['alg none with a valid HS256 signature', () => forgeToken(app, alice.user.id, { header: { alg: 'none' } })],
  [
    'alg HS512 signed with the right secret',
    () => forgeToken(app, alice.user.id, { header: { alg: 'HS512' }, hash: 'sha512' }),
  ],
  [
    'alg HS384 signed with the right secret',
    () => forgeToken(app, alice.user.id, { header: { alg: 'HS384' }, hash: 'sha384' }),
  ],
  [
    'alg RS256 with an HMAC signature made with the secret',
    () => forgeToken(app, alice.user.id, { header: { alg: 'RS256' } }),
  ],
  [
    'alg RS256 signed with an RSA key',
    () =>
      new SignJWT(accessClaims(app, alice.user.id))
        .setProtectedHeader({ ...accessHeader(app), alg: 'RS256' })
        .sign(rsaPrivateKey),
  ],
  ['no alg header', () => forgeToken(app, alice.user.id, { header: { alg: undefined } })],
  ['exp past the clock skew', () => forgeToken(app, alice.user.id, { claims: { iat: now() - 1860, exp: now() - 60 } })],
  ['nbf in the future', () => forgeToken(app, alice.user.id, { claims: { nbf: now() + 60 } })],
  ['no sub', () => forgeToken(app, alice.user.id, { claims: { sub: undefined } })],
  ['no exp', () => forgeToken(app, alice.user.id, { claims: { exp: undefined } })],
  ['no iat', () => forgeToken(app, alice.user.id, { claims: { iat: undefined } })],
  ['no iss', () => forgeToken(app, alice.user.id, { claims: { iss: undefined } })],
  ['no aud', () => forgeToken(app, alice.user.id, { claims: { aud: undefined } })],
  ['no jti', () => forgeToken(app, alice.user.id, { claims: { jti: undefined } })],
  ['no ver', () => forgeToken(app, alice.user.id, { claims: { ver: undefined } })],
  ['a wrong iss', () => forgeToken(app, alice.user.id, { claims: { iss: 'someone-else' } })],
  ['a wrong aud', () => forgeToken(app, alice.user.id, { claims: { aud: 'another-api' } })],
  [
    'aud as an array containing ours',
    () => forgeToken(app, alice.user.id, { claims: { aud: ['another-api', app.config.jwt.audience] } }),
  ],
  [
    'aud as an array of only ours',
    () => forgeToken(app, alice.user.id, { claims: { aud: [app.config.jwt.audience] } }),
  ],
  [
    'iss as an array containing ours',
    () => forgeToken(app, alice.user.id, { claims: { iss: ['evil', app.config.jwt.issuer] } }),
  ],
  ['a numeric sub', () => forgeToken(app, alice.user.id, { claims: { sub: 123 } })],
  ['an object sub', () => forgeToken(app, alice.user.id, { claims: { sub: { $ne: null } } })],
  ['an array sub', () => forgeToken(app, alice.user.id, { claims: { sub: [alice.user.id] } })],
  ['an empty sub', () => forgeToken(app, alice.user.id, { claims: { sub: '' } })],
  ['the username as sub', () => forgeToken(app, alice.user.id, { claims: { sub: alice.username } })],
  ['exp as a string', () => forgeToken(app, alice.user.id, { claims: { exp: String(now() + 1800) } })],
  ['iat as a string', () => forgeToken(app, alice.user.id, { claims: { iat: String(now()) } })],
  ['ver as a string', () => forgeToken(app, alice.user.id, { claims: { ver: '0' } })],
  ['jti as a number', () => forgeToken(app, alice.user.id, { claims: { jti: 42 } })],
  ['a payload that is an array', () => forgeToken(app, alice.user.id, { payload: [accessClaims(app, alice.user.id)] })],
  ['a payload that is a number', () => forgeToken(app, alice.user.id, { payload: 123 })],
  ['a payload that is null', () => forgeToken(app, alice.user.id, { payload: null })],
  ['a payload that is a string', () => forgeToken(app, alice.user.id, { payload: alice.user.id })],
  ['a payload that is not JSON', () => forgeToken(app, alice.user.id, { payloadText: '{not json' })],
  ['no typ header', () => forgeToken(app, alice.user.id, { header: { typ: undefined } })],
  ['typ JWT', () => forgeToken(app, alice.user.id, { header: { typ: 'JWT' } })],
  ['typ refresh+jwt', () => forgeToken(app, alice.user.id, { header: { typ: 'refresh+jwt' } })],
  ['a wrong kid', () => forgeToken(app, alice.user.id, { header: { kid: 'another-key' } })],
  ['no kid', () => forgeToken(app, alice.user.id, { header: { kid: undefined } })],
  ['an unknown crit header', () => forgeToken(app, alice.user.id, { header: { crit: ['x'], x: 1 } })],
  ['a =-padded signature', () => `${forgeToken(app, alice.user.id)}=`],
  ['a user that does not exist (random UUID sub)', () => forgeToken(app, randomUUID())],
]

describe('GET /users/me: a bad token → 401 Could not validate credentials, invalid_token, never 500', () => {
  it.each(badTokens)('rejects a token with %s', async (_label, forge) => {
    const token = await forge()
    const res = await getMe(app, `Bearer ${token}`)
    expectInvalidToken(res)
  })

  it('rejects a token of a user registered under the same name on another server instance', async () => {
    // A restart empties the in-memory store: the same name registered again is a new account with a
    // new id, and the old token must not reach it.
    const other = await buildTestApp()
    try {
      const reg = await register(other, { username: alice.username, password: TEST_PASSWORD })
      expect(reg.statusCode).toBe(201)
      expectInvalidToken(await getMe(other, `Bearer ${alice.token}`))
    } finally {
      await other.close()
    }
  })
})

describe('GET /users/me: routing', () => {
  it('answers /users/me/ (trailing slash) with 404', async () => {
    const res = await app.inject({
      method: 'GET',
      url: '/users/me/',
      headers: { authorization: `Bearer ${alice.token}` },
    })
    expect(res.statusCode).toBe(404)
    expect(res.json()).toEqual({ detail: 'Not Found' })
  })
})

describe('GET /users/me over a real socket', () => {
  let port: number
  beforeAll(async () => {
    port = Number(new URL(await listen(app)).port)
  })

  it('answers a good token over the socket with 200', async () => {
    const res = await rawHttp(
      port,
      rawLines([
        'GET /users/me HTTP/1.1',
        'Host: 127.0.0.1',
        `Authorization: Bearer ${alice.token}`,
        'Connection: close',
      ]),
    )
    expect(res.status).toBe(200)
    expect(JSON.parse(res.body)).toEqual(alice.user)
  })

  it.each([
    ['a good token then garbage', () => [alice.token, 'garbage']],
    ['garbage then a good token', () => ['garbage', alice.token]],
    ['the same good token twice', () => [alice.token, alice.token]],
    ["two users' good tokens", () => [alice.token, bob.token]],
  ])('rejects two Authorization headers (%s) with 401 invalid_token', async (_label, tokens) => {
    const [first, second] = tokens()
    const res = await rawHttp(
      port,
      rawLines([
        'GET /users/me HTTP/1.1',
        'Host: 127.0.0.1',
        `Authorization: Bearer ${first}`,
        `Authorization: Bearer ${second}`,
        'Connection: close',
      ]),
    )
    expect(res.status).toBe(401)
    expect(JSON.parse(res.body)).toEqual(INVALID_CREDENTIALS)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
  })
})

/** The lines of a raw HTTP/1.1 request, joined with CRLF and ended by the blank line. */
function rawLines(lines: string[]): string {
  return `${lines.join('\r\n')}\r\n\r\n`
}
