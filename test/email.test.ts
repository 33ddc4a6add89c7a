// E-mail addresses at registration: every address RFC 5321/5322 and IDNA allow for a mailbox is
// accepted (ASCII or internationalised domains, in Unicode or punycode; quoted or plus-tagged local
// parts) and stored in one form (the domain lower-cased, in Unicode); clearly invalid ones get 422.
import type { FastifyInstance } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildTestApp, getMe, postToken, register, TEST_PASSWORD, uniqueUsername } from './helpers.js'

const INVALID = {
  detail: 'email: must be a valid email address',
  errors: [{ field: 'email', message: 'must be a valid email address' }],
}

describe('POST /register e-mail addresses', () => {
  let app: FastifyInstance
  beforeAll(async () => {
    app = await buildTestApp()
  })
  afterAll(async () => {
    await app.close()
  })

  it.each([
    ['an IDN top-level domain in punycode', 'ivan@example.xn--p1ai', 'ivan@example.рф'],
    // One address belongs to one account (in any spelling): each case uses its own local part.
    ['an IDN domain in Unicode', 'ivan@пример.рф', 'ivan@пример.рф'],
    ['the same IDN domain in punycode', 'ivan.p@xn--e1afmkfd.xn--p1ai', 'ivan.p@пример.рф'],
    ['an upper-case domain', 'Alice@Example.COM', 'Alice@example.com'],
    ['an upper-case IDN domain', 'ivan.u@ПРИМЕР.РФ', 'ivan.u@пример.рф'],
    ['a plus-tagged local part', 'alice+news@example.com', 'alice+news@example.com'],
    ['a quoted local part', '"alice smith"@example.com', '"alice smith"@example.com'],
    ['a Unicode local part', 'Grüße@example.de', 'Grüße@example.de'],
    ['a German IDN', 'info@bücher.example', 'info@bücher.example'],
  ])('accepts %s and stores it in one form', async (_label, email, stored) => {
    const username = uniqueUsername()
    const res = await register(app, { username, email, password: TEST_PASSWORD })
    expect(res.statusCode, res.body).toBe(201)
    expect(res.json().email).toBe(stored)
    const token = (await postToken(app, { username, password: TEST_PASSWORD })).json().access_token
    expect((await getMe(app, `Bearer ${token}`)).json().email).toBe(stored)
  })

  it.each([
    ['no @', 'alice.example.com'],
    ['two @', 'alice@@example.com'],
    ['no domain', 'alice@'],
    ['no local part', '@example.com'],
    ['a domain without a dot', 'alice@localhost'],
    ['an empty label', 'alice@example..com'],
    ['a label starting with a hyphen', 'alice@-example.com'],
    ['a space in an unquoted local part', 'alice smith@example.com'],
    ['invalid punycode', 'alice@xn--zz.com'],
    ['an IP address literal', 'alice@[192.0.2.1]'],
    ['a display name', 'Alice <alice@example.com>'],
  ])('refuses %s with 422, nothing stored', async (_label, email) => {
    const username = uniqueUsername()
    const res = await register(app, { username, email, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual(INVALID)
    expect((await register(app, { username, password: TEST_PASSWORD })).statusCode).toBe(201)
  })

  it('refuses an address longer than 254 characters with 422', async () => {
    const email = `${'a'.repeat(64)}@${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(60)}.example.com`
    expect(email.length).toBeGreaterThan(254)
    const res = await register(app, { username: uniqueUsername(), email, password: TEST_PASSWORD })
    expect(res.statusCode).toBe(422)
    expect(res.json()).toEqual({
      detail: 'email: must be at most 254 characters',
      errors: [{ field: 'email', message: 'must be at most 254 characters' }],
    })
  })
})
