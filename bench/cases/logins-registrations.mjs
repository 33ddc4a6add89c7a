// @ts-check
// Cases 2 and 3: POST /token (logins) and POST /register (registrations) against the bcrypt bound,
// cores / the time of one hash at cost 12, timed in the bench process. Before each run the bench
// times a few more hashes (and, for information, `cores` hashes at once); the bound of both cases
// comes from the median of all those samples. Target: at least 90% of the bound.
import { randomBytes } from 'node:crypto'
import { hashTimes, parallelHashRate } from '../lib/bcrypt.mjs'
import { cannon, loginRunOptions } from '../lib/http.mjs'
import { sleep } from '../lib/process.mjs'
import { fmt, lat, listRuns, log, med, noiseRow, pct, results, row } from '../lib/report.mjs'
import { CORES, PASSWORD, S } from '../lib/settings.mjs'
import { median } from '../lib/stats.mjs'

/**
 * @param {import('../lib/http.mjs').Target} real  the server, with bench_me registered
 * @param {number[]} bcryptTimes  hash times measured before any server ran
 * @returns {Promise<{ loginRps: number }>}
 */
export async function loginsAndRegistrationsCases(real, bcryptTimes) {
  /** @type {number[]} */
  const bcryptPerRun = []
  /** @type {number[]} */
  const parallelRates = []
  const case2 = []
  const case3 = []
  for (let r = 0; r < S.runs; r++) {
    log(`case 2 run ${r + 1}/${S.runs}: POST /token (bcrypt timed first)`)
    bcryptPerRun.push(...(await hashTimes(S.bcryptSamplesPerRun)))
    parallelRates.push(await parallelHashRate())
    case2.push(await cannon(real, loginRunOptions()))
    await sleep(250)
  }
  for (let r = 0; r < S.runs; r++) {
    log(`case 3 run ${r + 1}/${S.runs}: POST /register (bcrypt timed first)`)
    bcryptPerRun.push(...(await hashTimes(S.bcryptSamplesPerRun)))
    parallelRates.push(await parallelHashRate())
    // Every request registers a new user.
    const tag = randomBytes(3).toString('hex')
    let seq = 0
    case3.push(
      await cannon(real, {
        connections: S.hashConnections,
        duration: S.hashDurationSeconds,
        requests: [
          {
            method: 'POST',
            path: '/register',
            headers: { 'content-type': 'application/json' },
            setupRequest: (req) => ({
              ...req,
              body: JSON.stringify({ username: `r${r}_${tag}_${seq++}`, password: PASSWORD }),
            }),
          },
        ],
      }),
    )
    await sleep(250)
  }
  const allBcrypt = [...bcryptTimes, ...bcryptPerRun]
  const hashMs = median(allBcrypt)
  const bound = CORES / (hashMs / 1000)
  const loginRps = med(case2, (x) => x.rps)
  const c2 = { loginRps, bound, hashMs, ratio: loginRps / bound }
  const registerRps = med(case3, (x) => x.rps)
  const c3 = { registerRps, bound, hashMs, ratio: registerRps / bound }
  const parallelBound = median(parallelRates)
  results.cases.bcryptBound = {
    hashMsSamples: allBcrypt,
    medianHashMs: hashMs,
    cores: CORES,
    boundPerSecond: bound,
    parallelHashesPerSecond: parallelRates,
    parallelMedian: parallelBound,
  }
  results.cases.login = { runs: case2, medians: c2 }
  results.cases.register = { runs: case3, medians: c3 }

  const k2 = '2 POST /token'
  row(k2, 'bcrypt cost 12, one hash (bench)', `${fmt(hashMs, 1)} ms`, '', undefined, `${allBcrypt.length} samples`)
  row(k2, `bcrypt bound (${CORES} cores / hash)`, `${fmt(bound, 2)}/s`)
  row(
    k2,
    `bcrypt, ${CORES} hashes at once (info)`,
    `${fmt(parallelBound, 2)}/s`,
    '',
    undefined,
    listRuns(parallelRates, 2),
  )
  row(
    k2,
    'logins/s',
    fmt(c2.loginRps, 2),
    '',
    undefined,
    listRuns(
      case2.map((x) => x.rps),
      2,
    ),
  )
  row(k2, 'latency', lat(case2))
  row(k2, 'logins/s / bound', pct(c2.ratio), '>= 90%', c2.ratio >= 0.9)
  const c2Failures = case2.reduce((a, x) => a + x.errors + x.non2xx, 0)
  row(k2, 'non-2xx + errors', fmt(c2Failures), '0', c2Failures === 0)
  noiseRow(k2, case2)

  const k3 = '3 POST /register'
  row(
    k3,
    'registrations/s',
    fmt(c3.registerRps, 2),
    '',
    undefined,
    listRuns(
      case3.map((x) => x.rps),
      2,
    ),
  )
  row(k3, 'latency', lat(case3))
  row(k3, 'registrations/s / bound', pct(c3.ratio), '>= 90%', c3.ratio >= 0.9)
  const c3Failures = case3.reduce((a, x) => a + x.errors + x.non2xx, 0)
  row(k3, 'non-2xx + errors', fmt(c3Failures), '0', c3Failures === 0)
  noiseRow(k3, case3)
  return c2
}
