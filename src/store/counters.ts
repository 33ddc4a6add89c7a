// Counters with expiry, for login throttling: the interface and the in-memory implementation.
// A later store (Redis) implements the same interface so that limits count across instances.

export interface CounterValue {
  value: number
  /** Milliseconds until the counter expires. */
  ttlMs: number
}

export interface CounterStore {
  /**
   * Atomically adds `delta` and returns the new value. A new (or expired) counter starts at 0 and
   * expires `ttlMs` from now; an existing one keeps its expiry (a fixed window).
   */
  incr(key: string, delta: number, ttlMs: number): Promise<CounterValue>
  get(key: string): Promise<CounterValue | undefined>
  /** Sets the key to 1 with the given expiry only if it is absent; true when this call set it. */
  setIfAbsent(key: string, ttlMs: number): Promise<boolean>
  delete(...keys: string[]): Promise<void>
  close(): Promise<void>
}

/**
 * In-memory counters. Expired entries are dropped lazily and by a periodic sweep; the number of
 * keys is capped so that a flood of made-up usernames cannot grow memory without bound (past the
 * cap, the oldest keys go first).
 */
export class MemoryCounterStore implements CounterStore {
  readonly #entries = new Map<string, { value: number; expiresAt: number }>()
  readonly #timer: NodeJS.Timeout

  constructor(private readonly maxKeys = 1_000_000) {
    this.#timer = setInterval(() => this.#sweep(), 60_000)
    this.#timer.unref()
  }

  async incr(key: string, delta: number, ttlMs: number): Promise<CounterValue> {
    const now = Date.now()
    let entry = this.#live(key, now)
    if (!entry) {
      entry = { value: 0, expiresAt: now + ttlMs }
      this.#set(key, entry)
    }
    entry.value += delta
    return { value: entry.value, ttlMs: entry.expiresAt - now }
  }

  async get(key: string): Promise<CounterValue | undefined> {
    const now = Date.now()
    const entry = this.#live(key, now)
    return entry && { value: entry.value, ttlMs: entry.expiresAt - now }
  }

  async setIfAbsent(key: string, ttlMs: number): Promise<boolean> {
    const now = Date.now()
    if (this.#live(key, now)) return false
    this.#set(key, { value: 1, expiresAt: now + ttlMs })
    return true
  }

  async delete(...keys: string[]): Promise<void> {
    for (const key of keys) this.#entries.delete(key)
  }

  async close(): Promise<void> {
    clearInterval(this.#timer)
  }

  #live(key: string, now: number) {
    const entry = this.#entries.get(key)
    if (entry && entry.expiresAt <= now) {
      this.#entries.delete(key)
      return undefined
    }
    return entry
  }

  #set(key: string, entry: { value: number; expiresAt: number }) {
    if (this.#entries.size >= this.maxKeys) {
      const oldest = this.#entries.keys().next().value
      if (oldest !== undefined) this.#entries.delete(oldest)
    }
    this.#entries.set(key, entry)
  }

  #sweep() {
    const now = Date.now()
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(key)
  }
}

/**
 * Shared counters (Redis) that fall back to this instance's own memory while the shared store is
 * unreachable: throttling keeps working, per instance, rather than failing every login. The choice
 * is deliberate (README, "Faults"): availability of login over exact cross-instance counts.
 */
export class FallbackCounterStore implements CounterStore {
  readonly #local = new MemoryCounterStore()

  constructor(
    private readonly shared: CounterStore,
    private readonly onFallback: (err: unknown) => void = () => {},
  ) {}

  incr(key: string, delta: number, ttlMs: number): Promise<CounterValue> {
    return this.#try((s) => s.incr(key, delta, ttlMs))
  }

  get(key: string): Promise<CounterValue | undefined> {
    return this.#try((s) => s.get(key))
  }

  setIfAbsent(key: string, ttlMs: number): Promise<boolean> {
    return this.#try((s) => s.setIfAbsent(key, ttlMs))
  }

  delete(...keys: string[]): Promise<void> {
    return this.#try((s) => s.delete(...keys))
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.shared.close(), this.#local.close()])
  }

  async #try<T>(op: (store: CounterStore) => Promise<T>): Promise<T> {
    try {
      return await op(this.shared)
    } catch (err) {
      this.onFallback(err)
      return op(this.#local)
    }
  }
}
