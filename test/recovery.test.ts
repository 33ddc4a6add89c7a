// Account recovery and verified e-mail, end to end: the app delivers over SMTP to a real server in
// this process (test/smtp.ts), the tests read the messages, take the token out of each link and
// follow it through the HTTP API. Covers password reset, e-mail verification and change, the
// answers that must not tell accounts apart (checked by structure: same status, body and headers,
// and the lookup happening after the answer), the limits, an SMTP server that fails, production
// without SMTP_URL, one address per account, and the whole flow once on PostgreSQL.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { pino } from 'pino'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import type { AppDeps } from '../src/app.js'
import { ConfigError } from '../src/errors.js'
import { MemoryUserStore, type UserRecord } from '../src/store/users.js'
import {
  authed,
  buildTestApp,
  CHALLENGE_INVALID,
  type Env,
  FORM,
  freePort,
  getMe,
  INVALID_GRANT,
  type JsonBody,
  lineCollector,
  login,
  oauthError,
  postRevoke,
  postToken,
  refresh,
  register,
  stableHeaders,
  TEST_PASSWORD,
  testConfig,
  uniqueUsername,
} from './helpers.js'
import { createTestSchema, describeWith, type TestSchema } from './services.js'
import { linkIn, type ReceivedMessage, startSmtpServer, type TestSmtpServer, tokenIn } from './smtp.js'

const NEW_PASSWORD = 'tangerine-Comet-47-ledger'
const OTHER_PASSWORD = 'saffron-Beacon-22-marble'
const FORGOT_ANSWER = { detail: 'If an account matches, a reset link has been sent' }
const INVALID_TOKEN = { detail: 'Invalid or expired token' }
const EMAIL_TAKEN = { detail: 'Email already registered' }
const ADMIN = { ADMIN_USERNAME: 'recovery_chief', ADMIN_PASSWORD: 'granite-Orchid-63-velvet' }

const RESET = 'Reset your password'
const VERIFY = 'Verify your e-mail address'
const PASSWORD_CHANGED = 'Your password was changed'
const EMAIL_CHANGED = 'Your e-mail address was changed'

const RESET_TOKEN = /^prt_[A-Za-z0-9_-]{43}$/
const VERIFY_TOKEN = /^evt_[A-Za-z0-9_-]{43}$/

let smtp: TestSmtpServer
beforeAll(async () => {
  smtp = await startSmtpServer()
})
afterAll(async () => {
  await smtp?.close()
})

const apps: FastifyInstance[] = []
afterEach(async () => {
  await Promise.allSettled(apps.splice(0).map((app) => app.close()))
})

/** Settings that deliver to `server`, with links on an https base and quick retries. */
function mailEnv(server: TestSmtpServer): Env {
  return {
    SMTP_URL: server.url,
    MAIL_FROM: 'Auth <auth@example.com>',
    PUBLIC_URL: 'https://auth.example.com',
    MAIL_RETRY_DELAY_MS: '20',
  }
}

interface Harness {
  app: FastifyInstance
  /** The audit log, parsed. */
  audit: ReturnType<typeof lineCollector>
  /** The server log (app.log: the mailer writes there), parsed. */
  log: ReturnType<typeof lineCollector>
  /** The clock of token lifetimes: move `now` forward to expire tokens. */
  clock: { now: number }
}

/** An app that mails to the test SMTP server (or `server`), with its audit and server logs collected. */
async function recoveryApp(env: Env = {}, deps: AppDeps = {}, server = smtp): Promise<Harness> {
  const audit = lineCollector()
  const log = lineCollector()
  const clock = { now: Date.now() }
  const app = await buildTestApp(
    { ...mailEnv(server), ...env },
    { audit: pino(audit.stream), logger: { level: 'info', stream: log.stream }, clock: () => clock.now, ...deps },
  )
  apps.push(app)
  return { app, audit, log, clock }
}

const uniqueEmail = (prefix = 'mail') => `${uniqueUsername(prefix).toLowerCase()}@example.com`

function postJson(
  app: FastifyInstance,
  url: string,
  body: unknown,
  { remoteAddress, headers = {} }: { remoteAddress?: string; headers?: Record<string, string> } = {},
): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', ...headers },
    payload: JSON.stringify(body),
    ...(remoteAddress === undefined ? {} : { remoteAddress }),
  })
}

const forgot = (app: FastifyInstance, body: unknown, remoteAddress?: string) =>
  postJson(app, '/password/forgot', body, { remoteAddress })
const resetPassword = (app: FastifyInstance, token: string, newPassword = NEW_PASSWORD, remoteAddress?: string) =>
  postJson(app, '/password/reset', { token, new_password: newPassword }, { remoteAddress })
const verifyEmail = (app: FastifyInstance, token: string, remoteAddress?: string) =>
  postJson(app, '/email/verify', { token }, { remoteAddress })

/** The messages already handed out by nextMail: each is taken once. */
const taken = new Set<ReceivedMessage>()

/** The next message with `subject` to `to` not taken yet, waiting for it. */
async function nextMail(to: string, subject: string, server = smtp): Promise<ReceivedMessage> {
  const message = await server.waitForMessage((m) => !taken.has(m) && m.rcptTo.includes(to) && m.subject === subject)
  taken.add(message)
  return message
}

/** Every message with `subject` that reached `to` so far. */
const mailsTo = (to: string, subject: string, server = smtp) =>
  server.messages.filter((m) => m.rcptTo.includes(to) && m.subject === subject)

interface Account {
  id: string
  username: string
  email: string
}

/** Registers an account with an address (or none), and takes its verification message. */
async function newAccount(app: FastifyInstance, { email = uniqueEmail(), withEmail = true } = {}): Promise<Account> {
  const username = uniqueUsername('rec')
  const res = await register(app, { username, password: TEST_PASSWORD, ...(withEmail ? { email } : {}) })
  expect(res.statusCode, res.body).toBe(201)
  if (withEmail) await nextMail(email, VERIFY)
  return { id: res.json().id, username, email }
}

