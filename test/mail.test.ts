// Mail: the settings, the messages, and delivery through a real SMTP server in this process
// (test/smtp.ts): delivered as built, retried with back-off through temporary refusals, never held
// up by a hung server, and logged without tokens or whole addresses (except in log mode, where the
// link is the point). The Mailer is built directly from the configuration, as the store contract
// tests build stores; one test goes through buildApp.
import { randomBytes } from 'node:crypto'
import { pino } from 'pino'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { buildApp } from '../src/app.js'
import { type Config, loadConfig } from '../src/config.js'
import { ConfigError } from '../src/errors.js'
import { describeMailMode, Mailer } from '../src/mail/mailer.js'
import {
  emailChangedMessage,
  emailVerificationMessage,
  maskAddress,
  passwordChangedMessage,
  passwordResetMessage,
} from '../src/mail/messages.js'
import { type Env, lineCollector, TEST_SECRET, testConfig } from './helpers.js'
import { linkIn, linksIn, type SmtpServerOptions, startSmtpServer, type TestSmtpServer, tokenIn } from './smtp.js'

const PRODUCTION = { NODE_ENV: 'production', JWT_SECRET: TEST_SECRET }
const WARN = 40
const ERROR = 50

/** The ConfigError loadConfig throws for `env`; fails the test if it does not throw one. */
function configError(env: Env): ConfigError {
  try {
    loadConfig(env)
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError)
    return err as ConfigError
  }
  throw new Error('expected loadConfig to throw')
}

/** A token shaped like the ones the flows will issue: 256 random bits, base64url. */
const newToken = () => randomBytes(32).toString('base64url')

const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  await Promise.allSettled(closers.splice(0).map((close) => close()))
})

async function smtpServer(options: SmtpServerOptions = {}): Promise<TestSmtpServer> {
  const server = await startSmtpServer(options)
  closers.push(() => server.close())
  return server
}

/** A Mailer over `config`, logging into a collector; closed after the test. */
function mailerFor(config: Config) {
  const log = lineCollector()
  const mailer = new Mailer(config.mail, pino({ level: 'debug' }, log.stream))
  closers.push(() => mailer.close())
  return { mailer, log }
}

/** Test settings that deliver to `server`, retrying quickly. */
function smtpConfig(server: TestSmtpServer, overrides: Env = {}): Config {
  return testConfig({
    SMTP_URL: server.url,
    MAIL_FROM: 'Auth <auth@example.com>',
    PUBLIC_URL: 'https://auth.example.com',
    MAIL_RETRY_DELAY_MS: '20',
    ...overrides,
  })
}

function resetFor(config: Config, token: string) {
  return passwordResetMessage({
    to: 'alice@example.com',
    username: 'alice',
    link: config.mail.resetUrl(token),
    ttlMinutes: 30,
  })
}

