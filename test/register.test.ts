// POST /register: the 201 shape, the validation rules (422), conflicts (409) and the wire edges
// (415, 400, 413), through the real app with inject.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  buildTestApp,
  getMe,
  ISO_UTC_PATTERN,
  postToken,
  register,
  TEST_PASSWORD,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'

const USERNAME_RULE = 'must be 3-32 characters of A-Z a-z 0-9 . _ - and start with a letter or digit'
const TOO_LONG_72 =
  'must be at most 72 bytes in UTF-8 (bcrypt ignores every byte past 72, so longer passwords are refused rather than truncated)'
const TOO_COMMON = 'is too common; choose a less guessable password'
const NOT_JSON = { detail: 'Request body is not valid JSON' }
const NEED_JSON = { detail: 'Content-Type must be application/json' }

/** The 422 body for a single field error. */
const invalid = (field: string, message: string) => ({
  detail: `${field === '' ? 'body' : field}: ${message}`,
  errors: [{ field, message }],
})

let app: FastifyInstance
beforeAll(async () => {
  app = await buildTestApp()
})
afterAll(async () => {
  await app.close()
})

describe('POST /register: success', () => {
  it('returns 201 with id, username as sent, email, email_verified and created_at, and no-store', async () => {
    const username = uniqueUsername('New.User')
    const before = Date.now()
    const res = await register(app, { username, email: 'new.user@example.com', password: TEST_PASSWORD })

    expect(res.statusCode).toBe(201)
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(res.headers['cache-control']).toBe('no-store')
    const body = res.json()
    expect(body).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: 'new.user@example.com',
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
    })
    const created = Date.parse(body.created_at)
    expect(created).toBeGreaterThanOrEqual(before - 1000)
    expect(created).toBeLessThanOrEqual(Date.now() + 1000)
  })

  it('returns email null when no email is sent', async () => {
    const username = uniqueUsername()
    const res = await register(app, { username, password: TEST_PASSWORD })

    expect(res.statusCode).toBe(201)
    expect(res.json()).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: null,
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
    })
  })

  it('gives each account a different random id', async () => {
    const a = await register(app, { username: uniqueUsername(), password: TEST_PASSWORD })
    const b = await register(app, { username: uniqueUsername(), password: TEST_PASSWORD })

    expect(a.statusCode).toBe(201)
    expect(b.statusCode).toBe(201)
    expect(a.json().id).not.toBe(b.json().id)
  })

  it('accepts the tutorial field hashed_password as the plaintext password', async () => {
    const username = uniqueUsername()
    const res = await register(app, { username, hashed_password: TEST_PASSWORD })

    expect(res.statusCode).toBe(201)
    expect(res.json()).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: null,
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
    })
    const login = await postToken(app, { username, password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
  })

  it('ignores unknown fields (id, role, is_admin, email_verified, created_at) and never reflects or stores them', async () => {
    const username = uniqueUsername()
    const forgedId = '00000000-0000-4000-8000-000000000000'
    const res = await register(app, {
      username,
      password: TEST_PASSWORD,
      id: forgedId,
      role: 'admin',
      is_admin: true,
      email_verified: true,
      created_at: '2000-01-01T00:00:00.000Z',
    })

    expect(res.statusCode).toBe(201)
    const body = res.json()
    expect(body).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: null,
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
    })
    expect(body.id).not.toBe(forgedId)
    expect(body.created_at).not.toBe('2000-01-01T00:00:00.000Z')

    const login = await postToken(app, { username, password: TEST_PASSWORD })
    const me = await getMe(app, `Bearer ${login.json().access_token}`)
    expect(me.statusCode).toBe(200)
    expect(me.json()).toEqual(body)
  })

  it('accepts a password of exactly 72 UTF-8 bytes (24 three-byte characters) and logs in with it', async () => {
    const username = uniqueUsername()
    const password = '€'.repeat(24)
    expect(Buffer.byteLength(password, 'utf8')).toBe(72)

    const res = await register(app, { username, password })
    expect(res.statusCode).toBe(201)
    const login = await postToken(app, { username, password })
    expect(login.statusCode).toBe(200)
  })

  it('accepts a null email as no email', async () => {
    const username = uniqueUsername()
    const res = await register(app, { username, email: null, password: TEST_PASSWORD })

    expect(res.statusCode).toBe(201)
    expect(res.json()).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: null,
      email_verified: false,
      created_at: expect.stringMatching(ISO_UTC_PATTERN),
    })
  })
})