/** Asks for a reset of `account` and returns the token of the link it is sent. */
async function resetToken(app: FastifyInstance, account: Account): Promise<string> {
  expect((await forgot(app, { email: account.email })).statusCode).toBe(202)
  return tokenIn(await nextMail(account.email, RESET))
}

/** The audit record of the request with this x-request-id and event, once written. */
async function auditOf(h: Harness, res: LightMyRequestResponse, event: string): Promise<JsonBody> {
  const reqId = res.headers['x-request-id']
  return vi.waitFor(() => {
    const found = h.audit.records().find((r) => r.reqId === reqId && r.event === event)
    if (!found) throw new Error(`no ${event} audit record for ${String(reqId)} yet`)
    return found as JsonBody
  })
}

describe('password reset', () => {
  it('sends a link to the address asked for in any case, and the link sets a new password once, ending every session', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const before = await login(h.app, account.username)

    const res = await forgot(h.app, { email: account.email.toUpperCase() })
    expect(res.statusCode).toBe(202)
    expect(res.json()).toEqual(FORGOT_ANSWER)
    const message = await nextMail(account.email, RESET)
    expect(message.text).toContain(account.username)
    expect(linkIn(message)).toMatch(/^https:\/\/auth\.example\.com\/reset-password\?token=prt_/)
    const token = tokenIn(message)
    expect(token).toMatch(RESET_TOKEN)

    const reset = await resetPassword(h.app, token)
    expect(reset.statusCode).toBe(204)
    expect(reset.body).toBe('')

    // Every session, refresh token and access token of the account has ended.
    const me = await getMe(h.app, `Bearer ${before.access_token}`)
    expect(me.statusCode).toBe(401)
    expect(me.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
    const refreshed = await refresh(h.app, before.refresh_token)
    expect(refreshed.statusCode).toBe(400)
    expect(refreshed.json()).toEqual(oauthError('invalid_grant', 'Invalid refresh token'))
    expect((await postToken(h.app, { username: account.username, password: TEST_PASSWORD })).json()).toEqual(
      INVALID_GRANT,
    )
    const after = await login(h.app, account.username, NEW_PASSWORD)

    // Single use; the address is told; and following a link sent to it proved the address.
    expect((await resetPassword(h.app, token, OTHER_PASSWORD)).json()).toEqual(INVALID_TOKEN)
    expect((await nextMail(account.email, PASSWORD_CHANGED)).text).not.toMatch(/https?:/)
    expect((await getMe(h.app, `Bearer ${after.access_token}`)).json()).toMatchObject({
      email: account.email,
      email_verified: true,
    })
  })

  it('finds the account by username too, in any case', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    expect((await forgot(h.app, { username: account.username.toUpperCase() })).json()).toEqual(FORGOT_ANSWER)
    const token = tokenIn(await nextMail(account.email, RESET))
    expect((await resetPassword(h.app, token)).statusCode).toBe(204)
    await login(h.app, account.username, NEW_PASSWORD)
  })

  it('clears the failed-login counters of the account: a locked account logs in with its new password at once', async () => {
    const h = await recoveryApp({ LOGIN_MAX_FAILURES: '2', LOGIN_LOCKOUT_SECONDS: '600' })
    const account = await newAccount(h.app)
    for (let i = 0; i < 2; i++) await postToken(h.app, { username: account.username, password: 'wrong-Password-0' })
    expect((await postToken(h.app, { username: account.username, password: TEST_PASSWORD })).statusCode).toBe(429)

    expect((await resetPassword(h.app, await resetToken(h.app, account))).statusCode).toBe(204)
    expect((await postToken(h.app, { username: account.username, password: NEW_PASSWORD })).statusCode).toBe(200)
  })

  it('refuses a new password that breaks the rules with 422, and the token stays usable', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const token = await resetToken(h.app, account)
    const short = await resetPassword(h.app, token, 'short')
    expect(short.statusCode).toBe(422)
    expect(short.json().errors).toContainEqual({ field: 'new_password', message: expect.stringMatching(/at least 8/) })
    const username = await resetPassword(h.app, token, account.username)
    expect(username.statusCode).toBe(422)
    expect(username.json().errors[0].field).toBe('new_password')
    await login(h.app, account.username, TEST_PASSWORD)
    expect((await resetPassword(h.app, token)).statusCode).toBe(204)
  })

  it('refuses unknown and malformed tokens, and tokens of other kinds, with 400 and changes nothing', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const session = await login(h.app, account.username)
    const unknown = `prt_${randomBytes(32).toString('base64url')}`
    for (const token of [unknown, 'prt_', 'hello', `${unknown}x`, session.access_token, session.refresh_token]) {
      const res = await resetPassword(h.app, token)
      expect(res.statusCode, token).toBe(400)
      expect(res.json()).toEqual(INVALID_TOKEN)
    }
    await login(h.app, account.username, TEST_PASSWORD)
    expect((await getMe(h.app, `Bearer ${session.access_token}`)).statusCode).toBe(200)
  })

  it('keeps the purposes apart: a reset token is refused at /email/verify and stays usable; a verification token is refused here', async () => {
    const h = await recoveryApp()
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    const verifyToken = tokenIn(await nextMail(email, VERIFY))
    expect(verifyToken).toMatch(VERIFY_TOKEN)
    const token = await resetToken(h.app, { id: '', username, email })

    expect((await verifyEmail(h.app, token)).json()).toEqual(INVALID_TOKEN)
    expect((await resetPassword(h.app, verifyToken)).json()).toEqual(INVALID_TOKEN)
    expect((await resetPassword(h.app, token)).statusCode).toBe(204)
    // The verification link died with the password change (a new token generation).
    expect((await verifyEmail(h.app, verifyToken)).json()).toEqual(INVALID_TOKEN)
  })

  it('ends the earlier link when a new one is asked for', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const first = await resetToken(h.app, account)
    const second = await resetToken(h.app, account)
    expect((await resetPassword(h.app, first)).json()).toEqual(INVALID_TOKEN)
    expect((await resetPassword(h.app, second)).statusCode).toBe(204)
  })

  it('expires a link after PASSWORD_RESET_TTL_MINUTES (the clock is moved, not waited for)', async () => {
    const h = await recoveryApp({ PASSWORD_RESET_TTL_MINUTES: '30' })
    const account = await newAccount(h.app)
    const expiring = await resetToken(h.app, account)
    h.clock.now += 30 * 60_000
    expect((await resetPassword(h.app, expiring)).json()).toEqual(INVALID_TOKEN)
    await login(h.app, account.username, TEST_PASSWORD)

    const lasting = await resetToken(h.app, account)
    h.clock.now += 30 * 60_000 - 1
    expect((await resetPassword(h.app, lasting)).statusCode).toBe(204)
  })

  it('refuses a link older than the last password change', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const token = await resetToken(h.app, account)
    const { access_token } = await login(h.app, account.username)
    const change = await authed(h.app, 'POST', '/users/me/password', access_token, {
      current_password: TEST_PASSWORD,
      new_password: OTHER_PASSWORD,
    })
    expect(change.statusCode).toBe(204)
    await nextMail(account.email, PASSWORD_CHANGED) // a password change is told too
    expect((await resetPassword(h.app, token)).json()).toEqual(INVALID_TOKEN)
    await login(h.app, account.username, OTHER_PASSWORD)
  })

  it('lets exactly one of several concurrent resets with one token through', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const token = await resetToken(h.app, account)
    const passwords = ['amber-Falcon-11-quartz', 'cobalt-Heron-22-quartz', 'ochre-Lynx-33-quartz']
    const answers = await Promise.all(passwords.map((p) => resetPassword(h.app, token, p)))
    expect(answers.map((a) => a.statusCode).sort()).toEqual([204, 400, 400])
    const winner = passwords[answers.findIndex((a) => a.statusCode === 204)] as string
    await login(h.app, account.username, winner)
  })

  it('never takes a reset or verification token as an access or a refresh token', async () => {
    const h = await recoveryApp()
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    const verifyToken = tokenIn(await nextMail(email, VERIFY))
    const token = await resetToken(h.app, { id: '', username, email })
    for (const t of [token, verifyToken]) {
      const me = await getMe(h.app, `Bearer ${t}`)
      expect(me.statusCode).toBe(401)
      expect(me.headers['www-authenticate']).toBe(CHALLENGE_INVALID)
      expect((await refresh(h.app, t)).json()).toEqual(oauthError('invalid_grant', 'Invalid refresh token'))
      expect((await postRevoke(h.app, { token: t })).statusCode).toBe(200)
    }
    // Revoking them as OAuth tokens did nothing to them.
    expect((await verifyEmail(h.app, verifyToken)).statusCode).toBe(204)
    expect((await resetPassword(h.app, token)).statusCode).toBe(204)
  })

  it('answers 422 unless exactly one of email and username is sent', async () => {
    const h = await recoveryApp()
    for (const body of [{}, { email: 'a@example.com', username: 'alice' }, { email: 'not-an-address' }]) {
      const res = await forgot(h.app, body)
      expect(res.statusCode, JSON.stringify(body)).toBe(422)
    }
  })
})

