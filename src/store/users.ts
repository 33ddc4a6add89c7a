// User storage: the UserStore interface and the in-memory implementation (the zero-config default).
// Knows nothing of HTTP or bcrypt; it stores what the service hands it.
import { EmailTakenError, LastAdminError } from '../errors.js'

export type Role = 'user' | 'admin'
export const ROLES: readonly Role[] = ['user', 'admin']

export interface UserRecord {
  /** Immutable random id (UUID); the `sub` of every token. */
  readonly id: string
  /** As registered (display form). */
  readonly username: string
  readonly email: string | null
  /** True once a link sent to `email` was followed; false for a new account and a new address. */
  readonly emailVerified: boolean
  readonly passwordHash: string
  readonly createdAt: Date
  readonly roles: readonly Role[]
  readonly disabled: boolean
  /** Bumped whenever every token issued so far must stop working (password change, disable, delete). */
  readonly tokenVersion: number
}

export interface NewUser {
  id: string
  username: string
  email: string | null
  passwordHash: string
  createdAt: Date
  roles: readonly Role[]
}

export interface UserPatch {
  /** A new address (unique like at creation: EmailTakenError when another account has it). */
  email?: string
  emailVerified?: boolean
  passwordHash?: string
  roles?: readonly Role[]
  disabled?: boolean
  /** Add one to tokenVersion, invalidating every token issued before. */
  bumpTokenVersion?: boolean
}

/** Options of update and delete. */
export interface WriteOptions {
  /**
   * Refuse the write, changing nothing, when it would leave no enabled user with the admin role:
   * it throws LastAdminError. The check is atomic with the write, so of two concurrent changes
   * that would each remove one of the last two admins, only one passes.
   */
  keepAnAdmin?: boolean
}

/** An administrator that counts: the admin role, not disabled. */
export function isEnabledAdmin(user: { readonly roles: readonly Role[]; readonly disabled: boolean }): boolean {
  return user.roles.includes('admin') && !user.disabled
}

/** True when `patch` can take a user's admin status away (removes the role, or disables). */
export function patchMayRemoveAdmin(patch: UserPatch): boolean {
  return (patch.roles !== undefined && !patch.roles.includes('admin')) || patch.disabled === true
}

/** Options of findById. */
export interface ReadOptions {
  /**
   * Read the stored record, past any cache in front of the store (CachedUserStore): for a decision
   * that must see a change made a moment ago on another instance, such as whether a one-time
   * token is older than the account's last password change.
   */
  fresh?: boolean
}

export interface ListQuery {
  limit: number
  offset: number
  usernamePrefix?: string
}

export interface UserStore {
  /**
   * Stores the user (email not verified), or returns null when the normalised username is taken;
   * throws EmailTakenError when the username is free but another account has the address (by
   * emailKey). Both checks are atomic with the insert.
   */
  create(user: NewUser): Promise<UserRecord | null>
  findById(id: string, options?: ReadOptions): Promise<UserRecord | undefined>
  findByUsername(username: string): Promise<UserRecord | undefined>
  /** The account whose address is `email` in any case (by emailKey). */
  findByEmail(email: string): Promise<UserRecord | undefined>
  /**
   * Applies the patch; undefined when the user does not exist. With `keepAnAdmin`, throws
   * LastAdminError (and changes nothing) when the patch would leave no enabled admin. A new
   * `email` that another account has throws EmailTakenError, atomically, changing nothing.
   */
  update(id: string, patch: UserPatch, options?: WriteOptions): Promise<UserRecord | undefined>
  /** False when the user does not exist. With `keepAnAdmin`, as update. */
  delete(id: string, options?: WriteOptions): Promise<boolean>
  /**
   * Replaces the password hash only if it is still `expected` (a re-hash at a new cost must not
   * undo a password change that happened meanwhile). Leaves tokenVersion alone. True when replaced.
   */
  replacePasswordHash(id: string, expected: string, next: string): Promise<boolean>
  /** Ordered by normalised username. */
  list(query: ListQuery): Promise<{ items: UserRecord[]; total: number }>
  close(): Promise<void>
}

/** Usernames are case-insensitive: one account per lower-cased name. The charset is ASCII only. */
export function normaliseUsername(username: string): string {
  return username.toLowerCase()
}

/**
 * What makes two addresses the same one: the whole address lower-cased, the local part included,
 * of the form the Email schema stores (domain already lower-cased Unicode, NFC). RFC 5321 leaves
 * the local part's case to the receiving server, but no mail provider in use tells `Alice@` from
 * `alice@`, and two accounts that only differ there would be one mailbox with two owners. Computed
 * here, by JavaScript, for both stores (PostgreSQL keeps it in users.email_key), so that they agree
 * on every address whatever the database's locale.
 */
