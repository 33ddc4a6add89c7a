// `npm run migrate`: applies the pending migrations to DATABASE_URL (from the environment, or from
// .env when there is one), prints what it applied, and exits 0; exits 1 with the reason otherwise.
import { existsSync } from 'node:fs'
import { migrate } from '../store/migrate.js'
import { createPgPool } from '../store/postgres.js'

/** The message without the URL's password, wherever a driver may have echoed it. */
function redact(message: string, url: string): string {
  let password = ''
  try {
    password = decodeURIComponent(new URL(url).password)
  } catch {
    // Not a URL: there is no password part to hide, but the whole string could be one.
    return message.replaceAll(url, '[DATABASE_URL]')
  }
  const redacted = message.replaceAll(url, '[DATABASE_URL]')
  return password ? redacted.replaceAll(password, '***') : redacted
}

async function main(): Promise<number> {
  if (existsSync('.env')) process.loadEnvFile('.env')
  const url = process.env.DATABASE_URL
  if (!url) {
    console.error('migrate: DATABASE_URL is not set (e.g. postgres://user@127.0.0.1:5432/dbname)')
    return 1
  }
  const pool = createPgPool(url)
  try {
    const applied = await migrate(pool)
    console.log(applied.length === 0 ? 'migrate: up to date' : `migrate: applied ${applied.join(', ')}`)
    return 0
  } catch (err) {
    const error = err as Error & { code?: string }
    // node:net reports a refused connection to several addresses as an AggregateError with no message.
    const parts = err instanceof AggregateError ? err.errors.map((e) => (e as Error).message) : [error.message]
    const reason = parts.filter(Boolean).join('; ') || error.code || String(err)
    console.error(`migrate: failed: ${redact(reason, url)}`)
    return 1
  } finally {
    await pool.end().catch(() => {})
  }
}

process.exitCode = await main()
