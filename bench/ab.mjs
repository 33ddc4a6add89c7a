// @ts-check
// `node bench/ab.mjs [--case users-me|login] [--runs N] [--duration S] NAME=DIST_DIR[@VAR=value;...] ...`: two or
// more builds of the server side by side, in one sitting, for the question "did this change cost
// anything?". Each NAME=DIST_DIR is a built dist/ (e.g. of a git worktree at another commit: see
// docs/performance.md). For `users-me` the floor (bench/floor.mjs) runs too. Runs alternate between
// the targets, in a rotating order, after one warm-up each; the table gives medians of req/s and of
// the server's CPU time per request (utime + stime of its process over the requests it answered,
// the steadier figure on a shared machine), the ratio to the floor or to the first target, and the
// CPU the machine's other processes took meanwhile (noise). Production settings as in `npm run
// bench` (bench/lib/settings.mjs), except BCRYPT_ROUNDS for `login` (--bcrypt-rounds, default 10,
// the cheapest production accepts: a cheaper hash leaves more of a login's cost to what surrounds
// it, which is what a change touches).
import path from 'node:path'
import { cpuSeconds } from './lib/cpu.mjs'
import { cannon, loginBody, prepare, usersMeRequests } from './lib/http.mjs'
import { killAll, startNode, stopChild } from './lib/process.mjs'
import { benchDir, serverEnv } from './lib/settings.mjs'

process.on('exit', killAll)
process.on('SIGINT', () => process.exit(130))

const args = process.argv.slice(2)
/**
 * @param {string} name
 * @param {string} fallback
 */
function option(name, fallback) {
  const i = args.indexOf(`--${name}`)
  if (i === -1) return fallback
  const [, value] = args.splice(i, 2)
  return value ?? fallback
}
const kase = option('case', 'users-me')
const runs = Number(option('runs', '5'))
const duration = Number(option('duration', '5'))
const bcryptRounds = option('bcrypt-rounds', '10')
if (kase !== 'users-me' && kase !== 'login') throw new Error('--case must be users-me or login')
// NAME=DIST_DIR, optionally followed by @VAR=value;VAR=value: settings of that target alone (e.g.
// `pg=dist@STORE=postgres;DATABASE_URL=postgres://…;REDIS_URL=redis://…;MIGRATE_ON_START=true`).
const specs = args.map((arg) => {
  // The first @ only: the values may hold more (postgres://user@host).
  const at = arg.indexOf('@')
  const [head, extra] = at === -1 ? [arg, ''] : [arg.slice(0, at), arg.slice(at + 1)]
  const [name, dir] = head.split('=')
  if (!name || !dir) throw new Error(`expected NAME=DIST_DIR[@VAR=value;...], got ${arg}`)
  /** @type {Record<string, string>} */
  const settings = {}
  for (const pair of extra.split(';').filter(Boolean)) {
    const at = pair.indexOf('=')
    settings[pair.slice(0, at)] = pair.slice(at + 1)
  }
  return { name, entry: path.resolve(dir, 'server.js'), settings }
})
if (specs.length === 0) throw new Error('usage: node bench/ab.mjs [--case users-me|login] NAME=DIST_DIR ...')

/** @typedef {Awaited<ReturnType<typeof startNode>> & { options: Partial<import('autocannon').Options> }} Target */

const env = {
  ...serverEnv,
  ...(kase === 'login' ? { BCRYPT_ROUNDS: bcryptRounds, HASH_MAX_WAIT_MS: '60000', HASH_QUEUE_MAX: '10000' } : {}),
}
/** @type {Target[]} */
const targets = []
if (kase === 'users-me') {
  const floor = await startNode('floor', [path.join(benchDir, 'floor.mjs')], {})
  targets.push({ ...floor, options: { requests: [{ method: 'GET', path: '/users/me' }] } })
}
for (const spec of specs) {
  const server = await startNode(spec.name, [spec.entry], { ...env, ...spec.settings })
  const token = await prepare(server, [])
  const options =
    kase === 'users-me'
      ? usersMeRequests(token)
      : {
          connections: 8,
          requests: [
            {
              method: /** @type {const} */ ('POST'),
              path: '/token',
              headers: { 'content-type': 'application/x-www-form-urlencoded' },
              body: loginBody('bench_me'),
            },
          ],
        }
  targets.push({ ...server, options })
}

/** @param {number[]} xs */
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? (s[m] ?? Number.NaN) : ((s[m - 1] ?? Number.NaN) + (s[m] ?? Number.NaN)) / 2
}

/** @param {Target} target @param {number} seconds */
async function measure(target, seconds) {
  const before = cpuSeconds(target.child.pid) ?? 0
  const run = await cannon(target, { ...target.options, duration: seconds })
  const cpu = (cpuSeconds(target.child.pid) ?? 0) - before
  const answered = run.total
  return {
    rps: run.rps,
    cpuUs: (cpu * 1e6) / Math.max(1, answered),
    bad: run.non2xx + run.errors,
    others: run.otherCpuPct ?? 0,
  }
}

for (const target of targets) await measure(target, 2)
/** @type {Map<string, Awaited<ReturnType<typeof measure>>[]>} */
const results = new Map(targets.map((t) => [t.name, []]))
for (let r = 0; r < runs; r++) {
  for (let i = 0; i < targets.length; i++) {
    const target = /** @type {Target} */ (targets[(i + r) % targets.length])
    const x = await measure(target, duration)
    results.get(target.name)?.push(x)
    console.error(
      `run ${r + 1}/${runs} ${target.name.padEnd(12)} ${x.rps.toFixed(1).padStart(9)} req/s ${x.cpuUs.toFixed(1).padStart(8)} µs CPU/req  others ${x.others.toFixed(0)}%${x.bad ? `  non-2xx+errors ${x.bad}` : ''}`,
    )
  }
}
for (const target of targets) await stopChild(target.child)

const reference = targets[0]?.name
const refRps = median((results.get(reference ?? '') ?? []).map((x) => x.rps))
console.log(`\n${kase}: ${runs} runs x ${duration} s per target, medians (ratio to ${reference})`)
console.log('target        req/s      µs CPU/req   ratio    others % of a core   non-2xx+errors')
for (const target of targets) {
  const xs = results.get(target.name) ?? []
  const rps = median(xs.map((x) => x.rps))
  console.log(
    `${target.name.padEnd(12)} ${rps.toFixed(1).padStart(9)} ${median(xs.map((x) => x.cpuUs))
      .toFixed(1)
      .padStart(12)} ${`${((rps / refRps) * 100).toFixed(1)}%`.padStart(8)} ${median(xs.map((x) => x.others))
      .toFixed(0)
      .padStart(12)} ${String(xs.reduce((a, x) => a + x.bad, 0)).padStart(18)}`,
  )
}
process.exit(0)
