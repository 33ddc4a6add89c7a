// @ts-check
// Talking to a started server: single requests for setting up (request, register, login, prepare)
// and autocannon runs for measuring (cannon), with the request lists the cases share.
import os from 'node:os'
import autocannon from 'autocannon'
import { cpuSeconds, noiseFields, noiseMeter } from './cpu.mjs'
import { HOST, sleep } from './process.mjs'
import { PASSWORD, S } from './settings.mjs'
import { percentile, summarise } from './stats.mjs'

/**
 * A started server (startNode); `dbPids`, for a server with STORE=postgres, lists the PostgreSQL
 * backends serving it, whose CPU counts as ours (see noiseMeter).
 * @typedef {import('./process.mjs').Started & { dbPids?: () => Promise<Set<number> | undefined> }} Target
 * @typedef {Awaited<ReturnType<typeof cannon>>} Run
 */

/**
 * One request with fetch: the status, the body as text, and as JSON when it parses.
 * @param {number} port
 * @param {string} method
 * @param {string} urlPath
 * @param {{ headers?: Record<string, string>, body?: string }} [init]
 * @returns {Promise<{ status: number, json: any, text: string }>}
 */
export async function request(port, method, urlPath, { headers = {}, body } = {}) {
  const res = await fetch(`http://${HOST}:${port}${urlPath}`, { method, headers, body })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {}
  return { status: res.status, json, text }
}

/**
 * Setup requests only: a 503 (the hash gate shedding) is retried after a short pause.
 * @param {() => ReturnType<typeof request>} send
 */
async function retryShed(send) {
  for (let attempt = 1; ; attempt++) {
    const res = await send()
    if (res.status !== 503 || attempt >= 30) return res
    await sleep(200 + Math.random() * 300)
  }
}

/**
 * @param {number} port
 * @param {string} username
 */
export async function register(port, username) {
  const res = await retryShed(() =>
    request(port, 'POST', '/register', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password: PASSWORD }),
    }),
  )
  if (res.status !== 201) throw new Error(`POST /register ${username}: ${res.status} ${res.text.slice(0, 300)}`)
  return res.json
}

/** @param {string} username */
export const loginBody = (username) =>
  `username=${encodeURIComponent(username)}&password=${encodeURIComponent(PASSWORD)}`

/**
 * Logs in with the password grant; returns the access token.
 * @param {number} port
 * @param {string} username
 * @returns {Promise<string>}
 */
export async function login(port, username) {
  const res = await retryShed(() =>
    request(port, 'POST', '/token', {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: loginBody(username),
    }),
  )
  if (res.status !== 200) throw new Error(`POST /token ${username}: ${res.status} ${res.text.slice(0, 300)}`)
  return res.json.access_token
}

/**
 * Registers the /users/me user (bench_me) and the storm users on `server`; returns an access token.
 * @param {Target} server
 * @param {string[]} stormUsers
 */
export async function prepare(server, stormUsers) {
  await register(server.port, 'bench_me')
  const token = await login(server.port, 'bench_me')
  await Promise.all(stormUsers.map((u) => register(server.port, u)))
  return token
}

/**
 * autocannon requests: GET /users/me with `token`.
 * @param {string} token
 */
export const usersMeRequests = (token) => ({
  requests: [{ method: 'GET', path: '/users/me', headers: { authorization: `Bearer ${token}` } }],
})

/** autocannon options for the logins of cases 2 and 8: POST /token as bench_me, on fewer connections. */
export const loginRunOptions = () => ({
  connections: S.hashConnections,
  duration: S.hashDurationSeconds,
  requests: [
    {
      method: 'POST',
      path: '/token',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: loginBody('bench_me'),
    },
  ],
})

/**
 * Per-second figures of an autocannon run, from its 'response' events (a counter and a push per
 * response: nothing next to the cost of the request itself). Second i covers [i, i + 1) s after
 * startEpochMs (performance.timeOrigin + performance.now() when the run started); latencies in ms.
 * @typedef {{ startEpochMs: number, ok: number[], other: number[], p50: (number | null)[],
 *   p99: (number | null)[], max: (number | null)[] }} PerSecond
 */

/**
 * An autocannon run against `server`, with the server's and this process's CPU use alongside.
 * The settings' connections, pipelining and duration unless `options` says otherwise; with
 * `perSecond`, the run's figures second by second too (PerSecond).
 * @template {boolean} [P=false]
 * @param {Target} server
 * @param {Partial<import('autocannon').Options>} options
 * @param {{ perSecond?: P }} [how]
 */
export async function cannon(server, options, { perSecond } = {}) {
  const serverCpu0 = cpuSeconds(server.child.pid)
  const selfCpu0 = process.cpuUsage()
  const noise = noiseMeter()
  const t0 = performance.now()
  const instance = autocannon({
    url: `http://${HOST}:${server.port}`,
    connections: S.connections,
    pipelining: S.pipelining,
    duration: S.durationSeconds,
    ...options,
  })
  /** @type {{ ok: number, other: number, latencies: number[] }[]} */
  const seconds = []
  if (perSecond) {
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      const second = Math.floor((performance.now() - t0) / 1000)
      for (let i = seconds.length; i <= second; i++) seconds.push({ ok: 0, other: 0, latencies: [] })
      const bin = /** @type {{ ok: number, other: number, latencies: number[] }} */ (seconds[second])
      if (statusCode >= 200 && statusCode < 300) bin.ok++
      else bin.other++
      bin.latencies.push(responseTime)
    })
  }
  const result = await instance
  const wallSeconds = (performance.now() - t0) / 1000
  const serverCpu1 = cpuSeconds(server.child.pid)
  const selfCpu = process.cpuUsage(selfCpu0)
  // Cases 7-8: the PostgreSQL backends of our servers, counted as ours (see noiseMeter).
  const dbPids = server.dbPids ? await server.dbPids() : undefined
  return summarise(result, {
    serverCpuPct: serverCpu0 === null || serverCpu1 === null ? null : ((serverCpu1 - serverCpu0) / wallSeconds) * 100,
    clientCpuPct: ((selfCpu.user + selfCpu.system) / 1e6 / wallSeconds) * 100,
    ...noiseFields(noise({ dbPids })),
    loadAverage1m: os.loadavg()[0],
    perSecond: /** @type {P extends true ? PerSecond : undefined} */ (
      perSecond ? perSecondFigures(seconds, performance.timeOrigin + t0) : undefined
    ),
  })
}

/**
 * @param {{ ok: number, other: number, latencies: number[] }[]} seconds
 * @param {number} startEpochMs
 * @returns {PerSecond}
 */
function perSecondFigures(seconds, startEpochMs) {
  const sorted = seconds.map((s) => s.latencies.sort((a, b) => a - b))
  return {
    startEpochMs,
    ok: seconds.map((s) => s.ok),
    other: seconds.map((s) => s.other),
    p50: sorted.map((l) => percentile(l, 0.5)),
    p99: sorted.map((l) => percentile(l, 0.99)),
    max: sorted.map((l) => l.at(-1) ?? null),
  }
}
