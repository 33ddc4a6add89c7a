// The second factor: enrolment of a TOTP authenticator (RFC 6238) with single-use recovery codes,
// and the second step of a password grant. The login flow has the shape Auth0 gives the password
// grant with MFA, so that clients written for it work unchanged: a right password answers 403
// `mfa_required` with an `mfa_token`, and /token then takes that token with a code under the
// grant types `http://auth0.com/oauth/grant-type/mfa-otp` and `…/mfa-recovery-code`.
//
// What keeps a code from being guessed: an MFA token dies after MFA_TOKEN_MAX_ATTEMPTS wrong codes,
// and every wrong code is also a failed login of the account (services/throttle.ts), whose run a
// right password alone does not end; so the account locks after LOGIN_MAX_FAILURES wrong codes
// however many MFA tokens the password yields. A TOTP code works once (MfaStore.useStep).
import type { FastifyBaseLogger } from 'fastify'
import {
  InvalidMfaCodeError,
  InvalidTokenError,
  MfaRequiredError,
  MfaStateError,
  NotFoundError,
  OAuthError,
} from '../errors.js'
import {
  type MfaCipher,
  newRecoveryCodes,
  newTotpSecret,
  normaliseRecoveryCode,
  otpauthUri,
  qrSvg,
  totpStep,
} from '../security/mfa.js'
import { MFA_TOKEN_TTL_SECONDS, type MfaClaims, type TokenService } from '../security/tokens.js'
import type { CounterStore } from '../store/counters.js'
import type { MfaRecord, MfaStore } from '../store/mfa.js'
import type { UserRecord, UserStore } from '../store/users.js'
import type { SessionService } from './sessions.js'
import type { LoginThrottle } from './throttle.js'
import type { UserService } from './users.js'

/** How long an enrolment waits for its confirming code: long enough to find the app, scan and type. */
export const ENROLMENT_TTL_MS = 15 * 60 * 1000

/** Wrong codes one MFA token takes before it dies. */
export const MFA_TOKEN_MAX_ATTEMPTS = 5

/** The /token grant types of the second step (Auth0's URIs: RFC 6749 §4.5 extension grants are URIs). */
export const MFA_OTP_GRANT = 'http://auth0.com/oauth/grant-type/mfa-otp'
export const MFA_RECOVERY_CODE_GRANT = 'http://auth0.com/oauth/grant-type/mfa-recovery-code'

/** What an enrolment hands the user: the secret three ways (typed, as a link, as a QR code). */
export interface Enrolment {
  /** base32, 160 bits. */
  secret: string
  /** otpauth://totp/… (the Key Uri Format authenticator apps import). */
  otpauthUri: string
  /** The URI as an SVG QR code. */
  qrSvg: string
}

export interface MfaStatus {
  /** MFA is active: password grants need a code. */
  totp: boolean
  recoveryCodesLeft: number
}

/** The second factor the second step was given. */
export type SecondFactor = { otp: string } | { recoveryCode: string }

export interface MfaServiceOptions {
  store: MfaStore
  users: UserStore
  accounts: UserService
  sessions: SessionService
  tokens: TokenService
  counters: CounterStore
  throttle: LoginThrottle
  cipher: MfaCipher
  /** The issuer authenticator apps show (MFA_ISSUER). */
  issuer: string
  audit: FastifyBaseLogger
  /** Milliseconds since the epoch: the clock TOTP codes are checked against. */
  now: () => number
}

export class MfaService {
  readonly #o: MfaServiceOptions

  constructor(options: MfaServiceOptions) {
    this.#o = options
  }

