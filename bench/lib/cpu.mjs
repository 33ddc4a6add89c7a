// @ts-check
// CPU and memory of processes, from Linux's /proc (null, or empty, elsewhere), and the noise meter:
// how much CPU the machine's other tenants took while a figure was measured.
import { readdirSync, readFileSync } from 'node:fs'
import { children } from './process.mjs'

/**
 * @typedef {{ pid: number, name: string, pctOfCore: number }} OtherProcess
 * @typedef {{ wallSeconds: number, otherCpuPct: number | null, otherProcesses: OtherProcess[], dbCpuPct?: number }} Noise
 * @typedef {{ dbPids?: Set<number>, dbSeconds?: number }} OurDatabase
 */

/**
 * CPU seconds a process has used so far (Linux /proc), or null elsewhere.
 * @param {number | string | undefined} pid
 * @returns {number | null}
 */
export function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm) ".
    return (Number(fields[11]) + Number(fields[12])) / 100 // USER_HZ is 100 on Linux
  } catch {
    return null
  }
}

/**
 * CPU seconds the whole machine has spent in processes so far (user + nice + system + steal from
 * /proc/stat), or null elsewhere. irq and softirq are left out: loopback traffic is processed there
 * and charged to no process, so it would count our own load as someone else's.
 * @returns {number | null}
 */
function machineBusySeconds() {
  try {
    const [firstLine = ''] = readFileSync('/proc/stat', 'utf8').split('\n', 1)
    const [user = Number.NaN, nice = Number.NaN, system = Number.NaN, , , , , steal] = firstLine
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number)
    return (user + nice + system + (steal || 0)) / 100
  } catch {
    return null
  }
}

/**
 * pid -> { name (command line, shortened), cpu seconds } for every process (Linux), else empty.
 * @returns {Map<number, { name: string, cpu: number }>}
 */
function processCpuTable() {
  const table = new Map()
  /** @type {string[]} */
  let pids = []
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d))
  } catch {
    return table
  }
  for (const pid of pids) {
    const cpu = cpuSeconds(pid)
    if (cpu === null) continue
    let name = ''
    try {
      name = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120)
    } catch {}
    table.set(Number(pid), { name, cpu })
  }
  return table
}

/** CPU seconds of our running children plus those already reaped (cutime + cstime of this process). */
function childrenCpuSeconds() {
  let total = 0
  for (const child of children) total += cpuSeconds(child.pid) ?? 0
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    total += (Number(fields[13]) + Number(fields[14])) / 100
  } catch {}
  return total
}

/**
 * Every foreign process seen busy during a measurement: command line -> highest % of a core.
 * @type {Map<string, number>}
 */
export const seenOthers = new Map()

/**
 * Starts measuring how much CPU processes other than ours (this one and its children) take: the
 * other tenants of the machine, whose load skews every figure. The returned function gives the
 * wall time and that CPU as a percentage of one core, since the start.
 *
 * The PostgreSQL backends serving our processes are our load, not noise (cases 7-9): pass the
 * returned function `dbPids`, the pids of those alive now (a pid not seen at the start counts from
 * zero), and `dbSeconds`, CPU seconds of backends already gone, as their client reported it. Their
 * CPU is returned apart as dbCpuPct.
 * @returns {(db?: OurDatabase) => Noise}
 */
export function noiseMeter() {
  const procs0 = processCpuTable()
  const t0 = performance.now()
  const machine0 = machineBusySeconds()
  const self0 = process.cpuUsage()
  const children0 = childrenCpuSeconds()
  return ({ dbPids, dbSeconds } = {}) => {
    const wall = (performance.now() - t0) / 1000
    const machine1 = machineBusySeconds()
    const self = process.cpuUsage(self0)
    const procs1 = processCpuTable()
    let dbCpu = dbSeconds ?? (dbPids ? 0 : null)
    for (const pid of dbPids ?? []) {
      const now = procs1.get(pid)
      if (now) dbCpu = (dbCpu ?? 0) + now.cpu - (procs0.get(pid)?.cpu ?? 0)
    }
    const ours = (self.user + self.system) / 1e6 + (childrenCpuSeconds() - children0) + (dbCpu ?? 0)
    const otherCpuPct =
      machine0 === null || machine1 === null ? null : Math.max(0, ((machine1 - machine0 - ours) / wall) * 100)
    // Who they were: processes alive at both ends that are not ours, by CPU used in between.
    const ourPids = new Set([process.pid, ...[...children].map((c) => c.pid), ...(dbPids ?? [])])
    /** @type {OtherProcess[]} */
    const others = []
    for (const [pid, { name, cpu }] of procs1) {
      const before = procs0.get(pid)
      if (!before || ourPids.has(pid)) continue
      const pctOfCore = ((cpu - before.cpu) / wall) * 100
      if (pctOfCore >= 5) others.push({ pid, name, pctOfCore: Math.round(pctOfCore) })
    }
    others.sort((a, b) => b.pctOfCore - a.pctOfCore)
    for (const { name, pctOfCore } of others) seenOthers.set(name, Math.max(seenOthers.get(name) ?? 0, pctOfCore))
    return {
      wallSeconds: wall,
      otherCpuPct,
      otherProcesses: others.slice(0, 5),
      ...(dbCpu !== null && { dbCpuPct: (dbCpu / wall) * 100 }),
    }
  }
}

/**
 * The fields of a noise reading that are saved with a case (the wall time left out).
 * @param {Noise} noise
 */
export const noiseFields = ({ otherCpuPct, otherProcesses, dbCpuPct }) => ({
  otherCpuPct,
  otherProcesses,
  ...(dbCpuPct !== undefined && { dbCpuPct }),
})

/**
 * Resident memory of a process in bytes (Linux /proc), or null.
 * @param {number | undefined} pid
 * @returns {number | null}
 */
export function rssBytes(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : null
  } catch {
    return null
  }
}
