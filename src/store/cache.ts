// A short-lived cache of user records by id in front of a slower store (PostgreSQL), for the
// lookup every authenticated request makes. Changes made through this instance invalidate at once;
// changes made by another instance are seen after at most `ttlMs`, and what must take effect
// sooner (a password change, a disable, a deletion) also goes through the shared denylist.
import type { ListQuery, NewUser, ReadOptions, UserPatch, UserRecord, UserStore, WriteOptions } from './users.js'

export class CachedUserStore implements UserStore {
  readonly #entries = new Map<string, { record: UserRecord | undefined; expiresAt: number }>()

  constructor(
    private readonly inner: UserStore,
    private readonly ttlMs: number,
    private readonly maxEntries = 10_000,
  ) {}

  async findById(id: string, options: ReadOptions = {}): Promise<UserRecord | undefined> {
    const now = Date.now()
    const hit = this.#entries.get(id)
    if (hit && hit.expiresAt > now && !options.fresh) return hit.record
    const record = await this.inner.findById(id)
    if (this.#entries.size >= this.maxEntries) this.#entries.delete(this.#entries.keys().next().value as string)
    this.#entries.set(id, { record, expiresAt: now + this.ttlMs })
    return record
  }

  findByUsername(username: string): Promise<UserRecord | undefined> {
    return this.inner.findByUsername(username)
  }

  findByEmail(email: string): Promise<UserRecord | undefined> {
    return this.inner.findByEmail(email)
  }

  async create(user: NewUser): Promise<UserRecord | null> {
    this.#entries.delete(user.id)
    return this.inner.create(user)
  }

  async update(id: string, patch: UserPatch, options?: WriteOptions): Promise<UserRecord | undefined> {
    this.#entries.delete(id)
    try {
      return await this.inner.update(id, patch, options)
    } finally {
      this.#entries.delete(id)
    }
  }

  async replacePasswordHash(id: string, expected: string, next: string): Promise<boolean> {
    this.#entries.delete(id)
    try {
      return await this.inner.replacePasswordHash(id, expected, next)
    } finally {
      this.#entries.delete(id)
    }
  }

  async delete(id: string, options?: WriteOptions): Promise<boolean> {
    this.#entries.delete(id)
    try {
      return await this.inner.delete(id, options)
    } finally {
      this.#entries.delete(id)
    }
  }

  list(query: ListQuery) {
    return this.inner.list(query)
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}
