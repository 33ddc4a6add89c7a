// @ts-check
// Where a cold start's time goes: starts the built server (as bench case 6 does: production
// settings, GET /healthz polled every 5 ms) a few times with bench/lib/startup-marks.mjs preloaded,
// and prints the median of each phase. With --profile, each start also runs under --cpu-prof, and
// the CPU time up to the first response is summed by where it was spent: each package of
// node_modules (through the source maps when dist/server.js is a bundle), src/, Node's module
// loader (resolving, reading, compiling), the garbage collector. docs/performance.md explains the
// figures.
//
//   node bench/cold-start-profile.mjs [--runs 5] [--profile] [--top 20] [entry]
//
// entry: the server to start, dist/server.js by default (any build of it: a copy elsewhere, to
// compare two builds). The preload and the profiler cost a little time themselves: for the
// figure the targets are about, run case 6 (`BENCH_ONLY=cold-start npm run bench`).
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { SourceMap } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { noiseMeter } from './lib/cpu.mjs'
import { makeWorkDir, removeWorkDir, sleep, startNode, stopChild } from './lib/process.mjs'
import { serverEntry, serverEnv } from './lib/settings.mjs'
import { median } from './lib/stats.mjs'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '5' },
    profile: { type: 'boolean', default: false },
    top: { type: 'string', default: '20' },
  },
})
const runs = Number(values.runs)
const entry = path.resolve(positionals[0] ?? serverEntry)
if (!existsSync(entry)) throw new Error(`${entry} is missing: run \`npm run build\` first`)
const preload = pathToFileURL(fileURLToPath(new URL('./lib/startup-marks.mjs', import.meta.url))).href

/**
 * The phases timed by the server's own clock, in order: [name, what it covers, the mark it ends
 * at]. Each starts where the one before it ends, the first when the process started (its
 * performance.timeOrigin). The rest of the spawn to 200 is the spawn itself (fork, exec, until
 * Node's clock starts) and the response's way back, which this process's clock alone sees.
 * @type {[string, string, string][]}
 */
const PHASES = [
  ['node bootstrap', 'process start to the first line of user code (the preload)', 'preload'],
  ['load, build, ready', "the server's modules loaded and run, config, buildApp, app.ready()", 'listen'],
  ['listen', 'listen() to listening', 'listening'],
  ['listening to first request', 'the next poll, and what the event loop runs before it', 'firstRequest'],
  ['first request', 'GET /healthz handled', 'firstResponse'],
]

// ---------------------------------------------------------------------------------------------
// The CPU profile, summed by where the time went

/** @type {Map<string, SourceMap | null>} */
const sourceMaps = new Map()

/** @param {string} url  a file: URL */
function sourceMapOf(url) {
  if (!sourceMaps.has(url)) {
    const file = `${fileURLToPath(url)}.map`
    sourceMaps.set(url, existsSync(file) ? new SourceMap(JSON.parse(readFileSync(file, 'utf8'))) : null)
  }
  return sourceMaps.get(url) ?? null
}

/**
 * Where a profile node's own time counts: a package, src/, a part of Node, or V8 itself.
 * @param {{ url: string, functionName: string, lineNumber: number, columnNumber: number }} frame
 */
