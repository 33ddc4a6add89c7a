// @ts-check
// Case 4: a login storm. POST /token is offered at 4 x the logins/s of case 2, open loop (by
// bench/storm.mjs, in a worker thread), to a server of its own configured as in production, while
// autocannon drives GET /users/me alongside. What it measures is the shedding policy. Targets:
// /users/me keeps a p99 of at most 50 ms and 40% of its unloaded req/s (case 1), without failures;
// the logins over capacity are turned away within 100 ms, every one a 503 with Retry-After and a
// JSON detail, and no request gets any other status.
import { Worker } from 'node:worker_threads'
import { cannon, loginBody, prepare, usersMeRequests } from '../lib/http.mjs'
import { HOST, sleep, startNode } from '../lib/process.mjs'
import { fmt, lat, listRuns, log, med, noiseRow, pct, results, row } from '../lib/report.mjs'
import { printableEnv, S, serverEntry, stormEnv, stormUsers } from '../lib/settings.mjs'
import { percentile } from '../lib/stats.mjs'

/**
 * What the storm worker (bench/storm.mjs) reports. records: one per request, [status (0: no
 * answer), latency in ms, 1 when a 503 carried Retry-After and a JSON `detail` (else 0), ms from
 * the storm's start (startEpochMs) to the request's].
 * @typedef {{ sent: number, offeredForMs: number, totalMs: number, startEpochMs: number,
 *   records: [number, number, number, number][] }} StormResult
 */

/**
 * A run second by second, for the report's chart (bench/lib/html.mjs). Second i of `token` covers
 * [i, i + 1) s after the storm's start: logins offered (sent) in it, and answered in it with 200,
 * with 503, or otherwise (another status, or no answer). `usersMe` is autocannon's run alongside
 * (bench/lib/http.mjs, PerSecond), which started `usersMeOffsetMs` after the storm (negative:
 * before).
 * @typedef {{ usersMeOffsetMs: number, token: { offered: number[], ok: number[], shed: number[],
 *   other: number[] }, usersMe: Omit<import('../lib/http.mjs').PerSecond, 'startEpochMs'> }} StormTimeline
 */

/**
 * @param {StormResult} storm
 * @param {import('../lib/http.mjs').PerSecond} usersMe
 * @returns {StormTimeline}
 */
function timeline(storm, usersMe) {
  /** @type {StormTimeline['token']} */
  const token = { offered: [], ok: [], shed: [], other: [] }
  /**
   * @param {number[]} list
   * @param {number} ms
   */
  const count = (list, ms) => {
    const second = Math.floor(ms / 1000)
    for (let i = list.length; i <= second; i++) list.push(0)
    list[second] = (list[second] ?? 0) + 1
  }
  for (const [status, latency, , sentAt] of storm.records) {
    count(token.offered, sentAt)
    count(status === 200 ? token.ok : status === 503 ? token.shed : token.other, sentAt + latency)
  }
  // The same number of seconds in each list.
  const length = Math.max(...Object.values(token).map((list) => list.length))
  for (const list of Object.values(token)) while (list.length < length) list.push(0)
  const { startEpochMs, ...perSecond } = usersMe
  return { usersMeOffsetMs: startEpochMs - storm.startEpochMs, token, usersMe: perSecond }
}

/**
 * @param {{ port: number, rate: number, durationMs: number, bodies: string[] }} options
 * @returns {Promise<StormResult>}
 */
function runStorm({ port, rate, durationMs, bodies }) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../storm.mjs', import.meta.url), {
      workerData: { host: HOST, port, rate, durationMs, bodies },
    })
    worker.once('message', (message) => {
      resolve(message)
      worker.terminate()
    })
    worker.once('error', reject)
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`storm worker exited with ${code}`))
    })
  })
}

/**
 * Starts the storm's server (pushed onto `servers`, for the caller to stop) and storms it.
 * @param {{ capacity: number, unloadedMeRps: number, servers: import('../lib/http.mjs').Target[] }} options
 *   capacity: logins/s of case 2; unloadedMeRps: GET /users/me req/s of case 1
 */