export function emailKey(email: string): string {
  return email.toLowerCase()
}

/**
 * One user as the in-memory store keeps it: a class (one hidden class, fields in-object), the id
 * packed into 16 bytes, the creation time as a number, roles shared between users. Packed because
 * a million users must fit in 512 MB: a randomUUID() string alone costs ~490 bytes as stored.
 */
class PackedUser {
  constructor(
    readonly key: string,
    readonly username: string,
    readonly email: string | null,
    readonly emailVerified: boolean,
    readonly passwordHash: string,
    readonly createdAtMs: number,
    readonly roles: readonly Role[],
    readonly disabled: boolean,
    readonly tokenVersion: number,
  ) {}
}

/** A UUID as a 16-character string, one character per byte; undefined if not a lower-case UUID.
 * Hand-parsed (no Buffer, no regex): it runs on every authenticated request. */
function packId(id: string): string | undefined {
  if (id.length !== 36) return undefined
  const bytes: number[] = []
  for (let i = 0; i < 36; ) {
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (id.charCodeAt(i) !== 45) return undefined // '-'
      i++
      continue
    }
    const hi = hexValue(id.charCodeAt(i))
    const lo = hexValue(id.charCodeAt(i + 1))
    if (hi < 0 || lo < 0) return undefined
    bytes.push((hi << 4) | lo)
    i += 2
  }
  return String.fromCharCode(...bytes)
}

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48 // 0-9
  if (code >= 97 && code <= 102) return code - 87 // a-f
  return -1
}