describe('POST /register: usernames are case-insensitive', () => {
  it('answers 409 Username already registered for the same name in another case', async () => {
    const name = uniqueUsername('Alice')
    const first = await register(app, { username: name, password: TEST_PASSWORD })
    expect(first.statusCode).toBe(201)

    const res = await register(app, { username: name.toLowerCase(), password: TEST_PASSWORD })
    expect(res.statusCode).toBe(409)
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(res.json()).toEqual({ detail: 'Username already registered' })
  })

  it('answers 409 for the exact same name', async () => {
    const name = uniqueUsername()
    expect((await register(app, { username: name, password: TEST_PASSWORD })).statusCode).toBe(201)

    const res = await register(app, { username: name, password: 'another-Pass-phrase-9' })
    expect(res.statusCode).toBe(409)
    expect(res.json()).toEqual({ detail: 'Username already registered' })
  })

  it('logs an account registered as Alice in when the client sends alice', async () => {
    const name = uniqueUsername('Alice')
    const reg = await register(app, { username: name, password: TEST_PASSWORD })
    expect(reg.statusCode).toBe(201)

    const login = await postToken(app, { username: name.toLowerCase(), password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
    const me = await getMe(app, `Bearer ${login.json().access_token}`)
    expect(me.json()).toEqual(reg.json())
  })
})

describe('POST /register: 422 for an invalid body', () => {
  it('refuses both password and hashed_password', async () => {
    const res = await register(app, {
      username: uniqueUsername(),
      password: TEST_PASSWORD,
      hashed_password: TEST_PASSWORD,
    })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'send either password or hashed_password, not both'))
  })

  it('refuses a body with neither password nor hashed_password', async () => {
    const res = await register(app, { username: uniqueUsername() })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'is required'))
  })

  it.each([
    ['too short', 'ab'],
    ['too long (33 characters)', `a${'b'.repeat(32)}`],
    ['with a character outside A-Z a-z 0-9 . _ -', 'bob!smith'],
    ['with a space', 'bob smith'],
    ['starting with a dot', '.bob'],
    ['starting with an underscore', '_bob'],
    ['with a non-ASCII letter', 'bøb_smith'],
  ])('refuses a username %s', async (_label, username) => {
    const res = await register(app, { username, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('username', USERNAME_RULE))
  })

  it('accepts a username of exactly 3 and of exactly 32 characters', async () => {
    const three = `a${randomLetters(2)}`
    const thirtyTwo = `Z${randomLetters(31)}`
    expect((await register(app, { username: three, password: TEST_PASSWORD })).statusCode).toBe(201)
    expect((await register(app, { username: thirtyTwo, password: TEST_PASSWORD })).statusCode).toBe(201)
  })

  it('refuses a username that is not a string', async () => {
    const res = await register(app, { username: 12345, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('username', 'Invalid input: expected string, received number'))
  })

  it('refuses an invalid email address', async () => {
    const res = await register(app, { username: uniqueUsername(), email: 'not-an-email', password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('email', 'must be a valid email address'))
  })

  it('refuses an email longer than 254 characters', async () => {
    const email = `${'a'.repeat(64)}@${'b'.repeat(186)}.com`
    expect(email).toHaveLength(255)
    const res = await register(app, { username: uniqueUsername(), email, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('email', 'must be at most 254 characters'))
  })

  it("lists every bad field in one 422, the password policy's problems next to the others", async () => {
    const res = await register(app, { username: '-x', email: 'not-an-email', password: 'short' })
    expect(res.statusCode).toBe(422)
    expect(res.json().errors).toEqual([
      { field: 'username', message: expect.any(String) },
      { field: 'email', message: 'must be a valid email address' },
      { field: 'password', message: 'must be at least 8 characters' },
      { field: 'password', message: 'is too common; choose a less guessable password' },
    ])
  })

  it('refuses a password shorter than 8 characters', async () => {
    const res = await register(app, { username: uniqueUsername(), password: 'x7#Qz9k' })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must be at least 8 characters'))
  })

  it('counts the minimum length in characters, not bytes', async () => {
    // 7 three-byte characters are 21 bytes but still only 7 characters.
    const res = await register(app, { username: uniqueUsername(), password: '€'.repeat(7) })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must be at least 8 characters'))
  })

  it('refuses a 73-byte password with a message that names the 72-byte limit', async () => {
    const password = `${'€'.repeat(24)}a`
    expect(Buffer.byteLength(password, 'utf8')).toBe(73)
    const res = await register(app, { username: uniqueUsername(), password })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', TOO_LONG_72))
    expect(res.json().detail).toMatch(/72 bytes/)
  })

  it('refuses a 73-byte password sent as hashed_password under that field name', async () => {
    const res = await register(app, { username: uniqueUsername(), hashed_password: 'a'.repeat(73) })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('hashed_password', TOO_LONG_72))
  })

  it('refuses a password containing NUL (a control character)', async () => {
    const res = await register(app, { username: uniqueUsername(), password: 'violet\u0000Harbor-58' })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must not contain control characters'))
  })

  it('refuses a password equal to the username, ignoring case', async () => {
    const username = uniqueUsername('Sam')
    const res = await register(app, { username, password: username.toUpperCase() })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', 'must not be the same as the username'))
  })

  it.each(['password1', 'qwerty123', 'Password1'])('refuses the common password %s', async (password) => {
    const res = await register(app, { username: uniqueUsername(), password })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('password', TOO_COMMON))
  })

  it('lists every problem and summarises the first one', async () => {
    const res = await register(app, { username: 'ab' })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: `username: ${USERNAME_RULE} (and 1 more)`,
      errors: [
        { field: 'username', message: USERNAME_RULE },
        { field: 'password', message: 'is required' },
      ],
    })
  })

  it.each([
    ['null', 'null', 'Invalid input: expected object, received null'],
    ['an array', '[]', 'Invalid input: expected object, received array'],
    ['a number', '123', 'Invalid input: expected object, received number'],
    ['a string', '"alice"', 'Invalid input: expected object, received string'],
  ])('refuses a JSON body that is %s with 422', async (_label, body, message) => {
    const res = await register(app, body)
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(invalid('', message))
  })
})

