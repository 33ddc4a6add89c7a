// @ts-check
// PostgreSQL for cases 7-9: a schema of this run's own (bench_<random>), on the search_path of
// every connection the bench and its servers open, created for the run and dropped at its end.
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { serverEnv } from './settings.mjs'

const PG_URL = process.env.BENCH_PG_URL || 'postgres://postgres@127.0.0.1:5432/test'
export const pgSchema = `bench_${randomBytes(6).toString('hex')}`

/** PG_URL with any password hidden, for printing. */
export const printablePgUrl = (() => {
  try {
    const u = new URL(PG_URL)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '<BENCH_PG_URL, not a URL>'
  }
})()

/** True from the CREATE SCHEMA (sent) until the DROP succeeded: the exit paths drop it when true. */
let pgSchemaCreated = false

/**
 * The DATABASE_URL of a server (or of the lookup child): the run's schema first on search_path
 * (pg passes the `options` parameter to the server), and an application_name, `<schema>_<app>`,
 * by which its connections are found in pg_stat_activity (the URL's wins over createPgPool's).
 * @param {string} app
 */
export function pgUrl(app) {
  const sep = PG_URL.includes('?') ? '&' : '?'
  return `${PG_URL}${sep}options=-c%20search_path%3D${pgSchema}&application_name=${pgSchema}_${app}`
}

/**
 * The server's environment for STORE=postgres (USER_CACHE_TTL_MS: the default, unless in `extra`).
 * @param {string} app
 * @param {Record<string, string>} [extra]
 * @returns {Record<string, string>}
 */
export const pgServerEnv = (app, extra = {}) => ({
  ...serverEnv,
  STORE: 'postgres',
  DATABASE_URL: pgUrl(app),
  MIGRATE_ON_START: 'true',
  ...extra,
})

/**
 * A connected pg.Client for the bench's own statements; the caller ends it.
 * @param {string} app
 */
export async function pgClient(app, connectTimeoutMs = 3000) {
  const client = new pg.Client({
    connectionString: PG_URL,
    connectionTimeoutMillis: connectTimeoutMs,
    application_name: `${pgSchema}_${app}`,
  })
  client.on('error', () => {}) // a dropped connection fails the next query instead of the process
  await client.connect()
  return client
}

export async function createPgSchema() {
  const client = await pgClient('admin')
  try {
    pgSchemaCreated = true
    await client.query(`CREATE SCHEMA ${pgSchema}`)
  } catch (err) {
    pgSchemaCreated = false // nothing was created, or nothing can be dropped anyway
    throw err
  } finally {
    await client.end().catch(() => {})
  }
}

export async function dropPgSchema() {
  if (!pgSchemaCreated) return
  const client = await pgClient('admin')
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`)
    pgSchemaCreated = false
  } finally {
    await client.end().catch(() => {})
  }
}

/** Last resort, for an exit that skipped every finally block: psql, synchronously, if installed. */
export function dropPgSchemaSync() {
  if (pgSchemaCreated)
    spawnSync('psql', [PG_URL, '-qc', `DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`], { stdio: 'ignore', timeout: 5000 })
}
