// Text encodings: every place where bytes become text. Bodies (JSON and forms, raw and
// percent-decoded) that are not UTF-8 are refused with 400, never repaired to U+FFFD; a declared
// charset other than UTF-8 is 415; headers, query strings and paths never reach a 500. Through
// real HTTP: inject with raw Buffer payloads, and the production fault itself over a real socket.
// The decisions are in docs/security.md (Text encodings).
import { spawn } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  authed,
  b64url,
  bearer,
  buildTestApp,
  CHALLENGE_INVALID,
  FORM,
  getMe,
  INVALID_GRANT,
  listen,
  login,
  oauthError,
  portOf,
  rawHttp,
  refresh,
  TEST_PASSWORD,
  TEST_SECRET,
  type TokenBody,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'

const ADMIN = { ADMIN_USERNAME: 'encoding_admin', ADMIN_PASSWORD: 'saffron-Meadow-71-ledger' }
const PW = TEST_PASSWORD
const JSON_TYPE = 'application/json'

const NOT_UTF8 = { detail: 'Request body is not valid UTF-8' }
const OAUTH_NOT_UTF8 = oauthError('invalid_request', 'Request body is not valid UTF-8')
const BAD_CHARSET = { detail: 'Content-Type charset must be utf-8' }
const OAUTH_BAD_CHARSET = oauthError('invalid_request', 'Content-Type charset must be utf-8')
const NEED_JSON = { detail: 'Content-Type must be application/json' }
const NEED_FORM = oauthError('invalid_request', 'Content-Type must be application/x-www-form-urlencoded')
const UNPAIRED = { detail: 'Request body is not valid Unicode: a \\u escape is an unpaired surrogate' }
const INVALID_TOKEN = { detail: 'Could not validate credentials' }

/** Text and raw bytes, concatenated: strings as UTF-8, number arrays byte for byte. */
const bytes = (...parts: (string | number[])[]): Buffer =>
  Buffer.concat(parts.map((part) => (typeof part === 'string' ? Buffer.from(part, 'utf8') : Buffer.from(part))))

/** A /register JSON body whose password is PW followed by `tail` (raw bytes or text). */
const registerBody = (username: string, tail: string | number[]): Buffer =>
  bytes(`{"username":"${username}","password":"${PW}`, tail, '"}')

/** A /token form body whose password is PW followed by `tail`, sent unencoded. */
const loginForm = (username: string, tail: string | number[]): Buffer =>
  bytes(`username=${username}&password=${PW}`, tail)

// The invalid sequences: what a lossy decoder turns into U+FFFD (or worse, into another character).
const INVALID_SEQUENCES: [string, number[]][] = [
  ['FF FE C0 (the production fault)', [0xff, 0xfe, 0xc0]],
  ['80 81 82 (continuation bytes without a lead)', [0x80, 0x81, 0x82]],
  ['an overlong "/" (C0 AF)', [0xc0, 0xaf]],
  ['an overlong 3-byte "/" (E0 80 AF)', [0xe0, 0x80, 0xaf]],
  ['a lone surrogate encoded in UTF-8 (ED A0 80)', [0xed, 0xa0, 0x80]],
  ['a code point past U+10FFFF (F4 90 80 80)', [0xf4, 0x90, 0x80, 0x80]],
  ['a truncated sequence (E2 82)', [0xe2, 0x82]],
]
const percent = (seq: number[]): string => seq.map((b) => `%${b.toString(16).toUpperCase()}`).join('')

let app: FastifyInstance
let base: string
let port: number
beforeAll(async () => {
  app = await buildTestApp({ ...ADMIN, REGISTER_RATE_LIMIT_MAX: '10000', LOGIN_IP_MAX_FAILURES: '10000' })
  base = await listen(app)
  port = portOf(base)
})
afterAll(async () => {
  await app.close()
})

function post(url: string, contentType: string | undefined, payload: Buffer | string): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url,
    headers: contentType === undefined ? {} : { 'content-type': contentType },
    payload,
  })
}

