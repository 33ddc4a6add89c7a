// Account recovery and verified e-mail (ASVS 5.0 §6.4): password reset by a link sent to the
// account's address, verification of an address by a link sent to it, and a change of address
// that takes effect only once the new address is verified. docs/security.md, "Account recovery",
// gives the reasons for each rule below.
//
// The links carry one-time tokens: a prefix naming the purpose (`prt_` reset, `evt_` verification;
// never a JWT, which has dots, nor a refresh token, `rt_`) and 256 random bits in base64url. Only
// their SHA-256 is stored (store/tokens.ts). Each is single use, expires, is refused for the other
// purpose, and is void once the account's token generation has moved on (a password change or
// reset, a disable, a role change), which ends a reset link older than the last password change.
// An account has at most one live token per purpose: issuing one ends the one before.
import { createHash, randomBytes } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import {
  EmailRequestError,
  EmailTakenError,
  InvalidOneTimeTokenError,
  NotFoundError,
  PasswordIncorrectError,
} from '../errors.js'
import type { Mailer } from '../mail/mailer.js'
import {
  emailChangedMessage,
  emailVerificationMessage,
  maskAddress,
  passwordChangedMessage,
  passwordResetMessage,
} from '../mail/messages.js'
import { USERNAME_PATTERN } from '../schemas.js'
import type { CounterStore } from '../store/counters.js'
import type { OneTimeTokenPurpose, OneTimeTokenRecord, OneTimeTokenStore } from '../store/tokens.js'
import { emailKey, type UserRecord, type UserStore } from '../store/users.js'
import type { LoginThrottle } from './throttle.js'
import type { UserService } from './users.js'

/** The prefix of each purpose's tokens: recognisable by eye and by secret scanners. */
export const TOKEN_PREFIX: Readonly<Record<OneTimeTokenPurpose, string>> = {
  password_reset: 'prt_',
  email_verify: 'evt_',
}
/** A prefix and 43 base64url characters (32 bytes); anything longer is refused unread. */
const TOKEN_LENGTH = 4 + 43
const TOKEN_CHARS = /^[A-Za-z0-9_-]+$/

const hashToken = (token: string) => createHash('sha256').update(token).digest('base64url')

/** Who asked, for the audit log. */
export interface RequestContext {
  ip: string
  reqId: string
}

/** Who asks for a reset: an address or a username, as the client sent it (exactly one). */
export interface ResetRequest {
  email?: string
  username?: string
}

export interface RecoveryDeps {
  users: UserStore
  tokens: OneTimeTokenStore
  /** The per-account message limit counts here (shared across instances with Redis). */
  counters: CounterStore
  accounts: UserService
  throttle: LoginThrottle
  mailer: Pick<Mailer, 'send'>
  config: Pick<Config, 'mail' | 'recovery'>
  audit: FastifyBaseLogger
  log: FastifyBaseLogger
  /** Milliseconds since the epoch: the clock of token lifetimes (tests move it). */
  now: () => number
}

/** Per-account limits, one counter per kind of message with a link; `recipient` counts per address. */
type LimitKind = 'reset' | 'verify' | 'recipient'

export class RecoveryService {
  readonly #d: RecoveryDeps
  /** Background work in progress (reset requests, the verification after a registration). */
  readonly #pending = new Set<Promise<void>>()
  #closed = false

  constructor(deps: RecoveryDeps) {
    this.#d = deps
  }

  /** False in production without SMTP_URL: nothing can be sent, and the routes are not registered. */
  get enabled(): boolean {
    return this.#d.config.mail.mode !== 'off'
  }

  /**
   * POST /password/forgot. Returns at once, having only scheduled the work for after the answer:
   * the lookup, the per-account limit, the token and the message happen once the response has been
   * written, so that whether an account matches (or has an address, or is disabled, or is over its
   * limit) changes nothing the client can see, in the answer or its timing. The outcome goes to the
   * audit log.
   */
  requestPasswordReset(request: ResetRequest, context: RequestContext): void {
    this.#background(() => this.#requestPasswordReset(request, context))
  }

