// @ts-check
// Case 9: the user lookup itself (findById), timed in a process of its own (bench/pg-lookup.mjs)
// with no server running: in memory, on PostgreSQL one at a time and many in flight, and as hits
// of the user cache over PostgreSQL. For information: no target.
import path from 'node:path'
import { noiseFields, noiseMeter } from '../lib/cpu.mjs'
import { pgUrl } from '../lib/postgres.mjs'
import { runJsonChild } from '../lib/process.mjs'
import { fmt, listRuns, log, med, results, row } from '../lib/report.mjs'
import { benchDir, S } from '../lib/settings.mjs'

/**
 * What bench/pg-lookup.mjs prints (the fields used here): one entry per phase.
 * @typedef {{ perSecond: number, microsP50: number | null, microsP99: number | null,
 *   clientCpuMicrosPerLookup: number, backendCpuMicrosPerLookup: number | null }} Phase
 * @typedef {Record<'memory' | 'pgSerial' | 'pgParallel' | 'cacheHits', Phase>
 *   & { poolMax: number, backendCpuSecondsTotal?: number }} LookupRun
 */

/**
 * @param {string} hash  a bcrypt hash, stored in every record
 * @returns {Promise<LookupRun>}
 */
const runLookupChild = (hash) =>
  runJsonChild('lookup child', [path.join(benchDir, 'pg-lookup.mjs')], {
    BENCH_PG_URL: pgUrl('lookup'),
    BENCH_HASH: hash,
    BENCH_LOOKUP_USERS: String(S.lookupUsers),
    BENCH_LOOKUP_SECONDS: String(S.lookupSeconds),
    BENCH_LOOKUP_CONCURRENCY: String(S.lookupConcurrency),
  })

/** @param {string} sampleHash  a bcrypt hash of the bench's cost */
export async function userLookupCase(sampleHash) {
  /** @type {LookupRun[]} */
  const case9 = []
  const noise = noiseMeter()
  let dbSeconds = 0
  for (let r = 0; r < S.runs; r++) {
    log(`case 9 run ${r + 1}/${S.runs}: findById, ${fmt(S.lookupUsers)} users, ${S.lookupSeconds} s per phase`)
    const run = await runLookupChild(sampleHash)
    dbSeconds += run.backendCpuSecondsTotal ?? 0
    case9.push(run)
  }
  /**
   * The medians over the runs of one phase's figures.
   * @param {'memory' | 'pgSerial' | 'pgParallel' | 'cacheHits'} p
   */
  const medians = (p) => ({
    perSecond: med(case9, (x) => x[p].perSecond),
    microsP50: med(case9, (x) => x[p].microsP50),
    microsP99: med(case9, (x) => x[p].microsP99),
    clientCpuMicrosPerLookup: med(case9, (x) => x[p].clientCpuMicrosPerLookup),
    backendCpuMicrosPerLookup: med(case9, (x) => x[p].backendCpuMicrosPerLookup),
  })
  const m = {
    memory: medians('memory'),
    pgSerial: medians('pgSerial'),
    pgParallel: medians('pgParallel'),
    cacheHits: medians('cacheHits'),
  }
  results.cases.pgLookup = { runs: case9, medians: m, ...noiseFields(noise({ dbSeconds })) }

  const k9 = '9 user lookup (findById)'
  /**
   * @param {number} v
   * @param {number} digits
   */
  const us = (v, digits) => `${fmt(v, digits)} µs`
  row(
    k9,
    'in-memory (MemoryUserStore)',
    `${us(m.memory.microsP50, 2)}`,
    '',
    undefined,
    listRuns(
      case9.map((x) => x.memory.microsP50),
      2,
      ' µs',
    ),
  )
  row(
    k9,
    'postgres, 1 at a time: p50 / p99',
    `${us(m.pgSerial.microsP50, 0)} / ${us(m.pgSerial.microsP99, 0)}`,
    '',
    undefined,
    listRuns(
      case9.map((x) => x.pgSerial.microsP50),
      0,
      ' µs',
    ),
  )
  row(
    k9,
    'postgres, 1 at a time: CPU per lookup, node / pg backend',
    `${us(m.pgSerial.clientCpuMicrosPerLookup, 0)} / ${us(m.pgSerial.backendCpuMicrosPerLookup, 0)}`,
  )
  const poolMax = case9[0]?.poolMax ?? '?'
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight (pool ${poolMax}): lookups/s`,
    fmt(m.pgParallel.perSecond),
    '',
    undefined,
    listRuns(case9.map((x) => x.pgParallel.perSecond)),
  )
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight: p50 / p99 (pool wait incl.)`,
    `${us(m.pgParallel.microsP50, 0)} / ${us(m.pgParallel.microsP99, 0)}`,
  )
  row(
    k9,
    `postgres, ${S.lookupConcurrency} in flight: CPU per lookup, node / pg`,
    `${us(m.pgParallel.clientCpuMicrosPerLookup, 0)} / ${us(m.pgParallel.backendCpuMicrosPerLookup, 0)}`,
  )
  row(
    k9,
    'cached over postgres, hits (CachedUserStore)',
    us(m.cacheHits.microsP50, 2),
    '',
    undefined,
    listRuns(
      case9.map((x) => x.cacheHits.microsP50),
      2,
      ' µs',
    ),
  )
  row(k9, "others' CPU, % of a core (noise)", fmt(results.cases.pgLookup.otherCpuPct))
}
