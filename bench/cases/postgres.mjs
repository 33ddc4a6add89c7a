// @ts-check
// Cases 7 and 8, the PostgreSQL store, and the set-up of cases 7-9: the run's own schema, created
// first and dropped at the end whatever happens. When PostgreSQL does not answer, or the schema
// cannot be created, cases 7-9 are skipped, with a line and a row saying so.
//   7: GET /users/me with STORE=postgres, with the user cache and (for information) without it,
//      against an in-memory server in the same sitting. Target: at least 50% of the in-memory req/s.
//   8: POST /token with STORE=postgres against the bcrypt bound, as case 2. Target: at least 90%.
import { hashTimes, parallelHashRate } from '../lib/bcrypt.mjs'
import { cannon, login, loginRunOptions, register, request, usersMeRequests } from '../lib/http.mjs'
import { createPgSchema, dropPgSchema, pgClient, pgSchema, pgServerEnv, printablePgUrl } from '../lib/postgres.mjs'
import { sleep, startNode, stopChild } from '../lib/process.mjs'
import { fmt, lat, listRuns, log, med, noiseRow, pct, results, row, serverReport } from '../lib/report.mjs'
import { CORES, S, serverEntry, serverEnv } from '../lib/settings.mjs'
import { median, rpsRatios } from '../lib/stats.mjs'
import { userLookupCase } from './user-lookup.mjs'

/**
 * @typedef {import('../lib/http.mjs').Target} Target
 * @typedef {'memory' | 'cached' | 'uncached'} Variant  case 7's servers
 */

/**
 * Cases 7-9, in the run's own schema.
 * @param {string} sampleHash  a bcrypt hash of the bench's cost, for case 9's records
 */
export async function postgresCases(sampleHash) {
  try {
    await createPgSchema()
  } catch (err) {
    const e = /** @type {NodeJS.ErrnoException} */ (err)
    const reason = `PostgreSQL at ${printablePgUrl} not usable (${e.message || e.code || e})`
    log(`cases 7-9 skipped: ${reason}`)
    console.log(`\nCases 7-9 (PostgreSQL) skipped: ${reason}`)
    results.cases.postgres = { skipped: reason }
    row('7-9 PostgreSQL', 'skipped', reason)
    return
  }
  /** @type {import('pg').Client | undefined} */
  let watch
  try {
    // Our servers' backends, by application_name (`<schema>_<app>`), for the CPU they use.
    const client = await pgClient('watch')
    watch = client
    const prefix = `${pgSchema}_`
    const dbPids = () =>
      client
        .query('SELECT pid FROM pg_stat_activity WHERE left(application_name, $1) = $2', [prefix.length, prefix])
        .then(
          ({ rows }) => new Set(rows.map((r) => r.pid)),
          () => undefined,
        )
    /** @type {Target[]} */
    const servers = []
    try {
      await serverCases(servers, dbPids)
    } finally {
      log('stopping the servers of cases 7-8')
      await Promise.all(servers.map((server) => stopChild(server.child)))
    }
    await userLookupCase(sampleHash)
  } finally {
    await watch?.end().catch(() => {})
    try {
      await dropPgSchema()
    } catch (err) {
      const message = /** @type {Error} */ (err).message
      console.log(`\nWARNING: could not drop schema ${pgSchema}: ${message}`)
      results.cases.postgres = { ...results.cases.postgres, dropError: message }
    }
  }
}

/**
 * Cases 7 and 8: the server with STORE=postgres. Pushes the servers it starts onto `servers`.
 * @param {Target[]} servers
 * @param {Target['dbPids']} dbPids
 */
