// @ts-check
// serveStatus(): the live status page, Prometheus metrics and a JSON status over plain node:http.
// Loopback only unless the caller says otherwise: the page shows process ids, commands' errors
// and the GPU load of the machine.

const http = require('node:http')
const { isIP } = require('node:net')
const { pageHtml } = require('./page.js')
const render = require('./render.js')
const { servicesMetrics } = require('./metrics.js')
const { invalidArgument } = require('../js/errors.js')

/** @typedef {import('../../index').GpuArbiter} GpuArbiter */
/** @typedef {import('../../index').Telemetry} Telemetry */
/** @typedef {import('../../index').ServiceSupervisor} ServiceSupervisor */
/** @typedef {import('./render.js').StatusModel} StatusModel */

/**
 * @typedef {{
 *   arbiter?: GpuArbiter | null,
 *   telemetry?: Telemetry | null,
 *   supervisor?: ServiceSupervisor | null,
 *   host?: string,
 *   port?: number,
 *   allowRemote?: boolean,
 *   title?: string,
 *   stateIntervalMs?: number,
 * }} StatusServerOptions
 */

/** @typedef {{ url: string, host: string, port: number, close(): Promise<void> }} StatusServer */


/** Whether `host` names this machine only: localhost, 127.0.0.0/8 or ::1. @param {string} host */
function isLoopback(host) {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1' || host === '0:0:0:0:0:0:0:1'
}

/**
 * Serves `/` (the live page), `/events` (its server-sent events), `/metrics` (Prometheus text of
 * the arbiter, the telemetry and the services) and `/status` (JSON). Resolves once listening.
 * Throws `INVALID_ARGUMENT` for a non-loopback `host` without `allowRemote: true`, or a bad port.
 * @param {StatusServerOptions} options
 * @returns {Promise<StatusServer>}
 */
function serveStatus(options) {
  const { arbiter = null, telemetry = null, supervisor = null, host = '127.0.0.1', port, allowRemote = false } = options ?? {}
  if (typeof host !== 'string' || host === '') throw invalidArgument('serveStatus: host must be a non-empty string')
  if (!isLoopback(host) && allowRemote !== true) {
    throw invalidArgument(`serveStatus: host ${JSON.stringify(host)} is not a loopback address; pass allowRemote: true to serve it to other machines`)
  }
  if (!Number.isInteger(port) || /** @type {number} */ (port) < 0 || /** @type {number} */ (port) > 65535) {
    throw invalidArgument(`serveStatus: port must be an integer 0-65535 (0 picks a free one), got ${JSON.stringify(port)}`)
  }
  /** @type {StatusModel} */
  const model = { title: options.title ?? 'gpu-sidecar status', source: 'live', samples: [], alerts: [], events: [], services: null, arbiter: null }
  /** @type {Set<http.ServerResponse>} */
  const clients = new Set()
  // Events go on the samples' time axis (a replay's recorded clock, during a replay).
  const sampleTime = render.sampleClock()
  /** @type {Array<() => void>} */
  const unsubscribe = []

  const refreshState = () => {
    if (supervisor) model.services = safe(() => supervisor.statuses(), model.services)
    if (arbiter && !arbiter.closed) model.arbiter = safe(() => arbiter.snapshotAll(), model.arbiter)
  }
  /** @param {string} event @param {unknown} data */
  const broadcast = (event, data) => {
    if (clients.size === 0) return
    const frame = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`
    for (const res of clients) res.write(frame)
  }

  if (telemetry) {
    const latest = telemetry.latest()
    if (latest) {
      sampleTime.sample(latest.at)
      render.addSample(model, latest)
    }
    unsubscribe.push(
      telemetry.onSample((sample) => {
        sampleTime.sample(sample.at)
        render.addSample(model, sample)
        broadcast('sample', sample)
      }),
      telemetry.onAlert((alert) => {
        render.addAlert(model, alert)
        broadcast('alert', alert)
      }),
    )
  }
  /** @param {import('./render.js').EventMark | null} mark */
  const markEvent = (mark) => {
    if (!mark) return
    mark.at = sampleTime.at(mark.at)
    render.addEvent(model, mark)
    broadcast('mark', mark)
  }
  if (supervisor) {
    unsubscribe.push(
      supervisor.onEvent((event) => {
        if (event.type === 'log') return
        markEvent(render.serviceMark(event))
        refreshState()
        broadcast('state', { services: model.services, arbiter: model.arbiter })
      }),
    )
  }
  if (arbiter) unsubscribe.push(arbiter.onEvent((event) => markEvent(render.arbiterMark(event))))
  // Leases change far too often to push each one; clients get the arbiter's state a few times a second.
  const timer = setInterval(() => {
    if (clients.size === 0) return
    refreshState()
    broadcast('state', { services: model.services, arbiter: model.arbiter })
  }, options.stateIntervalMs ?? 500)
  timer.unref()

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n')
      return
    }
    refreshState()
    switch (path) {
      case '/':
        send(res, 200, 'text/html; charset=utf-8', pageHtml(model, { live: true }))
        return
      case '/events':
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' })
        res.write(`event: snapshot\ndata: ${JSON.stringify(model)}\n\n`)
        clients.add(res)
        req.on('close', () => clients.delete(res))
        return
      case '/metrics': {
        const parts = [arbiter && !arbiter.closed ? arbiter.metrics() : '', telemetry ? telemetry.metrics() : '', model.services ? servicesMetrics(model.services) : '']
        send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', parts.filter(Boolean).map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join(''))
        return
      }
      case '/status':
        send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(statusJson(model, telemetry), null, 2)}\n`)
        return
      default:
        send(res, 404, 'text/plain; charset=utf-8', `not found: ${path}\n`)
    }
  })

  return new Promise((resolve, reject) => {
    server.once('error', (error) => {
      clearInterval(timer)
      for (const off of unsubscribe) off()
      const code = /** @type {NodeJS.ErrnoException} */ (error).code
      const wrapped = /** @type {Error & { code: string }} */ (new Error(`serveStatus: cannot listen on ${host}:${port}: ${error.message}`))
      wrapped.code = code === 'EADDRINUSE' ? 'PORT_IN_USE' : 'IO_ERROR'
      reject(wrapped)
    })
    server.listen(port, host, () => {
      const address = /** @type {import('node:net').AddressInfo} */ (server.address())
      const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address
      resolve({
        url: `http://${shownHost}:${address.port}/`,
        host: address.address,
        port: address.port,
        close: () =>
          new Promise((done) => {
            clearInterval(timer)
            for (const off of unsubscribe.splice(0)) off()
            for (const res of clients) res.end()
            clients.clear()
            server.close(() => done())
            server.closeAllConnections()
          }),
      })
    })
  })
}

/** @param {http.ServerResponse} res @param {number} status @param {string} type @param {string} body */
function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) })
  res.end(res.req.method === 'HEAD' ? undefined : body)
}

/** @param {StatusModel} model @param {Telemetry | null} telemetry */
function statusJson(model, telemetry) {
  return {
    at: Date.now(),
    services: model.services,
    gpus: model.arbiter,
    telemetry: telemetry ? telemetry.latest() : null,
    alerts: model.alerts.filter((a) => a.end === null),
    alertHistory: model.alerts,
    events: model.events,
  }
}

/** @template T @param {() => T} read @param {T} fallback */
function safe(read, fallback) {
  try {
    return read()
  } catch {
    return fallback // a closed supervisor or arbiter throws CLOSED; show what was last known
  }
}

module.exports = { serveStatus, isLoopback }
