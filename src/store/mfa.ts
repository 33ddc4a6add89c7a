// Second-factor storage: each account's TOTP secret (sealed: encrypted by the service before it
// gets here, see security/mfa.ts), whether it is confirmed, the last time step accepted, and the
// recovery codes (only their keyed hashes). The interface and the in-memory implementation;
// PostgreSQL's is in postgres.ts. Kept apart from UserRecord on purpose: the user record is read on
// every authenticated request, and none of this is needed there.

/** A TOTP secret encrypted with AES-256-GCM, and the id of the key that sealed it. */
export interface SealedSecret {
  /** Which encryption key sealed it (security/mfa.ts, MfaCipher): lets the key be rotated. */
  readonly keyId: string
  /** base64url of IV (12 bytes) ‖ ciphertext ‖ GCM tag (16 bytes). */
  readonly ciphertext: string
}

export interface MfaRecord {
  readonly userId: string
  readonly secret: SealedSecret
  /** False while the enrolment waits for its first code; true once confirmed (logins need a code). */
  readonly active: boolean
  /**
   * The highest RFC 6238 time step (T = floor(unix seconds / 30)) whose code was accepted; a code
   * of this step or an older one is refused, so that a code works once. -1 before any.
   */
  readonly lastStep: number
  /** How many unused recovery codes are left. */
  readonly recoveryCodesLeft: number
  readonly createdAt: Date
}

export interface MfaStore {
  /** The account's second factor, pending or active; undefined when it has none. */
  get(userId: string): Promise<MfaRecord | undefined>
  /**
   * Stores `secret` as the account's pending (unconfirmed) secret, replacing a pending one. False,
   * changing nothing, when the account's MFA is already active or (PostgreSQL: its foreign key)
   * the account no longer exists. Atomic: of an enrolment and a confirmation racing, one wins.
   */
  setPending(userId: string, secret: SealedSecret, now: Date): Promise<boolean>
  /**
   * Confirms the pending secret, only if it is still the one whose ciphertext is `ciphertext` (an
   * enrolment started meanwhile replaced it): it becomes active, with `step` as its lastStep and
   * `codeHashes` as its recovery codes. False, changing nothing, otherwise.
   */
  activate(userId: string, ciphertext: string, step: number, codeHashes: readonly string[]): Promise<boolean>
  /**
   * Records that the code of time step `step` was used: only if MFA is active and `step` is newer
   * than lastStep. True when recorded; false (nothing changes) for a replay or an older code.
   * Atomic: of two requests with the same code, at once, on any instance, one gets true.
   */
  useStep(userId: string, step: number): Promise<boolean>
  /**
   * Spends the recovery code with this hash: true when an active record had it (it is gone now),
   * false otherwise. Atomic like useStep.
   */
  useRecoveryCode(userId: string, codeHash: string): Promise<boolean>
  /** Replaces every recovery code of an active record; false (nothing changes) when not active. */
  replaceRecoveryCodes(userId: string, codeHashes: readonly string[]): Promise<boolean>
  /** Removes the account's second factor, pending or active, and its codes; true when there was one. */
  delete(userId: string): Promise<boolean>
  /** Of these accounts, the ids of those whose MFA is active (for the admin list of users). */
  activeAmong(userIds: readonly string[]): Promise<Set<string>>
  close(): Promise<void>
}

interface MemoryEntry {
  secret: SealedSecret
  active: boolean
  lastStep: number
  codes: Set<string>
  createdAt: Date
}

/** In-memory second factors. Every check and write runs with no await in between (atomic). */
export class MemoryMfaStore implements MfaStore {
  readonly #entries = new Map<string, MemoryEntry>()

  async get(userId: string): Promise<MfaRecord | undefined> {
    const entry = this.#entries.get(userId)
    return entry && toRecord(userId, entry)
  }

  async setPending(userId: string, secret: SealedSecret, now: Date): Promise<boolean> {
    if (this.#entries.get(userId)?.active) return false
    this.#entries.set(userId, { secret: { ...secret }, active: false, lastStep: -1, codes: new Set(), createdAt: now })
    return true
  }

  async activate(userId: string, ciphertext: string, step: number, codeHashes: readonly string[]): Promise<boolean> {
    const entry = this.#entries.get(userId)
    if (!entry || entry.active || entry.secret.ciphertext !== ciphertext) return false
    entry.active = true
    entry.lastStep = step
    entry.codes = new Set(codeHashes)
    return true
  }

  async useStep(userId: string, step: number): Promise<boolean> {
    const entry = this.#entries.get(userId)
    if (!entry?.active || step <= entry.lastStep) return false
    entry.lastStep = step
    return true
  }

  async useRecoveryCode(userId: string, codeHash: string): Promise<boolean> {
    const entry = this.#entries.get(userId)
    return entry?.active === true && entry.codes.delete(codeHash)
  }

  async replaceRecoveryCodes(userId: string, codeHashes: readonly string[]): Promise<boolean> {
    const entry = this.#entries.get(userId)
    if (!entry?.active) return false
    entry.codes = new Set(codeHashes)
    return true
  }

  async delete(userId: string): Promise<boolean> {
    return this.#entries.delete(userId)
  }

  async activeAmong(userIds: readonly string[]): Promise<Set<string>> {
    return new Set(userIds.filter((id) => this.#entries.get(id)?.active))
  }

  async close(): Promise<void> {}
}

function toRecord(userId: string, entry: MemoryEntry): MfaRecord {
  return Object.freeze({
    userId,
    secret: Object.freeze({ ...entry.secret }),
    active: entry.active,
    lastStep: entry.lastStep,
    recoveryCodesLeft: entry.codes.size,
    createdAt: entry.createdAt,
  })
}
