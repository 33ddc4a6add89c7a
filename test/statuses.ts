// Which status each endpoint answered during the tests, for scripts/check-statuses.mjs: run after
// vitest (`npm test`), it fails on any (method, route, status) that the OpenAPI document does not
// list, so that the document cannot fall behind what the server does. buildTestApp records every
// app it builds; a test that calls buildApp itself wraps it: `recordStatuses(await buildApp(...))`.
//
// Each process (vitest worker) appends to its own file under coverage/observed/, one JSON line per
// combination it has not written yet, so that parallel workers never write to the same file.
// `node scripts/check-statuses.mjs --reset` empties the directory before a run.
import { appendFileSync, mkdirSync } from 'node:fs'
import { threadId } from 'node:worker_threads'
import type { FastifyInstance } from 'fastify'

const DIR = new URL('../coverage/observed/', import.meta.url)
const FILE = new URL(`statuses-${process.pid}-${threadId}.ndjson`, DIR)
const written = new Set<string>()

/**
 * One observation. `route` is the route's pattern as registered (`/users/:id(...)`), null when no
 * route matched (the not-found handler: 404, or 405 for another method on a known path); then
 * `path` is the URL's path for a 405, so that the script can find the path it was answered for.
 */
export interface ObservedStatus {
  method: string
  route: string | null
  status: number
  path?: string
}

/** Adds the recording onResponse hook to an app that is not ready yet; returns the app. */
export function recordStatuses(app: FastifyInstance): FastifyInstance {
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? null
    const seen: ObservedStatus = { method: request.method, route, status: reply.statusCode }
    if (route === null && reply.statusCode === 405) seen.path = request.url.split('?', 1)[0]
    const line = JSON.stringify(seen)
    if (written.has(line)) return
    if (written.size === 0) mkdirSync(DIR, { recursive: true })
    written.add(line)
    appendFileSync(FILE, `${line}\n`)
  })
  return app
}
