// The schema check in front of the PostgreSQL stores. At boot (after MIGRATE_ON_START, when set),
// the migrations the database has are compared with the ones this server ships: a database that is
// behind or ahead stops the boot with one line (SchemaError), rather than serving 500s from a
// missing table or column. When PostgreSQL is not reachable at boot the check cannot run; the
// server then starts live but not ready, as it always has, and the check runs on each new
// connection of the pool (pg-pool's onConnect) until it passes. Until then every request that
// needs the database answers 503, as it does while the database is down, and a mismatch is logged.
import type { FastifyBaseLogger } from 'fastify'
import type pg from 'pg'
import { type SchemaError, StoreSetupError, StoreUnavailableError } from '../errors.js'
import { checkSchema, migrate, schemaMismatch } from './migrate.js'
import { isPgUnavailable } from './postgres.js'

/** After a failed check, new connections are refused for this long before the next check. */
const RECHECK_AFTER_MS = 5_000

export interface SchemaGateOptions {
  /** The migrations directory (tests); the package's own by default. */
  dir?: string
  /** A check after boot that failed (a mismatch, or an error other than an unreachable database). */
  onProblem: (err: Error) => void
  /** The check after boot passed. */
  onPassed: () => void
}

/**
 * Open while the boot prepares the schema (the boot checks it itself) and once a check has passed;
 * `deferred` when the database was unreachable at boot: each new connection is checked first.
 */
export class SchemaGate {
  #state: 'open' | 'deferred' = 'open'
  #lastProblem: { error: Error; at: number } | undefined
  readonly #options: SchemaGateOptions

  constructor(options: SchemaGateOptions) {
    this.#options = options
  }

  /** Checks each new connection from now on, until a check passes. */
  defer(): void {
    this.#state = 'deferred'
  }

  /** For the pool's onConnect: resolves when the schema is known to match, else rejects with a 503. */
  readonly onConnect = async (client: pg.ClientBase): Promise<void> => {
    if (this.#state === 'open') return
    const last = this.#lastProblem
    if (last && Date.now() - last.at < RECHECK_AFTER_MS) throw unavailable(last.error)
    let problem: Error | undefined
    try {
      problem = schemaMismatch(await checkSchema(client, this.#options.dir))
    } catch (err) {
      // Gone again: the usual 503 of an unreachable database; the next connection checks again.
      if (isPgUnavailable(err)) throw err
      problem = err as Error
    }
    if (!problem) {
      this.#state = 'open'
      this.#lastProblem = undefined
      this.#options.onPassed()
      return
    }
    if (last?.error.message !== problem.message) this.#options.onProblem(problem)
    this.#lastProblem = { error: problem, at: Date.now() }
    throw unavailable(problem)
  }
}

/** A 503 for the request, with the reason as its cause (the log has it; the client sees a 503). */
function unavailable(cause: Error): StoreUnavailableError {
  const err = new StoreUnavailableError('postgres')
  err.cause = cause
  return err
}

export interface PrepareSchemaOptions {
  migrateOnStart: boolean
  /** Where the database is, without credentials (host:port/database), for the messages. */
  where: string
  log: FastifyBaseLogger
  dir?: string
}

/**
 * The boot's part: applies the migrations when MIGRATE_ON_START is set, then checks the schema.
 * Throws SchemaError on a mismatch and StoreSetupError when the boot cannot go on (migrations that
 * need an unreachable database or fail, a database that refuses the login); when the database is
 * merely unreachable (and MIGRATE_ON_START is off) it defers the check to the gate and returns.
 */
export async function prepareSchema(pool: pg.Pool, gate: SchemaGate, options: PrepareSchemaOptions): Promise<void> {
  const { where, log } = options
  if (options.migrateOnStart) {
    let applied: string[]
    try {
      applied = await migrate(pool, options.dir)
    } catch (err) {
      if (isPgUnavailable(err))
        throw new StoreSetupError(
          `MIGRATE_ON_START: PostgreSQL at ${where} is not reachable (${reason(err)}), and migrating at start needs it; start the database first, or start without MIGRATE_ON_START and run \`npm run migrate\` once it is up`,
        )
      throw new StoreSetupError(`MIGRATE_ON_START: ${reason(err)}`)
    }
    log.info({ applied }, applied.length > 0 ? 'migrations applied' : 'migrations up to date')
  }
  let mismatch: SchemaError | undefined
  try {
    mismatch = schemaMismatch(await checkSchema(pool, options.dir))
  } catch (err) {
    if (!isPgUnavailable(err))
      throw new StoreSetupError(`DATABASE_URL: the schema of PostgreSQL at ${where} cannot be checked: ${reason(err)}`)
    gate.defer()
    log.warn(
      `PostgreSQL at ${where} is not reachable at start (${reason(err)}): starting not ready. The schema is checked on the first connection; until it passes, requests that need the database answer 503`,
    )
    return
  }
  if (mismatch) throw mismatch
}

/** A short reason: the socket error codes, else the first line of the message with its SQLSTATE. */
function reason(err: unknown): string {
  const errors = err instanceof AggregateError ? err.errors : [err]
  const codes = errors.map((e) => (e as { code?: unknown }).code).filter((c) => typeof c === 'string')
  const message = err instanceof Error ? (err.message.split('\n', 1)[0] ?? '') : String(err)
  if (codes.length > 0 && /^E[A-Z]+$/.test(String(codes[0]))) return [...new Set(codes)].join(', ')
  return codes.length > 0 && message ? `${message} (${codes[0]})` : message || 'unknown error'
}
