// The Redis stores: login-throttling counters and the access-token denylist, shared by every
// instance. Redis that cannot be reached fails fast: counters throw StoreUnavailableError('redis')
// (the caller falls back to local counters), the denylist reports healthy() === false (callers
// fail closed). Nothing waits in an offline queue.
import { Redis } from 'ioredis'
import { StoreUnavailableError } from '../errors.js'
import type { CounterStore, CounterValue } from './counters.js'
import { type DenyList, MemoryDenyList } from './sessions.js'

export const DEFAULT_REDIS_PREFIX = 'auth:'

export interface RedisClientOptions {
  /** Shown by CLIENT LIST (default 'fastify-auth-server'). */
  connectionName?: string
  /** Connection errors (refused, reset...), emitted on every failed reconnect; ignored when omitted. */
  onError?: (err: Error) => void
  /** How long a connection attempt or one command may take (default 2000 ms). */
  timeoutMs?: number
  /** Called each time a store over this client raises StoreUnavailableError (the metrics count them). */
  onUnavailable?: () => void
}

/**
 * Each client's onUnavailable, by client: the command helpers below are handed the client and
 * nothing else. Per client, so two apps in one process (tests) count apart.
 */
const unavailableListeners = new WeakMap<Redis, () => void>()

/**
 * A client that fails commands at once while disconnected (no offline queue, one retry), gives up
 * on a connection attempt or a command after `timeoutMs` (2 s) and reconnects in the background every 2 s at most. The
 * 'error' listener matters: without one, a refused connection would end the process.
 */
export function createRedis(url: string, options: RedisClientOptions = {}): Redis {
  const redis = new Redis(url, {
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    connectTimeout: options.timeoutMs ?? 2_000,
    commandTimeout: options.timeoutMs ?? 2_000,
    retryStrategy: (times) => Math.min(times * 200, 2_000),
    connectionName: options.connectionName ?? 'fastify-auth-server',
  })
  redis.on('error', options.onError ?? (() => {}))
  if (options.onUnavailable) unavailableListeners.set(redis, options.onUnavailable)
  return redis
}

/** A new StoreUnavailableError('redis'), reported to the client's onUnavailable. */
function unavailable(redis: Redis): StoreUnavailableError {
  unavailableListeners.get(redis)?.()
  return new StoreUnavailableError('redis')
}

/** Resolves once the client is connected; StoreUnavailableError if that takes longer than `timeoutMs`. */
export function redisReady(redis: Redis, timeoutMs = 2_000): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve()
  return new Promise((resolve, reject) => {
    const onReady = () => {
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(() => {
      redis.off('ready', onReady)
      reject(unavailable(redis))
    }, timeoutMs)
    redis.once('ready', onReady)
  })
}

/** Server replies that mean "not now" rather than "wrong command". */
const UNAVAILABLE_REPLY = /^(LOADING|BUSY|MASTERDOWN|READONLY|OOM|CLUSTERDOWN|TRYAGAIN)\b/

/**
 * StoreUnavailableError('redis') for anything but a server's error reply to a bad command (those
 * are bugs and stay as they are): refused or dropped connections, timeouts, a server that is loading.
 */
function storeError(err: unknown, redis: Redis): unknown {
  if (err instanceof StoreUnavailableError) return err
  if (err instanceof Error && err.name === 'ReplyError' && !UNAVAILABLE_REPLY.test(err.message)) return err
  const wrapped = unavailable(redis)
  wrapped.cause = err
  return wrapped
}

async function attempt<T>(redis: Redis, command: () => Promise<T>): Promise<T> {
  try {
    return await command()
  } catch (err) {
    throw storeError(err, redis)
  }
}

/** The client to use and whether the store made it (and so closes it). */
function openClient(source: Redis | string): { redis: Redis; owned: boolean } {
  return typeof source === 'string' ? { redis: createRedis(source), owned: true } : { redis: source, owned: false }
}

async function closeClient(redis: Redis): Promise<void> {
  // QUIT lets pending replies arrive; a client that is not connected is simply stopped.
  await redis.quit().catch(() => redis.disconnect())
}

