// @ts-check
// Case 5: memory per user of the in-memory store. Each size runs in a process of its own
// (bench/memory.mjs), with nothing else running. Target: at most 512 bytes of rss per user.
import path from 'node:path'
import { noiseFields, noiseMeter } from '../lib/cpu.mjs'
import { runJsonChild } from '../lib/process.mjs'
import { fmt, listRuns, log, results, row } from '../lib/report.mjs'
import { benchDir, S } from '../lib/settings.mjs'
import { median } from '../lib/stats.mjs'

/**
 * What bench/memory.mjs prints (the fields used here).
 * @typedef {{ rssBytesPerUser: number, heapBytesPerUser: number }} MemoryRun
 */

/**
 * @param {number} users
 * @param {string} hash  a bcrypt hash, stored in every record
 * @returns {Promise<MemoryRun>}
 */
const runMemoryChild = (users, hash) =>
  runJsonChild(
    `memory child (${users} users)`,
    ['--expose-gc', '--max-old-space-size=8192', path.join(benchDir, 'memory.mjs'), String(users)],
    { BENCH_HASH: hash },
  )

/** @param {string} sampleHash  a bcrypt hash of the bench's cost */
export async function memoryCase(sampleHash) {
  const noise = noiseMeter()
  /** @type {Record<number, MemoryRun[]>} */
  const case5 = {}
  for (const users of S.memoryUsers) {
    /** @type {MemoryRun[]} */
    const list = []
    case5[users] = list
    for (let r = 0; r < S.runs; r++) {
      log(`case 5 run ${r + 1}/${S.runs}: ${fmt(users)} users`)
      list.push(await runMemoryChild(users, sampleHash))
    }
  }
  /** @type {Record<number, { rssBytesPerUser: number, heapBytesPerUser: number }>} */
  const medians = {}
  results.cases.memory = { runs: case5, medians, ...noiseFields(noise()) }
  for (const users of S.memoryUsers) {
    const list = case5[users] ?? []
    const rss = median(list.map((x) => x.rssBytesPerUser))
    const heap = median(list.map((x) => x.heapBytesPerUser))
    medians[users] = { rssBytesPerUser: rss, heapBytesPerUser: heap }
    const k5 = `5 memory ${fmt(users)} users`
    row(k5, 'rss bytes/user', fmt(rss), '<= 512', rss <= 512, listRuns(list.map((x) => x.rssBytesPerUser)))
    row(k5, 'heapUsed bytes/user', fmt(heap), '', undefined, listRuns(list.map((x) => x.heapBytesPerUser)))
  }
  row('5 memory', "others' CPU, % of a core (noise)", fmt(results.cases.memory.otherCpuPct))
}