async function serverCases(servers, dbPids) {
  log('cases 7-8: starting an in-memory server and two PostgreSQL servers (user cache on, off)')
  /**
   * @param {string} name
   * @param {Record<string, string>} env
   */
  const start = async (name, env) => {
    /** @type {Target} */
    const server = await startNode(name, [serverEntry], env)
    server.dbPids = dbPids
    servers.push(server)
    return server
  }
  /** @type {Record<Variant, { server: Target, token: string }>} */
  const variants = {
    memory: { server: await start('in-memory server (case 7)', serverEnv), token: '' },
    cached: { server: await start('postgres server', pgServerEnv('server')), token: '' },
    uncached: {
      server: await start('postgres server, no cache', pgServerEnv('nocache', { USER_CACHE_TTL_MS: '0' })),
      token: '',
    },
  }
  // What the server makes of an unset USER_CACHE_TTL_MS (its default), from loadConfig (printHeader).
  const ttl = results.settings.serverConfig?.['cases 7-8 (postgres)']?.userCacheTtlMs
  // One user per store; the two PostgreSQL servers share theirs (registered on one, logged in on both).
  await register(variants.memory.server.port, 'bench_me')
  await register(variants.cached.server.port, 'bench_me')
  /** @type {string | undefined} */
  let shape
  for (const [name, v] of Object.entries(variants)) {
    v.token = await login(v.server.port, 'bench_me')
    const me = await request(v.server.port, 'GET', '/users/me', { headers: { authorization: `Bearer ${v.token}` } })
    if (me.status !== 200) throw new Error(`GET /users/me (${name}): ${me.status} ${me.text.slice(0, 300)}`)
    const keys = Object.keys(me.json).sort().join(',')
    shape ??= keys
    if (keys !== shape) throw new Error(`GET /users/me (${name}) answers ${keys}, the in-memory server ${shape}`)
  }

  // ---- Case 7: GET /users/me, in-memory vs PostgreSQL (cache on, off), alternating.
  log('case 7: GET /users/me, in-memory vs PostgreSQL (warm-up)')
  for (const v of Object.values(variants))
    await cannon(v.server, { ...usersMeRequests(v.token), duration: S.warmupSeconds })
  /** @type {Record<Variant, import('../lib/http.mjs').Run[]>} */
  const case7 = { memory: [], cached: [], uncached: [] }
  const names = /** @type {Variant[]} */ (Object.keys(case7))
  for (let r = 0; r < S.pgRuns; r++) {
    for (const which of r % 2 === 0 ? names : [...names].reverse()) {
      log(`case 7 run ${r + 1}/${S.pgRuns}: ${which}`)
      case7[which].push(await cannon(variants[which].server, usersMeRequests(variants[which].token)))
      await sleep(250)
    }
  }
  const memoryRps = med(case7.memory, (x) => x.rps)
  const cachedRps = med(case7.cached, (x) => x.rps)
  const uncachedRps = med(case7.uncached, (x) => x.rps)
  const c7 = {
    memoryRps,
    cachedRps,
    uncachedRps,
    userCacheTtlMs: ttl ?? null,
    cachedRatios: rpsRatios(case7.cached, case7.memory),
    uncachedRatios: rpsRatios(case7.uncached, case7.memory),
    cachedRatio: cachedRps / memoryRps,
    uncachedRatio: uncachedRps / memoryRps,
  }
  results.cases.pgUsersMe = { runs: case7, medians: c7 }

  // ---- Case 8: POST /token with STORE=postgres vs the bcrypt bound (case 2's method).
  log('case 8: bcrypt cost 12 in the bench process')
  const bcryptTimes = await hashTimes(5)
  /** @type {number[]} */
  const parallelRates = []
  const case8 = []
  for (let r = 0; r < S.runs; r++) {
    log(`case 8 run ${r + 1}/${S.runs}: POST /token on PostgreSQL (bcrypt timed first)`)
    bcryptTimes.push(...(await hashTimes(S.bcryptSamplesPerRun)))
    parallelRates.push(await parallelHashRate())
    case8.push(await cannon(variants.cached.server, loginRunOptions()))
    await sleep(250)
  }
  const hashMs = median(bcryptTimes)
  const loginRps = med(case8, (x) => x.rps)
  const bound = CORES / (hashMs / 1000)
  const c8 = {
    loginRps,
    bound,
    hashMs,
    ratio: loginRps / bound,
    vsMemoryLogins: results.cases.login ? loginRps / results.cases.login.medians.loginRps : null,
  }
  results.cases.pgLogin = {
    hashMsSamples: bcryptTimes,
    parallelHashesPerSecond: parallelRates,
    runs: case8,
    medians: c8,
  }

  results.servers ??= {}
  for (const [name, v] of Object.entries(variants)) results.servers[`case7 ${name}`] = serverReport(v.server)

  // Rows for cases 7 and 8.
  const k7 = '7 PostgreSQL /users/me'
  const cacheLabel = `user cache ${ttl ?? '?'} ms`
  row(k7, 'in-memory req/s', fmt(c7.memoryRps), '', undefined, listRuns(case7.memory.map((x) => x.rps)))
  row(k7, 'in-memory latency', lat(case7.memory))
  row(k7, `postgres req/s (${cacheLabel})`, fmt(c7.cachedRps), '', undefined, listRuns(case7.cached.map((x) => x.rps)))
  row(k7, 'postgres latency', lat(case7.cached))
  row(
    k7,
    'postgres / in-memory',
    pct(c7.cachedRatio),
    '>= 50%',
    c7.cachedRatio >= 0.5,
    c7.cachedRatios.map(pct).join(' / '),
  )
  row(
    k7,
    'postgres, no cache (TTL 0) req/s (info)',
    fmt(c7.uncachedRps),
    '',
    undefined,
    listRuns(case7.uncached.map((x) => x.rps)),
  )
  row(k7, 'postgres, no cache latency (info)', lat(case7.uncached))
  row(k7, 'no cache / in-memory (info)', pct(c7.uncachedRatio), '', undefined, c7.uncachedRatios.map(pct).join(' / '))
  for (const [which, label] of /** @type {const} */ ([
    ['memory', 'in-memory'],
    ['cached', 'postgres'],
    ['uncached', 'no cache'],
  ])) {
    const list = case7[which]
    row(
      k7,
      `CPU % of a core, ${label}: server / pg backends / client`,
      `${fmt(med(list, (x) => x.serverCpuPct))} / ${fmt(med(list, (x) => x.dbCpuPct))} / ${fmt(med(list, (x) => x.clientCpuPct))}`,
    )
  }
  const c7Failures = names.map((n) => case7[n].reduce((a, x) => a + x.errors + x.non2xx, 0))
  const c7FailuresTotal = c7Failures.reduce((a, b) => a + b, 0)
  row(
    k7,
    'non-2xx + errors',
    fmt(c7FailuresTotal),
    '0',
    c7FailuresTotal === 0,
    `${c7Failures.join(' / ')} (mem/pg/no cache)`,
  )
  noiseRow(
    k7,
    names.flatMap((n) => case7[n]),
  )

  const k8 = '8 PostgreSQL /token'
  row(k8, 'bcrypt cost 12, one hash (bench)', `${fmt(hashMs, 1)} ms`, '', undefined, `${bcryptTimes.length} samples`)
  row(k8, `bcrypt bound (${CORES} cores / hash)`, `${fmt(c8.bound, 2)}/s`)
  row(
    k8,
    `bcrypt, ${CORES} hashes at once (info)`,
    `${fmt(median(parallelRates), 2)}/s`,
    '',
    undefined,
    listRuns(parallelRates, 2),
  )
  row(
    k8,
    'logins/s',
    fmt(c8.loginRps, 2),
    '',
    undefined,
    listRuns(
      case8.map((x) => x.rps),
      2,
    ),
  )
  row(k8, 'latency', lat(case8))
  row(k8, 'logins/s / bound', pct(c8.ratio), '>= 90%', c8.ratio >= 0.9)
  row(k8, 'logins/s vs in-memory (case 2) (info)', c8.vsMemoryLogins === null ? 'n/a' : pct(c8.vsMemoryLogins))
  row(
    k8,
    'CPU % of a core: server / pg backends / client',
    `${fmt(med(case8, (x) => x.serverCpuPct))} / ${fmt(med(case8, (x) => x.dbCpuPct))} / ${fmt(med(case8, (x) => x.clientCpuPct))}`,
  )
  const c8Failures = case8.reduce((a, x) => a + x.errors + x.non2xx, 0)
  row(k8, 'non-2xx + errors', fmt(c8Failures), '0', c8Failures === 0)
  noiseRow(k8, case8)
}
