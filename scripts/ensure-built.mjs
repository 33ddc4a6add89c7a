// @ts-check
// Builds dist/ from src/ (scripts/build.mjs, with esbuild) when, and only when, dist/ is out of date.
//
//   node scripts/ensure-built.mjs           build if out of date (`prestart`, and `prepare`, which
//                                           npm runs at the end of `npm install` and `npm ci`)
//   node scripts/ensure-built.mjs --force   always build (`npm run build`)
//
// Out of date means: no dist/.build-stamp; or a file or directory under src/, tsconfig.json or
// scripts/build.mjs modified after it; or package-lock.json's content different from the one the
// stamp records. A directory's mtime changes when a file in it is added, removed or renamed, and
// git gives the files it writes (checkout, pull) the current time, so both count as changes. The
// lockfile counts because dist/server.js bundles the dependencies: a dependency upgraded since the
// build must not keep running its old code. Its content, not its mtime: npm rewrites the file
// without changing it (`npm prune --omit=dev` does), and that must not make a pruned tree, which
// has no compiler left, refuse to start. The stamp is written after a successful build, with the
// time the build started: a source saved during the build still counts as newer.
//
// Why not `tsc --build` / `--incremental`: on an unchanged tree it still loads the compiler and
// reads every source and declaration file to compare them, which took 3.5 to 6 seconds here before
// the server could start. This script only reads the mtimes, in milliseconds, and the lockfile, so
// `npm start` on a built tree starts the server at once; it loads esbuild only to build.
//
// The build writes a new directory and swaps it in with two renames: a server or a test started
// from dist/ meanwhile finds the old build or the new one, never half of each, and the output of a
// removed source does not linger.
//
// Without esbuild (the dev dependencies omitted, as in a pruned production deployment) an
// up-to-date dist/ is fine; an out-of-date one is an error that says how to build, never a server
// started from stale code.
import { createHash } from 'node:crypto'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { join, relative } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const DIST = join(ROOT, 'dist')
const STAMP = join(DIST, '.build-stamp')
const LOCKFILE = join(ROOT, 'package-lock.json')
const INPUTS = [join(ROOT, 'tsconfig.json'), join(ROOT, 'scripts', 'build.mjs'), join(ROOT, 'src')]

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

/** The stamp's line for the lockfile: its SHA-256, or `none` when there is no lockfile. */
function lockfileLine() {
  const hash = existsSync(LOCKFILE) ? createHash('sha256').update(readFileSync(LOCKFILE)).digest('hex') : 'none'
  return `package-lock.json sha256 ${hash}`
}

/** Why dist/ must be built, or undefined when it is up to date. */
function staleness() {
  if (!existsSync(STAMP)) return 'dist/ has not been built'
  const stamp = statSync(STAMP).mtimeMs
  const input = newest(INPUTS)
  if (input.path !== undefined && input.mtimeMs > stamp) {
    return `${relative(ROOT, input.path)} changed since the last build`
  }
  if (!readFileSync(STAMP, 'utf8').split('\n').includes(lockfileLine())) {
    return 'package-lock.json changed since the last build (dist/server.js bundles the dependencies)'
  }
  return undefined
}

/** esbuild's module, or undefined when it is not installed. */
async function loadEsbuild() {
  let path
  try {
    path = createRequire(import.meta.url).resolve('esbuild')
  } catch {
    return undefined
  }
  return /** @type {typeof import('esbuild')} */ (await import(pathToFileURL(path).href))
}

const force = process.argv.includes('--force')
const reason = force ? 'build requested' : staleness()
if (reason === undefined) process.exit(0)

const esbuild = await loadEsbuild()
if (esbuild === undefined) {
  say(
    `${reason}, and esbuild is not installed (the dev dependencies were omitted). ` +
      'Build where they are installed (`npm ci` builds dist/), then remove them (`npm prune --omit=dev`): ' +
      "see README's Deployment section.",
  )
  process.exit(1)
}

if (!force) say(`${reason}: building dist/ (esbuild)`)
const started = new Date()
// Under node_modules/ (ignored by git and the linters, and on dist/'s file system, so that the swap
// is a rename); mkdtemp, so that two builds at once do not write into each other's directory.
const scratch = join(ROOT, 'node_modules', '.cache', 'ensure-built')
mkdirSync(scratch, { recursive: true })
const fresh = mkdtempSync(join(scratch, 'dist-'))
try {
  const { build } = await import('./build.mjs')
  await build({ root: ROOT, into: fresh, esbuild })
  const stamp = join(fresh, '.build-stamp')
  writeFileSync(stamp, `built by scripts/ensure-built.mjs at ${started.toISOString()}\n${lockfileLine()}\n`)
  utimesSync(stamp, started, started)
  swapIn(fresh)
} catch (err) {
  rmSync(fresh, { recursive: true, force: true })
  // esbuild has printed its errors (each once per build that met it); anything else is said here.
  const printed = Array.isArray(/** @type {{ errors?: unknown }} */ (err)?.errors)
  say(
    `the build failed, dist/ is not up to date${printed ? ' (the errors above)' : `: ${/** @type {Error} */ (err)?.message ?? err}`}`,
  )
  process.exit(1)
}

/**
 * Replaces dist/ with `fresh`: dist/ moved aside, `fresh` renamed to dist/, the old one removed.
 * Another build swapping at the same time can take dist/'s place between the two renames (both
 * built the same inputs): then once more. Across file systems (node_modules/ a link elsewhere), a
 * copy instead.
 * @param {string} fresh
 */
function swapIn(fresh) {
  for (let attempt = 1; ; attempt++) {
    const old = `${fresh}-old`
    try {
      if (existsSync(DIST)) renameSync(DIST, old)
      renameSync(fresh, DIST)
      rmSync(old, { recursive: true, force: true })
      return
    } catch (err) {
      const code = /** @type {NodeJS.ErrnoException} */ (err).code
      if (code === 'EXDEV') {
        rmSync(DIST, { recursive: true, force: true })
        cpSync(fresh, DIST, { recursive: true, preserveTimestamps: true })
        rmSync(fresh, { recursive: true, force: true })
        return
      }
      if (attempt >= 3 || (code !== 'ENOTEMPTY' && code !== 'EEXIST')) throw err
      rmSync(old, { recursive: true, force: true })
    }
  }
}
