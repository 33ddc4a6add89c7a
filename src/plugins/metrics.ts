// Prometheus metrics at the HTTP edge: the per-request histogram (route pattern, method, status
// class) and the listener that serves GET /metrics. The listener is a plain node:http server of
// its own, on METRICS_HOST:METRICS_PORT (loopback by default), never the public port: the public
// app has no /metrics route (404 there), and what the metrics tell (traffic, outcomes, queue
// lengths) is for operators only. With METRICS_PORT unset this plugin adds no hook and opens
// nothing; only `app.metricsAddress` (null) exists.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import fp from 'fastify-plugin'
import type { Metrics } from '../metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Where GET /metrics is served once the app is ready (with METRICS_PORT=0, the port the OS
     * chose); null when metrics are off, before ready and after close.
     */
    readonly metricsAddress: { host: string; port: number } | null
  }
}

export interface MetricsPluginOptions {
  metrics: Metrics
  /** Config.metrics.port: null means off. */
  port: number | null
  host: string
}

/** The route label of a request no route matched (404, 405): never the raw path. */
export const UNMATCHED_ROUTE = 'unmatched'

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx']
/** Methods kept as they are; any other (Node's parser knows some thirty) is `OTHER`. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])

async function metricsPlugin(app: FastifyInstance, { metrics, port, host }: MetricsPluginOptions): Promise<void> {
  let address: { host: string; port: number } | null = null
  app.decorate('metricsAddress', { getter: () => address })
  if (port === null || metrics.registry === null) return
  const registry = metrics.registry

  const { httpRequests } = metrics
  // Callback style: no promise per request. The route label is the pattern Fastify matched
  // (`/users/:id`), whatever the path was.
  app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => {
    httpRequests.observe(
      {
        route: request.routeOptions.url ?? UNMATCHED_ROUTE,
        method: METHODS.has(request.method) ? request.method : 'OTHER',
        status_class: STATUS_CLASSES[Math.floor(reply.statusCode / 100) - 1] ?? 'other',
      },
      reply.elapsedTime / 1000,
    )
    done()
  })

  async function answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?', 1)[0]
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Not Found\n')
      return
    }
    try {
      const body = await registry.metrics()
      res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' }).end(body)
    } catch (err) {
      app.log.error({ err }, 'metrics collection failed')
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('Internal Server Error\n')
    }
  }

  const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000 }, (req, res) => {
    void answer(req, res)
  })

  // onReady, not onListen: a port that cannot be bound fails the start (listen() rejects) instead
  // of leaving a server that runs without the metrics its operators rely on.
  app.addHook('onReady', async () => {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    const bound = server.address() as AddressInfo
    address = { host: bound.address, port: bound.port }
    app.log.info({ host: bound.address, port: bound.port }, 'metrics listening (GET /metrics)')
  })

  app.addHook('onClose', async () => {
    address = null
    if (!server.listening) return
    await new Promise<void>((resolve) => {
      server.close(() => resolve())
      // A scraper's keep-alive connection must not hold the shutdown.
      server.closeAllConnections()
    })
  })
}

export default fp(metricsPlugin, { name: 'metrics', fastify: '5.x' })