describe('/password/forgot tells no account from another', () => {
  /** A user store whose lookups by name and address wait, while `holding`, until released. */
  class HeldUserStore extends MemoryUserStore {
    started = 0
    finished = 0
    #release: (() => void) | undefined
    #gate: Promise<void> | undefined

    hold(): void {
      this.#gate = new Promise((resolve) => {
        this.#release = resolve
      })
    }

    release(): void {
      this.#release?.()
      this.#gate = undefined
    }

    override findByEmail(email: string): Promise<UserRecord | undefined> {
      return this.#held(() => super.findByEmail(email))
    }

    override findByUsername(username: string): Promise<UserRecord | undefined> {
      return this.#held(() => super.findByUsername(username))
    }

    async #held(lookup: () => Promise<UserRecord | undefined>): Promise<UserRecord | undefined> {
      const gate = this.#gate
      if (!gate) return lookup()
      this.started++
      await gate
      const found = await lookup()
      this.finished++
      return found
    }
  }

  it('answers before the account is looked up: the lookup, the token and the message come after', async () => {
    const store = new HeldUserStore()
    const h = await recoveryApp({}, { stores: { users: store } })
    const account = await newAccount(h.app)
    store.hold()
    const res = await forgot(h.app, { email: account.email })
    expect(res.statusCode).toBe(202)
    expect(res.json()).toEqual(FORGOT_ANSWER)
    // Answered while no lookup had returned; the lookup starts after the answer.
    expect(store.finished).toBe(0)
    await vi.waitFor(() => expect(store.started).toBe(1))
    expect(mailsTo(account.email, RESET)).toHaveLength(0)
    store.release()
    await nextMail(account.email, RESET)
    expect(store.finished).toBe(1)
  })

  it('gives the same status, body and headers for an account with an address, an unknown one, one without an address and a disabled one', async () => {
    const h = await recoveryApp(ADMIN)
    const withAddress = await newAccount(h.app)
    const withoutAddress = await newAccount(h.app, { withEmail: false })
    const disabled = await newAccount(h.app)
    const admin = await login(h.app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    expect(
      (await authed(h.app, 'PATCH', `/users/${disabled.id}`, admin.access_token, { disabled: true })).statusCode,
    ).toBe(200)

    const cases: [label: string, body: Record<string, string>, outcome: string][] = [
      ['an account with an address, by address', { email: withAddress.email }, 'sent'],
      ['an account with an address, by username', { username: withAddress.username }, 'sent'],
      ['an unknown address', { email: uniqueEmail('nobody') }, 'unknown_account'],
      ['an unknown username', { username: uniqueUsername('nobody') }, 'unknown_account'],
      ['a username that cannot exist', { username: 'x' }, 'unknown_account'],
      ['an account without an address', { username: withoutAddress.username }, 'no_address'],
      ['a disabled account, by address', { email: disabled.email }, 'disabled'],
      ['a disabled account, by username', { username: disabled.username }, 'disabled'],
    ]
    // Each from an address of its own, so that the rate-limit headers (per address) are the same.
    const answers = await Promise.all(cases.map(([, body], i) => forgot(h.app, body, `10.20.0.${i + 1}`)))
    const [first] = answers as [LightMyRequestResponse]
    for (const [i, res] of answers.entries()) {
      const label = cases[i]?.[0]
      expect(res.statusCode, label).toBe(202)
      expect(res.body, label).toBe(first.body)
      expect(stableHeaders(res.headers), label).toEqual(stableHeaders(first.headers))
    }
    expect(first.json()).toEqual(FORGOT_ANSWER)

    // What differed happened after the answers, and only the audit log says what.
    for (const [i, res] of answers.entries()) {
      const record = await auditOf(h, res, 'password_reset_request')
      expect(record.outcome, cases[i]?.[0]).toBe(cases[i]?.[2])
    }
    await vi.waitFor(() => expect(mailsTo(withAddress.email, RESET)).toHaveLength(2))
    expect(mailsTo(disabled.email, RESET)).toHaveLength(0)
  })

  it('drops the link silently past RECOVERY_MAX_PER_ACCOUNT: the same 202, nothing sent', async () => {
    const h = await recoveryApp({ RECOVERY_MAX_PER_ACCOUNT: '2' })
    const account = await newAccount(h.app)
    const answers = []
    for (let i = 0; i < 3; i++) answers.push(await forgot(h.app, { email: account.email }, `10.30.0.${i + 1}`))
    for (const res of answers) {
      expect(res.statusCode).toBe(202)
      expect(stableHeaders(res.headers)).toEqual(stableHeaders((answers[0] as LightMyRequestResponse).headers))
    }
    const outcomes = await Promise.all(
      answers.map(async (res) => (await auditOf(h, res, 'password_reset_request')).outcome),
    )
    expect(outcomes.sort()).toEqual(['account_limited', 'sent', 'sent'])
    await nextMail(account.email, RESET)
    await nextMail(account.email, RESET)
    expect(mailsTo(account.email, RESET)).toHaveLength(2)
  })

  it('answers 429 with Retry-After per client address only, whatever the account', async () => {
    const h = await recoveryApp({ RECOVERY_MAX_PER_ADDRESS: '2' })
    const account = await newAccount(h.app)
    const from = '10.40.0.1'
    expect((await forgot(h.app, { email: uniqueEmail('nobody') }, from)).statusCode).toBe(202)
    expect((await forgot(h.app, { email: account.email }, from)).statusCode).toBe(202)
    const over = [
      await forgot(h.app, { email: account.email }, from),
      await forgot(h.app, { username: 'zz_none' }, from),
    ]
    for (const res of over) {
      expect(res.statusCode).toBe(429)
      expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
      expect(res.json().detail).toMatch(/^Too many requests/)
    }
    expect((await forgot(h.app, { email: account.email }, '10.40.0.2')).statusCode).toBe(202)
  })

  it('counts bad tokens against the address like failed logins (one budget), 429 past it', async () => {
    const h = await recoveryApp({ LOGIN_IP_MAX_FAILURES: '3' })
    const account = await newAccount(h.app)
    const token = await resetToken(h.app, account)
    const from = '10.50.0.1'
    const loginFrom = (password: string) =>
      h.app.inject({
        method: 'POST',
        url: '/token',
        headers: { 'content-type': FORM },
        payload: new URLSearchParams({ username: account.username, password }).toString(),
        remoteAddress: from,
      })
    const bad = `prt_${randomBytes(32).toString('base64url')}`
    expect((await loginFrom('wrong-Password-0')).statusCode).toBe(400)
    expect((await resetPassword(h.app, bad, NEW_PASSWORD, from)).statusCode).toBe(400)
    expect((await verifyEmail(h.app, 'garbage', from)).statusCode).toBe(400)
    for (const res of [await resetPassword(h.app, token, NEW_PASSWORD, from), await verifyEmail(h.app, bad, from)]) {
      expect(res.statusCode).toBe(429)
      expect(res.json()).toEqual({ detail: 'Too many failed attempts; try again later' })
      expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
    }
    // The same budget the other way: a login from that address is refused too.
    expect((await loginFrom(TEST_PASSWORD)).statusCode).toBe(429)
    // The refused token was not looked at: from another address it works.
    expect((await resetPassword(h.app, token, NEW_PASSWORD, '10.50.0.2')).statusCode).toBe(204)
  })

  it('audits each request and reset with addresses masked (domain kept) and never a token', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const res = await forgot(h.app, { email: account.email })
    const token = tokenIn(await nextMail(account.email, RESET))
    const reset = await resetPassword(h.app, token)
    expect(await auditOf(h, res, 'password_reset_request')).toMatchObject({
      outcome: 'sent',
      userId: account.id,
      email: `${account.email[0]}***@example.com`,
      ip: '127.0.0.1',
    })
    expect(await auditOf(h, reset, 'password_reset')).toMatchObject({ outcome: 'success', userId: account.id })
    for (const line of [...h.audit.lines, ...h.log.lines]) {
      expect(line).not.toContain(token)
      expect(line).not.toContain('prt_')
    }
    expect(h.audit.lines.join('\n')).not.toContain(account.email)
  })
})