function unpackId(key: string): string {
  let hex = ''
  for (let i = 0; i < key.length; i++) hex += key.charCodeAt(i).toString(16).padStart(2, '0')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

// Role lists are few and immutable: every user shares one frozen array per combination.
const sharedRoles = new Map<string, readonly Role[]>()
function internRoles(roles: readonly Role[]): readonly Role[] {
  const sorted = ROLES.filter((r) => roles.includes(r))
  const key = sorted.join(',')
  let shared = sharedRoles.get(key)
  if (!shared) {
    shared = Object.freeze(sorted)
    sharedRoles.set(key, shared)
  }
  return shared
}

function toRecord(p: PackedUser, id = unpackId(p.key)): UserRecord {
  return Object.freeze({
    id,
    username: p.username,
    email: p.email,
    emailVerified: p.emailVerified,
    passwordHash: p.passwordHash,
    createdAt: new Date(p.createdAtMs),
    roles: p.roles,
    disabled: p.disabled,
    tokenVersion: p.tokenVersion,
  })
}

/**
 * In-memory store. Maps, never plain objects keyed by user input (no prototype pollution);
 * entries are immutable and replaced on update, so a reader never sees a half-applied change.
 */
export class MemoryUserStore implements UserStore {
  readonly #byId = new Map<string, PackedUser>()
  readonly #byName = new Map<string, PackedUser>()
  /** emailKey → the key of the account with that address; only accounts with an address are in it. */
  readonly #byEmail = new Map<string, string>()
  /** Keys of the enabled admins, kept with every write: the last-admin check needs no scan. */
  readonly #enabledAdmins = new Set<string>()

  async create(user: NewUser): Promise<UserRecord | null> {
    return this.createSync(user)
  }

  /** Synchronous insert for bulk loading (benchmarks, seeding). */
  createSync(user: NewUser): UserRecord | null {
    const key = packId(user.id)
    if (key === undefined) throw new Error('user ids are UUIDs')
    const name = normaliseUsername(user.username)
    if (this.#byName.has(name) || this.#byId.has(key)) return null
    const mailKey = user.email === null ? undefined : emailKey(user.email)
    if (mailKey !== undefined && this.#byEmail.has(mailKey)) throw new EmailTakenError()
    // Flat copies: a string built by concatenation or slicing can hold far more memory than its text.
    const packed = new PackedUser(
      key,
      flat(user.username),
      user.email === null ? null : flat(user.email),
      false,
      user.passwordHash,
      user.createdAt.getTime(),
      internRoles(user.roles),
      false,
      0,
    )
    this.#byId.set(key, packed)
    this.#byName.set(name === user.username ? packed.username : name, packed)
    if (mailKey !== undefined) this.#byEmail.set(mailKey, key)
    if (isEnabledAdmin(packed)) this.#enabledAdmins.add(key)
    return toRecord(packed, user.id)
  }

  async findById(id: string): Promise<UserRecord | undefined> {
    const key = packId(id)
    const packed = key === undefined ? undefined : this.#byId.get(key)
    return packed && toRecord(packed, id)
  }

  async findByUsername(username: string): Promise<UserRecord | undefined> {
    const packed = this.#byName.get(normaliseUsername(username))
    return packed && toRecord(packed)
  }

  async findByEmail(email: string): Promise<UserRecord | undefined> {
    const key = this.#byEmail.get(emailKey(email))
    const packed = key === undefined ? undefined : this.#byId.get(key)
    return packed && toRecord(packed)
  }

  // Check and write run with no await in between: nothing else can change the admins meanwhile.
  async update(id: string, patch: UserPatch, options: WriteOptions = {}): Promise<UserRecord | undefined> {
    const key = packId(id)
    const current = key === undefined ? undefined : this.#byId.get(key)
    if (!current || key === undefined) return undefined
    const oldMailKey = current.email === null ? undefined : emailKey(current.email)
    const newMailKey = patch.email === undefined ? oldMailKey : emailKey(patch.email)
    if (newMailKey !== oldMailKey && newMailKey !== undefined && this.#byEmail.has(newMailKey))
      throw new EmailTakenError()
    const next = new PackedUser(
      key,
      current.username,
      patch.email === undefined ? current.email : flat(patch.email),
      patch.emailVerified ?? current.emailVerified,
      patch.passwordHash ?? current.passwordHash,
      current.createdAtMs,
      patch.roles ? internRoles(patch.roles) : current.roles,
      patch.disabled ?? current.disabled,
      current.tokenVersion + (patch.bumpTokenVersion ? 1 : 0),
    )
    if (options.keepAnAdmin && !isEnabledAdmin(next)) this.#refuseIfLastAdmin(key, current)
    this.#byId.set(key, next)
    this.#byName.set(normaliseUsername(current.username), next)
    if (newMailKey !== oldMailKey) {
      if (oldMailKey !== undefined) this.#byEmail.delete(oldMailKey)
      if (newMailKey !== undefined) this.#byEmail.set(newMailKey, key)
    }
    if (isEnabledAdmin(next)) this.#enabledAdmins.add(key)
    else this.#enabledAdmins.delete(key)
    return toRecord(next, id)
  }

  async delete(id: string, options: WriteOptions = {}): Promise<boolean> {
    const key = packId(id)
    const current = key === undefined ? undefined : this.#byId.get(key)
    if (!current || key === undefined) return false
    if (options.keepAnAdmin) this.#refuseIfLastAdmin(key, current)
    this.#byId.delete(key)
    this.#byName.delete(normaliseUsername(current.username))
    if (current.email !== null) this.#byEmail.delete(emailKey(current.email))
    this.#enabledAdmins.delete(key)
    return true
  }

  /** LastAdminError when `current` (about to lose its admin status) is the only enabled admin. */
  #refuseIfLastAdmin(key: string, current: PackedUser): void {
    if (isEnabledAdmin(current) && !this.#hasEnabledAdminOtherThan(key)) throw new LastAdminError()
  }

  #hasEnabledAdminOtherThan(key: string): boolean {
    return this.#enabledAdmins.size > (this.#enabledAdmins.has(key) ? 1 : 0)
  }

  async replacePasswordHash(id: string, expected: string, next: string): Promise<boolean> {
    const key = packId(id)
    const current = key === undefined ? undefined : this.#byId.get(key)
    if (!current || key === undefined || current.passwordHash !== expected) return false
    const replaced = new PackedUser(
      key,
      current.username,
      current.email,
      current.emailVerified,
      next,
      current.createdAtMs,
      current.roles,
      current.disabled,
      current.tokenVersion,
    )
    this.#byId.set(key, replaced)
    this.#byName.set(normaliseUsername(current.username), replaced)
    return true
  }

  async list(query: ListQuery): Promise<{ items: UserRecord[]; total: number }> {
    const prefix = query.usernamePrefix ? normaliseUsername(query.usernamePrefix) : ''
    const names = [...this.#byName.keys()].filter((n) => n.startsWith(prefix)).sort(byCodePoint)
    const items = names
      .slice(query.offset, query.offset + query.limit)
      .map((n) => toRecord(this.#byName.get(n) as PackedUser))
    return { items, total: names.length }
  }

  async close(): Promise<void> {}
}

/** Plain code-point order (as PostgreSQL's COLLATE "C"), not the locale's. */
const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

/** A flat (sequential) copy of a string, so it does not keep a larger parent string alive. */
function flat(value: string): string {
  return JSON.parse(JSON.stringify(value)) as string
}
