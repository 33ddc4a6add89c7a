// Refresh-token families and the access-token denylist: the interfaces and the in-memory
// implementations. Refresh tokens are stored only as SHA-256 hashes (they are 256-bit random
// values, so a fast hash is enough: there is nothing to brute-force).

export interface RefreshFamily {
  readonly id: string
  readonly userId: string
  /** The scope granted at login; refreshes never widen it. */
  readonly scope: string
  readonly createdAt: Date
  /** No refresh works past this instant, however often the family rotates. */
  readonly absoluteExpiresAt: Date
  readonly revoked: boolean
  /** When the session last got tokens: its creation, then each refresh (rotation or grace re-issue). */
  readonly lastUsedAt: Date
  /**
   * The User-Agent header of the request that last got tokens (at most 256 characters: the service
   * truncates it), or null when it sent none. Shown to the user to tell sessions apart; never trusted.
   */
  readonly userAgent: string | null
  /** The client address of that request (request.ip, so TRUST_PROXY applies), or null when unknown. */
  readonly ip: string | null
}

/**
 * Who made the request that got tokens, and when: recorded on the family by createFamily (in the
 * family itself), rotate and reissueWithinGrace.
 */
export interface ClientInfo {
  readonly userAgent: string | null
  readonly ip: string | null
  /** The instant of the request, on the application's clock: becomes the family's lastUsedAt. */
  readonly at: Date
}

/**
 * A session as its user sees it: a family that is not revoked, within its absolute lifetime, and
 * with a token that may still be exchanged. Holds no token, not even a hash.
 */
export interface ActiveSession extends Omit<RefreshFamily, 'revoked'> {
  /**
   * When it ends unless refreshed: the earlier of absoluteExpiresAt and the latest expiry among its
   * tokens not yet rotated.
   */
  readonly expiresAt: Date
}

export interface RefreshTokenRecord {
  readonly hash: string
  readonly familyId: string
  readonly expiresAt: Date
  /** True once exchanged for a new token; presenting it again is reuse (theft), unless within the grace. */
  readonly rotated: boolean
  /** When it was rotated (null until then, and for tokens rotated before migration 002). */
  readonly rotatedAt: Date | null
  /** True once its one grace re-issue (reissueWithinGrace) has been given. */
  readonly graceUsed: boolean
}

export interface NewRefreshToken {
  hash: string
  expiresAt: Date
}

export interface SessionStore {
  createFamily(family: Omit<RefreshFamily, 'revoked'>, token: NewRefreshToken): Promise<void>
  findToken(hash: string): Promise<{ token: RefreshTokenRecord; family: RefreshFamily } | undefined>
  /**
   * Atomically: when `oldHash` is a token of the family not yet rotated and the family is not
   * revoked, marks it rotated (now: rotatedAt), adds `next` as a token of the family and records
   * `client` on the family (lastUsedAt, userAgent, ip). False otherwise (a concurrent refresh won, or
   * the family was revoked), and then nothing is recorded.
   *
   * A family normally has one token not yet rotated, its current one. After a grace re-issue it
   * has two: the one the winning refresh issued and the one the grace refresh issued. Either client
   * (tab) may hold either, so both stay usable, and each rotates normally, once.
   */
  rotate(familyId: string, oldHash: string, next: NewRefreshToken, client: ClientInfo): Promise<boolean>
  /**
   * The reuse grace, atomically: when `oldHash` is a token of the family that was rotated at or
   * after `rotatedAfter`, its grace is unused and the family is not revoked, marks its grace used,
   * adds `next` as a token of the family (not rotated: it rotates like any other) and records
   * `client` on the family as rotate() does. False otherwise, so that of several concurrent reuses
   * of one token at most one succeeds.
   */
  reissueWithinGrace(
    familyId: string,
    oldHash: string,
    next: NewRefreshToken,
    rotatedAfter: Date,
    client: ClientInfo,
  ): Promise<boolean>
  revokeFamily(familyId: string): Promise<void>
  /** The family with this id, revoked or not; undefined when there is none (or it was swept). */
  findFamily(id: string): Promise<RefreshFamily | undefined>
  /**
   * The user's sessions that are live at `now`: not revoked, absoluteExpiresAt after `now`, and at
   * least one token not rotated whose expiresAt is after `now`. Newest first (createdAt descending,
   * then id descending, so that the order is the same in every store). Empty for an unknown user.
   */
  listActive(userId: string, now: Date): Promise<ActiveSession[]>
  /** Revokes every family of the user; returns their ids. */
  revokeAllForUser(userId: string): Promise<string[]>
  /** Forgets families whose absolute lifetime is over (their tokens can never work again). */
  sweep(now: Date): Promise<void>
  close(): Promise<void>
}

/**
 * Revoked access tokens (by `jti`) and revoked sessions (by family id, `sid`), each kept until the
 * last token it could match has expired anyway. `has` is synchronous: the check on every
 * authenticated request is one Map lookup.
 */
export interface DenyList {
  add(id: string, expiresAtSeconds: number): Promise<void>
  has(id: string): boolean
  /** False when the list may be stale (its backing service is unreachable): callers fail closed. */
  healthy(): boolean
  /**
   * What callers throw while healthy() is false, when that outage deserves another answer than
   * their 401: a list kept in PostgreSQL is down with the database, so 503, as every other request
   * that needs the database answers then (README, "Faults").
   */
  unavailableError?(): Error
  close(): Promise<void>
}

export class MemorySessionStore implements SessionStore {
  readonly #families = new Map<string, RefreshFamily & { tokenHashes: string[] }>()
  readonly #tokens = new Map<string, RefreshTokenRecord>()

