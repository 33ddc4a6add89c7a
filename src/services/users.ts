// The rules for accounts: registration, the password policy for new passwords, password checks
// (login, password change, deletion) and the admin operations.
import { randomUUID } from 'node:crypto'
import {
  AdminSetupError,
  invalidGrant,
  NotFoundError,
  PasswordIncorrectError,
  UsernameTakenError,
  ValidationError,
} from '../errors.js'
import { USERNAME_PATTERN } from '../schemas.js'
import { BCRYPT_MAX_BYTES, type PasswordHasher, utf8Length } from '../security/password.js'
import { passwordProblems } from '../security/policy.js'
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

export class UserService {
  constructor(
    private readonly store: UserStore,
    private readonly hasher: PasswordHasher,
    private readonly throttle: LoginThrottle,
    private readonly sessions: SessionService,
    private readonly passwordMinLength: number,
    /** Told about each lockout (audit). */
    private readonly onLockout: (username: string, ip: string) => void = () => {},
  ) {}

  /**
   * Creates the account. Throws ValidationError (422) when the password breaks the policy, then
   * UsernameTakenError (409) if the name is taken in any case.
   */
  async register({
    username,
    email,
    password,
    roles = ['user'],
    passwordField = 'password',
  }: Registration): Promise<UserRecord> {
    this.#checkNewPassword(password, username, passwordField)
    // Cheap early answer before paying for bcrypt; the store re-checks atomically on insert.
    if (await this.store.findByUsername(username)) throw new UsernameTakenError()
    const passwordHash = await this.hasher.hash(password)
    const created = await this.store.create({
      id: randomUUID(),
      username,
      email,
      passwordHash,
      createdAt: new Date(),
      roles,
    })
    if (!created) throw new UsernameTakenError()
    return created
  }

  /**
   * The user these credentials belong to, or invalid_grant. Throttled per account and per address
   * (429 before any password is checked). Every failure costs one bcrypt compare: an unknown or
   * impossible username compares against a dummy hash of the same cost, so the answer and its
   * timing are the same as for a wrong password. A disabled account answers its right password
   * like a wrong one.
   */
  async login(username: string, password: string, ip: string): Promise<UserRecord> {
    const attempt = await this.throttle.begin(username, ip)
    let user: UserRecord | undefined
    let ok: boolean
    try {
      user = USERNAME_PATTERN.test(username) ? await this.store.findByUsername(username) : undefined
      ok = await this.#verify(password, user?.passwordHash)
    } catch (err) {
      await this.throttle.cancelled(attempt)
      throw err
    }
    if (!ok || !user || user.disabled) {
      if (await this.throttle.failed(attempt)) this.onLockout(username, ip)
      throw invalidGrant()
    }
    await this.throttle.succeeded(attempt)
    return user
  }

  /** For password change and deletion: the account's own password, throttled like a login. */
  async confirmPassword(user: UserRecord, password: string, ip: string): Promise<void> {
    const attempt = await this.throttle.begin(user.username, ip)
    let ok: boolean
    try {
      ok = await this.#verify(password, user.passwordHash)
    } catch (err) {
      await this.throttle.cancelled(attempt)
      throw err
    }
    if (!ok) {
      if (await this.throttle.failed(attempt)) this.onLockout(user.username, ip)
      throw new PasswordIncorrectError()
    }
    await this.throttle.succeeded(attempt)
  }

  /**
   * Every refresh token and access token issued before the change stops working. The new password
   * is checked against the policy first (ValidationError on `new_password`), then the current one
   * (PasswordIncorrectError).
   */
  async changePassword(user: UserRecord, current: string, next: string, ip: string): Promise<void> {
    this.#checkNewPassword(next, user.username, 'new_password')
    await this.confirmPassword(user, current, ip)
    const passwordHash = await this.hasher.hash(next)
    const updated = await this.store.update(user.id, { passwordHash, bumpTokenVersion: true })
    if (!updated) throw new NotFoundError()
    await this.sessions.endAllSessions(user.id, updated.tokenVersion - 1)
  }

  async deleteSelf(user: UserRecord, password: string, ip: string): Promise<void> {
    await this.confirmPassword(user, password, ip)
    await this.delete(user.id)
  }

  async delete(id: string): Promise<void> {
    const user = await this.store.findById(id)
    if (!user || !(await this.store.delete(id))) throw new NotFoundError()
    await this.sessions.endAllSessions(id, user.tokenVersion)
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
   * or their right to exist changed); disabling also ends every session.
   */
  async patch(id: string, changes: { disabled?: boolean; roles?: readonly Role[] }): Promise<UserRecord> {
    const bump = changes.disabled === true || changes.roles !== undefined
    const updated = await this.store.update(id, { ...changes, bumpTokenVersion: bump })
    if (!updated) throw new NotFoundError()
    if (changes.disabled) await this.sessions.endAllSessions(id, updated.tokenVersion - 1)
    else if (bump) await this.sessions.denyGeneration(id, updated.tokenVersion - 1)
    return updated
  }

  /** ADMIN_USERNAME/ADMIN_PASSWORD at boot: create that account as an admin, or promote it. */
  async ensureAdmin(username: string, password: string): Promise<{ user: UserRecord; created: boolean }> {
    const existing = await this.store.findByUsername(username)
    if (existing) {
      // Only an account that already has this password is promoted: otherwise whoever registered
      // the name first would become admin.
      if (!(await this.#verify(password, existing.passwordHash)))
        throw new AdminSetupError('ADMIN_USERNAME: the account exists with another password; it was not promoted')
      const roles = existing.roles.includes('admin') ? existing.roles : [...existing.roles, 'admin' as const]
      const user = await this.store.update(existing.id, { roles, disabled: false })
      return { user: user as UserRecord, created: false }
    }
    if (!USERNAME_PATTERN.test(username))
      throw new AdminSetupError('ADMIN_USERNAME: does not follow the username rules')
    const problems = this.#policyProblems(password, username)
    if (problems.length > 0) throw new AdminSetupError(`ADMIN_PASSWORD: ${problems.join('; ')}`)
    return { user: await this.register({ username, email: null, password, roles: ['user', 'admin'] }), created: true }
  }

  /** The password policy, the one place it is applied: every new password (registration, change, boot admin). */
  #policyProblems(password: string, username: string): string[] {
    return passwordProblems(password, username, this.passwordMinLength)
  }

  /** ValidationError (422) on `field` listing every policy problem of a new password. */
  #checkNewPassword(password: string, username: string, field: string): void {
    const problems = this.#policyProblems(password, username)
    if (problems.length > 0) throw new ValidationError(problems.map((message) => ({ field, message })))
  }

  /** bcrypt would truncate a longer password and let a 73-byte variant of a 72-byte one in. */
  #verify(password: string, hash: string | undefined): Promise<boolean> {
    const usable = utf8Length(password) <= BCRYPT_MAX_BYTES && !password.includes('\0')
    return this.hasher.verify(usable ? password : '', usable ? hash : undefined)
  }
}