describe('POST /register: a failed registration creates nothing', () => {
  it('does not create the user when the password is refused: login fails and the name stays free', async () => {
    const username = uniqueUsername()
    const refused = await register(app, { username, password: 'password1' })
    expect(refused.statusCode).toBe(422)

    const login = await postToken(app, { username, password: 'password1' })
    expect(login.statusCode).toBe(400)
    expect(login.json()).toEqual({
      error: 'invalid_grant',
      error_description: 'Invalid credentials',
      detail: 'Invalid credentials',
    })

    const again = await register(app, { username, password: TEST_PASSWORD })
    expect(again.statusCode).toBe(201)
  })

  it('does not replace the first account on a 409', async () => {
    const username = uniqueUsername()
    const first = await register(app, { username, password: TEST_PASSWORD })
    const second = await register(app, { username, password: 'second-Pass-phrase-7' })
    expect(second.statusCode).toBe(409)

    expect((await postToken(app, { username, password: 'second-Pass-phrase-7' })).statusCode).toBe(400)
    const login = await postToken(app, { username, password: TEST_PASSWORD })
    expect(login.statusCode).toBe(200)
    const me = await getMe(app, `Bearer ${login.json().access_token}`)
    expect(me.json()).toEqual(first.json())
  })
})

describe('POST /register: wire edges', () => {
  const valid = () => JSON.stringify({ username: uniqueUsername(), password: TEST_PASSWORD })

  it.each([
    ['text/plain', 'text/plain'],
    ['a form', 'application/x-www-form-urlencoded'],
    ['multipart', 'multipart/form-data; boundary=x'],
  ])('answers 415 for a %s body', async (_label, contentType) => {
    const res = await register(app, valid(), contentType)
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
  })

  it('answers 415 when there is no Content-Type', async () => {
    const res = await app.inject({ method: 'POST', url: '/register', payload: valid() })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
  })

  it('accepts application/json with a charset parameter', async () => {
    const res = await register(app, valid(), 'application/json; charset=utf-8')
    expect(res.statusCode).toBe(201)
  })

  it('answers 400 for malformed JSON', async () => {
    const res = await register(app, '{"username": "bob", ')
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
  })

  it('answers 400 for an empty JSON body', async () => {
    const res = await register(app, '')
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual({ detail: 'Request body is empty' })
  })

  it('answers 400 for a __proto__ key and creates nothing', async () => {
    const username = uniqueUsername()
    const res = await register(
      app,
      `{"username":"${username}","password":"${TEST_PASSWORD}","__proto__":{"is_admin":true}}`,
    )
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
    expect(({} as Record<string, unknown>).is_admin).toBeUndefined()
    expect((await register(app, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
  })

  it('answers 400 for a constructor.prototype key', async () => {
    const res = await register(
      app,
      `{"username":"${uniqueUsername()}","password":"${TEST_PASSWORD}","constructor":{"prototype":{"x":1}}}`,
    )
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(NOT_JSON)
  })

  it('answers 413 for a body over 16 KiB', async () => {
    const body = JSON.stringify({ username: uniqueUsername(), password: TEST_PASSWORD, pad: 'x'.repeat(16 * 1024) })
    const res = await register(app, body)
    expect(res.statusCode).toBe(413)
    expect(res.json()).toEqual({ detail: 'Request body too large' })
  })

  it('answers a deeply nested JSON array within the size limit with a 4xx, never a 500', async () => {
    const depth = 8000
    const body = `${'['.repeat(depth)}${']'.repeat(depth)}`
    expect(body.length).toBeLessThan(16 * 1024)
    const res = await register(app, body)
    // Whether JSON.parse overflows its stack on this depth depends on the stack size: either the
    // parser gives up (400) or the schema refuses the array (422). Both are the client's fault.
    expect([400, 422]).toContain(res.statusCode)
    expect(res.json()).toEqual(
      res.statusCode === 400 ? NOT_JSON : invalid('', 'Invalid input: expected object, received array'),
    )
  })

  it('answers a deeply nested field within the size limit with a 4xx, never a 500', async () => {
    const depth = 8000
    const body = `{"password":"${TEST_PASSWORD}","username":${'['.repeat(depth)}${']'.repeat(depth)}}`
    expect(body.length).toBeLessThan(16 * 1024)
    const res = await register(app, body)
    expect([400, 422]).toContain(res.statusCode)
    expect(res.json()).toEqual(
      res.statusCode === 400 ? NOT_JSON : invalid('username', 'Invalid input: expected string, received array'),
    )
  })
})

function randomLetters(n: number): string {
  const letters = 'abcdefghijklmnopqrstuvwxyz'
  let out = ''
  for (let i = 0; i < n; i++) out += letters[Math.floor(Math.random() * letters.length)]
  return out
}
