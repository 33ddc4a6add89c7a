// User storage: the UserStore interface and the in-memory implementation (the zero-config default).
// Knows nothing of HTTP or bcrypt; it stores what the service hands it.

export type Role = 'user' | 'admin'
export const ROLES: readonly Role[] = ['user', 'admin']

export interface UserRecord {
  /** Immutable random id (UUID); the `sub` of every token. */
  readonly id: string
  /** As registered (display form). */
  readonly username: string
  readonly email: string | null
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
  passwordHash?: string
  roles?: readonly Role[]
  disabled?: boolean
  /** Add one to tokenVersion, invalidating every token issued before. */
  bumpTokenVersion?: boolean
}

export interface ListQuery {
  limit: number
  offset: number
  usernamePrefix?: string
}

export interface UserStore {
  /** Stores the user, or returns null when the normalised username is taken (atomically). */
  create(user: NewUser): Promise<UserRecord | null>
  findById(id: string): Promise<UserRecord | undefined>
  findByUsername(username: string): Promise<UserRecord | undefined>
  /** Applies the patch; undefined when the user does not exist. */
  update(id: string, patch: UserPatch): Promise<UserRecord | undefined>
  delete(id: string): Promise<boolean>
  /** Ordered by normalised username. */
  list(query: ListQuery): Promise<{ items: UserRecord[]; total: number }>
  count(): Promise<number>
  close(): Promise<void>
}

/** Usernames are case-insensitive: one account per lower-cased name. The charset is ASCII only. */
export function normaliseUsername(username: string): string {
  return username.toLowerCase()
}

/**
 * In-memory store. Two Maps (never plain objects keyed by user input: no prototype pollution);
 * records are frozen and replaced on update, so a reader never sees a half-applied change.
 */
export class MemoryUserStore implements UserStore {
  readonly #byId = new Map<string, UserRecord>()
  readonly #idByName = new Map<string, string>()

  async create(user: NewUser): Promise<UserRecord | null> {
    return this.createSync(user)
  }

  /** Synchronous insert for bulk loading (benchmarks, seeding). */
  createSync(user: NewUser): UserRecord | null {
    const key = normaliseUsername(user.username)
    if (this.#idByName.has(key)) return null
    const record: UserRecord = Object.freeze({
      ...user,
      roles: Object.freeze([...user.roles]),
      disabled: false,
      tokenVersion: 0,
    })
    this.#byId.set(record.id, record)
    this.#idByName.set(key, record.id)
    return record
  }

  async findById(id: string): Promise<UserRecord | undefined> {
    return this.#byId.get(id)
  }

  async findByUsername(username: string): Promise<UserRecord | undefined> {
    const id = this.#idByName.get(normaliseUsername(username))
    return id === undefined ? undefined : this.#byId.get(id)
  }

  async update(id: string, patch: UserPatch): Promise<UserRecord | undefined> {
    const current = this.#byId.get(id)
    if (!current) return undefined
    const next: UserRecord = Object.freeze({
      ...current,
      passwordHash: patch.passwordHash ?? current.passwordHash,
      roles: patch.roles ? Object.freeze([...patch.roles]) : current.roles,
      disabled: patch.disabled ?? current.disabled,
      tokenVersion: current.tokenVersion + (patch.bumpTokenVersion ? 1 : 0),
    })
    this.#byId.set(id, next)
    return next
  }

  async delete(id: string): Promise<boolean> {
    const current = this.#byId.get(id)
    if (!current) return false
    this.#byId.delete(id)
    this.#idByName.delete(normaliseUsername(current.username))
    return true
  }

  async list(query: ListQuery): Promise<{ items: UserRecord[]; total: number }> {
    const prefix = query.usernamePrefix ? normaliseUsername(query.usernamePrefix) : ''
    const names = [...this.#idByName.keys()].filter((n) => n.startsWith(prefix)).sort()
    const items = names
      .slice(query.offset, query.offset + query.limit)
      .map((n) => this.#byId.get(this.#idByName.get(n) as string) as UserRecord)
    return { items, total: names.length }
  }

  async count(): Promise<number> {
    return this.#byId.size
  }

  async close(): Promise<void> {}
}
