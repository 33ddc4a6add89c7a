// @ts-check
// What the bench prints and saves: the header (settings, and what the servers make of them), the
// progress log (stderr), the table's rows, and at the end the table, bench/results.json and the
// charts made from it, bench/report.html (bench/lib/html.mjs).
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { rssBytes, seenOthers } from './cpu.mjs'
import { renderReport } from './html.mjs'
import { pgSchema, pgServerEnv, pgUrl, printablePgUrl } from './postgres.mjs'
import { CORES, printableEnv, reportFile, resultsFile, root, S, serverEnv, stormEnv } from './settings.mjs'
import { median } from './stats.mjs'

/**
 * @typedef {{ case: string, metric: string, value: string, runs: string, target: string, result: string }} Row
 * @typedef {{ rssBytesAtEnd: number | null, logLines: number, logTail: string[] }} ServerReport
 */

/** Everything saved in bench/results.json. Each case adds its own entry to `cases`. */
export const results = {
  machine: {
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cpuCount: os.cpus().length,
    availableParallelism: CORES,
    totalMemoryBytes: os.totalmem(),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    date: new Date().toISOString(),
    /** @type {number | undefined} */
    loadAverage1mAtStart: undefined,
  },
  /** @type {Record<string, any>} */
  settings: {
    ...S,
    serverEnv: printableEnv,
    postgres: {
      url: printablePgUrl,
      schema: pgSchema,
      serverEnvAdded: {
        STORE: 'postgres',
        DATABASE_URL: pgUrl('<server|nocache>'),
        MIGRATE_ON_START: 'true',
        USER_CACHE_TTL_MS: 'unset (the default), and 0 for the no-cache server of case 7',
      },
    },
  },
  /** @type {Record<string, any>} */
  cases: {},
  /** The servers' memory and logs at the end of their cases. @type {Record<string, ServerReport> | undefined} */
  servers: undefined,
  /** @type {Row[] | undefined} */
  table: undefined,
  /** @type {Record<string, number> | undefined} */
  otherProcessesSeen: undefined,
  /** @type {string | undefined} */
  error: undefined,
}

/**
 * A progress line on stderr, with the time.
 * @param {string} message
 */
export function log(message) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`)
}

// ---------------------------------------------------------------------------------------------
// Formatting

/**
 * A number with `digits` decimals and thousands separators; n/a when there is none.
 * @param {number | null | undefined} n
 */
export const fmt = (n, digits = 0) =>
  n === null || n === undefined || Number.isNaN(n)
    ? 'n/a'
    : Number(n).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
/** @param {number | null} x  a ratio */
export const pct = (x) => (x === null ? 'n/a' : `${(x * 100).toFixed(1)}%`)
/**
 * Each run's figure, for the runs column.
 * @param {readonly (number | null)[]} values
 */
export const listRuns = (values, digits = 0, unit = '') => values.map((v) => `${fmt(v, digits)}${unit}`).join(' / ')
/**
 * The median of `f` over the runs.
 * @template T
 * @param {readonly T[]} list
 * @param {(run: T) => unknown} f
 */
export const med = (list, f) => median(list.map(f))
/**
 * p50 / p99 / max of autocannon runs, each the median over the runs.
 * @param {readonly import('./stats.mjs').Summary[]} list
 */
export const lat = (list) =>
  `p50 ${fmt(
    med(list, (x) => x.latencyMs.p50),
    1,
  )} / p99 ${fmt(
    med(list, (x) => x.latencyMs.p99),
    1,
  )} / max ${fmt(
    med(list, (x) => x.latencyMs.max),
    1,
  )} ms`

// ---------------------------------------------------------------------------------------------
// The table

/** @type {Row[]} */
const rows = []

/** @param {boolean | null} ok */
const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'PASS' : 'FAIL')

/**
 * Adds a row to the table. `ok` undefined: no target (the result column is left empty); null: the
 * target does not apply to this run (n/a).
 * @param {string} kase
 * @param {string} metric
 * @param {string} value
 * @param {boolean | null} [ok]
 */
export function row(kase, metric, value, target = '', ok = undefined, runs = '') {
  rows.push({ case: kase, metric, value, runs, target, result: ok === undefined ? '' : verdict(ok) })
}

/**
 * The noise row of a case: the other tenants' CPU during its runs.
 * @param {string} kase
 * @param {readonly { otherCpuPct: number | null }[]} list
 */
export const noiseRow = (kase, list) =>
  row(
    kase,
    "others' CPU, % of a core (noise)",
    fmt(med(list, (x) => x.otherCpuPct)),
    '',
    undefined,
    listRuns(list.map((x) => x.otherCpuPct)),
  )

/**
 * A started server's memory and log, for results.servers.
 * @param {import('./process.mjs').Started} server
 * @returns {ServerReport}
 */
export const serverReport = ({ child, output }) => ({
  rssBytesAtEnd: rssBytes(child.pid),
  logLines: output.lines,
  logTail: output.tail,
})

function printTable() {
  /** @type {Row} */
  const headers = {
    case: 'case',
    metric: 'metric',
    value: 'value (median)',
    runs: 'runs',
    target: 'target',
    result: 'result',
  }
  const cols = /** @type {(keyof Row)[]} */ (Object.keys(headers))
  const width = /** @type {Record<keyof Row, number>} */ (
    Object.fromEntries(cols.map((c) => [c, Math.max(headers[c].length, ...rows.map((r) => String(r[c]).length))]))
  )
  /** @param {Row} r */
  const line = (r) => `| ${cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')} |`
  console.log(line(headers))
  console.log(`|${cols.map((c) => '-'.repeat(width[c] + 2)).join('|')}|`)
  for (const r of rows) console.log(line(r))
}

