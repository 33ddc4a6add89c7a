// @ts-check
// Case 4's login side, run in a worker thread so that its clock is not held up by autocannon's
// event loop in the main thread: an open-loop load generator that offers POST /token at a fixed
// rate (requests go out on schedule whether or not earlier ones were answered) and records the
// status, latency and start time of every request. Latency is from the request's start to the end
// of its body; the start time is in ms since the storm's start (startEpochMs, in the message: the
// same clock as the main thread's performance.timeOrigin + performance.now(), for the per-second
// timeline of bench/cases/login-storm.mjs).
import http from 'node:http'
import { parentPort, workerData } from 'node:worker_threads'

if (!parentPort) throw new Error('bench/storm.mjs runs in a worker thread (started by bench/cases/login-storm.mjs)')
/** @type {{ host: string, port: number, rate: number, durationMs: number, bodies: string[], timeoutMs?: number }} */
const { host, port, rate, durationMs, bodies, timeoutMs = 30_000 } = workerData
const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 })
/**
 * [status (0 = error), latencyMs, 1 when a 503 carries Retry-After and a JSON `detail` (else 0),
 * ms from the storm's start to the request's]
 * @type {[number, number, number, number][]}
 */
const records = []
let inFlight = 0
let sent = 0

/** @param {string} body */
function fire(body) {
  inFlight++
  sent++
  const started = performance.now()
  /** @param {number} status */
  const done = (status, wellFormed = 0) => {
    records.push([status, performance.now() - started, wellFormed, started - start])
    inFlight--
  }
  const req = http.request(
    {
      host,
      port,
      method: 'POST',
      path: '/token',
      agent,
      timeout: timeoutMs,
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) },
    },
    (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => {
        if (res.statusCode !== 200) text += chunk
      })
      res.on('end', () => done(res.statusCode ?? 0, res.statusCode === 503 && wellFormed503(res.headers, text) ? 1 : 0))
      res.on('error', () => done(0))
    },
  )
  req.on('timeout', () => req.destroy(new Error('timeout')))
  req.on('error', () => done(0))
  req.end(body)
}

/**
 * @param {import('node:http').IncomingHttpHeaders} headers
 * @param {string} text
 */
function wellFormed503(headers, text) {
  if (!/^\d+$/.test(headers['retry-after'] ?? '')) return false
  try {
    return typeof JSON.parse(text).detail === 'string'
  } catch {
    return false
  }
}

const interval = 1000 / rate
const start = performance.now()
const total = Math.floor((durationMs / 1000) * rate)
/** Resolves when the last request has been sent (not answered). @type {Promise<void>} */
const allSent = new Promise((resolve) => {
  const tick = () => {
    // Send every request whose scheduled time has come (catches up after a late timer).
    const due = Math.min(total, Math.floor((performance.now() - start) / interval) + 1)
    while (sent < due) fire(/** @type {string} */ (bodies[sent % bodies.length]))
    if (sent >= total) return resolve()
    const next = start + sent * interval
    setTimeout(tick, Math.max(0, next - performance.now()))
  }
  tick()
})
await allSent
const offeredFor = performance.now() - start
while (inFlight > 0) await new Promise((r) => setTimeout(r, 10))
agent.destroy()
parentPort.postMessage({
  sent,
  offeredForMs: offeredFor,
  totalMs: performance.now() - start,
  startEpochMs: performance.timeOrigin + start,
  records,
})
