// One-time tokens: the links of password reset and e-mail verification. The interface and the
// in-memory implementation (PostgreSQL's is in postgres.ts). Stored only as SHA-256 hashes: the
// tokens are 256-bit random values, so a fast hash is enough (there is nothing to brute-force),
// and whoever reads the store cannot use what they read.

/** What a token is for. A token of one purpose is never accepted for the other. */
export type OneTimeTokenPurpose = 'password_reset' | 'email_verify'

export interface OneTimeTokenRecord {
  /** SHA-256 of the token (base64url); the token itself is never stored. */
  readonly hash: string
  readonly purpose: OneTimeTokenPurpose
  readonly userId: string
  /**
   * The address the link was sent to. For a verification, the address that becomes the account's
   * verified address (a new one, for a change); for a reset, what proves that address when used.
   */
  readonly email: string
  /** The account's tokenVersion when the token was issued: a later password change voids it. */
  readonly userVersion: number
  readonly createdAt: Date
  readonly expiresAt: Date
}

export interface OneTimeTokenStore {
  /**
   * Stores the token as the account's one live token of its purpose: any earlier one of the same
   * account and purpose is gone, atomically (of two concurrent issues, one token survives). False
   * when the store can tell that the account no longer exists (PostgreSQL: its foreign key), and
   * then nothing is stored; the memory store cannot tell, and a token of a deleted account simply
   * finds no account when it is used.
   */
  issue(token: OneTimeTokenRecord): Promise<boolean>
  /** The token with this hash and purpose if it is unexpired at `now`; it stays usable. */
  find(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined>
  /**
   * Uses the token up: deletes it and returns it if it has this purpose and is unexpired at `now`,
   * else undefined and nothing changes. Atomic: of concurrent calls with one token, one gets it.
   */
  consume(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined>
  /** Deletes the tokens expired at `now`; returns how many. */
  sweep(now: Date): Promise<number>
  close(): Promise<void>
}

/**
 * In-memory one-time tokens. At most one per account and purpose, so they number at most twice
 * the accounts; expired ones go at the sweep. Check and write run with no await in between.
 */
export class MemoryOneTimeTokenStore implements OneTimeTokenStore {
  readonly #byHash = new Map<string, OneTimeTokenRecord>()
  /** `userId purpose` → the hash of that account's live token of that purpose. */
  readonly #byAccount = new Map<string, string>()

  async issue(token: OneTimeTokenRecord): Promise<boolean> {
    const account = accountKey(token.userId, token.purpose)
    const previous = this.#byAccount.get(account)
    if (previous !== undefined) this.#byHash.delete(previous)
    this.#byHash.set(token.hash, Object.freeze({ ...token }))
    this.#byAccount.set(account, token.hash)
    return true
  }

  async find(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined> {
    const token = this.#byHash.get(hash)
    return token && token.purpose === purpose && token.expiresAt > now ? token : undefined
  }

  async consume(hash: string, purpose: OneTimeTokenPurpose, now: Date): Promise<OneTimeTokenRecord | undefined> {
    const token = this.#byHash.get(hash)
    if (!token || token.purpose !== purpose || token.expiresAt <= now) return undefined
    this.#forget(token)
    return token
  }

  async sweep(now: Date): Promise<number> {
    let swept = 0
    for (const token of this.#byHash.values())
      if (token.expiresAt <= now) {
        this.#forget(token)
        swept++
      }
    return swept
  }

  async close(): Promise<void> {}

  #forget(token: OneTimeTokenRecord): void {
    this.#byHash.delete(token.hash)
    const account = accountKey(token.userId, token.purpose)
    if (this.#byAccount.get(account) === token.hash) this.#byAccount.delete(account)
  }
}

const accountKey = (userId: string, purpose: OneTimeTokenPurpose) => `${userId} ${purpose}`