// Only a counter without an expiry gets one: a new key (INCRBY created it), so the window is fixed
// from the first increment, as in MemoryCounterStore. Scripts run atomically. ioredis's
// defineCommand runs each by EVALSHA and loads it with EVAL when a server does not know it yet.
const COUNTER_COMMANDS = {
  authCounterIncr: `
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {value, ttl}
`,
  authCounterGet: `
local value = redis.call('GET', KEYS[1])
if not value then return nil end
return {tonumber(value), redis.call('PTTL', KEYS[1])}
`,
}

/** The client with our counter scripts defined on it (once per client; a shared client is fine). */
interface CounterClient extends Redis {
  /** → [value, ttl in ms]. */
  authCounterIncr(key: string, delta: number, ttlMs: number): Promise<[number, number]>
  /** → [value, ttl in ms], or null when the counter does not exist. */
  authCounterGet(key: string): Promise<[number, number] | null>
}

function withCounterCommands(redis: Redis): CounterClient {
  for (const [name, lua] of Object.entries(COUNTER_COMMANDS))
    if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua })
  return redis as CounterClient
}

export interface RedisStoreOptions {
  /** Prepended to every key and channel (default 'auth:'); tests use a random one. */
  prefix?: string
}

export class RedisCounterStore implements CounterStore {
  readonly #redis: CounterClient
  readonly #ownsClient: boolean
  readonly #prefix: string

  /** A client (shared; the caller closes it) or a URL (a client of its own, closed by close()). */
  constructor(redis: Redis | string, options: RedisStoreOptions = {}) {
    const { redis: client, owned } = openClient(redis)
    this.#redis = withCounterCommands(client)
    this.#ownsClient = owned
    this.#prefix = `${options.prefix ?? DEFAULT_REDIS_PREFIX}counter:`
  }

  async incr(key: string, delta: number, ttlMs: number): Promise<CounterValue> {
    const [value, ttl] = await attempt(this.#redis, () =>
      this.#redis.authCounterIncr(this.#prefix + key, delta, Math.max(1, Math.ceil(ttlMs))),
    )
    return { value, ttlMs: ttl }
  }

  async get(key: string): Promise<CounterValue | undefined> {
    const reply = await attempt(this.#redis, () => this.#redis.authCounterGet(this.#prefix + key))
    if (reply === null) return undefined
    const [value, ttl] = reply
    return { value, ttlMs: ttl }
  }

  async setIfAbsent(key: string, ttlMs: number): Promise<boolean> {
    const reply = await attempt(this.#redis, () =>
      this.#redis.set(this.#prefix + key, '1', 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX'),
    )
    return reply === 'OK'
  }

  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0) return
    await attempt(this.#redis, () => this.#redis.del(...keys.map((k) => this.#prefix + k)))
  }

