// Account management: POST /users/me/password and DELETE /users/me. Every token issued before a
// password change or a deletion stops working; a login right after the change still works.
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  authed,
  buildTestApp,
  CHALLENGE_INVALID,
  CHALLENGE_MISSING,
  decodeClaims,
  FORM,
  getMe,
  login,
  nowSeconds,
  postToken,
  refresh,
  register,
  TEST_PASSWORD,
  type TokenBody,
  UUID_PATTERN,
  uniqueUsername,
} from './helpers.js'

const NEW_PASSWORD = 'copper-Lantern-44-meadow'
const INVALID_GRANT_LOGIN = {
  error: 'invalid_grant',
  error_description: 'Invalid credentials',
  detail: 'Invalid credentials',
}
const INVALID_REFRESH = {
  error: 'invalid_grant',
  error_description: 'Invalid refresh token',
  detail: 'Invalid refresh token',
}
const PASSWORD_INCORRECT = { detail: 'Password is incorrect' }
const NEED_JSON = { detail: 'Content-Type must be application/json' }

function expectInvalidToken(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(401)
  expect(res.json()).toEqual({ detail: 'Could not validate credentials' })
  expect(res.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
}

function expectInvalidRefresh(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(400)
  expect(res.json()).toEqual(INVALID_REFRESH)
}

function expectInvalidLogin(res: LightMyRequestResponse): void {
  expect(res.statusCode).toBe(400)
  expect(res.json()).toEqual(INVALID_GRANT_LOGIN)
}

/** A new user with two sessions (two logins). */
async function twoSessions(app: FastifyInstance) {
  const username = uniqueUsername('acct')
  const reg = await register(app, { username, password: TEST_PASSWORD })
  expect(reg.statusCode).toBe(201)
  const first = await login(app, username)
  const second = await login(app, username)
  return { username, id: reg.json().id as string, first, second }
}

const changePassword = (app: FastifyInstance, token: string, current: string, next: string) =>
  authed(app, 'POST', '/users/me/password', token, { current_password: current, new_password: next })

/** Resolves at the start of a wall-clock second, so that what follows runs within one second. */
async function startOfSecond(): Promise<void> {
  const ms = Date.now() % 1000
  if (ms > 50) await sleep(1000 - ms + 5)
}

let app: FastifyInstance
beforeAll(async () => {
  app = await buildTestApp()
})
afterAll(async () => {
  await app.close()
})

describe('POST /users/me/password: refused changes', () => {
  it('answers a wrong current password with 400 {"detail":"Password is incorrect"}', async () => {
    const { first } = await twoSessions(app)
    const res = await changePassword(app, first.access_token, 'not-the-password-99', NEW_PASSWORD)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(PASSWORD_INCORRECT)
  })

  it('keeps the old password and the tokens after a wrong current password', async () => {
    const { username, first } = await twoSessions(app)
    expect((await changePassword(app, first.access_token, 'not-the-password-99', NEW_PASSWORD)).statusCode).toBe(400)

    expect((await getMe(app, `Bearer ${first.access_token}`)).statusCode).toBe(200)
    expect((await postToken(app, { username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })

  it.each([
    ['a common password', () => 'password123', ['is too common; choose a less guessable password']],
    ['a password that is too short', () => 'Zq9-xw', ['must be at least 8 characters']],
    [
      'a password over 72 bytes',
      () => 'ü'.repeat(37),
      [
        'must be at most 72 bytes in UTF-8 (bcrypt ignores every byte past 72, so longer passwords are refused rather than truncated)',
      ],
    ],
  ])('answers %s with 422 and errors on new_password', async (_label, password, messages) => {
    const { first } = await twoSessions(app)
    const res = await changePassword(app, first.access_token, TEST_PASSWORD, password())
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: `new_password: ${messages[0]}`,
      errors: messages.map((message) => ({ field: 'new_password', message })),
    })
  })

  it('answers a new password equal to the username (in another case) with 422', async () => {
    const { username, first } = await twoSessions(app)
    const res = await changePassword(app, first.access_token, TEST_PASSWORD, username.toUpperCase())
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'new_password: must not be the same as the username',
      errors: [{ field: 'new_password', message: 'must not be the same as the username' }],
    })
  })

  it('answers a missing new_password with 422', async () => {
    const { first } = await twoSessions(app)
    const res = await authed(app, 'POST', '/users/me/password', first.access_token, { current_password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'new_password: Invalid input: expected string, received undefined',
      errors: [{ field: 'new_password', message: 'Invalid input: expected string, received undefined' }],
    })
  })

  it('answers a form body with 415', async () => {
    const { first } = await twoSessions(app)
    const res = await app.inject({
      method: 'POST',
      url: '/users/me/password',
      headers: { authorization: `Bearer ${first.access_token}`, 'content-type': FORM },
      payload: new URLSearchParams({ current_password: TEST_PASSWORD, new_password: NEW_PASSWORD }).toString(),
    })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
  })

  it('answers a request without a token with 401 Not authenticated', async () => {
    const res = await authed(app, 'POST', '/users/me/password', undefined, {
      current_password: TEST_PASSWORD,
      new_password: NEW_PASSWORD,
    })
    expect(res.statusCode).toBe(401)
    expect(res.json()).toEqual({ detail: 'Not authenticated' })
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })
})

describe('POST /users/me/password: a successful change', () => {
  it('answers 204 with an empty body', async () => {
    const { first } = await twoSessions(app)
    const res = await changePassword(app, first.access_token, TEST_PASSWORD, NEW_PASSWORD)
    expect(res.statusCode).toBe(204)
    expect(res.body).toBe('')
  })

  it('rejects every access token issued before the change, in every session', async () => {
    const { first, second } = await twoSessions(app)
    const rotated = (await refresh(app, second.refresh_token)).json<TokenBody>()
    expect((await changePassword(app, first.access_token, TEST_PASSWORD, NEW_PASSWORD)).statusCode).toBe(204)

    expectInvalidToken(await getMe(app, `Bearer ${first.access_token}`))
    expectInvalidToken(await getMe(app, `Bearer ${second.access_token}`))
    expectInvalidToken(await getMe(app, `Bearer ${rotated.access_token}`))
  })

  it('rejects every refresh token issued before the change', async () => {
    const { first, second } = await twoSessions(app)
    expect((await changePassword(app, first.access_token, TEST_PASSWORD, NEW_PASSWORD)).statusCode).toBe(204)

    expectInvalidRefresh(await refresh(app, first.refresh_token))
    expectInvalidRefresh(await refresh(app, second.refresh_token))
  })

  it('refuses the old password and accepts the new one', async () => {
    const { username, first } = await twoSessions(app)
    expect((await changePassword(app, first.access_token, TEST_PASSWORD, NEW_PASSWORD)).statusCode).toBe(204)

    expectInvalidLogin(await postToken(app, { username, password: TEST_PASSWORD }))
    expect((await postToken(app, { username, password: NEW_PASSWORD })).statusCode).toBe(200)
  })

  it('accepts a login in the same second as the change, and its tokens work', async () => {
    const { username, first } = await twoSessions(app)
    await startOfSecond()
    const changedAt = nowSeconds()
    expect((await changePassword(app, first.access_token, TEST_PASSWORD, NEW_PASSWORD)).statusCode).toBe(204)

    const fresh = await login(app, username, NEW_PASSWORD)

    expect(decodeClaims(fresh.access_token).iat).toBe(changedAt)
    expect((await getMe(app, `Bearer ${fresh.access_token}`)).statusCode).toBe(200)
    expect((await refresh(app, fresh.refresh_token)).statusCode).toBe(200)
  })
})

describe('DELETE /users/me', () => {
  const deleteMe = (token: string, body: unknown = { password: TEST_PASSWORD }) =>
    authed(app, 'DELETE', '/users/me', token, body)

  it('answers a wrong password with 400 {"detail":"Password is incorrect"} and deletes nothing', async () => {
    const { first } = await twoSessions(app)
    const res = await deleteMe(first.access_token, { password: 'not-the-password-99' })
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(PASSWORD_INCORRECT)
    expect((await getMe(app, `Bearer ${first.access_token}`)).statusCode).toBe(200)
  })

  it('answers 204 with an empty body', async () => {
    const { first } = await twoSessions(app)
    const res = await deleteMe(first.access_token)
    expect(res.statusCode).toBe(204)
    expect(res.body).toBe('')
  })

  it('rejects the access tokens of every session afterwards with 401', async () => {
    const { first, second } = await twoSessions(app)
    expect((await deleteMe(first.access_token)).statusCode).toBe(204)
    expectInvalidToken(await getMe(app, `Bearer ${first.access_token}`))
    expectInvalidToken(await getMe(app, `Bearer ${second.access_token}`))
  })

  it('answers every refresh token with invalid_grant afterwards', async () => {
    const { first, second } = await twoSessions(app)
    expect((await deleteMe(first.access_token)).statusCode).toBe(204)
    expectInvalidRefresh(await refresh(app, first.refresh_token))
    expectInvalidRefresh(await refresh(app, second.refresh_token))
  })

  it('answers a login afterwards with invalid_grant', async () => {
    const { username, first } = await twoSessions(app)
    expect((await deleteMe(first.access_token)).statusCode).toBe(204)
    expectInvalidLogin(await postToken(app, { username, password: TEST_PASSWORD }))
  })

  it('frees the username: it registers again with a new id, and the old tokens do not reach it', async () => {
    const { username, id, first } = await twoSessions(app)
    expect((await deleteMe(first.access_token)).statusCode).toBe(204)

    const again = await register(app, { username, password: NEW_PASSWORD })

    expect(again.statusCode).toBe(201)
    expect(again.json()).toEqual({
      id: expect.stringMatching(UUID_PATTERN),
      username,
      email: null,
      email_verified: false,
      created_at: expect.any(String),
    })
    expect(again.json().id).not.toBe(id)
    expectInvalidToken(await getMe(app, `Bearer ${first.access_token}`))
    expect((await postToken(app, { username, password: NEW_PASSWORD })).statusCode).toBe(200)
  })

  it('answers a form body with 415 and deletes nothing', async () => {
    const { first } = await twoSessions(app)
    const res = await app.inject({
      method: 'DELETE',
      url: '/users/me',
      headers: { authorization: `Bearer ${first.access_token}`, 'content-type': FORM },
      payload: `password=${TEST_PASSWORD}`,
    })
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
    expect((await getMe(app, `Bearer ${first.access_token}`)).statusCode).toBe(200)
  })

  it('answers no body and no Content-Type with 415', async () => {
    const { first } = await twoSessions(app)
    const res = await authed(app, 'DELETE', '/users/me', first.access_token)
    expect(res.statusCode).toBe(415)
    expect(res.json()).toEqual(NEED_JSON)
  })

  it('answers a body without password with 422', async () => {
    const { first } = await twoSessions(app)
    const res = await deleteMe(first.access_token, {})
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'password: Invalid input: expected string, received undefined',
      errors: [{ field: 'password', message: 'Invalid input: expected string, received undefined' }],
    })
  })

  it('answers a request without a token with 401 Not authenticated', async () => {
    const res = await authed(app, 'DELETE', '/users/me', undefined, { password: TEST_PASSWORD })
    expect(res.statusCode).toBe(401)
    expect(res.json()).toEqual({ detail: 'Not authenticated' })
    expect(res.headers['www-authenticate']).toBe(CHALLENGE_MISSING)
  })
})