  async createFamily(family: Omit<RefreshFamily, 'revoked'>, token: NewRefreshToken): Promise<void> {
    this.#families.set(family.id, { ...family, revoked: false, tokenHashes: [] })
    this.#addToken(family.id, token)
  }

  async findToken(hash: string) {
    const token = this.#tokens.get(hash)
    const family = token && this.#families.get(token.familyId)
    if (!token || !family) return undefined
    const { tokenHashes: _t, ...publicFamily } = family
    return { token, family: publicFamily }
  }

  // Each method checks and changes in one synchronous run (no await in between): that is what
  // makes it atomic here.
  async rotate(familyId: string, oldHash: string, next: NewRefreshToken, client: ClientInfo): Promise<boolean> {
    const family = this.#families.get(familyId)
    const old = this.#tokens.get(oldHash)
    if (!family || family.revoked || !old || old.familyId !== familyId || old.rotated) return false
    this.#tokens.set(oldHash, { ...old, rotated: true, rotatedAt: new Date() })
    this.#addToken(familyId, next)
    this.#recordClient(familyId, client)
    return true
  }

  async reissueWithinGrace(
    familyId: string,
    oldHash: string,
    next: NewRefreshToken,
    rotatedAfter: Date,
    client: ClientInfo,
  ): Promise<boolean> {
    const family = this.#families.get(familyId)
    const old = this.#tokens.get(oldHash)
    if (!family || family.revoked || !old || old.familyId !== familyId || !old.rotated || old.graceUsed) return false
    if (old.rotatedAt === null || old.rotatedAt.getTime() < rotatedAfter.getTime()) return false
    this.#tokens.set(oldHash, { ...old, graceUsed: true })
    this.#addToken(familyId, next)
    this.#recordClient(familyId, client)
    return true
  }

  #recordClient(familyId: string, { userAgent, ip, at }: ClientInfo): void {
    const family = this.#families.get(familyId)
    if (family) this.#families.set(familyId, { ...family, lastUsedAt: at, userAgent, ip })
  }

  #addToken(familyId: string, token: NewRefreshToken): void {
    this.#tokens.set(token.hash, {
      hash: token.hash,
      familyId,
      expiresAt: token.expiresAt,
      rotated: false,
      rotatedAt: null,
      graceUsed: false,
    })
    this.#families.get(familyId)?.tokenHashes.push(token.hash)
  }

  async revokeFamily(familyId: string): Promise<void> {
    const family = this.#families.get(familyId)
    if (family) this.#families.set(familyId, { ...family, revoked: true })
  }

  async findFamily(id: string): Promise<RefreshFamily | undefined> {
    const family = this.#families.get(id)
    if (!family) return undefined
    const { tokenHashes: _t, ...publicFamily } = family
    return publicFamily
  }

  async listActive(userId: string, now: Date): Promise<ActiveSession[]> {
    const sessions: ActiveSession[] = []
    for (const family of this.#families.values()) {
      if (family.userId !== userId || family.revoked || family.absoluteExpiresAt <= now) continue
      let latest: Date | undefined
      for (const hash of family.tokenHashes) {
        const token = this.#tokens.get(hash)
        if (!token || token.rotated || token.expiresAt <= now) continue
        if (latest === undefined || token.expiresAt > latest) latest = token.expiresAt
      }
      if (latest === undefined) continue
      const { tokenHashes: _t, revoked: _r, ...session } = family
      const expiresAt = latest < family.absoluteExpiresAt ? latest : family.absoluteExpiresAt
      sessions.push({ ...session, expiresAt })
    }
    return sessions.sort(
      (a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0),
    )
  }

  async revokeAllForUser(userId: string): Promise<string[]> {
    const ids: string[] = []
    for (const [id, family] of this.#families) {
      if (family.userId === userId && !family.revoked) {
        this.#families.set(id, { ...family, revoked: true })
        ids.push(id)
      }
    }
    return ids
  }

  async sweep(now: Date): Promise<void> {
    for (const [id, family] of this.#families) {
      if (family.absoluteExpiresAt <= now) {
        for (const hash of family.tokenHashes) this.#tokens.delete(hash)
        this.#families.delete(id)
      }
    }
  }

  async close(): Promise<void> {}
}

export class MemoryDenyList implements DenyList {
  readonly #entries = new Map<string, number>()
  #timer: NodeJS.Timeout | undefined

  constructor(sweepIntervalMs = 60_000) {
    this.#timer = setInterval(() => this.sweep(Date.now() / 1000), sweepIntervalMs)
    this.#timer.unref()
  }

  async add(id: string, expiresAtSeconds: number): Promise<void> {
    this.remember(id, expiresAtSeconds)
  }

  /** Records an entry locally (also used by shared lists to mirror entries from other instances). */
  remember(id: string, expiresAtSeconds: number): void {
    const current = this.#entries.get(id) ?? 0
    if (expiresAtSeconds > current) this.#entries.set(id, expiresAtSeconds)
  }

  has(id: string): boolean {
    const exp = this.#entries.get(id)
    return exp !== undefined && exp > Date.now() / 1000
  }

  healthy(): boolean {
    return true
  }

  get size(): number {
    return this.#entries.size
  }

  /** Drops entries whose tokens have expired anyway. */
  sweep(nowSeconds: number): void {
    for (const [id, exp] of this.#entries) if (exp <= nowSeconds) this.#entries.delete(id)
  }

  async close(): Promise<void> {
    clearInterval(this.#timer)
    this.#timer = undefined
  }
}
