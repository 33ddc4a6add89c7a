// Every status a test observed on an endpoint is documented for it. The tests record what each
// app answered (test/statuses.ts: one file per worker under coverage/observed/); this compares
// those (method, route, status) with the OpenAPI document that scripts/openapi.mjs wrote to
// coverage/openapi.json, lists every one the document lacks, and exits 1 if there is any.
//
//   node scripts/check-statuses.mjs --reset   empty coverage/observed/ (before vitest)
//   node scripts/check-statuses.mjs [doc]      check (after vitest); doc: coverage/openapi.json
//
// Not checked, on purpose:
// - HEAD: Fastify answers it for every GET route, like GET without the body; not listed apart.
// - Answers that no route gave (route null): 404 for an unknown path, and errors raised before
//   routing (400 for a malformed URL, 414). A 405 is the exception: it is checked against the
//   documented path it was answered for (the operations of that path list 405 with Allow).
// - The routes that serve the documentation itself (/openapi.json, Swagger UI under /docs) and
//   the CORS plugin's catch-all OPTIONS route (`*`), which answers preflights.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const OBSERVED = resolve(ROOT, 'coverage/observed')

/**
 * @typedef {{ method: string, route: string | null, status: number, path?: string }} Observed
 * @typedef {{ responses?: Record<string, unknown> }} Operation
 * @typedef {{ paths: Record<string, Record<string, Operation>> }} Document
 */

/** Routes left out of the document on purpose (see above). @param {string} route */
const undocumentedRoute = (route) => route === '*' || route === '/openapi.json' || /^\/docs(\/|$)/.test(route)

/**
 * A Fastify route pattern as @fastify/swagger writes its path: `:name` and `:name(regex)` (whose
 * parentheses may nest) become `{name}`.
 * @param {string} route
 */
function openapiPath(route) {
  let path = ''
  for (let i = 0; i < route.length; ) {
    if (route[i] !== ':') {
      path += route[i++]
      continue
    }
    let name = ''
    for (i++; i < route.length && /\w/.test(/** @type {string} */ (route[i])); i++) name += route[i]
    if (route[i] === '(')
      for (let depth = 0; i < route.length; ) {
        const c = route[i++]
        depth += c === '(' ? 1 : c === ')' ? -1 : 0
        if (depth === 0) break
      }
    path += `{${name}}`
  }
  return path
}

/**
 * The documented path a concrete URL path belongs to: a literal path first, as OpenAPI resolves
 * `/users/me` before `/users/{id}`, then a templated one.
 * @param {Document} doc
 * @param {string} url
 */
function documentedPath(doc, url) {
  if (doc.paths[url]) return url
  return Object.keys(doc.paths).find((template) => {
    const pattern = template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\\?\{[^}/]+\\?\}/g, '[^/]+')
    return new RegExp(`^${pattern}$`).test(url)
  })
}

/** @returns {Observed[]} */
function readObserved() {
  if (!existsSync(OBSERVED)) return []
  const lines = new Set()
  for (const file of readdirSync(OBSERVED).filter((f) => f.endsWith('.ndjson')))
    for (const line of readFileSync(resolve(OBSERVED, file), 'utf8').split('\n')) if (line) lines.add(line)
  return [...lines].map((line) => JSON.parse(line))
}

if (process.argv[2] === '--reset') {
  rmSync(OBSERVED, { recursive: true, force: true })
  process.exit(0)
}

const docFile = resolve(ROOT, process.argv[2] ?? 'coverage/openapi.json')
if (!existsSync(docFile)) {
  console.error(`[check-statuses] ${docFile} is missing: run \`node scripts/openapi.mjs\` (npm run lint:openapi) first`)
  process.exit(1)
}
/** @type {Document} */
const doc = JSON.parse(readFileSync(docFile, 'utf8'))
const observed = readObserved()
if (observed.length === 0) {
  console.error(`[check-statuses] nothing observed in ${OBSERVED}: run the tests (vitest) first`)
  process.exit(1)
}

/** @type {Set<string>} */
const problems = new Set()
let checked = 0
for (const { method, route, status, path } of observed) {
  if (method === 'HEAD') continue
  const target = route ?? (status === 405 ? path : undefined)
  if (target === undefined || undocumentedRoute(target)) continue
  checked++
  if (route === null) {
    const documented = documentedPath(doc, target)
    const item = documented === undefined ? undefined : doc.paths[documented]
    if (!item) problems.add(`${method} ${target} answered 405, but the document has no such path`)
    else if (!Object.values(item).some((op) => op.responses?.[String(status)]))
      problems.add(`${method} ${target} answered 405: no operation of ${documented} lists 405`)
    continue
  }
  const op = doc.paths[openapiPath(route)]?.[method.toLowerCase()]
  if (!op) problems.add(`${method} ${route}: the document has no such operation (observed ${status})`)
  else if (!op.responses?.[String(status)])
    problems.add(`${method} ${openapiPath(route)} answered ${status}, undocumented`)
}

if (problems.size > 0) {
  console.error(`[check-statuses] the tests observed answers that ${docFile} does not document:`)
  for (const problem of [...problems].sort()) console.error(`  - ${problem}`)
  process.exit(1)
}
console.log(`[check-statuses] ${checked} (method, route, status) observed by the tests, all documented`)