// ---------------------------------------------------------------------------------------------
// The header and the end

/** Prints the machine, the settings and the servers' environments; saves what loadConfig makes of them. */
export async function printHeader() {
  console.log(
    `Machine: ${results.machine.cpuModel} x ${results.machine.cpuCount}, ${fmt(os.totalmem() / 2 ** 30, 1)} GiB, Node ${process.version}`,
  )
  console.log(
    `Runs per case: ${S.runs}, ${S.durationSeconds} s each (${S.hashDurationSeconds} s for logins and registrations), ${S.connections} connections (pipelining ${S.pipelining})${S.quick ? ' [BENCH_QUICK]' : ''}`,
  )
  console.log('Server environment (rate limits raised so that throttling does not count):')
  for (const [k, v] of Object.entries(printableEnv)) console.log(`  ${k}=${v}`)
  console.log(`Logins and registrations (cases 2, 3, 8) use ${S.hashConnections} connections.`)
  console.log(
    `Cases 7-9 (PostgreSQL ${printablePgUrl}): schema ${pgSchema}, created for this run and dropped at the end; the servers get the environment above plus STORE=postgres, MIGRATE_ON_START=true, DATABASE_URL with search_path=${pgSchema} (USER_CACHE_TTL_MS: the default, and 0 for case 7's no-cache server).`,
  )
  console.log(
    `  Case 7: ${S.pgRuns} run(s) of each server, one user (one token): with the cache, every lookup but one per USER_CACHE_TTL_MS is a hit, the best case; the no-cache server is the worst.`,
  )
  /** @type {Record<string, string>} */
  const base = serverEnv
  const stormDiff = Object.entries(stormEnv).filter(([k, v]) => base[k] !== v)
  const stormUnset = Object.keys(base).filter((k) => !(k in stormEnv))
  console.log(
    `The storm (case 4) has a server of its own, the same but ${[
      ...stormDiff.map(([k, v]) => `${k}=${v}`),
      ...stormUnset.map((k) => `${k} unset (server default)`),
    ].join(', ')}`,
  )
  // What the servers make of those environments, from their own config loader (dist/config.js).
  try {
    // Imported from the build, typed from its source.
    const { loadConfig } = /** @type {typeof import('../../src/config.js')} */ (
      await import(pathToFileURL(path.join(root, 'dist', 'config.js')).href)
    )
    results.settings.serverConfig = {}
    let first
    /** @type {[string, Record<string, string>][]} */
    const servers = [
      ['cases 1-3, 6', serverEnv],
      ['case 4 (storm)', stormEnv],
      ['cases 7-8 (postgres)', pgServerEnv('server')],
      ['case 7 (postgres, no user cache)', pgServerEnv('nocache', { USER_CACHE_TTL_MS: '0' })],
    ]
    for (const [name, env] of servers) {
      const config = loadConfig(env)
      const storage = config.storage
        ? `${config.storage.kind}${config.storage.redisUrl ? ' + redis' : ''}${
            config.storage.kind === 'postgres' ? `, USER_CACHE_TTL_MS ${config.storage.userCacheTtlMs}` : ''
          }`
        : 'memory (no storage setting)'
      results.settings.serverConfig[name] = {
        storage,
        ...(config.storage?.kind === 'postgres' && { userCacheTtlMs: config.storage.userCacheTtlMs }),
        password: config.password,
        throttle: config.throttle,
      }
      console.log(`Server config for ${name} (loadConfig): storage ${storage}`)
      // The PostgreSQL servers differ from the first only in their storage: not printed twice.
      const rest = JSON.stringify([config.password, config.throttle])
      first ??= rest
      if (env.STORE === 'postgres' && rest === first) continue
      console.log(`  password ${JSON.stringify(config.password)}`)
      console.log(`  throttle ${JSON.stringify(config.throttle)}`)
    }
  } catch (err) {
    console.log(
      `  (could not load dist/config.js to show the resolved settings: ${/** @type {Error} */ (err).message})`,
    )
  }
  if (S.hashQueueMax < S.hashConnections - S.hashConcurrency)
    console.log(
      `  WARNING: HASH_QUEUE_MAX ${S.hashQueueMax} < ${S.hashConnections - S.hashConcurrency}: cases 2 and 3 may shed (503)`,
    )
  const load = os.loadavg()[0] ?? 0
  results.machine.loadAverage1mAtStart = load
  console.log(`Load average (1 min) at start: ${load.toFixed(2)} on ${CORES} cores`)
  if (load > CORES / 2)
    console.log('  WARNING: the machine is busy with other work; figures will be skewed (see the noise rows)')
  console.log('')
}

