// @ts-check
// Case 6: cold start, from spawning the server to the first 200 on GET /healthz (polled every few
// ms), and then how long it takes to exit on SIGTERM. Target: at most 300 ms (the median), and no
// SIGKILL needed. Where the time goes, and how to measure it: docs/performance.md.
import { noiseFields, noiseMeter } from '../lib/cpu.mjs'
import { sleep, startNode, stopChild } from '../lib/process.mjs'
import { fmt, listRuns, log, results, row } from '../lib/report.mjs'
import { S, serverEntry, serverEnv } from '../lib/settings.mjs'
import { median } from '../lib/stats.mjs'

export async function coldStartCase() {
  const noise = noiseMeter()
  /** @type {number[]} */
  const case6 = []
  const shutdowns = []
  for (let i = 0; i < S.coldStarts; i++) {
    log(`case 6 start ${i + 1}/${S.coldStarts}`)
    const s = await startNode('server (cold start)', [serverEntry], serverEnv, { pollMs: S.coldStartPollMs })
    case6.push(s.readyMs)
    shutdowns.push(await stopChild(s.child))
    await sleep(200)
  }
  const cold = median(case6)
  results.cases.coldStart = { runsMs: case6, medianMs: cold, targetMs: 300, shutdowns, ...noiseFields(noise()) }

  const k6 = '6 cold start'
  row(k6, 'spawn to first 200 /healthz', `${fmt(cold)} ms`, '<= 300 ms', cold <= 300, listRuns(case6, 0, ' ms'))
  const killed = shutdowns.filter((x) => x.killed).length
  row(
    k6,
    'SIGTERM to exit',
    `${fmt(median(shutdowns.map((x) => x.ms)))} ms`,
    'exits without SIGKILL',
    killed === 0,
    killed > 0
      ? `${killed} of ${shutdowns.length} needed SIGKILL`
      : listRuns(
          shutdowns.map((x) => x.ms),
          0,
          ' ms',
        ),
  )
  row(k6, "others' CPU, % of a core (noise)", fmt(results.cases.coldStart.otherCpuPct))
}
