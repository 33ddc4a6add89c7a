// @ts-check
// `npm run bench`: the auth server's performance, in one sitting. Starts the built server (dist/)
// in production mode and the floor (bench/floor.mjs, a bare Fastify app) as child processes,
// drives them with autocannon (and, for the login storm, an open-loop generator in a worker
// thread: bench/storm.mjs), and measures memory (bench/memory.mjs) and cold start in their own
// processes. Prints a table and writes bench/results.json and bench/report.html (charts, inline
// SVG, made from the results by bench/lib/html.mjs; `node bench/html-report.mjs` remakes it from
// a results file). It reports; it does not judge: the exit code is 0 whether or not the targets
// are met, and non-zero only when something crashed.
//
// The cases, in the order they run (each in cases/, with its targets):
//   1  GET /users/me: the server against the floor                      cases/users-me.mjs
//   2  POST /token, logins/s against the bcrypt bound                    cases/logins-registrations.mjs
//   3  POST /register, registrations/s against the same bound            cases/logins-registrations.mjs
//   4  a login storm at 4 x capacity, GET /users/me alongside            cases/login-storm.mjs
//   5  memory per user of the in-memory store                            cases/memory-per-user.mjs
//   6  cold start, and exit on SIGTERM                                   cases/cold-start.mjs
//   7  GET /users/me with STORE=postgres (user cache on, off) against an in-memory server in the
//      same sitting                                                      cases/postgres.mjs
//   8  POST /token with STORE=postgres against the bcrypt bound          cases/postgres.mjs
//   9  the user lookup itself (findById), in a child process of its own
//      (bench/pg-lookup.mjs)                                             cases/user-lookup.mjs
// lib/ holds what they share. The other .mjs files of bench/ are programs run on their own, as
// child processes or (storm.mjs) a worker thread.
//
// Environment:
//   BENCH_RUNS         repeats per case (default 3)
//   BENCH_DURATION     seconds per run (default 5; logins and registrations run twice as long)
//   BENCH_CONNECTIONS  connections for GET /users/me (default 50)
//   BENCH_QUICK=1      smoke run: 1 run, 2 s, 100,000 users only
//   BENCH_ONLY         only these cases, comma-separated file names of cases/ (users-me,
//                      logins-registrations, login-storm, memory-per-user, cold-start, postgres),
//                      plus those they need (login-storm runs users-me and logins-registrations
//                      first). A partial run writes bench/results.local.json (ignored by git) and
//                      its report in the temporary directory, never bench/results.json or
//                      bench/report.html. `BENCH_ONLY=cold-start npm run bench`: case 6 alone.
//   BENCH_HASH_CONCURRENCY, BENCH_HASH_QUEUE_MAX, BENCH_HASH_MAX_WAIT_MS  the hash gate of the
//                      server for cases 1-3 (default: cores, 8 x that, 60000: nothing is shed)
//   BENCH_STORM_HASH_CONCURRENCY, BENCH_STORM_HASH_QUEUE_MAX, BENCH_STORM_HASH_MAX_WAIT_MS  the gate
//                      of the storm's own server (default: the server's own defaults, except the
//                      two above when set; HASH_MAX_WAIT_MS is left unset)
//   BENCH_COLD_STARTS  cold starts measured (default 5)
//   BENCH_PG_URL       the PostgreSQL of cases 7-9 (default postgres://postgres@127.0.0.1:5432/test,
//                      no query string needed). Cases 7-9 run in a schema of their own, bench_<random>,
//                      created for them and dropped at the end on every way out (a signal included);
//                      when PostgreSQL does not answer they are skipped, with a line saying so.
import { existsSync } from 'node:fs'
import path from 'node:path'
import bcrypt from 'bcrypt'
import { coldStartCase } from './cases/cold-start.mjs'
import { loginStormCase } from './cases/login-storm.mjs'
import { loginsAndRegistrationsCases } from './cases/logins-registrations.mjs'
import { memoryCase } from './cases/memory-per-user.mjs'
import { postgresCases } from './cases/postgres.mjs'
import { usersMeCase } from './cases/users-me.mjs'
import { hashTimes } from './lib/bcrypt.mjs'
import { prepare } from './lib/http.mjs'
import { dropPgSchema, dropPgSchemaSync } from './lib/postgres.mjs'
import { HOST, killAll, makeWorkDir, removeWorkDir, startNode, stopChild } from './lib/process.mjs'
import { finish, log, printHeader, results, serverReport } from './lib/report.mjs'
import { benchDir, only, PASSWORD, S, serverEntry, serverEnv, stormUsers } from './lib/settings.mjs'