/**
 * Writes bench/results.json and bench/report.html, then prints the table, the servers' log lines,
 * the busiest other processes and, when `crashed` is set, the error.
 * @param {unknown} crashed
 */
export function finish(crashed) {
  results.table = rows
  results.otherProcessesSeen = Object.fromEntries([...seenOthers].sort((a, b) => b[1] - a[1]))
  const error = /** @type {Error | null} */ (crashed)
  if (crashed) results.error = String(error?.stack ?? crashed)
  // Floats to 3 decimals: enough for every figure, and a readable file.
  /** @type {(key: string, value: unknown) => unknown} */
  const round = (_key, value) =>
    typeof value === 'number' && !Number.isInteger(value) ? Math.round(value * 1000) / 1000 : value
  writeFileSync(resultsFile, `${JSON.stringify(results, round, 2)}\n`)
  // The file lives in the linted tree (`biome check .`): let biome lay it out the way it wants.
  const biome = path.join(root, 'node_modules', '.bin', 'biome')
  if (existsSync(biome)) spawnSync(biome, ['format', '--write', resultsFile], { cwd: root, stdio: 'ignore' })
  // From the rounded figures just saved, so that `node bench/html-report.mjs` remakes the same page.
  // A failure here must not lose the results: said, and the run goes on to print the table.
  /** @type {string | undefined} */
  let report
  try {
    writeFileSync(reportFile, renderReport(JSON.parse(readFileSync(resultsFile, 'utf8'))))
    report = reportFile
  } catch (err) {
    console.error(`could not write the HTML report: ${/** @type {Error} */ (err)?.stack ?? err}`)
  }
  console.log('')
  if (rows.length > 0) printTable()
  for (const [name, { logLines, logTail }] of Object.entries(results.servers ?? {})) {
    if (logLines === 0) continue
    console.log(`\nThe ${name} wrote ${logLines} log line(s); the last:\n  ${logTail.slice(-2).join('\n  ')}`)
  }
  if (seenOthers.size > 0) {
    console.log('\nOther processes busy during the measurements (highest % of a core in one run):')
    for (const [name, pctOfCore] of [...seenOthers].sort((a, b) => b[1] - a[1]).slice(0, 10))
      console.log(`  ${String(pctOfCore).padStart(4)}%  ${name}`)
  }
  console.log(`\nResults: ${path.relative(process.cwd(), resultsFile) || resultsFile}`)
  if (report) console.log(`Charts: ${path.relative(process.cwd(), report) || report}`)
  if (crashed) {
    console.error(`\nThe benchmark crashed: ${error?.stack ?? crashed}`)
    process.exitCode = 1
  }
}
