// @ts-check
// Case 1: GET /users/me on the server against the floor (bench/floor.mjs: the same JSON, with no
// authentication and nothing else), the runs alternating between the two so that a change in the
// machine's load hits both alike. Target: the server serves at least 70% of the floor's req/s.
import { cannon, request, usersMeRequests } from '../lib/http.mjs'
import { sleep } from '../lib/process.mjs'
import { fmt, lat, listRuns, log, med, noiseRow, pct, results, row } from '../lib/report.mjs'
import { S } from '../lib/settings.mjs'
import { rpsRatios } from '../lib/stats.mjs'

/**
 * @param {import('../lib/http.mjs').Target} real  the server, with `token`'s user registered
 * @param {import('../lib/http.mjs').Target} floor
 * @param {string} token
 * @returns {Promise<{ realRps: number }>}
 */
export async function usersMeCase(real, floor, token) {
  const me = await request(real.port, 'GET', '/users/me', { headers: { authorization: `Bearer ${token}` } })
  if (me.status !== 200) throw new Error(`GET /users/me with a fresh token: ${me.status} ${me.text.slice(0, 300)}`)
  const floorMe = await request(floor.port, 'GET', '/users/me')
  /** @param {unknown} o */
  const shape = (o) =>
    Object.keys(o ?? {})
      .sort()
      .join(',')
  if (shape(me.json) !== shape(floorMe.json))
    throw new Error(`the floor's JSON shape (${shape(floorMe.json)}) differs from the server's (${shape(me.json)})`)

  log('case 1: GET /users/me vs the floor (warm-up)')
  const meOptions = usersMeRequests(token)
  const floorOptions = { requests: [{ method: 'GET', path: '/users/me' }] }
  await cannon(real, { ...meOptions, duration: S.warmupSeconds })
  await cannon(floor, { ...floorOptions, duration: S.warmupSeconds })
  /** @type {{ real: import('../lib/http.mjs').Run[], floor: import('../lib/http.mjs').Run[] }} */
  const case1 = { real: [], floor: [] }
  for (let r = 0; r < S.runs; r++) {
    /** @type {('real' | 'floor')[]} */
    const order = r % 2 === 0 ? ['real', 'floor'] : ['floor', 'real']
    for (const which of order) {
      log(`case 1 run ${r + 1}/${S.runs}: ${which}`)
      case1[which].push(which === 'real' ? await cannon(real, meOptions) : await cannon(floor, floorOptions))
      await sleep(250)
    }
  }
  const realRps = med(case1.real, (x) => x.rps)
  const floorRps = med(case1.floor, (x) => x.rps)
  const c1 = { realRps, floorRps, ratios: rpsRatios(case1.real, case1.floor), ratio: realRps / floorRps }
  results.cases.usersMe = { runs: case1, medians: c1 }

  const k1 = '1 GET /users/me'
  row(k1, 'server req/s', fmt(c1.realRps), '', undefined, listRuns(case1.real.map((x) => x.rps)))
  row(k1, 'server latency', lat(case1.real))
  row(k1, 'floor req/s', fmt(c1.floorRps), '', undefined, listRuns(case1.floor.map((x) => x.rps)))
  row(k1, 'floor latency', lat(case1.floor))
  row(k1, 'server / floor', pct(c1.ratio), '>= 70%', c1.ratio >= 0.7, c1.ratios.map(pct).join(' / '))
  row(
    k1,
    'CPU % of a core: server / floor / client',
    `${fmt(med(case1.real, (x) => x.serverCpuPct))} / ${fmt(med(case1.floor, (x) => x.serverCpuPct))} / ${fmt(med(case1.real, (x) => x.clientCpuPct))}`,
  )
  noiseRow(k1, [...case1.real, ...case1.floor])
  const failures = [...case1.real, ...case1.floor].reduce((a, x) => a + x.errors + x.non2xx, 0)
  row(k1, 'non-2xx + errors', fmt(failures), '0', failures === 0)
  return c1
}
