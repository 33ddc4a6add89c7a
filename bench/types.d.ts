// Types for the untyped dev dependencies of bench/ and scripts/: only what they use. Both are
// CommonJS modules: their default import is module.exports.

declare module 'autocannon' {
  export interface Request {
    method?: string
    path?: string
    headers?: Record<string, string>
    body?: string
    /** Called before each request is sent; returns the request to send. */
    setupRequest?: (request: Request, context: Record<string, unknown>) => Request
  }
  export interface Options {
    url: string
    connections?: number
    pipelining?: number
    /** Seconds. */
    duration?: number
    requests?: Request[]
  }
  export interface Histogram {
    p50: number
    p99: number
    max: number
  }
  export interface Result {
    '2xx': number
    non2xx: number
    errors: number
    timeouts: number
    /** Seconds. */
    duration: number
    requests: Histogram & { total: number }
    /** Milliseconds. */
    latency: Histogram
    statusCodeStats?: Record<string, { count: number }>
  }
  /** The run: an EventEmitter that is also a promise of its result. */
  export interface Instance extends PromiseLike<Result> {
    /** Each response: its status code, size and latency in ms. */
    on(
      event: 'response',
      listener: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void,
    ): this
  }
  export default function autocannon(options: Options): Instance
}

declare module 'newman' {
  export interface RunOptions {
    collection: string
    environment?: string
    envVar?: { key: string; value: string }[]
    reporters?: string[]
    timeoutRequest?: number
    timeout?: number
  }
  export interface Counts {
    total: number
    failed: number
  }
  export interface Summary {
    run: {
      stats: { assertions: Counts; requests: Counts; testScripts: Counts; prerequestScripts: Counts }
      failures: unknown[]
      error?: { message?: string }
    }
  }
  const newman: {
    run(options: RunOptions, callback: (err: Error | null, summary: Summary) => void): void
  }
  export default newman
}
