// The rules for accounts: registration, the password policy for new passwords, password checks
// (login, password change, deletion), setting a password through a reset link, and the admin
// operations.
import { randomUUID } from 'node:crypto'
import {
  AdminSetupError,
  EmailTakenError,
  emailNotVerified,
  InvalidMfaCodeError,
  invalidGrant,
  NotFoundError,
  PasswordIncorrectError,
  StoreUnavailableError,
  UsernameTakenError,
  ValidationError,
} from '../errors.js'
import { USERNAME_PATTERN } from '../schemas.js'
import { BCRYPT_MAX_BYTES, type PasswordHasher, preparePassword, utf8Length } from '../security/password.js'
import { type AccountDetails, passwordProblems } from '../security/policy.js'
import type { ListQuery, Role, UserRecord, UserStore } from '../store/users.js'
import type { SessionService } from './sessions.js'
import type { LoginThrottle } from './throttle.js'

export interface Registration {
  username: string
  email: string | null
  password: string
  roles?: readonly Role[]
  /** The body field the password came in, named by policy errors (default `password`). */
  passwordField?: string
}

/**
 * What other services are told about an account, as it happens (createServices wires these to
 * the recovery service: a verification message after registration, a notice after a password
 * change or reset). Called without awaiting: each must return at once and never throw.
 */
export interface AccountEvents {
  registered?(user: UserRecord): void
  passwordChanged?(user: UserRecord): void
  /** The account is gone (its second factor goes with it). */
  deleted?(userId: string): void
}

export interface UserServiceOptions {
  /** REQUIRE_VERIFIED_EMAIL: the password grant refuses accounts without a verified address (admins exempt). */
  requireVerifiedEmail?: boolean
  events?: AccountEvents
  /**
   * Whether the account's password grant needs a second factor (services/mfa.ts); none when
   * omitted. Asked only once the password was found right.
   */
  secondFactorRequired?: (user: UserRecord) => Promise<boolean>
}

/** A password grant whose password was right. */
export interface LoginResult {
  user: UserRecord
  /**
   * A second factor is due before any token is issued (MfaService.challenge). The account's run of
   * failed logins was left as it was: only the second step ends it, so that knowing the password
   * cannot reset the count of wrong codes.
   */
  mfaRequired: boolean
}

export interface PasswordReset {
  /**
   * Uses up the reset token; throws (InvalidOneTimeTokenError) when it is gone. Called once the
   * new password has passed the policy and been hashed, right before the password is replaced, so
   * that a refused password or a shed hash leaves the token usable.
   */
  redeem(): Promise<void>
  /** The link went to the account's current address: following it proved that address. */
  verifiesEmail: boolean
}

interface Verified {
  ok: boolean
  needsRehash: boolean
  /** The prepared password ('' when it could not be prepared). */
  prepared: string
}

export class UserService {
  constructor(
    private readonly store: UserStore,
    private readonly hasher: PasswordHasher,
    private readonly throttle: LoginThrottle,
    private readonly sessions: SessionService,
    private readonly passwordMinLength: number,
    /** Told about each lockout (audit). */
    private readonly onLockout: (username: string, ip: string) => void = () => {},
    /** Where background failures (a re-hash that could not be stored) are reported. */
    private readonly log: { warn(obj: object, msg: string): void } = { warn: () => {} },
    private readonly options: UserServiceOptions = {},
  ) {}

  #stopped = false

  /**
   * No background work from now on: called when the app starts closing. A re-hash is optional (the
   * next login does it), and one started during shutdown would hold the process's exit until bcrypt
   * finishes on libuv's thread pool (process.exit waits for it), then find the store closed.
   */
  stopBackgroundWork(): void {
    this.#stopped = true
  }