describe('e-mail verification', () => {
  it('sends a link at registration; following it verifies the address, once', async () => {
    const h = await recoveryApp()
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    const reg = await register(h.app, { username, email, password: TEST_PASSWORD })
    expect(reg.json()).toMatchObject({ email, email_verified: false })
    const message = await nextMail(email, VERIFY)
    expect(linkIn(message)).toMatch(/^https:\/\/auth\.example\.com\/verify-email\?token=evt_/)
    const token = tokenIn(message)
    expect(token).toMatch(VERIFY_TOKEN)

    const verified = await verifyEmail(h.app, token)
    expect(verified.statusCode).toBe(204)
    expect(await auditOf(h, verified, 'email_verification')).toMatchObject({ outcome: 'success' })
    const { access_token } = await login(h.app, username)
    expect((await getMe(h.app, `Bearer ${access_token}`)).json()).toMatchObject({ email, email_verified: true })
    expect((await verifyEmail(h.app, token)).json()).toEqual(INVALID_TOKEN)
  })

  it('sends no verification for an account without an address', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app, { withEmail: false })
    const { access_token } = await login(h.app, account.username)
    const res = await authed(h.app, 'POST', '/users/me/email/verify', access_token)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual({ detail: 'The account has no e-mail address' })
  })

  it('sends a new link on request, ending the earlier one; 400 once verified', async () => {
    const h = await recoveryApp()
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    await register(h.app, { username, email, password: TEST_PASSWORD })
    const first = tokenIn(await nextMail(email, VERIFY))
    const { access_token } = await login(h.app, username)

    const res = await authed(h.app, 'POST', '/users/me/email/verify', access_token)
    expect(res.statusCode).toBe(202)
    expect(res.json()).toEqual({ detail: 'Verification requested: check your mailbox' })
    const second = tokenIn(await nextMail(email, VERIFY))
    expect((await verifyEmail(h.app, first)).json()).toEqual(INVALID_TOKEN)
    expect((await verifyEmail(h.app, second)).statusCode).toBe(204)

    const again = await authed(h.app, 'POST', '/users/me/email/verify', access_token)
    expect(again.statusCode).toBe(400)
    expect(again.json()).toEqual({ detail: 'The e-mail address is already verified' })
  })

  it('drops new links silently past RECOVERY_MAX_PER_ACCOUNT, and answers 429 per address past RECOVERY_MAX_PER_ADDRESS', async () => {
    const h = await recoveryApp({ RECOVERY_MAX_PER_ACCOUNT: '1', RECOVERY_MAX_PER_ADDRESS: '3' })
    const account = await newAccount(h.app)
    const { access_token } = await login(h.app, account.username)
    const resend = () => authed(h.app, 'POST', '/users/me/email/verify', access_token)
    const answers = [await resend(), await resend(), await resend()]
    expect(answers.map((a) => a.statusCode)).toEqual([202, 202, 202])
    expect((await auditOf(h, answers[2] as LightMyRequestResponse, 'email_verification_request')).outcome).toBe(
      'account_limited',
    )
    await nextMail(account.email, VERIFY)
    // The registration's link and one more: the limit counts requests, not the registration's.
    expect(mailsTo(account.email, VERIFY)).toHaveLength(2)
    const over = await resend()
    expect(over.statusCode).toBe(429)
    expect(Number(over.headers['retry-after'])).toBeGreaterThan(0)
  })

  it('expires a link after EMAIL_VERIFY_TTL_HOURS', async () => {
    const h = await recoveryApp({ EMAIL_VERIFY_TTL_HOURS: '24' })
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    await register(h.app, { username, email, password: TEST_PASSWORD })
    const expiring = tokenIn(await nextMail(email, VERIFY))
    h.clock.now += 24 * 3_600_000
    expect((await verifyEmail(h.app, expiring)).json()).toEqual(INVALID_TOKEN)

    const { access_token } = await login(h.app, username)
    await authed(h.app, 'POST', '/users/me/email/verify', access_token)
    const lasting = tokenIn(await nextMail(email, VERIFY))
    h.clock.now += 24 * 3_600_000 - 1
    expect((await verifyEmail(h.app, lasting)).statusCode).toBe(204)
  })

  it('lets exactly one of several concurrent uses of one link through', async () => {
    const h = await recoveryApp()
    const email = uniqueEmail()
    await register(h.app, { username: uniqueUsername('rec'), email, password: TEST_PASSWORD })
    const token = tokenIn(await nextMail(email, VERIFY))
    const answers = await Promise.all(Array.from({ length: 4 }, () => verifyEmail(h.app, token)))
    expect(answers.map((a) => a.statusCode).sort()).toEqual([204, 400, 400, 400])
  })
})