  /** Whether a password grant of this account needs a second factor (its MFA is active). */
  async required(user: UserRecord): Promise<boolean> {
    return (await this.#o.store.get(user.id))?.active === true
  }

  async status(userId: string): Promise<MfaStatus> {
    const record = await this.#o.store.get(userId)
    return record?.active
      ? { totp: true, recoveryCodesLeft: record.recoveryCodesLeft }
      : { totp: false, recoveryCodesLeft: 0 }
  }

  /** Of these accounts, those with MFA active. */
  activeAmong(userIds: readonly string[]): Promise<Set<string>> {
    return this.#o.store.activeAmong(userIds)
  }

  /**
   * Starts (or restarts) an enrolment: the current password (PasswordIncorrectError, throttled like
   * a login), then a new secret replaces any pending one. MFA is not active until confirm().
   * MfaStateError (409) when MFA is already active.
   */
  async enrol(user: UserRecord, password: string, ip: string): Promise<Enrolment> {
    await this.#o.accounts.confirmPassword(user, password, ip)
    const secret = newTotpSecret()
    if (!(await this.#o.store.setPending(user.id, this.#o.cipher.seal(user.id, secret), new Date(this.#o.now()))))
      throw new MfaStateError('Multi-factor authentication is already active')
    const uri = otpauthUri(secret, this.#o.issuer, user.username)
    this.#o.audit.info({ event: 'mfa_enrolment_started', userId: user.id, ip })
    return { secret, otpauthUri: uri, qrSvg: await qrSvg(uri) }
  }

  /**
   * Confirms the pending enrolment with a code from the authenticator: MFA becomes active and the
   * recovery codes are returned (the only time they are shown). MfaStateError (409) when no
   * enrolment is pending, or it is older than ENROLMENT_TTL_MS; InvalidMfaCodeError (400) for a
   * wrong code. Each code is an attempt of the account's login throttle (429 once locked): a
   * stolen access token must not be able to guess its way into someone's half-finished enrolment
   * and walk off with the recovery codes.
   */
  async confirm(user: UserRecord, code: string, ip: string): Promise<string[]> {
    const record = await this.#o.store.get(user.id)
    if (!record || record.active || this.#o.now() - record.createdAt.getTime() > ENROLMENT_TTL_MS)
      throw new MfaStateError('No multi-factor enrolment is pending')
    const attempt = await this.#o.throttle.begin(user.username, ip)
    let step: number | undefined
    try {
      step = totpStep(this.#open(record), code, this.#o.now())
    } catch (err) {
      await this.#o.throttle.cancelled(attempt)
      throw err
    }
    if (step === undefined) {
      if (await this.#o.throttle.failed(attempt))
        this.#o.audit.warn({ event: 'lockout', username: user.username.slice(0, 64), ip })
      throw new InvalidMfaCodeError()
    }
    await this.#o.throttle.succeeded(attempt)
    const codes = newRecoveryCodes()
    const hashes = codes.map((c) => this.#o.cipher.hashCode(user.id, normaliseRecoveryCode(c) as string))
    // The step of this code counts as used: it cannot log in a second time.
    if (!(await this.#o.store.activate(user.id, record.secret.ciphertext, step, hashes)))
      throw new MfaStateError('The enrolment changed meanwhile; start it again')
    this.#o.audit.info({ event: 'mfa_enabled', userId: user.id, ip })
    return codes
  }

  /**
   * A new set of recovery codes (the old ones end): the current password, then a current TOTP code.
   * MfaStateError (409) when MFA is not active; InvalidMfaCodeError (400) for a wrong code.
   */
  async regenerateRecoveryCodes(user: UserRecord, password: string, otp: string, ip: string): Promise<string[]> {
    const record = await this.#active(user.id)
    // The password and the code are one attempt of the login throttle: a wrong code is a failure.
    await this.#o.accounts.confirmPassword(user, password, ip, () => this.#checkFactor(record, { otp }))
    const codes = newRecoveryCodes()
    const hashes = codes.map((c) => this.#o.cipher.hashCode(user.id, normaliseRecoveryCode(c) as string))
    if (!(await this.#o.store.replaceRecoveryCodes(user.id, hashes)))
      throw new MfaStateError('Multi-factor authentication is not active')
    this.#o.audit.info({ event: 'mfa_recovery_codes_regenerated', userId: user.id, ip })
    return codes
  }

  /**
   * Turns MFA off: the current password, then a TOTP code or a recovery code (`code` is tried as
   * either). MfaStateError (409) when MFA is not active; InvalidMfaCodeError (400) for a wrong code.
   */
  async disable(user: UserRecord, password: string, code: string, ip: string): Promise<void> {
    const record = await this.#active(user.id)
    const factor: SecondFactor = /^[0-9]{6}$/.test(code.trim()) ? { otp: code.trim() } : { recoveryCode: code }
    await this.#o.accounts.confirmPassword(user, password, ip, () => this.#checkFactor(record, factor))
    await this.#o.store.delete(user.id)
    this.#o.audit.warn({ event: 'mfa_disabled', userId: user.id, ip })
  }

  /**
   * An administrator turns a user's MFA off (the device and the codes are lost). Every session and
   * token of the user ends too: whoever has the lost device may have had them. NotFoundError (404)
   * for an unknown user; a user without MFA is left as is.
   */
  async adminReset(userId: string): Promise<{ hadMfa: boolean }> {
    const user = await this.#o.users.findById(userId)
    if (!user) throw new NotFoundError()
    const hadMfa = await this.#o.store.delete(userId)
    if (hadMfa) {
      const updated = await this.#o.users.update(userId, { bumpTokenVersion: true })
      if (updated) await this.#o.sessions.endAllSessions(userId, updated.tokenVersion - 1)
    }
    return { hadMfa }
  }

  /** Forgets an account's second factor (the account was deleted). */
  async forget(userId: string): Promise<void> {
    await this.#o.store.delete(userId)
  }

  /**
   * The answer to a right password of an account with MFA: an MFA token (5 minutes, of its own
   * token purpose) carrying the account, its token generation, its factor and the scope granted,
   * thrown as MfaRequiredError (403 mfa_required).
   */
  async challenge(user: UserRecord, scope: string): Promise<never> {
    const record = await this.#o.store.get(user.id)
    const { token } = this.#o.tokens.sign('mfa', {
      sub: user.id,
      scope,
      ver: user.tokenVersion,
      fct: record ? factorStamp(record) : 0,
    })
    throw new MfaRequiredError(token)
  }

  /**
   * The second step of a password grant: the MFA token and a TOTP code or a recovery code. Returns
   * the account and the scope to issue tokens for. Every failure is invalid_grant (400): a token
   * that is not ours, expired, spent, dead after MFA_TOKEN_MAX_ATTEMPTS wrong codes, or of an
   * account whose password changed, that was disabled or whose MFA was turned off since; or a
   * wrong, used or malformed code. A wrong code is also a failed login of the account, so the
   * account lockout applies (TooManyAttemptsError, 429, before any code is checked).
   */
  async verifyGrant(mfaToken: string, factor: SecondFactor, ip: string): Promise<{ user: UserRecord; scope: string }> {
    let claims: MfaClaims
    try {
      claims = this.#o.tokens.verify('mfa', mfaToken)
    } catch (err) {
      if (err instanceof InvalidTokenError) throw invalidMfaToken()
      throw err
    }
    const ttlMs = (MFA_TOKEN_TTL_SECONDS + 60) * 1000
    const spentKey = `mfa:spent:${claims.jti}`
    if (await this.#o.counters.get(spentKey)) throw invalidMfaToken()
    const user = await this.#o.users.findById(claims.sub, { fresh: true })
    if (!user || user.disabled || user.tokenVersion !== claims.ver) throw invalidMfaToken()
    const record = await this.#o.store.get(user.id)
    // The factor the token was issued for: MFA turned off and on again since is another factor.
    if (!record?.active || factorStamp(record) !== claims.fct) throw invalidMfaToken()

    const attempt = await this.#o.throttle.begin(user.username, ip)
    // Reserved before the check, so that concurrent guesses cannot get past the limit.
    const { value: tries } = await this.#o.counters.incr(`mfa:tries:${claims.jti}`, 1, ttlMs)
    if (tries > MFA_TOKEN_MAX_ATTEMPTS) {
      await this.#o.throttle.cancelled(attempt)
      throw invalidMfaToken()
    }
    let ok: boolean
    try {
      ok = await this.#checkFactor(record, factor)
    } catch (err) {
      await this.#o.throttle.cancelled(attempt)
      throw err
    }
    if (!ok) {
      if (await this.#o.throttle.failed(attempt))
        this.#o.audit.warn({ event: 'lockout', username: user.username.slice(0, 64), ip })
      throw new OAuthError('invalid_grant', 'otp' in factor ? 'Invalid one-time password' : 'Invalid recovery code')
    }
    // Single use: of two requests with the same MFA token and right codes, one gets tokens.
    if (!(await this.#o.counters.setIfAbsent(spentKey, ttlMs))) {
      await this.#o.throttle.cancelled(attempt)
      throw invalidMfaToken()
    }
    await this.#o.throttle.succeeded(attempt)
    return { user, scope: claims.scope }
  }

  /** True when the factor is right, and then it is spent (a TOTP step, or a recovery code). */
  async #checkFactor(record: MfaRecord, factor: SecondFactor): Promise<boolean> {
    if ('otp' in factor) {
      const step = totpStep(this.#open(record), factor.otp, this.#o.now())
      // A code of a step already used, or of an older one, is refused.
      return step !== undefined && this.#o.store.useStep(record.userId, step)
    }
    const code = normaliseRecoveryCode(factor.recoveryCode)
    if (code === undefined) return false
    for (const hash of this.#o.cipher.candidateHashes(record.userId, code))
      if (await this.#o.store.useRecoveryCode(record.userId, hash)) return true
    return false
  }

  async #active(userId: string): Promise<MfaRecord> {
    const record = await this.#o.store.get(userId)
    if (!record?.active) throw new MfaStateError('Multi-factor authentication is not active')
    return record
  }

  /**
   * The plain TOTP secret. A secret that cannot be opened (its key was removed from the ring, or
   * the row was tampered with) is a server fault, never a client's: it throws a plain Error (500,
   * logged), and an administrator's reset of the user's MFA is the way out.
   */
  #open(record: MfaRecord): string {
    const secret = this.#o.cipher.open(record.userId, record.secret)
    if (secret === undefined)
      throw new Error(`the TOTP secret of user ${record.userId} cannot be opened with the configured MFA keys`)
    return secret
  }
}

/** Which enrolment a factor is: its creation time in milliseconds (an enrolment replaces the record). */
const factorStamp = (record: MfaRecord) => record.createdAt.getTime()

/** The one answer to an MFA token that cannot be used, whatever the reason. */
const invalidMfaToken = () => new OAuthError('invalid_grant', 'Invalid or expired mfa_token')
