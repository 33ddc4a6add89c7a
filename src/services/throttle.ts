// Login throttling by consecutive failures: per account (soft lockout with growing delays) and per
// client address. Written by hand on a CounterStore rather than with @fastify/rate-limit, which
// counts requests: a lockout must count failures only, reset on success, and reserve its slot
// before the password is checked so that concurrent attempts cannot slip past the limit.
// (@fastify/rate-limit still caps raw request rates on /token and /register; see routes/auth.ts.)
import type { Config } from '../config.js'
import { TooManyAttemptsError } from '../errors.js'
import type { CounterStore } from '../store/counters.js'
import { normaliseUsername } from '../store/users.js'

export interface Attempt {
  readonly accountKey: string
  readonly lockKey: string
  readonly ipKey: string
  /** This attempt's position in the run of consecutive failures (1 = first). */
  readonly failureNumber: number
  /** This attempt set the account's lock (it reached the limit first): only then may cancelling lift it. */
  readonly setLock: boolean
}

// How long a run of failures is remembered without a success; longer than any lock.
const FAILURE_MEMORY_MS = 24 * 3600 * 1000

export class LoginThrottle {
  constructor(
    private readonly counters: CounterStore,
    private readonly limits: Config['throttle'],
  ) {}

  /**
   * Call before checking a password. Throws TooManyAttemptsError (429) when the account is locked
   * or the address is over its limit; otherwise reserves the attempt as a failure until `succeeded`.
   * Keyed on the normalised username whether or not the account exists, so that 429-versus-400
   * tells nothing about which accounts exist.
   */
  async begin(username: string, ip: string): Promise<Attempt> {
    const name = normaliseUsername(username).slice(0, 64)
    const accountKey = `login:fail:${name}`
    const lockKey = `login:lock:${name}`
    const ipKey = `login:ip:${ip}`
    const { ipMaxFailures, ipWindowSeconds, accountMaxFailures } = this.limits

    const [ipCount, lock] = await Promise.all([this.counters.get(ipKey), this.counters.get(lockKey)])
    if (ipCount && ipCount.value >= ipMaxFailures) throw new TooManyAttemptsError(seconds(ipCount.ttlMs), 'address')
    if (lock) throw new TooManyAttemptsError(seconds(lock.ttlMs), 'account')

    const ipNow = await this.counters.incr(ipKey, 1, ipWindowSeconds * 1000)
    if (ipNow.value > ipMaxFailures) {
      await this.counters.incr(ipKey, -1, ipWindowSeconds * 1000)
      throw new TooManyAttemptsError(seconds(ipNow.ttlMs), 'address')
    }
    const { value: failureNumber } = await this.counters.incr(accountKey, 1, FAILURE_MEMORY_MS)
    let setLock = false
    if (failureNumber >= accountMaxFailures) {
      // The attempt that reaches the limit sets the lock before its password is checked (a success
      // lifts it), so that concurrent attempts cannot get past the limit while it runs. Past the
      // limit, one attempt per lock period: whoever sets the lock gets to try; the lock it sets
      // (for the next, longer period) stays if this attempt fails too.
      const lockMs = this.lockSeconds(failureNumber) * 1000
      const locked = await this.counters.setIfAbsent(lockKey, lockMs)
      setLock = locked
      if (!locked && failureNumber > accountMaxFailures) {
        await this.counters.incr(accountKey, -1, FAILURE_MEMORY_MS)
        await this.counters.incr(ipKey, -1, ipWindowSeconds * 1000)
        const current = await this.counters.get(lockKey)
        throw new TooManyAttemptsError(seconds(current?.ttlMs ?? lockMs), 'account')
      }
    }
    return { accountKey, lockKey, ipKey, failureNumber, setLock }
  }

  /** The password was right: the account's run of failures ends and the address gets its slot back. */
  async succeeded(attempt: Attempt): Promise<void> {
    await this.counters.delete(attempt.accountKey, attempt.lockKey)
    await this.counters.incr(attempt.ipKey, -1, this.limits.ipWindowSeconds * 1000)
  }

  /**
   * The password could not be checked (the server shed the request, or a store failed): the
   * attempt counts for nothing, so that overload can never lock anyone out.
   */
  async cancelled(attempt: Attempt): Promise<void> {
    await this.counters.incr(attempt.accountKey, -1, FAILURE_MEMORY_MS)
    await this.counters.incr(attempt.ipKey, -1, this.limits.ipWindowSeconds * 1000)
    // Only a lock this attempt set: one set by a concurrent failure (a wrong code racing a right
    // password of an account with MFA) must stay.
    if (attempt.setLock) await this.counters.delete(attempt.lockKey)
  }

  /** The password was wrong. Returns true when this failure locked the account. */
  async failed(attempt: Attempt): Promise<boolean> {
    // The lock itself was set in begin(); it stays.
    return attempt.failureNumber >= this.limits.accountMaxFailures
  }

  /**
   * The account's run of failed logins and its lock end (after a password reset: whoever reset it
   * proved the address, and the new password deserves its full set of attempts). Keyed like
   * begin(), on the normalised username.
   */
  async clearAccount(username: string): Promise<void> {
    const name = normaliseUsername(username).slice(0, 64)
    await this.counters.delete(`login:fail:${name}`, `login:lock:${name}`)
  }

  /**
   * Before a one-time token (password reset, e-mail verification) is looked up: 429 when the
   * address is over its failure limit. Bad tokens count in the same per-address counter as failed
   * logins (tokenFailed), so that an address has one budget of guesses at credentials of any kind.
   * Check-then-count, not reserved as begin() does: the tokens carry 256 random bits, so the limit
   * is a brake on noise, not what keeps them from being guessed, and a few concurrent requests past
   * it change nothing.
   */
  async beginTokenCheck(ip: string): Promise<void> {
    const ipCount = await this.counters.get(`login:ip:${ip}`)
    if (ipCount && ipCount.value >= this.limits.ipMaxFailures)
      throw new TooManyAttemptsError(seconds(ipCount.ttlMs), 'address', 'Too many failed attempts; try again later')
  }

  /** A one-time token was refused: one more failure for the address (see beginTokenCheck). */
  async tokenFailed(ip: string): Promise<void> {
    await this.counters.incr(`login:ip:${ip}`, 1, this.limits.ipWindowSeconds * 1000)
  }

  /** The lock after the n-th consecutive failure: doubling from LOGIN_LOCKOUT_SECONDS, capped. */
  lockSeconds(failureNumber: number): number {
    const { lockoutSeconds, lockoutMaxSeconds, accountMaxFailures } = this.limits
    const doublings = Math.min(Math.max(0, failureNumber - accountMaxFailures), 30)
    return Math.min(lockoutSeconds * 2 ** doublings, lockoutMaxSeconds)
  }
}

function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}
