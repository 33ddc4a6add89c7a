// @ts-check
// Child processes, for the bench and for scripts/newman.mjs: spawned with `node`, tracked so that
// none outlives this process (killAll), their output kept for error messages (captureOutput),
// waited for on /healthz (startNode) and stopped with SIGTERM, then SIGKILL (stopChild, waitExit).
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

/**
 * @typedef {import('node:child_process').ChildProcessByStdio<null, import('node:stream').Readable,
 *   import('node:stream').Readable>} Child
 * @typedef {{ lines: number, tail: string[], add: (line: string) => void }} Output
 * @typedef {{ name: string, child: Child, port: number, output: Output, readyMs: number }} Started
 */

export const HOST = '127.0.0.1'

/** The environment a bench child starts from: nothing else leaks in from the caller's shell. */
export const baseEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? os.tmpdir() }

/** @param {number} ms */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** @param {import('node:child_process').ChildProcess} child */
export const hasExited = (child) => child.exitCode !== null || child.signalCode !== null

// ---------------------------------------------------------------------------------------------
// Tracking: every child spawned here is killed on every way out (killAll, called by the exit paths).

/** The children spawned and not yet exited. @type {Set<Child>} */
export const children = new Set()

/**
 * @param {Child} child
 * @returns {Child}
 */
function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** SIGKILL to every child still running. */
export function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
}

/**
 * The bench's children run in an empty directory of their own, so that a developer's .env is not
 * loaded (makeWorkDir creates it, removeWorkDir removes it).
 * @type {string | undefined}
 */
let workDir

export function makeWorkDir() {
  workDir = mkdtempSync(path.join(os.tmpdir(), 'auth-bench-'))
}

export function removeWorkDir() {
  if (workDir) rmSync(workDir, { recursive: true, force: true })
}

/**
 * `node <args>`, tracked, with stdout and stderr piped. `env` is the whole environment of the child.
 * @param {string[]} args
 * @param {{ env: NodeJS.ProcessEnv, cwd?: string }} options  cwd: the bench's work directory by default
 * @returns {Child}
 */
export function spawnNode(args, { env, cwd = workDir }) {
  return track(spawn(process.execPath, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] }))
}

// ---------------------------------------------------------------------------------------------
// Output, ports, health, exit

/**
 * Keeps the last `keep` lines a child wrote (each cut at `maxLineLength`) and counts them all.
 * Empty lines are skipped; `add` keeps a line of the caller's own.
 * @param {Child} child
 * @returns {Output}
 */
export function captureOutput(child, { keep = 20, maxLineLength = 400 } = {}) {
  /** @type {Output} */
  const out = {
    lines: 0,
    tail: [],
    add(line) {
      out.lines++
      out.tail.push(line.length > maxLineLength ? `${line.slice(0, maxLineLength)}...` : line)
      if (out.tail.length > keep) out.tail.shift()
    },
  }
  for (const stream of [child.stdout, child.stderr]) {
    if (!stream) continue
    let partial = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop() ?? ''
      for (const line of parts) if (line !== '') out.add(line)
    })
    stream.on('end', () => {
      if (partial !== '') out.add(partial)
    })
  }
  return out
}

/**
 * A port the OS reports free on `host` right now.
 * @returns {Promise<number>}
 */
export function freePort(host = HOST) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, host, () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address())
      srv.close(() => resolve(port))
    })
  })
}

/**
 * One GET, no keep-alive: the status code, or 0 when the connection failed.
 * @param {number} port
 * @param {string} urlPath
 * @returns {Promise<number>}
 */
export function probe(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, agent: false, timeout: 1000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', () => resolve(0))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(0))
  })
}

/**
 * Resolves to true when `child` has exited (or already had), false after `timeoutMs`.
 * @param {import('node:child_process').ChildProcess} child
 * @returns {Promise<boolean>}
 */
export function waitExit(child, timeoutMs = Number.POSITIVE_INFINITY) {
  if (hasExited(child)) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = Number.isFinite(timeoutMs) ? setTimeout(() => resolve(false), timeoutMs) : undefined
    child.once('exit', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
}

/**
 * SIGTERM, then SIGKILL after 5 s. Returns the ms to exit and whether SIGKILL was needed.
 * @param {Child} child
 */
export async function stopChild(child) {
  if (hasExited(child)) return { ms: 0, killed: false }
  const t0 = performance.now()
  child.kill('SIGTERM')
  if (await waitExit(child, 5000)) return { ms: performance.now() - t0, killed: false }
  child.kill('SIGKILL')
  await waitExit(child, 5000)
  return { ms: performance.now() - t0, killed: true }
}

// ---------------------------------------------------------------------------------------------
// The bench's children: in the work directory, with baseEnv plus their own variables.

/**
 * Spawns `node <args>` with `env` on a free port and resolves when GET /healthz answers 200,
 * polling every `pollMs`. Returns the child, its port, its output, and the ms from spawn to 200.
 * @param {string} name
 * @param {string[]} args
 * @param {Record<string, string>} env
 * @returns {Promise<Started>}
 */
export async function startNode(name, args, env, { pollMs = 20, timeoutMs = 20_000 } = {}) {
  const port = await freePort()
  const started = performance.now()
  const child = spawnNode(args, { env: { ...baseEnv, ...env, PORT: String(port) } })
  const output = captureOutput(child)
  let exited = false
  child.once('exit', () => {
    exited = true
  })
  for (;;) {
    if ((await probe(port, '/healthz')) === 200) break
    if (exited || performance.now() - started > timeoutMs) {
      child.kill('SIGKILL')
      throw new Error(
        `${name} did not come up (${exited ? `exited with ${child.exitCode ?? child.signalCode}` : 'timed out'}):\n${output.tail.join('\n')}`,
      )
    }
    await sleep(pollMs)
  }
  return { name, child, port, output, readyMs: performance.now() - started }
}

/**
 * Runs `node <args>` to its end and resolves to the JSON of the last line it printed; rejects,
 * with the end of its stderr, when it exits non-zero. `label` names it in that error.
 * @param {string} label
 * @param {string[]} args
 * @param {Record<string, string>} env
 * @returns {Promise<any>}
 */
export function runJsonChild(label, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawnNode(args, { env: { ...baseEnv, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => {
      stdout += d
    })
    child.stderr.on('data', (d) => {
      stderr += d
    })
    child.once('error', reject)
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`${label} exited with ${code}: ${stderr.slice(-1000)}`))
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop() ?? ''))
      } catch (err) {
        reject(err)
      }
    })
  })
}