  /**
   * Resolves once connected (commands fail at once before that: there is no offline queue);
   * StoreUnavailableError after `timeoutMs`. For start-up; the client keeps reconnecting anyway.
   */
  ready(timeoutMs = 2_000): Promise<void> {
    return redisReady(this.#redis, timeoutMs)
  }

  /** Readiness: resolves when Redis answers, else StoreUnavailableError. */
  async ping(): Promise<void> {
    await attempt(this.#redis, () => this.#redis.ping())
  }

  async close(): Promise<void> {
    if (this.#ownsClient) await closeClient(this.#redis)
  }
}

/** SCAN MATCH treats * ? [ ] and \ as glob syntax; a prefix must match literally. */
const escapeGlob = (value: string): string => value.replace(/[*?[\]\\]/g, '\\$&')

/**
 * The denylist in Redis: one key per entry (`<prefix>deny:<id>`, the expiry in seconds as value,
 * expiring with it) and a PUBLISH on `<prefix>deny` for each addition. has() must stay a Map
 * lookup, so each instance mirrors the list in memory: a second connection subscribes to the
 * channel, and each time both connections are (re)established the mirror reloads every key, so
 * additions made while this instance was cut off are not missed. Until that reload is done, and
 * whenever either connection is down, healthy() is false and callers fail closed.
 */
export class RedisDenyList implements DenyList {
  readonly #redis: Redis
  readonly #subscriber: Redis
  readonly #ownsClient: boolean
  readonly #keyPrefix: string
  readonly #channel: string
  readonly #mirror = new MemoryDenyList()
  readonly #timer: NodeJS.Timeout
  /** Bumped on every disconnect, so a reload that started before it cannot mark the mirror fresh. */
  #epoch = 0
  #synced = false
  #syncing: Promise<void> | undefined
  #closed = false

  /** A client (shared; the caller closes it) or a URL (a client of its own, closed by close()). */
  constructor(redis: Redis | string, options: RedisStoreOptions = {}) {
    const { redis: client, owned } = openClient(redis)
    this.#redis = client
    this.#ownsClient = owned
    const prefix = options.prefix ?? DEFAULT_REDIS_PREFIX
    this.#keyPrefix = `${prefix}deny:`
    this.#channel = `${prefix}deny`
    // A subscribed connection can run nothing else, hence a second one, with the same options.
    this.#subscriber = client.duplicate()
    this.#subscriber.on('error', () => {})
    this.#subscriber.on('message', (channel: string, message: string) => {
      if (channel === this.#channel) this.#receive(message)
    })
    for (const connection of [this.#redis, this.#subscriber]) {
      connection.on('ready', () => this.#resync())
      connection.on('close', () => this.#lost())
      connection.on('reconnecting', () => this.#lost())
      connection.on('end', () => this.#lost())
    }
    // Also retries a reload that failed while both connections stayed up.
    this.#timer = setInterval(() => this.#resync(), 1_000)
    this.#timer.unref()
    this.#resync()
  }

  async add(id: string, expiresAtSeconds: number): Promise<void> {
    try {
      const ttlSeconds = Math.ceil(expiresAtSeconds - Date.now() / 1000)
      if (ttlSeconds > 0) {
        const results = await attempt(this.#redis, () =>
          this.#redis
            .multi()
            .set(this.#keyPrefix + id, String(expiresAtSeconds), 'EX', ttlSeconds)
            .publish(this.#channel, JSON.stringify({ id, exp: expiresAtSeconds }))
            .exec(),
        )
        const failed = results?.find(([err]) => err)?.[0]
        if (!results || failed) throw storeError(failed ?? new Error('transaction aborted'), this.#redis)
      }
    } finally {
      // Enforced here even when the write failed: this instance at least never accepts the token again.
      this.#mirror.remember(id, expiresAtSeconds)
    }
  }

  has(id: string): boolean {
    return this.#mirror.has(id)
  }

  healthy(): boolean {
    return this.#synced && this.#redis.status === 'ready' && this.#subscriber.status === 'ready'
  }

  /** Readiness: resolves when Redis answers, else StoreUnavailableError. */
  async ping(): Promise<void> {
    await attempt(this.#redis, () => this.#redis.ping())
  }

  async close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#timer)
    await this.#syncing
    await this.#mirror.close()
    await closeClient(this.#subscriber)
    if (this.#ownsClient) await closeClient(this.#redis)
  }

  #lost(): void {
    this.#epoch += 1
    this.#synced = false
  }

  #receive(message: string): void {
    try {
      const { id, exp } = JSON.parse(message) as { id: unknown; exp: unknown }
      if (typeof id === 'string' && typeof exp === 'number') this.#mirror.remember(id, exp)
    } catch {
      // Not one of ours: ignore it.
    }
  }

  #resync(): void {
    if (this.#closed || this.#synced || this.#syncing) return
    if (this.#redis.status !== 'ready' || this.#subscriber.status !== 'ready') return
    const epoch = this.#epoch
    this.#syncing = this.#reload()
      .then(() => {
        if (epoch === this.#epoch) this.#synced = true
      })
      .catch(() => {})
      .finally(() => {
        this.#syncing = undefined
      })
  }

  /** Subscribes first, then loads every key: an addition is either published after the subscribe or found by the SCAN. */
  async #reload(): Promise<void> {
    await this.#subscriber.subscribe(this.#channel)
    const pattern = `${escapeGlob(this.#keyPrefix)}*`
    let cursor = '0'
    do {
      const [next, keys] = await this.#redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      if (keys.length === 0) continue
      const values = await this.#redis.mget(...keys)
      keys.forEach((key, i) => {
        const exp = Number(values[i])
        if (values[i] !== null && Number.isFinite(exp)) this.#mirror.remember(key.slice(this.#keyPrefix.length), exp)
      })
    } while (cursor !== '0')
  }
}