describe('mail settings', () => {
  it('logs mail instead of sending it in development and test, with links on 127.0.0.1:8000', () => {
    for (const env of [{}, { NODE_ENV: 'test' }]) {
      const { mail } = loadConfig(env)
      expect(mail.mode).toBe('log')
      expect(mail.smtpUrl).toBeUndefined()
      expect(mail.from).toBe('no-reply@localhost')
      expect(mail.publicUrl).toBe('http://127.0.0.1:8000')
      expect(mail.resetUrl('abc')).toBe('http://127.0.0.1:8000/reset-password?token=abc')
      expect(mail.verifyUrl('abc')).toBe('http://127.0.0.1:8000/verify-email?token=abc')
      expect(mail.retries).toBe(4)
      expect(mail.retryDelayMs).toBe(1000)
      expect(mail.timeoutMs).toBe(10_000)
    }
  })

  it('turns mail off in production without SMTP_URL, and then needs no PUBLIC_URL', () => {
    expect(loadConfig(PRODUCTION).mail.mode).toBe('off')
  })

  it('sends through SMTP_URL (smtp:// or smtps://, with credentials) in any environment', () => {
    for (const url of ['smtp://mail.example.com:587', 'smtps://user:pass@mail.example.com']) {
      expect(loadConfig({ SMTP_URL: url }).mail).toMatchObject({ mode: 'smtp', smtpUrl: url })
      const production = loadConfig({ ...PRODUCTION, SMTP_URL: url, PUBLIC_URL: 'https://auth.example.com' })
      expect(production.mail.mode).toBe('smtp')
    }
  })

  it('refuses another SMTP_URL scheme, naming the variable and never echoing the value', () => {
    for (const url of ['http://user:hunter2-secret@mail.example.com', 'mail.example.com:25', 'smtp:/hunter2-secret']) {
      const err = configError({ SMTP_URL: url })
      expect(err.problems).toEqual(['SMTP_URL: must be an smtp:// or smtps:// URL'])
      expect(err.message).not.toContain('hunter2')
      expect(err.message).not.toContain('mail.example.com')
    }
  })

  it('requires an https PUBLIC_URL in production when mail is on, naming PUBLIC_URL', () => {
    const smtp = { ...PRODUCTION, SMTP_URL: 'smtp://mail.example.com' }
    expect(configError(smtp).problems).toEqual([
      'PUBLIC_URL: is required in production when SMTP_URL is set (the base of links in messages)',
    ])
    expect(configError({ ...smtp, PUBLIC_URL: 'http://auth.example.com' }).problems).toEqual([
      'PUBLIC_URL: must be an https:// URL in production (links in messages carry tokens)',
    ])
    expect(loadConfig({ ...smtp, PUBLIC_URL: 'https://auth.example.com' }).mail.publicUrl).toBe(
      'https://auth.example.com',
    )
  })

  it('takes PUBLIC_URL as an http(s) base without credentials, query or fragment, trailing slash dropped', () => {
    expect(loadConfig({ PUBLIC_URL: 'https://Example.COM/app/' }).mail.resetUrl('t')).toBe(
      'https://example.com/app/reset-password?token=t',
    )
    for (const url of [
      'ftp://example.com',
      'https://example.com/?next=1',
      'https://example.com/#x',
      'https://u:p@example.com',
      'example.com',
    ]) {
      expect(configError({ PUBLIC_URL: url }).problems).toEqual([
        'PUBLIC_URL: must be an http:// or https:// URL without credentials, query or fragment',
      ])
    }
  })

  it('fills link templates with {PUBLIC_URL} and the URL-encoded {token}, and refuses one without {token}', () => {
    const { mail } = loadConfig({
      PUBLIC_URL: 'https://auth.example.com',
      PASSWORD_RESET_URL: 'https://app.example.com/#/reset/{token}',
      EMAIL_VERIFY_URL: '{PUBLIC_URL}/verify?t={token}&source=mail',
    })
    expect(mail.resetUrl('a/b+c')).toBe('https://app.example.com/#/reset/a%2Fb%2Bc')
    expect(mail.verifyUrl('xyz')).toBe('https://auth.example.com/verify?t=xyz&source=mail')

    expect(configError({ PASSWORD_RESET_URL: '{PUBLIC_URL}/reset-password' }).problems).toEqual([
      'PASSWORD_RESET_URL: must contain {token}, where the link carries the token',
    ])
    expect(configError({ EMAIL_VERIFY_URL: 'verify/{token}' }).problems).toEqual([
      'EMAIL_VERIFY_URL: must be an http:// or https:// URL once {PUBLIC_URL} and {token} are replaced',
    ])
    const production = { ...PRODUCTION, SMTP_URL: 'smtp://mail.example.com', PUBLIC_URL: 'https://auth.example.com' }
    expect(configError({ ...production, PASSWORD_RESET_URL: 'http://app.example.com/r/{token}' }).problems).toEqual([
      'PASSWORD_RESET_URL: must be an https:// URL in production (the link carries a token)',
    ])
  })

  it('takes MAIL_FROM as an address, with or without a display name, and refuses anything else', () => {
    expect(loadConfig({ MAIL_FROM: 'Example Auth <auth@example.com>' }).mail.from).toBe(
      'Example Auth <auth@example.com>',
    )
    for (const from of ['not an address', 'a@example.com, b@example.com', 'a@example.com\r\nBcc: x@example.com']) {
      expect(configError({ MAIL_FROM: from }).problems).toEqual([
        'MAIL_FROM: must be an e-mail address, name@domain or Name <name@domain>',
      ])
    }
  })
})

