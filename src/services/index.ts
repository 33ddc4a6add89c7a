// Service construction, in one place: the password hasher and the token service (security/), the
// login throttle, sessions and accounts, each over the opened stores; plus the periodic sweep of
// sessions that can never work again.
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { PasswordHasher } from '../security/password.js'
import { TokenService } from '../security/tokens.js'
import type { Stores } from '../store/index.js'
import { SessionService } from './sessions.js'
import { LoginThrottle } from './throttle.js'
import { UserService } from './users.js'

export interface Services {
  hasher: PasswordHasher
  tokens: TokenService
  sessions: SessionService
  users: UserService
  /** Stops the background work (the sweep). */
  close(): void
}

const SWEEP_INTERVAL_MS = 3_600_000

/**
 * Builds every service. `audit` receives the security events the services raise themselves
 * (lockouts); `log` their operational warnings.
 */
export function createServices(
  config: Config,
  stores: Pick<Stores, 'users' | 'sessions' | 'denylist' | 'counters'>,
  { audit, log }: { audit: FastifyBaseLogger; log: FastifyBaseLogger },
): Services {
  const hasher = new PasswordHasher({
    rounds: config.password.bcryptRounds,
    concurrency: config.password.hashConcurrency,
    queueMax: config.password.hashQueueMax,
    maxWaitMs: config.password.hashMaxWaitMs,
  })
  // Started now, awaited on the first failed login: off the path to the first request.
  hasher.dummyHash().catch(() => {})
  const tokens = new TokenService(config.jwt)
  const sessions = new SessionService(stores.sessions, stores.users, stores.denylist, config.jwt, tokens)
  const throttle = new LoginThrottle(stores.counters, config.throttle)
  const users = new UserService(
    stores.users,
    hasher,
    throttle,
    sessions,
    config.password.minLength,
    (username, ip) => audit.warn({ event: 'lockout', username: username.slice(0, 64), ip }),
    log,
  )

  // Refresh families past their absolute lifetime can never work again: forget them.
  const sweep = setInterval(
    () => stores.sessions.sweep(new Date()).catch((err) => log.warn({ err }, 'sweep failed')),
    SWEEP_INTERVAL_MS,
  )
  sweep.unref()

  return { hasher, tokens, sessions, users, close: () => clearInterval(sweep) }
}
