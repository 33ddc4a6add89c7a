// Password hashing and checking: bcrypt's async API only (it runs on libuv's thread pool, never on
// the event loop), behind a small gate that bounds how many hashes run and how many may wait.
import { randomBytes } from 'node:crypto'
import bcrypt from 'bcrypt'
import { ServerBusyError } from '../errors.js'
import type { Metrics } from '../metrics.js'

/** bcrypt uses only the first 72 bytes of its input; longer passwords are refused, never truncated. */
export const BCRYPT_MAX_BYTES = 72

export interface HasherOptions {
  rounds: number
  concurrency: number
  /** Jobs allowed to wait for a slot; beyond that a job is shed at once with 503. */
  queueMax: number
  /** A job whose expected wait for a slot is longer than this is shed at once with 503. */
  maxWaitMs: number
  /** Where each job's wait for a slot and each shed job are counted (no-ops when omitted). */
  metrics?: Pick<Metrics, 'hashWaitSeconds' | 'hashShed'>
}

const NO_METRICS: NonNullable<HasherOptions['metrics']> = { hashWaitSeconds: { observe() {} }, hashShed: { inc() {} } }

/**
 * A counting semaphore whose caller decides, when no slot is free, whether to wait. Written by
 * hand: the usual libraries (p-limit, p-queue) queue without bound, and what we need is to refuse
 * at once (503 + Retry-After) when the wait would be long, so that a login storm is shed early
 * instead of making every request wait seconds.
 */
class Gate {
  #running = 0
  readonly #waiting: (() => void)[] = []

  constructor(private readonly limit: number) {}

  get queued(): number {
    return this.#waiting.length
  }

  /** Jobs ahead of a new one, divided among the slots: how many job-times it would wait. */
  get waitInJobs(): number {
    return this.#running < this.limit ? 0 : Math.floor(this.#waiting.length / this.limit) + 1
  }

  /** Runs `job` in a free slot; with none free, asks `shed` whether to refuse (an error) or wait. */
  async run<T>(job: () => Promise<T>, shed: () => Error | undefined): Promise<T> {
    if (this.#running >= this.limit) {
      const refusal = shed()
      if (refusal) throw refusal
      await new Promise<void>((resolve) => this.#waiting.push(resolve))
    } else {
      this.#running++
    }
    try {
      return await job()
    } finally {
      const next = this.#waiting.shift()
      if (next) next()
      else this.#running--
    }
  }
}

export class PasswordHasher {
  readonly #gate: Gate
  readonly #rounds: number
  readonly #maxWaitMs: number
  readonly #queueMax: number
  readonly #metrics: NonNullable<HasherOptions['metrics']>
  #dummyHash: Promise<string> | undefined
  #avgHashMs: number

  constructor(options: HasherOptions) {
    this.#rounds = options.rounds
    this.#maxWaitMs = options.maxWaitMs
    this.#queueMax = options.queueMax
    this.#metrics = options.metrics ?? NO_METRICS
    this.#gate = new Gate(options.concurrency)
    // A first guess at one hash's time (cost 12 ≈ 220 ms on this kind of machine); refined as we go.
    this.#avgHashMs = 2 ** (options.rounds - 12) * 220
  }

  get rounds(): number {
    return this.#rounds
  }

  /** Hash jobs waiting for a free slot now (the metrics' queue-length gauge). */
  get queued(): number {
    return this.#gate.queued
  }

  hash(password: string): Promise<string> {
    return this.#gated(() => bcrypt.hash(password, this.#rounds))
  }

  /** True when the password matches. A missing hash (unknown user) compares against a dummy hash of
   * the same cost, so that "no such user" and "wrong password" take the same time. */
  async verify(password: string, hash: string | undefined): Promise<boolean> {
    return (await this.check(password, hash)).ok
  }