describe('e-mail change', () => {
  it('changes the address only once the link sent to the new address is followed, and tells the old address', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const { access_token } = await login(h.app, account.username)
    const next = uniqueEmail('next')

    const res = await authed(h.app, 'POST', '/users/me/email', access_token, {
      password: TEST_PASSWORD,
      new_email: next,
    })
    expect(res.statusCode).toBe(202)
    expect(res.json()).toEqual({ detail: 'Change requested: confirm it with the link sent to the new address' })
    expect((await getMe(h.app, `Bearer ${access_token}`)).json()).toMatchObject({
      email: account.email,
      email_verified: false,
    })
    const token = tokenIn(await nextMail(next, VERIFY))
    expect(mailsTo(account.email, EMAIL_CHANGED)).toHaveLength(0)

    const verified = await verifyEmail(h.app, token)
    expect(verified.statusCode).toBe(204)
    expect(await auditOf(h, verified, 'email_change')).toMatchObject({
      outcome: 'success',
      from: `${account.email[0]}***@example.com`,
      to: `${next[0]}***@example.com`,
    })
    expect((await getMe(h.app, `Bearer ${access_token}`)).json()).toMatchObject({ email: next, email_verified: true })
    const notice = await nextMail(account.email, EMAIL_CHANGED)
    expect(notice.text).toContain(`${next[0]}***@example.com`)
    expect(notice.text).not.toContain(next)
    // The old address is free again; the new one is taken; reset links now go to the new one.
    expect(
      (await register(h.app, { username: uniqueUsername(), email: account.email, password: TEST_PASSWORD })).statusCode,
    ).toBe(201)
    expect(await forgot(h.app, { email: next })).toMatchObject({ statusCode: 202 })
    await nextMail(next, RESET)
  })

  it('refuses a wrong password (400), the current address (400), and a taken address (409), changing nothing', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const other = await newAccount(h.app)
    const { access_token } = await login(h.app, account.username)
    const change = (body: unknown) => authed(h.app, 'POST', '/users/me/email', access_token, body)

    const wrong = await change({ password: 'not-the-Password-1', new_email: uniqueEmail() })
    expect(wrong.statusCode).toBe(400)
    expect(wrong.json()).toEqual({ detail: 'Password is incorrect' })
    const same = await change({ password: TEST_PASSWORD, new_email: account.email.toUpperCase() })
    expect(same.statusCode).toBe(400)
    expect(same.json()).toEqual({ detail: "This is already the account's e-mail address" })
    const taken = await change({ password: TEST_PASSWORD, new_email: other.email.toUpperCase() })
    expect(taken.statusCode).toBe(409)
    expect(taken.json()).toEqual(EMAIL_TAKEN)
    const invalid = await change({ password: TEST_PASSWORD, new_email: 'not-an-address' })
    expect(invalid.statusCode).toBe(422)
    expect(mailsTo(other.email, VERIFY)).toHaveLength(1) // its registration's only
    expect((await getMe(h.app, `Bearer ${access_token}`)).json()).toMatchObject({ email: account.email })
  })

  it('answers 409 at verification when the new address was taken meanwhile, and keeps the old address', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const { access_token } = await login(h.app, account.username)
    const next = uniqueEmail('next')
    await authed(h.app, 'POST', '/users/me/email', access_token, { password: TEST_PASSWORD, new_email: next })
    const token = tokenIn(await nextMail(next, VERIFY))
    await newAccount(h.app, { email: next })

    const res = await verifyEmail(h.app, token)
    expect(res.statusCode).toBe(409)
    expect(res.json()).toEqual(EMAIL_TAKEN)
    expect((await getMe(h.app, `Bearer ${access_token}`)).json()).toMatchObject({ email: account.email })
  })

  it('refuses a reset link sent to the old address once the address has changed', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const oldLink = await resetToken(h.app, account)
    const { access_token } = await login(h.app, account.username)
    const next = uniqueEmail('moved')
    await authed(h.app, 'POST', '/users/me/email', access_token, { password: TEST_PASSWORD, new_email: next })
    expect((await verifyEmail(h.app, tokenIn(await nextMail(next, VERIFY)))).statusCode).toBe(204)

    const res = await resetPassword(h.app, oldLink)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(INVALID_TOKEN)
    expect((await postToken(h.app, { username: account.username, password: NEW_PASSWORD })).json()).toEqual(
      INVALID_GRANT,
    )
    expect((await postToken(h.app, { username: account.username, password: TEST_PASSWORD })).statusCode).toBe(200)
  })

  it('sends at most RECOVERY_MAX_PER_ACCOUNT change links to one address, whichever accounts ask', async () => {
    const h = await recoveryApp({ RECOVERY_MAX_PER_ACCOUNT: '2' })
    const target = uniqueEmail('target')
    for (let i = 0; i < 3; i++) {
      const account = await newAccount(h.app)
      const { access_token } = await login(h.app, account.username)
      const res = await authed(h.app, 'POST', '/users/me/email', access_token, {
        password: TEST_PASSWORD,
        new_email: target,
      })
      expect(res.statusCode).toBe(202)
    }
    await vi.waitFor(() => expect(mailsTo(target, VERIFY)).toHaveLength(2))
    await sleep(300)
    expect(mailsTo(target, VERIFY)).toHaveLength(2)
  })

  it('voids a pending change when the password is reset (the owner taking the account back)', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const { access_token } = await login(h.app, account.username)
    const attacker = uniqueEmail('attacker')
    await authed(h.app, 'POST', '/users/me/email', access_token, { password: TEST_PASSWORD, new_email: attacker })
    const token = tokenIn(await nextMail(attacker, VERIFY))
    expect((await resetPassword(h.app, await resetToken(h.app, account))).statusCode).toBe(204)
    expect((await verifyEmail(h.app, token)).json()).toEqual(INVALID_TOKEN)
  })
})