describe('messages', () => {
  const token = newToken()
  const link = `https://auth.example.com/reset-password?token=${token}`

  it('carries the token only inside its link, names the user, and states how long the link works', () => {
    for (const build of [passwordResetMessage, emailVerificationMessage]) {
      const message = build({ to: 'alice@example.com', username: 'alice', link, ttlMinutes: 60 })
      expect(message.link).toBe(link)
      expect(linksIn(message.text)).toEqual([link])
      expect(message.text.replaceAll(link, '')).not.toContain(token)
      expect(message.html.replaceAll(link, '')).not.toContain(token)
      expect(message.text).toContain('Hello alice,')
      expect(message.html).toContain('<p>Hello alice,</p>')
      expect(message.text).toContain('1 hour')
    }
  })

  it('escapes what it puts into the HTML', () => {
    const hostile = `https://auth.example.com/r?token=${token}&x="><script>`
    const message = passwordResetMessage({ to: 'a@example.com', username: '<b>"x"&', link: hostile, ttlMinutes: 30 })
    expect(message.html).toContain('Hello &lt;b&gt;&quot;x&quot;&amp;,')
    expect(message.html).toContain(`href="https://auth.example.com/r?token=${token}&amp;x=&quot;&gt;&lt;script&gt;"`)
    expect(message.html).not.toContain('<script>')
    expect(message.html).not.toContain('<b>')
  })

  it('sends notices without any link, showing a new address masked', () => {
    const changed = emailChangedMessage({ to: 'old@example.com', username: 'alice', newEmail: 'new.me@example.org' })
    const password = passwordChangedMessage({ to: 'alice@example.com', username: 'alice' })
    for (const notice of [changed, password]) {
      expect(notice.link).toBeUndefined()
      expect(linksIn(notice.text)).toEqual([])
      expect(notice.html).not.toMatch(/href|https?:/)
      expect(notice.text).toContain('Hello alice,')
    }
    expect(changed.text).toContain('n***@example.org')
    expect(changed.text).not.toContain('new.me')
  })

  it('masks addresses to their first character and domain', () => {
    expect(maskAddress('alice@example.com')).toBe('a***@example.com')
    expect(maskAddress('a@example.com')).toBe('a***@example.com')
    expect(maskAddress('😀x@example.com')).toBe('😀***@example.com')
    expect(maskAddress('no-at-sign')).toBe('***')
  })
})