/** @param {string} name  a case's file name in cases/ */
const selected = (name) => only === null || only.has(name)

// Every way out kills the children, removes their work directory and drops the PostgreSQL schema.
process.on('exit', () => {
  killAll()
  removeWorkDir()
  dropPgSchemaSync()
})
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    killAll()
    // The servers are gone: drop the schema of cases 7-9 (if any), waiting at most 5 s for it.
    const giveUp = new Promise((resolve) => setTimeout(resolve, 5000))
    Promise.race([dropPgSchema().catch(() => {}), giveUp]).finally(() => process.exit(130))
  })
}

async function main() {
  if (!existsSync(serverEntry)) throw new Error(`${serverEntry} is missing: run \`npm run build\` first`)
  makeWorkDir()
  await printHeader()
  if (only !== null) log(`BENCH_ONLY: ${[...only].join(', ')}`)

  // bcrypt at the configured cost, in this process, before anything else runs.
  /** @type {number[]} */
  let bcryptTimes = []
  if (selected('logins-registrations')) {
    log('measuring bcrypt (cost 12) in the bench process')
    await hashTimes(1) // the thread pool and the native module warm up
    bcryptTimes = await hashTimes(5)
  }
  const sampleHash = await bcrypt.hash(PASSWORD, S.bcryptRounds)

  if (['users-me', 'logins-registrations', 'login-storm'].some(selected)) await inMemoryCases(bcryptTimes)
  if (selected('memory-per-user')) await memoryCase(sampleHash) // nothing else running
  if (selected('cold-start')) await coldStartCase()
  if (selected('postgres')) await postgresCases(sampleHash) // skipped when PostgreSQL does not answer
}

/**
 * Cases 1-4 (those selected), on the server and the floor started here (and the storm's own server).
 * @param {number[]} bcryptTimes
 */
async function inMemoryCases(bcryptTimes) {
  log('starting the server and the floor')
  const real = await startNode('server', [serverEntry], serverEnv)
  /** @type {import('./lib/http.mjs').Target[]} */
  const extraServers = []
  const floor = selected('users-me') ? await startNode('floor', [path.join(benchDir, 'floor.mjs')], { HOST }) : null
  try {
    // A user and a token for /users/me; the storm's users too.
    const token = await prepare(real, stormUsers)
    results.servers = { server: serverReport(real) }
    const c1 = floor ? await usersMeCase(real, floor, token) : null
    const c2 = selected('logins-registrations') ? await loginsAndRegistrationsCases(real, bcryptTimes) : null
    if (selected('login-storm') && c1 && c2) {
      const stormServer = await loginStormCase({
        capacity: c2.loginRps,
        unloadedMeRps: c1.realRps,
        servers: extraServers,
      })
      results.servers.stormServer = serverReport(stormServer)
    }
    results.servers.server = serverReport(real)
    if (floor) results.servers.floor = serverReport(floor)
  } finally {
    log('stopping the server and the floor')
    await Promise.all([real, floor, ...extraServers].map((server) => server && stopChild(server.child)))
  }
}

/** @type {unknown} */
let crashed = null
try {
  await main()
} catch (err) {
  crashed = err
} finally {
  killAll()
  removeWorkDir()
}
finish(crashed)