function category({ url, functionName, lineNumber, columnNumber }) {
  if (!url) return `V8 ${functionName || '(anonymous)'}`
  if (url.startsWith('node:internal/modules')) return 'node: module loader (resolve, read, compile)'
  if (/^node:internal\/(bootstrap|main|process)\//.test(url)) return 'node: bootstrap'
  if (url.startsWith('node:')) return 'node: builtins (http, net, events, timers...)'
  let source = url
  if (url.startsWith('file:')) {
    const map = sourceMapOf(url)
    const entry = map?.findEntry(lineNumber, columnNumber)
    if (entry && 'originalSource' in entry && entry.originalSource) source = entry.originalSource
    // Lines the map does not cover: in the bundle, esbuild's own helpers (__commonJS, __export...).
    // V8 compiles a function when it is first called, and counts that to the caller: a bundled
    // CommonJS module's body is compiled when __require first runs it, so that is counted here.
    else if (map)
      return `${path.basename(fileURLToPath(url))}, unmapped: esbuild's helpers, with compiling each bundled CommonJS module`
  }
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(source)
  if (pkg) return pkg[1] ?? source
  if (/(^|\/)src\//.test(source)) return 'src/'
  return source.startsWith('file:') ? path.relative(process.cwd(), fileURLToPath(source)) : source
}

/**
 * ms of CPU by category, from the profile's start to `untilUs` (the monotonic clock, µs).
 * @param {string} file  a .cpuprofile
 * @param {number} untilUs
 */
function profileTotals(file, untilUs) {
  /** @type {{ nodes: { id: number, callFrame: any }[], samples: number[], timeDeltas: number[], startTime: number }} */
  const profile = JSON.parse(readFileSync(file, 'utf8'))
  const byId = new Map(profile.nodes.map((n) => [n.id, category(n.callFrame)]))
  /** @type {Map<string, number>} */
  const totals = new Map()
  let t = profile.startTime
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i] ?? 0
    if (t > untilUs) break
    const name = byId.get(profile.samples[i] ?? -1) ?? '?'
    totals.set(name, (totals.get(name) ?? 0) + (profile.timeDeltas[i + 1] ?? 0) / 1000)
  }
  return totals
}

// ---------------------------------------------------------------------------------------------

makeWorkDir()
const scratch = mkdtempSync(path.join(os.tmpdir(), 'cold-start-profile-'))
try {
  /** @type {Record<string, number>[]} */
  const phases = []
  /** @type {Map<string, number>[]} */
  const profiles = []
  const noise = noiseMeter()
  for (let i = 0; i < runs; i++) {
    const marksFile = path.join(scratch, `marks-${i}.json`)
    const profileDir = path.join(scratch, `profile-${i}`)
    const args = ['--import', preload]
    if (values.profile) args.push('--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=100')
    const started = await startNode(
      'server',
      [...args, entry],
      { ...serverEnv, BENCH_MARKS_FILE: marksFile },
      { pollMs: 5 },
    )
    for (let wait = 0; !existsSync(marksFile) && wait < 100; wait++) await sleep(10)
    const marks = JSON.parse(readFileSync(marksFile, 'utf8'))
    /** @type {Record<string, number>} */
    const run = { total: started.readyMs }
    let from = 0
    for (const [name, , until] of PHASES) {
      run[name] = marks[until] - from
      from = marks[until]
    }
    run.outside = started.readyMs - from
    phases.push(run)
    await stopChild(started.child) // the profile is written at exit
    if (values.profile) {
      const [file] = readdirSync(profileDir)
      if (file) profiles.push(profileTotals(path.join(profileDir, file), marks.firstResponseUs))
    }
    await sleep(200)
  }
  const others = noise().otherCpuPct

  const fmt = (/** @type {number | null} */ ms) => (ms === null || Number.isNaN(ms) ? 'n/a' : ms.toFixed(0)).padStart(6)
  console.log(
    `${path.relative(process.cwd(), entry)}: ${runs} starts, medians in ms${values.profile ? ' (under --cpu-prof)' : ''}`,
  )
  console.log(`${fmt(median(phases.map((p) => p.total)))}  spawn to the first 200 on /healthz`)
  for (const [name, what] of PHASES) console.log(`${fmt(median(phases.map((p) => p[name])))}    ${name}: ${what}`)
  console.log(
    `${fmt(median(phases.map((p) => p.outside)))}    the rest: the spawn (fork, exec) and the 200 on its way back`,
  )
  console.log(`others' CPU during the starts: ${others === null ? 'n/a' : `${others.toFixed(0)}% of a core`}`)
  if (profiles.length > 0) {
    const names = [...new Set(profiles.flatMap((p) => [...p.keys()]))]
    const rows = names
      .map((name) => /** @type {[string, number]} */ ([name, median(profiles.map((p) => p.get(name) ?? 0))]))
      .sort((a, b) => b[1] - a[1])
    const sum = rows.reduce((a, [, ms]) => a + ms, 0)
    console.log(`\nCPU time up to the first response, by where it was spent (medians; ${sum.toFixed(0)} ms in all):`)
    for (const [name, ms] of rows.slice(0, Number(values.top))) console.log(`${fmt(ms)}  ${name}`)
  }
} finally {
  rmSync(scratch, { recursive: true, force: true })
  removeWorkDir()
}
