// @ts-check
// Builds dist/ from src/ with the TypeScript compiler when, and only when, dist/ is out of date.
//
//   node scripts/ensure-built.mjs           build if out of date (`prestart`, and `prepare`, which
//                                           npm runs at the end of `npm install` and `npm ci`)
//   node scripts/ensure-built.mjs --force   always build (`npm run build`)
//
// Out of date means: no dist/.build-stamp, or a file or directory under src/, or tsconfig.json,
// modified after it. A directory's mtime changes when a file in it is added, removed or renamed,
// and git gives the files it writes (checkout, pull) the current time, so both count as changes.
// The stamp is written after a successful compile, with the time the compile started: a source
// saved during the compile still counts as newer.
//
// Why not `tsc --build` / `--incremental`: on an unchanged tree it still loads the compiler and
// reads every source and declaration file to compare them, which took 3.5 to 6 seconds here before
// the server could start. This script only reads the mtimes, in milliseconds, so `npm start` on a
// built tree starts the server at once.
//
// Without the compiler (the dev dependencies omitted, as in a pruned production deployment) an
// up-to-date dist/ is fine; an out-of-date one is an error that says how to build, never a server
// started from stale code.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const STAMP = join(ROOT, 'dist', '.build-stamp')
const INPUTS = [join(ROOT, 'tsconfig.json'), join(ROOT, 'src')]

/** @param {string} message */
const say = (message) => process.stderr.write(`ensure-built: ${message}\n`)

/**
 * The newest modification time among `paths` and, for directories, everything under them.
 * @param {string[]} paths
 * @returns {{ mtimeMs: number, path: string | undefined }}
 */
function newest(paths) {
  let found = { mtimeMs: 0, path: /** @type {string | undefined} */ (undefined) }
  for (const path of paths) {
    if (!existsSync(path)) continue
    const stat = statSync(path)
    if (stat.mtimeMs > found.mtimeMs) found = { mtimeMs: stat.mtimeMs, path }
    if (stat.isDirectory()) {
      const inner = newest(readdirSync(path).map((name) => join(path, name)))
      if (inner.mtimeMs > found.mtimeMs) found = inner
    }
  }
  return found
}

/** Why dist/ must be built, or undefined when it is up to date. */
function staleness() {
  if (!existsSync(STAMP)) return 'dist/ has not been built'
  const stamp = statSync(STAMP).mtimeMs
  const input = newest(INPUTS)
  if (input.path !== undefined && input.mtimeMs > stamp) {
    return `${relative(ROOT, input.path)} changed since the last build`
  }
  return undefined
}

/** The compiler's entry point, or undefined when typescript is not installed. */
function compiler() {
  try {
    return createRequire(import.meta.url).resolve('typescript/bin/tsc')
  } catch {
    return undefined
  }
}

const force = process.argv.includes('--force')
const reason = force ? 'build requested' : staleness()
if (reason === undefined) process.exit(0)

const tsc = compiler()
if (tsc === undefined) {
  say(
    `${reason}, and the TypeScript compiler is not installed (the dev dependencies were omitted). ` +
      'Build where they are installed (`npm ci` builds dist/), then remove them (`npm prune --omit=dev`): ' +
      "see README's Deployment section.",
  )
  process.exit(1)
}

if (!force) say(`${reason}: building dist/ (tsc)`)
const started = new Date()
const { status, signal } = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.json')], {
  cwd: ROOT,
  stdio: 'inherit',
})
if (status !== 0) {
  say(`tsc failed (${signal ?? `exit code ${status}`}): dist/ is not up to date`)
  process.exit(status || 1)
}
writeFileSync(STAMP, `built by scripts/ensure-built.mjs at ${started.toISOString()}\n`)
utimesSync(STAMP, started, started)