  async #requestPasswordReset(request: ResetRequest, context: RequestContext): Promise<void> {
    const { users, config } = this.#d
    const asked =
      request.email !== undefined
        ? { email: maskAddress(request.email) }
        : { username: (request.username ?? '').slice(0, 64) }
    const audit = (outcome: string, user?: UserRecord) =>
      this.#audit('password_reset_request', outcome, context, {
        ...asked,
        ...(user ? { userId: user.id } : {}),
        ...(user?.email ? { email: maskAddress(user.email) } : {}),
      })
    let user: UserRecord | undefined
    try {
      if (request.email !== undefined) user = await users.findByEmail(request.email)
      else if (request.username !== undefined && USERNAME_PATTERN.test(request.username))
        user = await users.findByUsername(request.username)
      if (!user) return audit('unknown_account')
      // No link for a disabled account: it could not log in with the new password anyway.
      if (user.disabled) return audit('disabled', user)
      if (user.email === null) return audit('no_address', user)
      if (!(await this.#withinAccountLimit('reset', user.id))) return audit('account_limited', user)
      const token = await this.#issue('password_reset', user, user.email, config.recovery.resetTtlSeconds)
      if (token === undefined) return audit('unknown_account')
      this.#d.mailer.send(
        passwordResetMessage({
          to: user.email,
          username: user.username,
          link: config.mail.resetUrl(token),
          ttlMinutes: config.recovery.resetTtlSeconds / 60,
        }),
      )
      audit('sent', user)
    } catch (err) {
      audit('error', user)
      throw err
    }
  }

  /**
   * POST /password/reset: a new password for the account of a reset token. InvalidOneTimeTokenError
   * (400) for a token that is unknown, expired, used, of the other purpose, of a disabled account,
   * or older than the account's last password change; ValidationError (422) for a password that
   * breaks the policy (the token stays usable). Afterwards every session and token of the account
   * has ended, its failed-login counters are cleared, and its address gets a notice.
   */
  async resetPassword(token: string, newPassword: string, context: RequestContext): Promise<void> {
    const { record, user } = await this.#check(token, 'password_reset', 'password_reset', context)
    // A link sent to an address the account has since left proves control of nothing the account
    // still trusts: whoever reads the old mailbox must not be able to take the account over.
    if (user.email === null || emailKey(user.email) !== emailKey(record.email)) {
      await this.#d.throttle.tokenFailed(context.ip)
      this.#audit('password_reset', 'invalid_token', context, { userId: user.id })
      throw new InvalidOneTimeTokenError()
    }
    try {
      await this.#d.accounts.resetPassword(user, newPassword, {
        verifiesEmail: true,
        redeem: async () => {
          if (!(await this.#d.tokens.consume(record.hash, 'password_reset', this.#date())))
            throw new InvalidOneTimeTokenError()
        },
      })
    } catch (err) {
      // Used by a concurrent request a moment ago, or the account was deleted meanwhile.
      if (!(err instanceof InvalidOneTimeTokenError || err instanceof NotFoundError)) throw err
      this.#audit('password_reset', 'invalid_token', context, { userId: user.id })
      throw new InvalidOneTimeTokenError()
    }
    this.#audit('password_reset', 'success', context, { userId: user.id })
  }

  /**
   * POST /email/verify: the address the token was issued for becomes the account's verified
   * address. For a change, EmailTakenError (409) if another account has taken the address since
   * (the token then stays usable), and a notice goes to the old address. Bad tokens: as at reset.
   */
  async verifyEmail(token: string, context: RequestContext): Promise<void> {
    const { users, tokens, mailer } = this.#d
    const { record, user } = await this.#check(token, 'email_verify', 'email_verification', context)
    const change = user.email === null || emailKey(user.email) !== emailKey(record.email)
    const event = change ? 'email_change' : 'email_verification'
    const addresses = {
      ...(user.email === null ? {} : { from: maskAddress(user.email) }),
      ...(change ? { to: maskAddress(record.email) } : {}),
    }
    const taken = () => {
      this.#audit(event, 'email_taken', context, { userId: user.id, ...addresses })
      return new EmailTakenError()
    }
    if (change) {
      const holder = await users.findByEmail(record.email)
      if (holder && holder.id !== user.id) throw taken()
    }
    if (!(await tokens.consume(record.hash, 'email_verify', this.#date()))) {
      this.#audit(event, 'invalid_token', context, { userId: user.id })
      throw new InvalidOneTimeTokenError()
    }
    let updated: UserRecord | undefined
    try {
      updated = await users.update(user.id, { email: record.email, emailVerified: true })
    } catch (err) {
      // Taken between the check above and this write (the store decides, atomically).
      if (err instanceof EmailTakenError) throw taken()
      throw err
    }
    if (!updated) throw new InvalidOneTimeTokenError()
    if (change && user.email !== null)
      mailer.send(emailChangedMessage({ to: user.email, username: user.username, newEmail: record.email }))
    this.#audit(event, 'success', context, { userId: user.id, ...addresses })
  }

  /**
   * POST /users/me/email/verify: a new verification link to the account's current address.
   * EmailRequestError (400) when it has none or it is verified already. Past the per-account limit
   * nothing is sent (the answer is the same).
   */
  async resendVerification(user: UserRecord, context: RequestContext): Promise<void> {
    if (user.email === null) throw new EmailRequestError('The account has no e-mail address')
    if (user.emailVerified) throw new EmailRequestError('The e-mail address is already verified')
    const fields = { userId: user.id, email: maskAddress(user.email) }
    if (!(await this.#withinAccountLimit('verify', user.id)))
      return this.#audit('email_verification_request', 'account_limited', context, fields)
    await this.#sendVerification(user, user.email)
    this.#audit('email_verification_request', 'sent', context, fields)
  }

  /**
   * POST /users/me/email: asks to change the account's address to `newEmail`. Nothing changes yet:
   * a verification link goes to the new address, and the change happens when it is followed
   * (verifyEmail). EmailRequestError (400) for the address the account already has; the password is
   * checked like at login (PasswordIncorrectError, 400; throttled); EmailTakenError (409) when
   * another account has the new address. Past the per-account limit nothing is sent.
   */
  async requestEmailChange(
    user: UserRecord,
    password: string,
    newEmail: string,
    context: RequestContext,
  ): Promise<void> {
    if (user.email !== null && emailKey(user.email) === emailKey(newEmail))
      throw new EmailRequestError("This is already the account's e-mail address")
    const fields = {
      userId: user.id,
      ...(user.email === null ? {} : { from: maskAddress(user.email) }),
      to: maskAddress(newEmail),
    }
    try {
      await this.#d.accounts.confirmPassword(user, password, context.ip)
    } catch (err) {
      if (err instanceof PasswordIncorrectError) this.#audit('email_change_request', 'failure', context, fields)
      throw err
    }
    if (await this.#d.users.findByEmail(newEmail)) {
      this.#audit('email_change_request', 'email_taken', context, fields)
      throw new EmailTakenError()
    }
    if (!(await this.#withinAccountLimit('verify', user.id)))
      return this.#audit('email_change_request', 'account_limited', context, fields)
    // Per recipient too: accounts are free to make, the mailbox a message lands in is not ours.
    if (!(await this.#withinAccountLimit('recipient', emailKey(newEmail))))
      return this.#audit('email_change_request', 'recipient_limited', context, fields)
    await this.#sendVerification(user, newEmail)
    this.#audit('email_change_request', 'sent', context, fields)
  }

  /** After a registration with an address: its verification link, sent in the background. */
  registered(user: UserRecord): void {
    const email = user.email
    if (!this.enabled || email === null) return
    this.#background(async () => {
      await this.#sendVerification(user, email)
      this.#d.audit.info({
        event: 'email_verification_request',
        outcome: 'sent',
        trigger: 'registration',
        userId: user.id,
        email: maskAddress(email),
      })
    })
  }

  /** After a password change or reset: the notice to the account's address, if it has one. */
  passwordChanged(user: UserRecord): void {
    if (!this.enabled || user.email === null) return
    this.#d.mailer.send(passwordChangedMessage({ to: user.email, username: user.username }))
  }

  /** Deletes the tokens that have expired (the hourly sweep of createServices). */
  sweep(): Promise<number> {
    return this.#d.tokens.sweep(this.#date())
  }

  /** Resolves once no background work is left (what close() waits for; tests wait for it too). */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending])
  }

  /** No new background work from now on; resolves once the work already started is done. */
  async close(): Promise<void> {
    this.#closed = true
    await this.settled()
  }

  /**
   * The token's record and its account, if the token may be used: well-formed, known, of this
   * purpose, unexpired, of an enabled account whose token generation has not moved on since. Else
   * InvalidOneTimeTokenError, and one more failure for the client's address (429 past the limit
   * of failed logins, which these failures share).
   */
  async #check(
    token: string,
    purpose: OneTimeTokenPurpose,
    event: string,
    context: RequestContext,
  ): Promise<{ record: OneTimeTokenRecord; user: UserRecord }> {
    const { throttle, tokens, users } = this.#d
    await throttle.beginTokenCheck(context.ip)
    const wellFormed =
      token.length === TOKEN_LENGTH && token.startsWith(TOKEN_PREFIX[purpose]) && TOKEN_CHARS.test(token.slice(4))
    const record = wellFormed ? await tokens.find(hashToken(token), purpose, this.#date()) : undefined
    // Fresh: a password change made a moment ago on another instance must void the token here too.
    const user = record && (await users.findById(record.userId, { fresh: true }))
    if (!record || !user || user.disabled || user.tokenVersion !== record.userVersion) {
      await throttle.tokenFailed(context.ip)
      this.#audit(event, 'invalid_token', context, record ? { userId: record.userId } : {})
      throw new InvalidOneTimeTokenError()
    }
    return { record, user }
  }

  /** A new token for the account, replacing its earlier one of the purpose; undefined if the account is gone. */
  async #issue(
    purpose: OneTimeTokenPurpose,
    user: UserRecord,
    email: string,
    ttlSeconds: number,
  ): Promise<string | undefined> {
    const token = TOKEN_PREFIX[purpose] + randomBytes(32).toString('base64url')
    const now = this.#d.now()
    const stored = await this.#d.tokens.issue({
      hash: hashToken(token),
      purpose,
      userId: user.id,
      email,
      userVersion: user.tokenVersion,
      createdAt: new Date(now),
      expiresAt: new Date(now + ttlSeconds * 1000),
    })
    return stored ? token : undefined
  }

  async #sendVerification(user: UserRecord, email: string): Promise<void> {
    const { config } = this.#d
    const token = await this.#issue('email_verify', user, email, config.recovery.verifyTtlSeconds)
    if (token === undefined) return
    this.#d.mailer.send(
      emailVerificationMessage({
        to: email,
        username: user.username,
        link: config.mail.verifyUrl(token),
        ttlMinutes: config.recovery.verifyTtlSeconds / 60,
      }),
    )
  }

  /**
   * Counts one message of `kind` for `key` (an account id, or for `recipient` an address's key);
   * false once it is past RECOVERY_MAX_PER_ACCOUNT in the window.
   */
  async #withinAccountLimit(kind: LimitKind, key: string): Promise<boolean> {
    const { maxPerAccount, windowSeconds } = this.#d.config.recovery
    const { value } = await this.#d.counters.incr(`recovery:${kind}:${key}`, 1, windowSeconds * 1000)
    return value <= maxPerAccount
  }

  /**
   * Runs `work` after the current request has been answered (setImmediate: after the response
   * was written), tracked until it ends. A failure is logged, never thrown: nobody is waiting.
   */
  #background(work: () => Promise<void>): void {
    if (this.#closed) {
      this.#d.log.warn('recovery: closing, background work dropped')
      return
    }
    const run = new Promise<void>((resolve) => setImmediate(resolve))
      .then(work)
      .catch((err: unknown) =>
        this.#d.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'recovery: background work failed'),
      )
      .finally(() => this.#pending.delete(run))
    this.#pending.add(run)
  }

  #audit(event: string, outcome: string, context: RequestContext, fields: Record<string, unknown> = {}): void {
    this.#d.audit.info({ event, outcome, ...fields, ip: context.ip, reqId: context.reqId })
  }

  #date(): Date {
    return new Date(this.#d.now())
  }
}