describe('one account per e-mail address', () => {
  it('answers 409 Email already registered for an address taken in any case or spelling', async () => {
    const h = await recoveryApp()
    const local = uniqueUsername('idn').toLowerCase()
    expect(
      (await register(h.app, { username: uniqueUsername(), email: `${local}@пример.рф`, password: TEST_PASSWORD }))
        .statusCode,
    ).toBe(201)
    for (const email of [`${local}@xn--e1afmkfd.xn--p1ai`, `${local.toUpperCase()}@ПРИМЕР.РФ`]) {
      const res = await register(h.app, { username: uniqueUsername(), email, password: TEST_PASSWORD })
      expect(res.statusCode, email).toBe(409)
      expect(res.json()).toEqual(EMAIL_TAKEN)
    }
  })

  it('answers 409 for the same mailbox spelt with needless quotes, and refuses a trailing IDNA dot and control characters', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const [local, domain] = account.email.split('@')
    const quoted = await register(h.app, {
      username: uniqueUsername(),
      email: `"${local}"@${domain}`,
      password: TEST_PASSWORD,
    })
    expect(quoted.statusCode).toBe(409)
    expect(quoted.json()).toEqual(EMAIL_TAKEN)
    for (const email of [`${account.email}\u3002`, `"x\r\nBcc: a@evil.example"@${domain}`]) {
      const res = await register(h.app, { username: uniqueUsername(), email, password: TEST_PASSWORD })
      expect(res.statusCode, email).toBe(422)
    }
  })

  it('answers a taken username before a taken address', async () => {
    const h = await recoveryApp()
    const account = await newAccount(h.app)
    const res = await register(h.app, { username: account.username, email: account.email, password: TEST_PASSWORD })
    expect(res.json()).toEqual({ detail: 'Username already registered' })
  })

  it('gives one 201 and one 409 when two registrations with one address race', async () => {
    const h = await recoveryApp()
    for (let round = 0; round < 5; round++) {
      const email = uniqueEmail('race')
      const answers = await Promise.all([
        register(h.app, { username: uniqueUsername(), email, password: TEST_PASSWORD }),
        register(h.app, { username: uniqueUsername(), email: email.toUpperCase(), password: TEST_PASSWORD }),
      ])
      expect(answers.map((a) => a.statusCode).sort()).toEqual([201, 409])
      expect(answers.find((a) => a.statusCode === 409)?.json()).toEqual(EMAIL_TAKEN)
    }
  })
})