/** Registers `username` with `password` (JSON, UTF-8); fails loudly unless 201. */
async function registerUser(username: string, password: string): Promise<void> {
  const res = await post('/register', JSON_TYPE, JSON.stringify({ username, password }))
  expect(res.statusCode, res.body).toBe(201)
}

/** The username is still free: a valid registration of it gets 201. */
async function expectFree(username: string): Promise<void> {
  await registerUser(username, PW)
}

describe('the production fault, over a real socket', () => {
  it('refuses a JSON registration whose password holds the raw bytes FF FE C0, and stores nothing', async () => {
    const username = uniqueUsername('enc')
    const res = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': JSON_TYPE },
      body: registerBody(username, [0xff, 0xfe, 0xc0]),
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual(NOT_UTF8)

    // What a lossy decoder stored was PW + U+FFFD x3: no such account exists.
    const lossy = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: `${PW}\uFFFD\uFFFD\uFFFD` }),
    })
    expect(lossy.status).toBe(400)
    expect(await lossy.json()).toEqual(INVALID_GRANT)
    // The name is still free.
    const again = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': JSON_TYPE },
      body: JSON.stringify({ username, password: PW }),
    })
    expect(again.status).toBe(201)
    expect(await again.json()).toMatchObject({ id: expect.stringMatching(UUID_PATTERN), username })
  })

  it('refuses a form login whose password holds the raw bytes 80 81 82, even for a U+FFFD x3 password', async () => {
    // The account a lossy decode of FF FE C0 would have created.
    const username = uniqueUsername('enc')
    await registerUser(username, `${PW}\uFFFD\uFFFD\uFFFD`)

    const res = await fetch(`${base}/token`, {
      method: 'POST',
      headers: { 'content-type': FORM },
      body: loginForm(username, [0x80, 0x81, 0x82]),
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual(OAUTH_NOT_UTF8)

    // U+FFFD itself is a character like any other: its UTF-8 (EF BF BD) logs in.
    const honest = await fetch(`${base}/token`, {
      method: 'POST',
      headers: { 'content-type': FORM },
      body: loginForm(username, '\uFFFD\uFFFD\uFFFD'),
    })
    expect(honest.status).toBe(200)
    expect(((await honest.json()) as TokenBody).token_type).toBe('bearer')
  })
})

describe('JSON bodies that are not UTF-8: 400, nothing stored', () => {
  it.each(INVALID_SEQUENCES)('refuses a password holding %s at /register', async (_label, seq) => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, registerBody(username, seq))
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_UTF8)
    await expectFree(username)
  })

  it('refuses invalid bytes outside any string too', async () => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, bytes(`{"username":"${username}","password":"${PW}"}`, [0xff]))
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_UTF8)
    await expectFree(username)
  })

  it.each([
    ['a lone high surrogate', '\\ud800'],
    ['a lone low surrogate', '\\uDC00'],
    ['a reversed pair', '\\udc00\\ud800'],
  ])('refuses a \\u escape of %s (JSON.parse would make it text that UTF-8 cannot hold)', async (_label, escaped) => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, registerBody(username, escaped))
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(UNPAIRED)
    await expectFree(username)
  })

  it('refuses an unpaired surrogate escape in a name, at any depth', async () => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, `{"username":"${username}","password":"${PW}","x":[{"\\ud800":1}]}`)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(UNPAIRED)
    await expectFree(username)
  })

  it('accepts an escaped surrogate pair, which is one character', async () => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, registerBody(username, '\\ud83d\\ude00'))
    expect(res.statusCode).toBe(201)
    expect((await login(app, username, `${PW}😀`)).token_type).toBe('bearer')
  })

  it('keeps the prototype-poisoning refusal (400, nothing stored)', async () => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, `{"username":"${username}","password":"${PW}","__proto__":{"x":1}}`)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual({ detail: 'Request body is not valid JSON' })
    await expectFree(username)
  })
})