describe('delivery over SMTP', () => {
  it('delivers the message as built: envelope, From, To, Subject, text and HTML with the link', async () => {
    const server = await smtpServer()
    const config = smtpConfig(server)
    const { mailer, log } = mailerFor(config)
    const token = newToken()

    mailer.send(resetFor(config, token))
    const received = await server.waitForMessage()

    expect(received.mailFrom).toBe('auth@example.com')
    expect(received.rcptTo).toEqual(['alice@example.com'])
    expect(received.from).toBe('Auth <auth@example.com>')
    expect(received.to).toBe('alice@example.com')
    expect(received.subject).toBe('Reset your password')
    expect(received.text).toContain('Hello alice,')
    expect(received.html).toContain('<p>Hello alice,</p>')
    expect(linkIn(received)).toBe(`https://auth.example.com/reset-password?token=${token}`)
    expect(tokenIn(received)).toBe(token)
    expect(received.html).toContain(`href="https://auth.example.com/reset-password?token=${token}"`)

    // SMTP mode logs the delivery, masked, and nothing of the token.
    await vi.waitFor(() => expect(log.records()).toHaveLength(1))
    expect(log.records()[0]).toMatchObject({ level: 30, mail: 'password_reset', to: 'a***@example.com', attempts: 1 })
    expect(log.lines.join('\n')).not.toContain(token)
    expect(log.lines.join('\n')).not.toContain('alice@')
  })

  it.each(['rcpt', 'data'] as const)(
    'retries through two 451 refusals (at %s) and delivers on the third try, logging each failure without token or address',
    async (failAt) => {
      const server = await smtpServer({ failFirst: 2, failAt })
      const config = smtpConfig(server)
      const { mailer, log } = mailerFor(config)
      const token = newToken()

      mailer.send(resetFor(config, token))
      const received = await server.waitForMessage()

      expect(tokenIn(received)).toBe(token)
      expect(server.refused).toBe(2)
      expect(server.connections).toBe(3)
      await vi.waitFor(() => expect(log.records().some((r) => r.msg === 'mail delivered')).toBe(true))
      const warnings = log.records().filter((r) => r.level === WARN)
      expect(warnings).toHaveLength(2)
      expect(warnings.map((w) => [w.attempt, w.retryInMs, w.responseCode])).toEqual([
        [1, 20, 451],
        [2, 40, 451],
      ])
      for (const warning of warnings) expect(warning).toMatchObject({ mail: 'password_reset', to: 'a***@example.com' })
      expect(log.records().at(-1)).toMatchObject({ msg: 'mail delivered', attempts: 3 })
      const everything = log.lines.join('\n')
      expect(everything).not.toContain(token)
      expect(everything).not.toContain('alice@example.com')
      expect(everything).not.toContain('Hello alice')
    },
  )

  it('does not retry a permanent (5xx) refusal, and says the message was dropped', async () => {
    const server = await smtpServer({ failFirst: 1, failCode: 550 })
    const { mailer, log } = mailerFor(smtpConfig(server))

    mailer.send(resetFor(smtpConfig(server), newToken()))

    await vi.waitFor(() => expect(log.records()).toHaveLength(1))
    expect(log.records()[0]).toMatchObject({ level: ERROR, responseCode: 550, attempt: 1, to: 'a***@example.com' })
    expect(log.lines[0]).not.toContain('alice@example.com')
    expect(server.connections).toBe(1)
    expect(mailer.pending).toBe(0)
  })

  it('gives up after MAIL_RETRIES retries against a server that never answers (timeouts)', async () => {
    const server = await smtpServer({ stall: true })
    const { mailer, log } = mailerFor(smtpConfig(server, { MAIL_TIMEOUT_MS: '150', MAIL_RETRIES: '1' }))

    mailer.send(passwordChangedMessage({ to: 'alice@example.com', username: 'alice' }))

    await vi.waitFor(() => expect(log.records().some((r) => r.level === ERROR)).toBe(true), { timeout: 3000 })
    expect(log.records().map((r) => [r.level, r.attempt])).toEqual([
      [WARN, 1],
      [ERROR, 2],
    ])
    expect(log.records()[0]).toMatchObject({ code: 'ETIMEDOUT', mail: 'password_changed' })
    expect(server.connections).toBe(2)
    expect(mailer.pending).toBe(0)
  })

  it('returns from send() at once with a hung server, and close() ends promptly, dropping what is pending', async () => {
    const server = await smtpServer({ stall: true })
    const config = smtpConfig(server)
    const { mailer, log } = mailerFor(config)
    const token = newToken()

    const started = performance.now()
    const result = mailer.send(resetFor(config, token))
    mailer.send(resetFor(config, newToken()))
    mailer.send(resetFor(config, newToken()))
    expect(performance.now() - started).toBeLessThan(200)
    expect(result).toBeUndefined()
    await vi.waitFor(() => expect(server.connections).toBe(2)) // two deliveries at once; the third waits
    expect(mailer.pending).toBe(3)

    const closing = performance.now()
    await mailer.close()
    expect(performance.now() - closing).toBeLessThan(500)
    expect(mailer.pending).toBe(0)
    expect(log.records()).toEqual([expect.objectContaining({ level: WARN, dropped: 3 })])

    mailer.send(resetFor(config, token))
    expect(log.records().at(-1)).toMatchObject({ level: WARN, msg: 'mailer closed: message dropped' })
    expect(log.lines.join('\n')).not.toContain(token)
    expect(server.messages).toEqual([])
  })

  it('drops new messages, with an error line, once the queue holds MAIL_QUEUE_MAX', async () => {
    const server = await smtpServer({ stall: true })
    const config = smtpConfig(server)
    const log = lineCollector()
    const mailer = new Mailer(config.mail, pino(log.stream), { queueMax: 2 })
    closers.push(() => mailer.close())

    for (let i = 0; i < 3; i++) mailer.send(resetFor(config, newToken()))

    expect(mailer.pending).toBe(2)
    expect(log.records()).toEqual([
      expect.objectContaining({ level: ERROR, msg: 'mail queue full (2): message dropped', to: 'a***@example.com' }),
    ])
  })
})

