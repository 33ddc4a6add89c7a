// Writes the OpenAPI document the server serves at /openapi.json to a file: coverage/openapi.json,
// or the path given as the first argument. Builds the app from dist/ (run `npm run build` first) in
// development mode with the docs on and the in-memory store, and takes the document through a
// request, as a client gets it. A fixed environment (not this process's) keeps the document the
// same on every machine. `npm run lint:openapi` then lints it with Redocly (redocly.yaml), and
// scripts/check-statuses.mjs compares it with the statuses the tests observed.
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const out = resolve(ROOT, process.argv[2] ?? 'coverage/openapi.json')

/** @param {string} file  under dist/ */
const fromDist = (file) => import(new URL(`../dist/${file}`, import.meta.url).href)
const [{ buildApp }, { loadConfig }] = await Promise.all([fromDist('app.js'), fromDist('config.js')])

// INTROSPECTION_CLIENTS (a placeholder): POST /introspect exists only with it, and must be documented.
const config = loadConfig({
  NODE_ENV: 'development',
  DOCS_ENABLED: 'true',
  STORE: 'memory',
  AUDIT_LOG: 'false',
  INTROSPECTION_CLIENTS: 'openapi-document:placeholder-secret-never-used-anywhere',
})
const app = await buildApp(config)
try {
  const res = await app.inject({ method: 'GET', url: '/openapi.json' })
  if (res.statusCode !== 200) throw new Error(`GET /openapi.json answered ${res.statusCode}: ${res.body}`)
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, `${JSON.stringify(res.json(), null, 2)}\n`)
  process.stderr.write(`[openapi] wrote ${out}\n`)
} finally {
  await app.close()
}