describe('forms that are not UTF-8, raw or percent-decoded: 400 invalid_request', () => {
  it.each(INVALID_SEQUENCES)('refuses raw %s in a /token form', async (_label, seq) => {
    const username = uniqueUsername('enc')
    await registerUser(username, PW)
    const res = await post('/token', FORM, loginForm(username, seq))
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(OAUTH_NOT_UTF8)
  })

  it.each(INVALID_SEQUENCES)('refuses %s percent-encoded in a /token form', async (_label, seq) => {
    const username = uniqueUsername('enc')
    // Registered with the literal escapes as its password: what fast-querystring used to leave.
    await registerUser(username, `${PW}${percent(seq)}`)
    const res = await post('/token', FORM, `username=${username}&password=${PW}${percent(seq)}`)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(OAUTH_NOT_UTF8)
  })

  it('refuses %FF%FE%C0 over a real socket too', async () => {
    const res = await fetch(`${base}/token`, {
      method: 'POST',
      headers: { 'content-type': FORM },
      body: `username=${uniqueUsername('enc')}&password=${PW}%FF%FE%C0`,
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual(OAUTH_NOT_UTF8)
  })

  it.each([
    ['in a name', `%FF=1&username=x&password=${PW}`],
    ['after valid escapes', `username=x&password=${PW}%C3%BC%FF`],
    ['split by a separator', `username=x%E2%82&password=%AC${PW}`],
  ])('refuses an invalid escape %s', async (_label, form) => {
    const res = await post('/token', FORM, form)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(OAUTH_NOT_UTF8)
  })

  it('refuses a /revoke form that is not UTF-8, and revokes nothing', async () => {
    const username = uniqueUsername('enc')
    await registerUser(username, PW)
    const tokens = await login(app, username)
    const raw = await post('/revoke', FORM, bytes(`token=${tokens.refresh_token}&token_type_hint=`, [0xff]))
    expect(raw.statusCode).toBe(400)
    expect(raw.json()).toEqual(OAUTH_NOT_UTF8)
    const escaped = await post('/revoke', FORM, `token=${tokens.refresh_token}&token_type_hint=%C0%AF`)
    expect(escaped.statusCode).toBe(400)
    expect(escaped.json()).toEqual(OAUTH_NOT_UTF8)
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
  })
})

describe('valid UTF-8 still works', () => {
  const GRUSSE = `Grüße-${PW}`

  it('registers "Grüße" in JSON (raw and \\u-escaped are one password) and logs in with raw and percent-encoded forms', async () => {
    const username = uniqueUsername('enc')
    const res = await post('/register', JSON_TYPE, bytes(`{"username":"${username}","password":"${GRUSSE}"}`))
    expect(res.statusCode).toBe(201)

    const encoded = await post('/token', FORM, new URLSearchParams({ username, password: GRUSSE }).toString())
    expect(encoded.statusCode).toBe(200)
    expect(`password=${encodeURIComponent(GRUSSE)}`).toContain('Gr%C3%BC%C3%9Fe')
    const raw = await post('/token', FORM, bytes(`username=${username}&password=${GRUSSE}`))
    expect(raw.statusCode).toBe(200)
    const withCharset = await post(
      '/token',
      `${FORM}; charset="UTF-8"`,
      bytes(`username=${username}&password=${GRUSSE}`),
    )
    expect(withCharset.statusCode).toBe(200)

    // The same password sent as JSON escapes, to a route that checks it.
    const token = encoded.json<TokenBody>().access_token
    const change = await app.inject({
      method: 'POST',
      url: '/users/me/password',
      headers: { ...bearer(token), 'content-type': JSON_TYPE },
      payload: `{"current_password":"Gr\\u00fc\\u00dfe-${PW}","new_password":"Gr\\u00fc\\u00dfe-${PW}-2"}`,
    })
    expect(change.statusCode).toBe(204)
    expect((await login(app, username, `${GRUSSE}-2`)).token_type).toBe('bearer')
  })

  it('registers and logs in over a real socket with "Grüße"', async () => {
    const username = uniqueUsername('enc')
    const reg = await fetch(`${base}/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: JSON.stringify({ username, password: GRUSSE }),
    })
    expect(reg.status).toBe(201)
    const res = await fetch(`${base}/token`, {
      method: 'POST',
      body: new URLSearchParams({ username, password: GRUSSE }),
    })
    expect(res.status).toBe(200)
  })

  it('keeps a "%" that starts no escape as a literal "%", as before', async () => {
    const username = uniqueUsername('enc')
    await registerUser(username, `${PW}%zz%`)
    const res = await post('/token', FORM, `username=${username}&password=${PW}%zz%`)
    expect(res.statusCode).toBe(200)
  })
})

describe('charsets: UTF-8 only (415 otherwise)', () => {
  it.each([
    'application/json; charset=latin1',
    'application/json; charset=ISO-8859-1',
    'application/json; charset=utf-16',
    'application/json; charset="utf-16le"',
    'application/json;charset = windows-1252',
    'application/json; charset=utf-8; charset=latin1',
    'application/json; charset=',
  ])('refuses JSON declared as %j with 415 and stores nothing', async (contentType) => {
    const username = uniqueUsername('enc')
    const res = await post('/register', contentType, JSON.stringify({ username, password: PW }))
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(BAD_CHARSET)
    await expectFree(username)
  })

  it('answers an honest latin1 body 415 (send UTF-8), not 400', async () => {
    const username = uniqueUsername('enc')
    const latin1 = Buffer.from(`{"username":"${username}","password":"${PW}é"}`, 'latin1')
    const res = await post('/register', 'application/json; charset=latin1', latin1)
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(BAD_CHARSET)
    await expectFree(username)
  })

  it.each([
    'application/json; charset=utf-8',
    'application/json; charset=UTF-8',
    'application/json; charset="utf-8"',
    'application/json; charset=utf8',
    'application/json; foo=bar; charset=Utf-8',
  ])('accepts JSON declared as %j', async (contentType) => {
    const res = await post('/register', contentType, JSON.stringify({ username: uniqueUsername('enc'), password: PW }))
    expect(res.statusCode).toBe(201)
  })

  it.each([`${FORM}; charset=latin1`, `${FORM}; charset=windows-1252`, `${FORM}; charset="utf-16"`])(
    'refuses a /token form declared as %j with 415 invalid_request',
    async (contentType) => {
      const username = uniqueUsername('enc')
      await registerUser(username, PW)
      const res = await post('/token', contentType, `username=${username}&password=${PW}`)
      expect(res.statusCode).toBe(415)
      expect(res.json()).toEqual(OAUTH_BAD_CHARSET)
    },
  )

  it('refuses a /revoke form declared as latin1 with 415 invalid_request, and revokes nothing', async () => {
    const username = uniqueUsername('enc')
    await registerUser(username, PW)
    const tokens = await login(app, username)
    const res = await post('/revoke', `${FORM}; charset=iso-8859-1`, `token=${tokens.refresh_token}`)
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(OAUTH_BAD_CHARSET)
    expect((await refresh(app, tokens.refresh_token)).statusCode).toBe(200)
  })

  it('refuses a charset holding a byte that is not ASCII (raw socket)', async () => {
    const body = JSON.stringify({ username: uniqueUsername('enc'), password: PW })
    const res = await rawHttp(
      port,
      bytes(
        'POST /register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8',
        [0xff],
        `\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      ),
    )
    expect(res.status).toBe(415)
    expect(JSON.parse(res.body)).toEqual(BAD_CHARSET)
  })
})

describe('no body and no Content-Type', () => {
  it('answers /revoke like an empty form: 400 invalid_request, missing token', async () => {
    const res = await app.inject({ method: 'POST', url: '/revoke' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Missing parameter 'token'"))
  })

  it.each([
    ['no Content-Length', ''],
    ['Content-Length: 0', 'Content-Length: 0\r\n'],
  ])('answers /revoke with %s over a real socket the same way', async (_label, length) => {
    const res = await rawHttp(port, `POST /revoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${length}\r\n`)
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toEqual(oauthError('invalid_request', "Missing parameter 'token'"))
  })

  it('answers /token like an empty form: 400 invalid_request, missing username', async () => {
    const res = await app.inject({ method: 'POST', url: '/token' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_request', "Missing parameter 'username'"))
  })

  it('keeps 415 for a body without a Content-Type', async () => {
    const res = await post('/revoke', undefined, 'token=abc')
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_FORM)
    const chunked = await rawHttp(
      port,
      'POST /revoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    )
    expect(chunked.status).toBe(415)
    expect(JSON.parse(chunked.body)).toEqual(NEED_FORM)
  })

  it('keeps 415 at /register: JSON has no empty document, so there is no JSON request to answer', async () => {
    const res = await app.inject({ method: 'POST', url: '/register' })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
  })
})

describe('authenticated JSON routes', () => {
  async function session(): Promise<{ username: string; token: string }> {
    const username = uniqueUsername('enc')
    await registerUser(username, PW)
    return { username, token: (await login(app, username)).access_token }
  }

  it('refuses a password change whose new password is not UTF-8, and changes nothing', async () => {
    const { username, token } = await session()
    const res = await app.inject({
      method: 'POST',
      url: '/users/me/password',
      headers: { ...bearer(token), 'content-type': JSON_TYPE },
      payload: bytes(`{"current_password":"${PW}","new_password":"${PW}-`, [0xff, 0xfe, 0xc0], '"}'),
    })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_UTF8)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)
    expect((await login(app, username)).token_type).toBe('bearer')
    const lossy = await post(
      '/token',
      FORM,
      new URLSearchParams({ username, password: `${PW}-\uFFFD\uFFFD\uFFFD` }).toString(),
    )
    expect(lossy.json()).toEqual(INVALID_GRANT)
  })

  it('refuses a password change declared as latin1 with 415', async () => {
    const { token } = await session()
    const res = await app.inject({
      method: 'POST',
      url: '/users/me/password',
      headers: { ...bearer(token), 'content-type': 'application/json; charset=latin1' },
      payload: JSON.stringify({ current_password: PW, new_password: `${PW}-2` }),
    })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(BAD_CHARSET)
  })

  it('refuses DELETE /users/me with a password that is not UTF-8, and deletes nothing', async () => {
    const { token } = await session()
    const res = await app.inject({
      method: 'DELETE',
      url: '/users/me',
      headers: { ...bearer(token), 'content-type': JSON_TYPE },
      payload: bytes(`{"password":"${PW}`, [0xed, 0xa0, 0x80], '"}'),
    })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_UTF8)
    expect((await getMe(app, `Bearer ${token}`)).statusCode).toBe(200)
  })

  it('refuses an admin PATCH that is not UTF-8, and changes nothing', async () => {
    const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const { username } = await session()
    const list = await authed(app, 'GET', `/users?username_prefix=${username}`, admin.access_token)
    const id = list.json<{ items: { id: string }[] }>().items[0]?.id
    const res = await app.inject({
      method: 'PATCH',
      url: `/users/${id}`,
      headers: { ...bearer(admin.access_token), 'content-type': JSON_TYPE },
      payload: bytes('{"disabled":true,"x":"', [0xc0, 0xaf], '"}'),
    })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_UTF8)
    expect((await login(app, username)).token_type).toBe('bearer')
  })
})

describe('headers, query strings and paths', () => {
  it('answers a byte that is not ASCII in the Authorization header with 401 invalid_token', async () => {
    const username = uniqueUsername('enc')
    await registerUser(username, PW)
    const { access_token } = await login(app, username)
    // Node reads header values as latin1: FF becomes "ÿ", which no b64token contains.
    const res = await rawHttp(
      port,
      bytes(
        `GET /users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer ${access_token}`,
        [0xff],
        '\r\n\r\n',
      ),
    )
    expect(res.status).toBe(401)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
    expect(JSON.parse(res.body)).toEqual(INVALID_TOKEN)
  })

  it('answers a token whose header segment is not UTF-8 with 401 invalid_token', async () => {
    const header = b64url(bytes('{"alg":"HS256","typ":"at+jwt","kid":"', [0xff, 0xfe], '"}'))
    const payload = b64url(JSON.stringify({ sub: 'x' }))
    const signature = createHmac('sha256', TEST_SECRET).update(`${header}.${payload}`).digest('base64url')
    const res = await getMe(app, `Bearer ${header}.${payload}.${signature}`)
    expect(res.statusCode).toBe(401)
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
    expect(res.json()).toEqual(INVALID_TOKEN)
  })

  it.each(['%FF', '%ED%A0%80', '%C3%BC'])(
    'answers GET /users?username_prefix=%s with 422 (the prefix charset refuses it)',
    async (prefix) => {
      const admin = await login(app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
      const res = await authed(app, 'GET', `/users?username_prefix=${prefix}`, admin.access_token)
      expect(res.statusCode).toBe(422)
      expect(res.json()).toEqual({
        detail: 'username_prefix: may contain only A-Z a-z 0-9 . _ -',
        errors: [{ field: 'username_prefix', message: 'may contain only A-Z a-z 0-9 . _ -' }],
      })
    },
  )

  it.each(['/users/%FF', '/users/%C0%AF', '/%FF', '/users/%ED%A0%80'])(
    'answers %s with 400 Malformed URL, in our body, over a real socket',
    async (path) => {
      const res = await fetch(`${base}${path}`)
      expect(res.status).toBe(400)
      expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8')
      expect(res.headers.get('x-request-id')).toMatch(UUID_PATTERN)
      expect(await res.json()).toEqual({ detail: 'Malformed URL' })
    },
  )

  it('answers a path segment over the router limit with 414 in our body (the same frameworkErrors path)', async () => {
    const res = await fetch(`${base}/users/${'a'.repeat(101)}`)
    expect(res.status).toBe(414)
    expect(await res.json()).toEqual({ detail: 'URL too long' })
  })

  it.each([
    ['the path', (b: number[]) => bytes('GET /users/', b, ' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')],
    [
      'the query string',
      (b: number[]) => bytes('GET /users?username_prefix=', b, ' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
    ],
  ])('answers a raw byte that is not ASCII in %s with 400 (Node refuses the request line)', async (_label, request) => {
    const res = await rawHttp(port, request([0xff]))
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toEqual({ detail: 'Malformed HTTP request' })
  })
})

describe('npm run create-admin', () => {
  it('refuses a password on stdin that is not UTF-8, before touching any store', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'auth-encoding-'))
    try {
      const cli = fileURLToPath(new URL('../src/cli/create-admin.ts', import.meta.url))
      const tsx = fileURLToPath(new URL('../node_modules/tsx/dist/cli.mjs', import.meta.url))
      const child = spawn(process.execPath, [tsx, cli, '--username', 'stdin_admin'], {
        cwd,
        env: { PATH: process.env.PATH ?? '' },
        stdio: ['pipe', 'pipe', 'pipe'],
      })
      let stderr = ''
      child.stderr.on('data', (chunk) => {
        stderr += chunk
      })
      child.stdin.end(bytes(PW, [0xff, 0xfe, 0xc0], '\n'))
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
      expect(code).toBe(1)
      expect(stderr).toContain('create-admin: the password on stdin is not valid UTF-8')
    } finally {
      rmSync(cwd, { recursive: true, force: true })
    }
  }, 20_000)
})