describe('REQUIRE_VERIFIED_EMAIL', () => {
  it('refuses the right password of an unverified account with its own invalid_grant, a wrong one as always', async () => {
    const h = await recoveryApp({ REQUIRE_VERIFIED_EMAIL: 'true', ...ADMIN })
    const noEmail = await register(h.app, { username: uniqueUsername(), password: TEST_PASSWORD })
    expect(noEmail.statusCode).toBe(422)
    expect(noEmail.json().errors).toEqual([{ field: 'email', message: expect.any(String) }])

    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    const token = tokenIn(await nextMail(email, VERIFY))
    const refused = await postToken(h.app, { username, password: TEST_PASSWORD })
    expect(refused.statusCode).toBe(400)
    expect(refused.json()).toEqual(oauthError('invalid_grant', 'Email address not verified'))
    expect((await postToken(h.app, { username, password: 'not-the-Password-1' })).json()).toEqual(INVALID_GRANT)

    expect((await verifyEmail(h.app, token)).statusCode).toBe(204)
    await login(h.app, username)
    // The first admin, created without an address, is exempt.
    await login(h.app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
  })

  it('refuses a refresh for an unverified account and ends its session (a session from before the rule, or from an admin role since removed)', async () => {
    const h = await recoveryApp({ REQUIRE_VERIFIED_EMAIL: 'true', ...ADMIN })
    const account = await newAccount(h.app)
    const admin = await login(h.app, ADMIN.ADMIN_USERNAME, ADMIN.ADMIN_PASSWORD)
    const promote = (roles: string[]) => authed(h.app, 'PATCH', `/users/${account.id}`, admin.access_token, { roles })
    expect((await promote(['user', 'admin'])).statusCode).toBe(200)
    const session = await login(h.app, account.username)
    expect((await promote(['user'])).statusCode).toBe(200)

    const res = await refresh(h.app, session.refresh_token)
    expect(res.statusCode).toBe(400)
    expect(res.json()).toEqual(oauthError('invalid_grant', 'Email address not verified'))
    expect((await refresh(h.app, session.refresh_token)).json()).toEqual(
      oauthError('invalid_grant', 'Invalid refresh token'),
    )
  })

  it('lets an account whose link expired in through a password reset, which proves the address', async () => {
    const h = await recoveryApp({ REQUIRE_VERIFIED_EMAIL: 'true' })
    const account = await newAccount(h.app)
    expect((await postToken(h.app, { username: account.username, password: TEST_PASSWORD })).statusCode).toBe(400)
    expect((await resetPassword(h.app, await resetToken(h.app, account))).statusCode).toBe(204)
    await login(h.app, account.username, NEW_PASSWORD)
  })

  it('is refused in production without SMTP_URL, naming the variable', () => {
    let error: unknown
    try {
      testConfig({ NODE_ENV: 'production', BCRYPT_ROUNDS: '10', REQUIRE_VERIFIED_EMAIL: 'true' })
    } catch (err) {
      error = err
    }
    expect(error).toBeInstanceOf(ConfigError)
    expect((error as ConfigError).problems).toEqual([expect.stringMatching(/^REQUIRE_VERIFIED_EMAIL: needs mail/)])
  })
})

describe('when mail fails or is off', () => {
  it('answers the same while the SMTP server refuses for a while, retries, logs the retries without the token, and delivers', async () => {
    const flaky = await startSmtpServer({ failFirst: 2 })
    try {
      const h = await recoveryApp({}, {}, flaky)
      const email = uniqueEmail()
      const username = uniqueUsername('rec')
      expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
      const res = await forgot(h.app, { email })
      expect(res.statusCode).toBe(202)
      expect(res.json()).toEqual(FORGOT_ANSWER)
      const token = tokenIn(await nextMail(email, RESET, flaky))
      expect((await resetPassword(h.app, token)).statusCode).toBe(204)
      const retries = h.log.records().filter((r) => String(r.msg).startsWith('mail delivery failed: retrying'))
      expect(retries).toHaveLength(2)
      for (const r of retries) expect(r.to).toBe(`${email[0]}***@example.com`)
      for (const line of h.log.lines) {
        expect(line).not.toContain(token)
        expect(line).not.toContain(email)
      }
    } finally {
      await flaky.close()
    }
  })

  it('answers the same with the SMTP server unreachable, and logs that the messages were dropped', async () => {
    const port = await freePort()
    const h = await recoveryApp({ SMTP_URL: `smtp://127.0.0.1:${port}`, MAIL_RETRIES: '1', MAIL_RETRY_DELAY_MS: '10' })
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    const res = await forgot(h.app, { email })
    expect(res.statusCode).toBe(202)
    expect(res.json()).toEqual(FORGOT_ANSWER)
    const { access_token } = await login(h.app, username)
    expect((await authed(h.app, 'POST', '/users/me/email/verify', access_token)).statusCode).toBe(202)
    await vi.waitFor(
      () =>
        expect(h.log.records().filter((r) => String(r.msg).includes('message dropped')).length).toBeGreaterThanOrEqual(
          3,
        ),
      { timeout: 5000, interval: 20 },
    )
  })

  it('has none of these routes in production without SMTP_URL: 404, and absent from the OpenAPI document', async () => {
    const app = await buildTestApp({ NODE_ENV: 'production', BCRYPT_ROUNDS: '10', DOCS_ENABLED: 'true' })
    apps.push(app)
    expect(app.config.mail.mode).toBe('off')
    for (const url of [
      '/password/forgot',
      '/password/reset',
      '/email/verify',
      '/users/me/email/verify',
      '/users/me/email',
    ]) {
      const res = await postJson(app, url, {})
      expect(res.statusCode, url).toBe(404)
      expect(res.json()).toEqual({ detail: 'Not Found' })
    }
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
    expect(Object.keys(doc.paths)).toContain('/users/me')
    for (const path of Object.keys(doc.paths)) expect(path).not.toMatch(/password\/|email/)
    // Registration with an address works; nothing can verify it.
    const reg = await register(app, { username: uniqueUsername(), email: uniqueEmail(), password: TEST_PASSWORD })
    expect(reg.statusCode).toBe(201)
    expect(reg.json().email_verified).toBe(false)
  })

  it('in development without SMTP_URL writes the link to the log, where README tells a developer to find it', async () => {
    const log = lineCollector()
    const app = await buildTestApp({}, { logger: { level: 'info', stream: log.stream } })
    apps.push(app)
    expect(app.config.mail.mode).toBe('log')
    const email = uniqueEmail()
    const username = uniqueUsername('rec')
    await register(app, { username, email, password: TEST_PASSWORD })
    await forgot(app, { email })
    const token = await vi.waitFor(() => {
      const found = log.lines.join('\n').match(/reset-password\?token=(prt_[A-Za-z0-9_-]+)/)?.[1]
      if (!found) throw new Error('no reset link in the log yet')
      return found
    })
    expect((await resetPassword(app, token)).statusCode).toBe(204)
    const verification = log.lines.join('\n').match(/verify-email\?token=(evt_[A-Za-z0-9_-]+)/)?.[1] as string
    expect(verification).toMatch(VERIFY_TOKEN)
  })

  it('documents the five operations, with summaries, when mail is on', async () => {
    const h = await recoveryApp()
    const doc = (await h.app.inject({ method: 'GET', url: '/openapi.json' })).json()
    const expected: Record<string, [string, string]> = {
      '/password/forgot': ['post', 'requestPasswordReset'],
      '/password/reset': ['post', 'resetPassword'],
      '/email/verify': ['post', 'verifyEmail'],
      '/users/me/email/verify': ['post', 'resendEmailVerification'],
      '/users/me/email': ['post', 'changeEmail'],
    }
    for (const [path, [method, operationId]] of Object.entries(expected)) {
      const op = doc.paths[path]?.[method]
      expect(op?.operationId, path).toBe(operationId)
      expect(op?.summary, path).toMatch(/\S/)
      expect(op?.description, path).toMatch(/\S/)
    }
    expect(Object.keys(doc.paths['/password/forgot'].post.responses).sort()).toEqual(
      ['202', '400', '405', '413', '415', '422', '429', '500'].sort(),
    )
  })
})

describeWith('postgres', 'account recovery on PostgreSQL (STORE=postgres)', () => {
  let db: TestSchema
  let env: Env
  beforeAll(async () => {
    db = await createTestSchema({ migrated: false })
    env = { STORE: 'postgres', DATABASE_URL: db.url, MIGRATE_ON_START: 'true' }
  })
  afterAll(async () => {
    await db?.drop()
  })

  it('verifies, resets, expires, changes the address, and keeps addresses unique across instances', async () => {
    const h = await recoveryApp(env)
    const email = uniqueEmail('pg')
    const username = uniqueUsername('pg')
    expect((await register(h.app, { username, email, password: TEST_PASSWORD })).statusCode).toBe(201)
    expect((await verifyEmail(h.app, tokenIn(await nextMail(email, VERIFY)))).statusCode).toBe(204)
    const { rows } = await db.pool.query('SELECT email_verified, email_key FROM users WHERE username_key = $1', [
      username.toLowerCase(),
    ])
    expect(rows).toEqual([{ email_verified: true, email_key: email }])

    const session = await login(h.app, username)
    const account = { id: '', username, email }
    const expiring = await resetToken(h.app, account)
    h.clock.now += 30 * 60_000
    expect((await resetPassword(h.app, expiring)).json()).toEqual(INVALID_TOKEN)
    const token = await resetToken(h.app, account)
    // Only hashes are stored.
    const stored = await db.pool.query('SELECT hash, purpose FROM one_time_tokens')
    expect(JSON.stringify(stored.rows)).not.toContain(token)
    expect(stored.rows).toEqual([{ hash: expect.any(String), purpose: 'password_reset' }])
    expect((await resetPassword(h.app, token)).statusCode).toBe(204)
    expect((await resetPassword(h.app, token)).json()).toEqual(INVALID_TOKEN)
    expect((await getMe(h.app, `Bearer ${session.access_token}`)).statusCode).toBe(401)
    expect((await refresh(h.app, session.refresh_token)).statusCode).toBe(400)
    const after = await login(h.app, username, NEW_PASSWORD)

    const next = uniqueEmail('pgnext')
    const change = await authed(h.app, 'POST', '/users/me/email', after.access_token, {
      password: NEW_PASSWORD,
      new_email: next,
    })
    expect(change.statusCode).toBe(202)
    expect((await verifyEmail(h.app, tokenIn(await nextMail(next, VERIFY)))).statusCode).toBe(204)
    await nextMail(email, EMAIL_CHANGED)
    expect((await getMe(h.app, `Bearer ${after.access_token}`)).json()).toMatchObject({
      email: next,
      email_verified: true,
    })

    // Two instances racing to register one address (in two cases): one 201, one 409.
    const other = await recoveryApp(env)
    for (let round = 0; round < 3; round++) {
      const raced = uniqueEmail('pgrace')
      const answers = await Promise.all([
        register(h.app, { username: uniqueUsername(), email: raced, password: TEST_PASSWORD }),
        register(other.app, { username: uniqueUsername(), email: raced.toUpperCase(), password: TEST_PASSWORD }),
      ])
      expect(answers.map((a) => a.statusCode).sort()).toEqual([201, 409])
    }
    expect(
      (
        await register(other.app, { username: uniqueUsername(), email: next.toUpperCase(), password: TEST_PASSWORD })
      ).json(),
    ).toEqual(EMAIL_TAKEN)
  })
})
