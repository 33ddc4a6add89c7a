// @ts-check
// Builds dist/ from src/ with esbuild. Called by scripts/ensure-built.mjs (`npm run build`, `npm
// start`'s prestart, npm install's prepare), which builds into a fresh directory and swaps it in.
//
// What it writes:
//   server.js, server.js.map     the server (`node dist/server.js`): src/server.ts and everything it
//                                imports at start, src/ and node_modules alike, bundled into one file
//   server.<name>-<hash>.js      the bundle's chunks: the modules it imports lazily (the PostgreSQL
//                                and Redis stores, their schema check) and the code those share with
//                                it. At the top of dist/ like server.js, so that a path relative to
//                                import.meta.url (../package.json) means the same in each.
//   every other src/ module      transpiled file by file, the layout tsc emitted (dist/app.js,
//                                dist/config.js, dist/cli/*.js...): what the CLIs (`npm run migrate`,
//                                `npm run create-admin`), scripts/openapi.mjs and bench/ import. Not
//                                loaded by the server.
//
// Why a bundle: cold start. Loaded file by file, the server read ~500 modules (~350 CommonJS files
// of fastify, ajv, semver..., ~150 ES modules of zod and src/) before its first line ran: about
// 180 of its 280 ms to the first 200 on /healthz on a quiet machine. From one file, about 190 ms in
// all; docs/performance.md has the breakdown and how it was measured.
//
// Out of the bundle (EXTERNAL), loaded from node_modules as before:
//   - what is imported only lazily, with import() or require() when configured or used (LAZY):
//     bundled, it would be parsed at every start for nothing. assertLazy() fails the build if
//     anything the server loads at start imports one of them statically.
//   - bcrypt, a native addon, which node-gyp-build finds next to its own index.
// pino and thread-stream are bundled, but their transports run in a worker thread started from a
// file: BANNER tells them (__bundlerPathsOverrides, which they read for bundlers) to take those files
// from node_modules rather than next to themselves. The server starts no transport (pino-pretty runs
// in the main thread, src/logging.ts); this keeps one working if it ever does.
//
// Source maps: written next to each file, without the sources' text (the maps point at ../src/ and
// ../node_modules/, which ship with dist/), and not used unless asked for. A stack trace in a log
// names dist/server.js's lines: the bundle is not minified, keeps every function's name, and
// marks where each module starts (`// src/routes/auth.ts`). `NODE_OPTIONS=--enable-source-maps`
// maps the frames back to src/, for about 17 ms more at start (docs/performance.md).
//
// No type checking here: esbuild only strips the types (`npm run typecheck`, part of `npm test`,
// runs tsc). tsconfig.json's isolatedModules makes tsc refuse what cannot be transpiled one file at
// a time. The output depends only on the sources, tsconfig.json, this file and the installed
// packages (package-lock.json): the same inputs give the same bytes.
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'

/** Imported only lazily by src/ (import() or createRequire): never part of the start-up bundle. */
export const LAZY = [
  'pg',
  'ioredis',
  'nodemailer',
  'prom-client',
  'qrcode',
  '@fastify/swagger',
  '@fastify/swagger-ui',
  '@fastify/cors',
  'pino-pretty',
  '@zxcvbn-ts/language-common',
]
/** Loaded at start, but must stay a real package: a native addon. */
const NATIVE = ['bcrypt']
export const EXTERNAL = [...LAZY, ...NATIVE]

/**
 * At the top of each output file of the bundle. `require`, for the CommonJS packages bundled into
 * an ES module (they call require('node:events') and the like, and require the externals). The
 * files of pino's transports (its worker, pino/file, and thread-stream's worker, which loads them):
 * bundled, pino and thread-stream would look for them next to themselves (__dirname, undefined in
 * an ES module); resolved from node_modules, and only if a transport is ever started.
 */
