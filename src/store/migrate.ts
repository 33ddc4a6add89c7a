// Schema migrations: the numbered SQL files in migrations/ applied in order, each in its own
// transaction, recorded in schema_migrations. Safe to run twice and from two instances at once.
// checkSchema and schemaMismatch compare what a database has with what this server ships.
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type pg from 'pg'
import { SchemaError } from '../errors.js'

/** `NNN_name.sql`: NNN is the version, and the order of application. */
const MIGRATION_FILE = /^(\d+)_[A-Za-z0-9_-]+\.sql$/

/**
 * First key of the advisory lock that serialises migration runs; the second is derived from the
 * schema, so runs against different schemas (parallel test files) do not wait for each other.
 */
const LOCK_KEY = 0x61757468 // 'auth'

export interface MigrateOptions {
  /** Longest a single statement (or the wait for another instance's run) may take. */
  timeoutMs?: number
}

interface MigrationFile {
  version: string
  name: string
  path: string
}

/**
 * The migrations directory of this package: found from this module's location up to the directory
 * holding package.json, so it is the same from src/ (tsx, vitest) and from dist/ (after tsc).
 */
export function defaultMigrationsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('package.json not found above src/store/migrate')
    dir = parent
  }
  return join(dir, 'migrations')
}

async function migrationFiles(dir: string): Promise<MigrationFile[]> {
  const files: MigrationFile[] = []
  let entries: string[]
  try {
    entries = await readdir(dir)
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'error'
    throw new Error(`the migrations directory ${dir} cannot be read (${code}); it ships with the server`, {
      cause: err,
    })
  }
  for (const entry of entries) {
    const match = MIGRATION_FILE.exec(entry)
    if (!match) continue
    files.push({ version: String(Number(match[1])), name: entry.slice(0, -'.sql'.length), path: join(dir, entry) })
  }
  files.sort((a, b) => Number(a.version) - Number(b.version))
  for (let i = 1; i < files.length; i++) {
    const [previous, current] = [files[i - 1], files[i]] as [MigrationFile, MigrationFile]
    if (previous.version === current.version) {
      throw new Error(`two migrations share version ${current.version}: ${previous.name}, ${current.name}`)
    }
  }
  return files
}

/**
 * Applies every migration not yet recorded, in version order, and returns the names of those it
 * applied (`001_initial`); an up-to-date database gives []. A session-level advisory lock makes
 * concurrent runs take turns: the second one then finds nothing left to do.
 */
export async function migrate(
  pool: pg.Pool,
  dir = defaultMigrationsDir(),
  options: MigrateOptions = {},
): Promise<string[]> {
  const files = await migrationFiles(dir)
  // The pool's short timeouts are for requests; a migration (or the wait for a concurrent one) may be slow.
  const timeoutMs = options.timeoutMs ?? 600_000
  const client = await pool.connect()
  // pg honours a per-query query_timeout (over the pool's), which @types/pg does not declare.
  const run = (text: string, values: unknown[] = []) => {
    const config: pg.QueryConfig & { query_timeout: number } = { text, values, query_timeout: timeoutMs }
    return client.query(config)
  }
  const applied: string[] = []
  try {
    await run("SELECT set_config('statement_timeout', $1, false)", [String(Math.max(0, Math.floor(timeoutMs)))])
    await run('SELECT pg_advisory_lock($1, hashtext(current_schema()))', [LOCK_KEY])
    await run(
      `CREATE TABLE IF NOT EXISTS schema_migrations (
         version text PRIMARY KEY,
         name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    )
    const done = new Set((await run('SELECT version FROM schema_migrations')).rows.map((r) => String(r.version)))
    for (const file of files) {
      if (done.has(file.version)) continue
      const sql = await readFile(file.path, 'utf8')
      await run('BEGIN')
      try {
        // No values: the simple query protocol, which runs a file of several statements.
        await run(sql)
        await run('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [file.version, file.name])
        await run('COMMIT')
      } catch (err) {
        await run('ROLLBACK').catch(() => {})
        throw new Error(`migration ${file.name} failed: ${(err as Error).message}`, { cause: err })
      }
      applied.push(file.name)
    }
  } finally {
    // Never hand this session back: it holds the lock and a changed statement_timeout. Closing it
    // releases both, even if the unlock below cannot be sent.
    await run('SELECT pg_advisory_unlock_all()').catch(() => {})
    client.release(true)
  }
  return applied
}

/** A migration by its version (`2`) and name (`002_refresh_reuse_grace`). */
export interface MigrationRef {
  version: string
  name: string
}

/** What checkSchema found: the migrations recorded in the database, and those this server ships. */
export interface SchemaVersions {
  /** Rows of schema_migrations in version order; [] when the table does not exist (never migrated). */
  applied: MigrationRef[]
  /** The files in migrations/, in version order. */
  shipped: MigrationRef[]
}

/**
 * Reads which migrations the database has (schema_migrations, as migrate() records them) and
 * which this server ships. Read only: it creates nothing, so it can run before `npm run migrate`
 * and on a database whose schema a newer server wrote. The table is looked up on the search_path,
 * as migrate() creates it. `db` is a pool or one connection.
 */
export async function checkSchema(
  db: Pick<pg.ClientBase, 'query'>,
  dir = defaultMigrationsDir(),
): Promise<SchemaVersions> {
  const shipped = (await migrationFiles(dir)).map(({ version, name }) => ({ version, name }))
  const { rows } = await db.query<{ present: boolean }>(
    "SELECT to_regclass('schema_migrations') IS NOT NULL AS present",
  )
  if (!rows[0]?.present) return { applied: [], shipped }
  const recorded = await db.query<{ version: string; name: string }>('SELECT version, name FROM schema_migrations')
  const applied = recorded.rows
    .map((r) => ({ version: String(r.version), name: String(r.name) }))
    .sort((a, b) => Number(a.version) - Number(b.version))
  return { applied, shipped }
}

/**
 * The mismatch between a database and this server, or undefined when every shipped migration is
 * applied and nothing else is. Ahead wins over behind: migrating cannot fix an applied migration
 * this server does not know. Each message names both versions (the highest of each side).
 */
export function schemaMismatch({ applied, shipped }: SchemaVersions): SchemaError | undefined {
  const label = (m: MigrationRef | undefined) => (m ? `version ${m.version} (${m.name})` : 'version 0 (never migrated)')
  const database = label(applied.at(-1))
  const server = label(shipped.at(-1))
  const shippedVersions = new Set(shipped.map((m) => m.version))
  const appliedVersions = new Set(applied.map((m) => m.version))
  const unknown = applied.filter((m) => !shippedVersions.has(m.version))
  if (unknown.length > 0)
    return new SchemaError(
      `PostgreSQL schema is ahead of this server: the database is at ${database}, this server ships up to ${server} and does not know ${unknown.map((m) => m.name).join(', ')}; a newer release migrated this database, so run that release (or a newer one)`,
      'ahead',
    )
  const pending = shipped.filter((m) => !appliedVersions.has(m.version))
  if (pending.length > 0)
    return new SchemaError(
      `PostgreSQL schema is behind this server: the database is at ${database}, this server needs ${server} (pending: ${pending.map((m) => m.name).join(', ')}); run \`npm run migrate\`, or start with MIGRATE_ON_START=true`,
      'behind',
    )
  return undefined
}
