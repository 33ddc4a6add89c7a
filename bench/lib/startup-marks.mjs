// @ts-check
// Preloaded into a server by bench/cold-start-profile.mjs (`node --import`): marks the moments of a
// start that the server's code does not report itself. `preload`: Node has bootstrapped and runs
// user code (this file, before the server's modules load); `listen`: the server calls listen(),
// its modules loaded and run and the app built and ready; `listening`; `firstRequest`: the first
// request arrives; `firstResponse`: its response is sent. Each in ms since the process started
// (performance.timeOrigin, which is saved too) and in µs of the monotonic clock that --cpu-prof
// profiles use (`<name>Us`). Written as JSON to BENCH_MARKS_FILE when the first response is sent.
import { writeFileSync } from 'node:fs'
import http from 'node:http'

/** @type {Record<string, number>} */
const marks = { timeOrigin: performance.timeOrigin }

/** @param {string} name */
function mark(name) {
  if (name in marks) return
  marks[name] = performance.now()
  marks[`${name}Us`] = Number(process.hrtime.bigint() / 1000n)
}

mark('preload')
const listen = http.Server.prototype.listen
/**
 * @this {http.Server}
 * @param {...any} args
 */
http.Server.prototype.listen = function (...args) {
  mark('listen')
  this.once('listening', () => mark('listening'))
  this.once('request', (_req, res) => {
    mark('firstRequest')
    res.once('finish', () => {
      mark('firstResponse')
      if (process.env.BENCH_MARKS_FILE) writeFileSync(process.env.BENCH_MARKS_FILE, JSON.stringify(marks))
    })
  })
  return Reflect.apply(listen, this, args)
}
