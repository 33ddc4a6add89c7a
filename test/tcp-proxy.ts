// A TCP proxy for fault tests: forwards every connection to a target host:port. stop() closes the
// listener and destroys every open connection (both sides), as if the service had gone away;
// start() listens again on the same port, as if it had come back.
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net'

export class TcpProxy {
  #server: Server | undefined
  #port = 0
  readonly #sockets = new Set<Socket>()
  readonly #pairs = new Set<[client: Socket, upstream: Socket]>()
  #stalled = false

  constructor(
    readonly targetHost: string,
    readonly targetPort: number,
  ) {}

  /** The port it listens on (fixed by the first start()). */
  get port(): number {
    return this.#port
  }

  get listening(): boolean {
    return this.#server !== undefined
  }

  /** Listens on 127.0.0.1: an ephemeral port the first time, the same port afterwards. */
  async start(): Promise<void> {
    if (this.#server) return
    const server = createServer((client) => this.#forward(client))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ port: this.#port, host: '127.0.0.1', exclusive: true }, () => {
        server.off('error', reject)
        resolve()
      })
    })
    server.on('error', () => {})
    this.#port = (server.address() as { port: number }).port
    this.#server = server
  }

  /**
   * Stalls every connection, open or new, as a network that drops packets would: nothing is
   * forwarded and nothing is closed, until resume().
   */
  stall(): void {
    this.#stalled = true
    for (const [client, upstream] of this.#pairs) {
      client.unpipe(upstream)
      upstream.unpipe(client)
      client.pause()
      upstream.pause()
    }
  }

  /** Forwards again what stall() held. */
  resume(): void {
    this.#stalled = false
    for (const [client, upstream] of this.#pairs) {
      client.pipe(upstream)
      upstream.pipe(client)
    }
  }

  /** Stops listening (new connections are refused) and cuts every open connection. */
  async stop(): Promise<void> {
    const server = this.#server
    this.#server = undefined
    for (const socket of this.#sockets) socket.destroy()
    this.#sockets.clear()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  #track(socket: Socket): void {
    this.#sockets.add(socket)
    socket.on('close', () => this.#sockets.delete(socket))
    socket.on('error', () => {})
  }

  #forward(client: Socket): void {
    this.#track(client)
    const upstream = tcpConnect({ host: this.targetHost, port: this.targetPort })
    this.#track(upstream)
    const pair: [Socket, Socket] = [client, upstream]
    this.#pairs.add(pair)
    client.on('close', () => this.#pairs.delete(pair))
    if (this.#stalled) {
      client.pause()
      upstream.pause()
    } else {
      client.pipe(upstream)
      upstream.pipe(client)
    }
    // One side gone: the other goes too (an abrupt close, as a dropped network would be).
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  }
}

/** Starts a proxy to host:port and returns it. */
export async function startProxy(host: string, port: number): Promise<TcpProxy> {
  const proxy = new TcpProxy(host, port)
  await proxy.start()
  return proxy
}