  /**
   * Creates the account. Throws ValidationError (422) when the password breaks the policy, then
   * UsernameTakenError (409) if the name is taken in any case, then EmailTakenError (409) if
   * another account has the address in any case. An account with an address is then sent a
   * verification message (events.registered).
   */
  async register({
    username,
    email,
    password,
    roles = ['user'],
    passwordField = 'password',
  }: Registration): Promise<UserRecord> {
    const prepared = this.#newPassword(password, { username, email }, passwordField)
    // Cheap early answer before paying for bcrypt; the store re-checks atomically on insert.
    if (await this.store.findByUsername(username)) throw new UsernameTakenError()
    if (email !== null && (await this.store.findByEmail(email))) throw new EmailTakenError()
    const passwordHash = await this.hasher.hash(prepared)
    const created = await this.store.create({
      id: randomUUID(),
      username,
      email,
      passwordHash,
      createdAt: new Date(),
      roles,
    })
    if (!created) throw new UsernameTakenError()
    this.options.events?.registered?.(created)
    return created
  }

  /**
   * The user these credentials belong to, or invalid_grant. Throttled per account and per address
   * (429 before any password is checked). Every failure costs one bcrypt compare: an unknown or
   * impossible username compares against a dummy hash of the same cost, so the answer and its
   * timing are the same as for a wrong password. A disabled account answers its right password
   * like a wrong one. A password that cannot be prepared (control characters) is a wrong one too,
   * after the same compare: the login path never tells "malformed" from "wrong". A right password
   * whose hash has another cost than configured is re-hashed in the background. With
   * REQUIRE_VERIFIED_EMAIL, a right password of an account without a verified address (and without
   * the admin role) is then refused with its own invalid_grant: only after the password was
   * checked, so that it tells nothing to whoever does not know the password. Then, for an account
   * with a second factor, `mfaRequired` (see LoginResult).
   */
  async login(username: string, password: string, ip: string): Promise<LoginResult> {
    const attempt = await this.throttle.begin(username, ip)
    let user: UserRecord | undefined
    let result: Verified
    try {
      user = USERNAME_PATTERN.test(username) ? await this.store.findByUsername(username) : undefined
      result = await this.#verify(password, user?.passwordHash)
    } catch (err) {
      await this.throttle.cancelled(attempt)
      throw err
    }
    if (!result.ok || !user || user.disabled) {
      if (await this.throttle.failed(attempt)) this.onLockout(username, ip)
      throw invalidGrant()
    }
    let mfaRequired: boolean
    try {
      mfaRequired = (await this.options.secondFactorRequired?.(user)) ?? false
    } catch (err) {
      await this.throttle.cancelled(attempt)
      throw err
    }
    // With a second factor due, the attempt counts neither way: the second step settles it.
    if (mfaRequired) await this.throttle.cancelled(attempt)
    else await this.throttle.succeeded(attempt)
    if (result.needsRehash && !this.#stopped) void this.#rehash(user, result.prepared)
    if (this.options.requireVerifiedEmail && !user.emailVerified && !user.roles.includes('admin'))
      throw emailNotVerified()
    return { user, mfaRequired }
  }

  /**
   * For changes to the account (password, deletion, e-mail, second factor): its own password,
   * throttled like a login (PasswordIncorrectError; TooManyAttemptsError before any check). With
   * `secondFactor`, the check of a code given with the password (MFA changes): both are one
   * attempt, and a wrong code is a failure of it (InvalidMfaCodeError). Without one, a right
   * password of an account with a second factor ends nothing of its run of failures, as at login:
   * otherwise the password alone, through any of these routes, would reset the count of wrong codes.
   */
  async confirmPassword(
    user: UserRecord,
    password: string,
    ip: string,
    secondFactor?: () => Promise<boolean>,
  ): Promise<void> {
    const attempt = await this.throttle.begin(user.username, ip)
    let ok: boolean
    let codeOk = true
    let mfaPending = false
    try {
      ;({ ok } = await this.#verify(password, user.passwordHash))
      if (ok && secondFactor) codeOk = await secondFactor()
      else if (ok) mfaPending = (await this.options.secondFactorRequired?.(user)) ?? false
    } catch (err) {
      await this.throttle.cancelled(attempt)
      throw err
    }
    if (!ok || !codeOk) {
      if (await this.throttle.failed(attempt)) this.onLockout(user.username, ip)
      throw ok ? new InvalidMfaCodeError() : new PasswordIncorrectError()
    }
    if (mfaPending) await this.throttle.cancelled(attempt)
    else await this.throttle.succeeded(attempt)
  }

  /**
   * Every refresh token and access token issued before the change stops working. The new password
   * is checked against the policy first (ValidationError on `new_password`), then the current one
   * (PasswordIncorrectError). The account's address, if any, is told (events.passwordChanged).
   */
  async changePassword(user: UserRecord, current: string, next: string, ip: string): Promise<void> {
    const prepared = this.#newPassword(next, user, 'new_password')
    await this.confirmPassword(user, current, ip)
    const passwordHash = await this.hasher.hash(prepared)
    const updated = await this.store.update(user.id, { passwordHash, bumpTokenVersion: true })
    if (!updated) throw new NotFoundError()
    await this.sessions.endAllSessions(user.id, updated.tokenVersion - 1)
    this.options.events?.passwordChanged?.(updated)
  }

  /**
   * A new password through a reset link (the recovery service has checked the token). The same
   * policy as every new password (ValidationError on `new_password`, the token left usable), then
   * the token is redeemed and the password replaced. Afterwards, as after a password change, every
   * session and token of the account has ended; its failed-login run and lock are cleared; the
   * address is verified if the link went to it; and the address is told (events.passwordChanged).
   */
  async resetPassword(user: UserRecord, next: string, reset: PasswordReset): Promise<UserRecord> {
    const prepared = this.#newPassword(next, user, 'new_password')
    const passwordHash = await this.hasher.hash(prepared)
    await reset.redeem()
    const updated = await this.store.update(user.id, {
      passwordHash,
      bumpTokenVersion: true,
      ...(reset.verifiesEmail ? { emailVerified: true } : {}),
    })
    if (!updated) throw new NotFoundError()
    await this.sessions.endAllSessions(user.id, updated.tokenVersion - 1)
    await this.throttle.clearAccount(user.username)
    this.options.events?.passwordChanged?.(updated)
    return updated
  }

  async deleteSelf(user: UserRecord, password: string, ip: string): Promise<void> {
    await this.confirmPassword(user, password, ip)
    await this.delete(user.id)
  }

  /**
   * Deletes the account (admin or self-deletion). LastAdminError (409) when it is the last enabled
   * admin: nothing is deleted and no session ends.
   */
  async delete(id: string): Promise<void> {
    const user = await this.store.findById(id)
    if (!user || !(await this.store.delete(id, { keepAnAdmin: true }))) throw new NotFoundError()
    await this.sessions.endAllSessions(id, user.tokenVersion)
    this.options.events?.deleted?.(id)
  }

  async get(id: string): Promise<UserRecord> {
    const user = await this.store.findById(id)
    if (!user) throw new NotFoundError()
    return user
  }

  list(query: ListQuery) {
    return this.store.list(query)
  }

  /**
   * Admin changes. Disabling, or changing roles, invalidates the user's access tokens (their scope
   * or their right to exist changed); disabling also ends every session. LastAdminError (409) when
   * the change would leave no enabled admin: checked by the store atomically with the write, and
   * then nothing changes (no generation bump, no session ended).
   */
  async patch(id: string, changes: { disabled?: boolean; roles?: readonly Role[] }): Promise<UserRecord> {
    const bump = changes.disabled === true || changes.roles !== undefined
    const updated = await this.store.update(id, { ...changes, bumpTokenVersion: bump }, { keepAnAdmin: true })
    if (!updated) throw new NotFoundError()
    if (changes.disabled) await this.sessions.endAllSessions(id, updated.tokenVersion - 1)
    else if (bump) await this.sessions.denyGeneration(id, updated.tokenVersion - 1)
    return updated
  }

  /**
   * ADMIN_USERNAME/ADMIN_PASSWORD at boot: create that account as an admin, or promote it. Every
   * failure is an AdminSetupError naming the variable, a store that cannot be reached included.
   */
  async ensureAdmin(username: string, password: string): Promise<{ user: UserRecord; created: boolean }> {
    try {
      return await this.#ensureAdmin(username, password)
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err
      throw new AdminSetupError(
        `ADMIN_USERNAME: the admin account cannot be created or promoted: ${err.dependency} is not reachable`,
        { cause: err },
      )
    }
  }

  async #ensureAdmin(username: string, password: string): Promise<{ user: UserRecord; created: boolean }> {
    const existing = await this.store.findByUsername(username)
    if (existing) {
      // Only an account that already has this password is promoted: otherwise whoever registered
      // the name first would become admin.
      if (!(await this.#verify(password, existing.passwordHash)).ok)
        throw new AdminSetupError('ADMIN_USERNAME: the account exists with another password; it was not promoted')
      const roles = existing.roles.includes('admin') ? existing.roles : [...existing.roles, 'admin' as const]
      const user = await this.store.update(existing.id, { roles, disabled: false })
      return { user: user as UserRecord, created: false }
    }
    if (!USERNAME_PATTERN.test(username))
      throw new AdminSetupError(
        'ADMIN_USERNAME: does not follow the username rules (3 to 32 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit)',
      )
    const problems = this.newPasswordProblems(password, { username })
    if (problems.length > 0) throw new AdminSetupError(`ADMIN_PASSWORD: ${problems.join('; ')}`)
    return { user: await this.register({ username, email: null, password, roles: ['user', 'admin'] }), created: true }
  }

  /**
   * The password policy, its one home: what is wrong with `raw` as a new password for the account,
   * after preparation (RFC 8265 OpaqueString); empty when it is fine. Every new password goes
   * through it (registration, password change, the boot admin); the registration schema also calls
   * it, so that one 422 lists the password's problems next to the other fields'.
   */
  newPasswordProblems(raw: string, account: AccountDetails): string[] {
    const prepared = preparePassword(raw)
    if ('problem' in prepared) return [prepared.problem]
    return passwordProblems(prepared.password, account, this.passwordMinLength)
  }

  /** A new password, prepared and checked against the policy; ValidationError (422) on `field` otherwise. */
  #newPassword(raw: string, account: AccountDetails, field: string): string {
    const problems = this.newPasswordProblems(raw, account)
    if (problems.length > 0) throw new ValidationError(problems.map((message) => ({ field, message })))
    return (preparePassword(raw) as { password: string }).password
  }

  /**
   * Checks a presented password against a stored hash (undefined: the dummy hash), after the same
   * preparation as at registration. A password that cannot be prepared, or is longer than bcrypt
   * reads (it would be truncated, letting a 73-byte variant of a 72-byte password in), costs the
   * same one compare and fails.
   */
  async #verify(raw: string, hash: string | undefined): Promise<Verified> {
    const prepared = preparePassword(raw)
    const usable = 'password' in prepared && utf8Length(prepared.password) <= BCRYPT_MAX_BYTES
    const password = usable ? prepared.password : ''
    const { ok, needsRehash } = await this.hasher.check(password, usable ? hash : undefined)
    return { ok, needsRehash, prepared: password }
  }

  /** Stores a hash of the configured cost for a password just proven right; after the response. */
  async #rehash(user: UserRecord, prepared: string): Promise<void> {
    try {
      const next = await this.hasher.hash(prepared)
      await this.store.replacePasswordHash(user.id, user.passwordHash, next)
    } catch (err) {
      this.log.warn({ err: (err as Error).message, userId: user.id }, 'password re-hash not stored')
    }
  }
}