export async function loginStormCase({ capacity, unloadedMeRps, servers }) {
  const stormRate = S.stormFactor * capacity
  const bodies = stormUsers.map(loginBody)
  log('case 4: starting the storm server')
  const stormServer = await startNode('storm server', [serverEntry], stormEnv)
  servers.push(stormServer)
  const stormToken = await prepare(stormServer, stormUsers)
  await cannon(stormServer, { ...usersMeRequests(stormToken), duration: S.warmupSeconds })
  const case4 = []
  for (let r = 0; r < S.runs; r++) {
    log(`case 4 run ${r + 1}/${S.runs}: POST /token at ${fmt(stormRate, 1)}/s with GET /users/me alongside`)
    const [storm, meRun] = await Promise.all([
      runStorm({ port: stormServer.port, rate: stormRate, durationMs: S.durationSeconds * 1000, bodies }),
      cannon(stormServer, usersMeRequests(stormToken), { perSecond: true }),
    ])
    /** @type {Record<string, number[]>} */
    const byStatus = {}
    let shedWellFormed = 0
    for (const [status, ms, wellFormed] of storm.records) {
      byStatus[status] ??= []
      byStatus[status].push(ms)
      shedWellFormed += wellFormed
    }
    /** @type {Record<string, { count: number, p50: number | null, p99: number | null, max: number | undefined }>} */
    const latency = {}
    for (const [status, list] of Object.entries(byStatus)) {
      list.sort((a, b) => a - b)
      latency[status] = {
        count: list.length,
        p50: percentile(list, 0.5),
        p99: percentile(list, 0.99),
        max: list.at(-1),
      }
    }
    /** @param {string} s */
    const count = (s) => byStatus[s]?.length ?? 0
    case4.push({
      offeredRate: stormRate,
      sent: storm.sent,
      achievedOfferRate: storm.sent / (storm.offeredForMs / 1000),
      token: {
        ok: count('200'),
        shed: count('503'),
        shedWithRetryAfterAndDetail: shedWellFormed,
        other: storm.records.length - count('200') - count('503'),
        latencyByStatus: latency,
        loginsPerSecond: count('200') / (storm.totalMs / 1000),
      },
      usersMe: (({ perSecond, ...rest }) => rest)(meRun),
      timeline: timeline(storm, meRun.perSecond),
    })
    await sleep(500)
  }
  const meRps = med(case4, (x) => x.usersMe.rps)
  const shedMaxMs = Math.max(-1, ...case4.map((x) => x.token.latencyByStatus['503']?.max ?? -1))
  const okMaxMs = Math.max(-1, ...case4.map((x) => x.token.latencyByStatus['200']?.max ?? -1))
  const c4 = {
    capacity,
    offeredRate: stormRate,
    meP99: med(case4, (x) => x.usersMe.latencyMs.p99),
    meRps,
    tokenOk: case4.reduce((a, x) => a + x.token.ok, 0),
    tokenShed: case4.reduce((a, x) => a + x.token.shed, 0),
    tokenOther: case4.reduce((a, x) => a + x.token.other, 0),
    shedWellFormed: case4.reduce((a, x) => a + x.token.shedWithRetryAfterAndDetail, 0),
    shedMaxMs: shedMaxMs < 0 ? null : shedMaxMs,
    okP99Ms: med(case4, (x) => x.token.latencyByStatus['200']?.p99 ?? null),
    okMaxMs: okMaxMs < 0 ? null : okMaxMs,
    meFailures: case4.reduce((a, x) => a + x.usersMe.errors + x.usersMe.non2xx, 0),
    meFraction: meRps / unloadedMeRps,
  }
  results.cases.loginStorm = {
    serverEnv: { ...stormEnv, JWT_SECRET: printableEnv.JWT_SECRET },
    runs: case4.map((x) => ({ ...x })),
    medians: c4,
  }

  const k4 = `4 storm (gate ${S.stormHashConcurrency}/${S.stormHashQueueMax})`
  row(
    k4,
    '/token offered',
    `${fmt(stormRate, 1)}/s (4 x ${fmt(capacity, 2)})`,
    '',
    undefined,
    listRuns(
      case4.map((x) => x.achievedOfferRate),
      1,
      '/s',
    ),
  )
  row(k4, '/users/me req/s', fmt(c4.meRps), '', undefined, listRuns(case4.map((x) => x.usersMe.rps)))
  row(k4, '/users/me latency', lat(case4.map((x) => x.usersMe)))
  row(
    k4,
    '/users/me p99',
    `${fmt(c4.meP99, 1)} ms`,
    '<= 50 ms',
    c4.meP99 <= 50,
    listRuns(
      case4.map((x) => x.usersMe.latencyMs.p99),
      1,
    ),
  )
  row(k4, '/users/me req/s vs unloaded', pct(c4.meFraction), '>= 40%', c4.meFraction >= 0.4)
  row(k4, '/users/me non-2xx + errors', fmt(c4.meFailures), '0', c4.meFailures === 0)
  row(
    k4,
    '/token 200 / 503 / other',
    `${c4.tokenOk} / ${c4.tokenShed} / ${c4.tokenOther}`,
    'other = 0',
    c4.tokenOther === 0,
    case4.map((x) => `${x.token.ok}/${x.token.shed}/${x.token.other}`).join(' '),
  )
  row(
    k4,
    '/token logins/s under storm',
    fmt(
      med(case4, (x) => x.token.loginsPerSecond),
      2,
    ),
    '',
    undefined,
    listRuns(
      case4.map((x) => x.token.loginsPerSecond),
      2,
    ),
  )
  row(k4, '/token 200 latency p99 / max', `${fmt(c4.okP99Ms, 0)} / ${fmt(c4.okMaxMs, 0)} ms`)
  row(
    k4,
    '/token 503 latency max (all runs)',
    c4.shedMaxMs === null ? 'no 503' : `${fmt(c4.shedMaxMs, 1)} ms`,
    '<= 100 ms',
    c4.shedMaxMs === null ? null : c4.shedMaxMs <= 100,
  )
  row(
    k4,
    '/token 503s with Retry-After + detail',
    `${c4.shedWellFormed} of ${c4.tokenShed}`,
    'all',
    c4.tokenShed === 0 ? null : c4.shedWellFormed === c4.tokenShed,
  )
  row(k4, 'storm server log lines (LOG_LEVEL=warn)', fmt(stormServer.output.lines))
  noiseRow(
    k4,
    case4.map((x) => x.usersMe),
  )
  return stormServer
}
