// Service construction, in one place: the password hasher and the token service (security/), the
// login throttle, sessions and accounts, each over the opened stores; the mailer (mail/); account
// recovery and verified e-mail; plus the periodic sweep of sessions that can never work again and
// of expired one-time tokens.
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { Mailer } from '../mail/mailer.js'
import type { Metrics } from '../metrics.js'
import { MfaCipher } from '../security/mfa.js'
import { PasswordHasher } from '../security/password.js'
import { TokenService } from '../security/tokens.js'
import type { Stores } from '../store/index.js'
import { MfaService } from './mfa.js'
import { RecoveryService } from './recovery.js'
import { SessionService } from './sessions.js'
import { LoginThrottle } from './throttle.js'
import { UserService } from './users.js'

export interface Services {
  hasher: PasswordHasher
  tokens: TokenService
  sessions: SessionService
  users: UserService
  /** Failed-credential budgets per account and per address (services/throttle.ts). */
  throttle: LoginThrottle
  /**
   * Outgoing mail (config.mail.mode: smtp, log or off). send() enqueues and returns at once, so a
   * slow SMTP server never touches a request; see src/mail/mailer.ts.
   */
  mailer: Mailer
  /** Password reset, e-mail verification and e-mail change (services/recovery.ts). */
  recovery: RecoveryService
  /** The second factor (services/mfa.ts); undefined when MFA is off (config.mfa.keySource 'off'). */
  mfa: MfaService | undefined
  /**
   * Stops the background work: the sweep, the recovery work already started (awaited), and the
   * mail queue (undelivered mail is dropped, logged).
   */
  close(): Promise<void>
}

export interface ServiceOptions {
  /** Where the security events the services raise themselves go (lockouts, recovery). */
  audit: FastifyBaseLogger
  /** Their operational warnings. */
  log: FastifyBaseLogger
  /** What the hash gate and token verification count. */
  metrics: Metrics
  /**
   * The clock of one-time token lifetimes (password reset, e-mail verification) and of TOTP codes,
   * in milliseconds since the epoch; Date.now by default. Tests pass one they can move forward.
   */
  clock?: () => number
}

const SWEEP_INTERVAL_MS = 3_600_000

/** Builds every service over the opened stores (see ServiceOptions). */
export function createServices(
  config: Config,
  stores: Pick<Stores, 'users' | 'sessions' | 'denylist' | 'counters' | 'oneTimeTokens' | 'mfa'>,
  { audit, log, metrics, clock = Date.now }: ServiceOptions,
): Services {
  const hasher = new PasswordHasher({
    rounds: config.password.bcryptRounds,
    concurrency: config.password.hashConcurrency,
    queueMax: config.password.hashQueueMax,
    maxWaitMs: config.password.hashMaxWaitMs,
    metrics,
  })
  metrics.sampleHashQueue(() => hasher.queued)
  // Started now, awaited on the first failed login: off the path to the first request.
  hasher.dummyHash().catch(() => {})
  const tokens = new TokenService(config.jwt, { counts: metrics.tokens })
  const sessions = new SessionService(
    stores.sessions,
    stores.users,
    stores.denylist,
    config.jwt,
    tokens,
    config.recovery.requireVerifiedEmail,
  )
  const throttle = new LoginThrottle(stores.counters, config.throttle)
  const users: UserService = new UserService(
    stores.users,
    hasher,
    throttle,
    sessions,
    config.password.minLength,
    (username, ip) => audit.warn({ event: 'lockout', username: username.slice(0, 64), ip }),
    log,
    {
      requireVerifiedEmail: config.recovery.requireVerifiedEmail,
      // `recovery` is built below; these run only once requests arrive.
      events: {
        registered: (user) => recovery.registered(user),
        passwordChanged: (user) => recovery.passwordChanged(user),
        deleted: (userId) => {
          mfa
            ?.forget(userId)
            .catch((err: unknown) => log.warn({ err: (err as Error).message }, 'MFA record not removed'))
        },
      },
      // `mfa` is built below, like `recovery`.
      secondFactorRequired: async (user): Promise<boolean> => (mfa ? mfa.required(user) : false),
    },
  )

  // Created once, with its SMTP transport; delivers in the background, logs on `log`.
  const mailer = new Mailer(config.mail, log)
  const recovery = new RecoveryService({
    users: stores.users,
    tokens: stores.oneTimeTokens,
    counters: stores.counters,
    accounts: users,
    throttle,
    mailer,
    config,
    audit,
    log,
    now: clock,
  })

  const mfa: MfaService | undefined =
    config.mfa.keySource === 'off'
      ? undefined
      : new MfaService({
          store: stores.mfa,
          users: stores.users,
          accounts: users,
          sessions,
          tokens,
          counters: stores.counters,
          throttle,
          cipher: new MfaCipher(config.mfa.keys.map((hex) => Buffer.from(hex, 'hex'))),
          issuer: config.mfa.issuer,
          audit,
          now: clock,
        })

  // Refresh families past their absolute lifetime can never work again: forget them; and the
  // password-reset and verification tokens that have expired.
  const sweep = setInterval(() => {
    stores.sessions.sweep(new Date()).catch((err) => log.warn({ err }, 'sweep failed'))
    recovery.sweep().catch((err) => log.warn({ err }, 'one-time token sweep failed'))
  }, SWEEP_INTERVAL_MS)
  sweep.unref()

  return {
    hasher,
    tokens,
    sessions,
    users,
    throttle,
    mailer,
    recovery,
    mfa,
    close: async () => {
      clearInterval(sweep)
      await recovery.close()
      await mailer.close()
    },
  }
}