  /**
   * Compares `password` with `hash` (a missing hash: the dummy hash). `needsRehash` is true when it
   * matched but the hash was made with another cost or bcrypt version than configured: the caller
   * re-hashes it. A failed compare against a hash cheaper than the configured cost is followed by a
   * compare against the dummy hash, so that a wrong password never answers faster than an unknown
   * user would (otherwise old accounts could be told apart by timing until their next login).
   */
  async check(password: string, hash: string | undefined): Promise<{ ok: boolean; needsRehash: boolean }> {
    const target = hash ?? (await this.dummyHash())
    const ok = await this.#gated(() => bcrypt.compare(password, target))
    if (hash === undefined) return { ok: false, needsRehash: false }
    const current = isCurrent(hash, this.#rounds)
    if (!ok) {
      if (costOf(hash) < this.#rounds) {
        const dummy = await this.dummyHash()
        await this.#gated(() => bcrypt.compare(password, dummy))
      }
      return { ok: false, needsRehash: false }
    }
    return { ok: true, needsRehash: !current }
  }

  /** Starts computing the dummy hash (call at boot, off the path to the first request). */
  dummyHash(): Promise<string> {
    this.#dummyHash ??= bcrypt.hash(randomBytes(18).toString('base64'), this.#rounds)
    return this.#dummyHash
  }

  async #gated<T>(job: () => Promise<T>): Promise<T> {
    const entered = performance.now()
    return this.#gate.run(
      async () => {
        const started = performance.now()
        this.#metrics.hashWaitSeconds.observe((started - entered) / 1000)
        try {
          return await job()
        } finally {
          this.#avgHashMs = this.#avgHashMs * 0.9 + (performance.now() - started) * 0.1
        }
      },
      () => this.#shed(),
    )
  }

  /** Called when no slot is free: a 503 if the job may not wait, undefined if it may. */
  #shed(): Error | undefined {
    const expectedWaitMs = this.#gate.waitInJobs * this.#avgHashMs
    if (this.#gate.queued < this.#queueMax && expectedWaitMs <= this.#maxWaitMs) return undefined
    this.#metrics.hashShed.inc()
    return new ServerBusyError(this.#retryAfterSeconds())
  }

  #retryAfterSeconds(): number {
    return Math.max(1, Math.ceil(((this.#gate.queued + 1) * this.#avgHashMs) / 1000))
  }
}

/**
 * RFC 8265 §4.2 (the OpaqueString profile of the PRECIS FreeformClass, RFC 8264 §4.3): the one
 * preparation every password goes through, before it is hashed and before it is compared, so that
 * the same password typed on two platforms is the same bytes for bcrypt.
 * - Additional mapping: every non-ASCII space (Unicode Zs) becomes U+0020.
 * - Normalisation: NFC (a keyboard that sends `u` + U+0308 and one that sends `ü` agree).
 * - No width or case mapping (the profile has none: case stays significant).
 * - Refused (the FreeformClass disallows them): control characters (Cc, NUL included), lone
 *   surrogates (Cs), unassigned code points (Cn), default-ignorable code points and non-characters,
 *   and conjoining Old Hangul Jamo; and an empty result.
 * Written by hand: no maintained npm package implements PRECIS (saslprep implements RFC 4013,
 * the stringprep profile PRECIS replaced, with NFKC and other mappings).
 * Returns the prepared password, or the reason it cannot be one.
 */
export function preparePassword(raw: string): { password: string } | { problem: string } {
  const password = raw.replace(NON_ASCII_SPACE, ' ').normalize('NFC')
  if (password.length === 0) return { problem: 'must not be empty' }
  if (CONTROL.test(password)) return { problem: 'must not contain control characters' }
  if (DISALLOWED.test(password))
    return { problem: 'must not contain unassigned, invisible or non-character code points' }
  return { password }
}

const NON_ASCII_SPACE = /(?!\x20)\p{Zs}/gu
const CONTROL = /\p{Cc}/u
// Cs only matches lone surrogates in a /u regex (a valid pair is one code point).
const DISALLOWED =
  /[\p{Cs}\p{Cn}\p{Default_Ignorable_Code_Point}\p{Noncharacter_Code_Point}\u1100-\u11FF\uA960-\uA97F\uD7B0-\uD7FF]/u

/** The hash's cost factor (log2 rounds), or 0 when it is not a bcrypt hash we can read. */
function costOf(hash: string): number {
  try {
    return bcrypt.getRounds(hash)
  } catch {
    return 0
  }
}

/** The variant this library writes today ($2b$) at the configured cost. */
function isCurrent(hash: string, rounds: number): boolean {
  return hash.startsWith('$2b$') && costOf(hash) === rounds
}

/** The byte length bcrypt sees. */
export function utf8Length(password: string): number {
  return Buffer.byteLength(password, 'utf8')
}