describe('log and off modes', () => {
  it('writes one readable line per message in log mode (development), the link with its token included', () => {
    const config = testConfig()
    const { mailer, log } = mailerFor(config)
    const token = newToken()
    const link = config.mail.resetUrl(token)

    mailer.send(resetFor(config, token))
    mailer.send(passwordChangedMessage({ to: 'alice@example.com', username: 'alice' }))

    expect(log.records()).toEqual([
      expect.objectContaining({
        level: 30,
        mail: 'password_reset',
        to: 'alice@example.com',
        subject: 'Reset your password',
        link,
        msg: `mail not sent (no SMTP_URL): "Reset your password" to alice@example.com ${link}`,
      }),
      expect.objectContaining({
        mail: 'password_changed',
        msg: 'mail not sent (no SMTP_URL): "Your password was changed" to alice@example.com',
      }),
    ])
    expect(log.records()[1]).not.toHaveProperty('link')
  })

  it('describes the mode for the start-up line without SMTP_URL credentials', () => {
    const smtp = loadConfig({ SMTP_URL: 'smtps://user:hunter2-secret@mail.example.com:465' }).mail
    expect(describeMailMode(smtp)).toBe('mail: sent through smtps://mail.example.com:465')
    expect(describeMailMode(loadConfig({}).mail)).toMatch(/^mail: SMTP_URL is not set, .*tokens included/)
    expect(describeMailMode(loadConfig(PRODUCTION).mail)).toMatch(/^mail: off .*disabled$/)
  })

  it('drops messages in off mode (production without SMTP_URL) with a warning that shows no token', () => {
    const config = loadConfig(PRODUCTION)
    const { mailer, log } = mailerFor(config)
    const token = newToken()

    mailer.send(resetFor(config, token))

    expect(log.records()).toEqual([
      expect.objectContaining({ level: WARN, mail: 'password_reset', to: 'a***@example.com' }),
    ])
    expect(log.lines[0]).not.toContain(token)
  })
})

describe('the app with SMTP_URL set', () => {
  it('starts and closes promptly, its mailer in SMTP mode', async () => {
    const server = await smtpServer()
    const app = await buildApp(smtpConfig(server))
    await app.ready()
    expect(app.config.mail.mode).toBe('smtp')

    const started = performance.now()
    await app.close()
    expect(performance.now() - started).toBeLessThan(1000)
    expect(server.connections).toBe(0) // nothing is sent, nor verified, at start
  })
})