const BANNER = [
  "import { createRequire as __bundleCreateRequire } from 'node:module';",
  'const require = __bundleCreateRequire(import.meta.url);',
  'if (!Object.hasOwn(globalThis, "__bundlerPathsOverrides")) globalThis.__bundlerPathsOverrides = Object.defineProperties({}, {',
  "  'pino-worker': { get: () => require.resolve('pino/lib/worker.js'), enumerable: true },",
  "  'pino/file': { get: () => require.resolve('pino/file.js'), enumerable: true },",
  "  'thread-stream-worker': { get: () => require.resolve('thread-stream/lib/worker.js'), enumerable: true },",
  '});',
].join('\n')

/**
 * The .ts files under `dir`, paths relative to `root` with forward slashes, sorted (the order esbuild
 * gets them in does not change its output, but a sorted list is easier to read in an error).
 * @param {string} root
 * @param {string} dir
 * @returns {string[]}
 */
function sources(root, dir) {
  return readdirSync(join(root, dir), { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts'))
    .map((file) => `${dir}/${file.split('\\').join('/')}`)
    .sort()
}

/**
 * The package a bare import names ('@fastify/cors/x' -> '@fastify/cors'); undefined for a path or
 * a node: builtin.
 * @param {string} specifier
 */
function packageOf(specifier) {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('node:')) return undefined
  const parts = specifier.split('/')
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]
}

/**
 * Throws when a file the server loads at start (dist/server.js and the chunks it imports statically)
 * imports a LAZY package statically: it would be loaded at every start.
 * @param {import('esbuild').Metafile} metafile
 * @param {string} entry  the output path of the entry, as the metafile names it
 */
function assertLazy(metafile, entry) {
  const atStart = new Set([entry])
  const queue = [entry]
  /** @type {string[]} */
  const problems = []
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    for (const imported of metafile.outputs[file]?.imports ?? []) {
      if (imported.kind !== 'import-statement' && imported.kind !== 'require-call') continue
      if (!imported.external) {
        if (!atStart.has(imported.path)) {
          atStart.add(imported.path)
          queue.push(imported.path)
        }
      } else if (LAZY.includes(packageOf(imported.path) ?? '')) {
        problems.push(`${file} imports ${imported.path} statically`)
      }
    }
  }
  if (problems.length > 0) {
    throw new Error(
      `${problems.join('; ')}: it is meant to be loaded only when configured or used (scripts/build.mjs, LAZY). ` +
        'Import it with `await import(...)` where it is needed, or remove it from LAZY if it is now needed at every start.',
    )
  }
}

/**
 * Builds dist/'s contents and writes them into `into` (an empty directory, swapped in as dist/ by
 * scripts/ensure-built.mjs). esbuild computes every path for dist/ itself (the source maps'
 * `sources`, relative to the map), and this writes its output into `into`: built there directly,
 * the maps would point from the scratch directory's place. Returns the files written, relative
 * to `into`.
 * @param {{ root: string, into: string, esbuild: typeof import('esbuild') }} options
 * @returns {Promise<string[]>}
 */
export async function build({ root, into, esbuild }) {
  const dist = join(root, 'dist')
  /** @type {import('esbuild').BuildOptions} */
  const common = {
    absWorkingDir: root,
    tsconfig: join(root, 'tsconfig.json'),
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outdir: dist,
    outbase: 'src',
    sourcemap: 'linked',
    sourcesContent: false,
    charset: 'utf8',
    logLevel: 'warning',
    metafile: true,
    write: false,
  }
  const [bundle, files] = await Promise.all([
    esbuild.build({
      ...common,
      entryPoints: ['src/server.ts'],
      bundle: true,
      splitting: true,
      chunkNames: 'server.[name]-[hash]',
      external: EXTERNAL,
      banner: { js: BANNER },
    }),
    esbuild.build({
      ...common,
      entryPoints: sources(root, 'src').filter((file) => file !== 'src/server.ts'),
    }),
  ])
  assertLazy(/** @type {import('esbuild').Metafile} */ (bundle.metafile), 'dist/server.js')
  const written = []
  for (const { path, contents } of [...(bundle.outputFiles ?? []), ...(files.outputFiles ?? [])]) {
    const name = relative(dist, path)
    mkdirSync(dirname(join(into, name)), { recursive: true })
    writeFileSync(join(into, name), contents)
    written.push(name.split('\\').join('/'))
  }
  return written.sort()
}
