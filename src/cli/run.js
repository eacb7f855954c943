// @ts-check
// `gpu-sidecar run`: the node headless. Supervisor, telemetry and arbiter wired as the README's
// Electron example wires them; a live table in a terminal, one line per event otherwise.

const { appendFileSync, readFileSync, writeFileSync } = require('node:fs')
const { dirname, resolve } = require('node:path')
const { pathToFileURL } = require('node:url')
const sidecar = require('../../gpu-sidecar.js')
const { usageError } = require('./errors.js')
const render = require('../status/render.js')
const { pageHtml } = require('../status/page.js')
const { serveStatus } = require('../status/server.js')
const { statusTable } = require('./table.js')

/** @typedef {import('../status/render.js').StatusModel} StatusModel */

const usage = `Usage: gpu-sidecar run <node-config.json> [--replay <rec.jsonl>] [--http <host:port>] [--record <rec.jsonl>]

Runs the node headless: the arbiter (gpuArbiter section, re-read when the file changes), telemetry
(telemetry section) and the services (services section), started in order behind the VRAM gate.
In a terminal it shows a live table (services: state, pid, VRAM, time to ready, restarts; GPUs:
utilization, memory, leases, queue; active alerts); otherwise it prints one line per event.
Ctrl-C or SIGTERM stops every service and exits 0. Relative paths in the config resolve against
the config file's folder.

Options:
  --replay <file>        replay a telemetry recording instead of reading NVML and the host
  --replay-speed <n>     replay speed factor (default 1)
  --record <file>        append every telemetry sample to this JSONL file, and the services'
                         and leases' events (ready, failed, restarting, evicted, revoked)
  --http <host:port>     serve the live status page, /metrics and /status (loopback only,
                         unless --allow-remote)
  --allow-remote         allow --http on a non-loopback address
  --script <module>      once the services have started, import this ES module and await its
                         default export ({ arbiter, telemetry, supervisor, config }), then stop
  --report <file.html>   on exit, write an incident report of what this run saw
  -h, --help             this help`

const options = /** @type {const} */ ({
  replay: { type: 'string' },
  'replay-speed': { type: 'string' },
  record: { type: 'string' },
  http: { type: 'string' },
  'allow-remote': { type: 'boolean', default: false },
  script: { type: 'string' },
  report: { type: 'string' },
})

/** @param {string} text @returns {{ host: string, port: number }} */
function parseHostPort(text) {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text) ?? /^(\d+)$/.exec(text)
  if (!match) throw usageError(`run: --http expects host:port (127.0.0.1:9464) or a port, got ${JSON.stringify(text)}`)
  if (match.length === 2) return { host: '127.0.0.1', port: Number(match[1]) }
  return { host: match[1] ?? match[2], port: Number(match[3]) }
}

/** @param {number} at */
const clock = (at) => new Date(at).toISOString().slice(11, 23)

let recordEventFailed = false
/**
 * Appends a service or lease event to the recording as an event line, beside the samples the
 * Telemetry appends (both append whole lines in one write each), so `gpu-sidecar report` marks it.
 * @param {string} path @param {import('../status/render.js').EventMark} mark
 */
function recordEvent(path, mark) {
  try {
    appendFileSync(path, `${JSON.stringify({ at: mark.at, event: { kind: mark.kind, subject: mark.subject, label: mark.label } })}\n`)
  } catch (error) {
    if (!recordEventFailed) process.stderr.write(`warning: cannot record events in ${path}: ${/** @type {Error} */ (error).message}\n`)
    recordEventFailed = true
  }
}

/**
 * @param {{ replay?: string, 'replay-speed'?: string, record?: string, http?: string, 'allow-remote'?: boolean, script?: string, report?: string }} values
 * @param {string[]} positionals
 * @returns {Promise<number>}
 */
async function main(values, positionals) {
  if (positionals.length !== 1) throw usageError('run: expected exactly one node config file')
  const configPath = resolve(positionals[0])
  const fromCwd = (/** @type {string | undefined} */ p) => (p === undefined ? undefined : resolve(p))
  const replay = fromCwd(values.replay)
  const record = fromCwd(values.record)
  const script = fromCwd(values.script)
  const reportPath = fromCwd(values.report)
  const http = values.http === undefined ? null : parseHostPort(values.http)
  let replaySpeed = values['replay-speed'] === undefined ? undefined : Number(values['replay-speed'])
  if (replaySpeed !== undefined && !(replaySpeed > 0)) throw usageError('run: --replay-speed expects a number > 0')

  const config = sidecar.loadConfig(configPath)
  const raw = JSON.parse(readFileSync(configPath, 'utf8'))
  process.chdir(dirname(configPath)) // like compose files: the config's relative paths are its own

  const tty = Boolean(process.stdout.isTTY)
  /** @param {string} line */
  const say = (line) => {
    if (!tty) process.stdout.write(`${line}\n`)
  }
  for (const w of config.warnings) process.stderr.write(`warning: ${w}\n`)

  const arbiter = sidecar.GpuArbiter.fromFile(configPath, { watch: true })
  sidecar.setGpuArbiter(arbiter)
  const telemetry = new sidecar.Telemetry({ ...(raw.telemetry ?? {}), ...(replay ? { replay } : {}), ...(replaySpeed ? { replaySpeed } : {}), ...(record ? { record } : {}) })
  telemetry.attachArbiter(arbiter)
  const supervisor = new sidecar.ServiceSupervisor(config.services ?? { services: [] })
  supervisor.attachTelemetry(telemetry)
  supervisor.attachArbiter(arbiter)

  /** @type {StatusModel} */
  const model = { title: `gpu-sidecar run ${positionals[0]}`, source: replay ? `replay of ${replay}` : 'live', samples: [], alerts: [], events: [], services: supervisor.statuses(), arbiter: arbiter.snapshotAll() }
  const sampleTime = render.sampleClock()
  /** A service or lease event: marked in the report, and kept in the recording beside the samples. @param {import('../status/render.js').EventMark | null} mark */
  const markEvent = (mark) => {
    if (!mark) return
    mark.at = sampleTime.at(mark.at) // on a replay's time axis, during a replay
    render.addEvent(model, mark)
    if (record) recordEvent(record, mark)
  }
  telemetry.onSample((s) => {
    sampleTime.sample(s.at)
    render.addSample(model, s)
  })
  telemetry.onAlert((a) => {
    render.addAlert(model, a)
    say(`${clock(Date.now())} alert ${a.active ? 'raised' : 'cleared'} ${render.alertText(a)}`)
  })
  telemetry.onEnd((error) => say(`${clock(Date.now())} telemetry ${error ? `error: ${error.message}` : 'replay ended'}`))
  supervisor.onEvent((e) => {
    if (e.type === 'log' || e.type === 'probe-failed') return // routine while a service loads
    markEvent(render.serviceMark(e))
    const { service, type, at, ...rest } = /** @type {any} */ (e)
    say(`${clock(at)} service ${service} ${type}${Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : ''}`)
  })
  arbiter.onEvent((e) => {
    markEvent(render.arbiterMark(e))
    if (['watchdog', 'admission-state', 'config-reloaded', 'config-rejected', 'timeout'].includes(e.type)) {
      say(`${clock(e.at)} arbiter ${e.type} ${e.gpuKey ?? ''}${e.taskType ? ` ${e.taskType}` : ''}${e.heldMs !== undefined ? ` held ${Math.round(e.heldMs)} ms` : ''}${e.detail ? ` ${e.detail}` : ''}`)
    }
  })

  const refresh = () => {
    try {
      model.services = supervisor.statuses()
      if (!arbiter.closed) model.arbiter = arbiter.snapshotAll()
    } catch {
      // closed while stopping: keep the last state
    }
  }
  let redraw = /** @type {NodeJS.Timeout | null} */ (null)
  if (tty) {
    process.stdout.write('\x1b[?1049h') // the alternate screen, restored on exit
    redraw = setInterval(() => {
      refresh()
      process.stdout.write(`\x1b[H\x1b[2J${model.title}  ${new Date().toISOString().slice(11, 19)}  (${model.source})\n\n${statusTable(model).join('\n')}\n\nCtrl-C stops every service and exits.\n`)
    }, 500)
  }

  const server = http ? await serveStatus({ arbiter, telemetry, supervisor, host: http.host, port: http.port, allowRemote: values['allow-remote'], title: model.title }) : null
  if (server) say(`${clock(Date.now())} status page ${server.url}`)

  let stopping = /** @type {Promise<number> | null} */ (null)
  /** @param {number} code @param {string} why */
  const stop = (code, why) =>
    (stopping ??= (async () => {
      refresh()
      const table = statusTable(model) // as it was running, before the stop
      if (redraw) clearInterval(redraw)
      if (tty) process.stdout.write('\x1b[?1049l')
      say(`${clock(Date.now())} stopping (${why})`)
      await server?.close()
      await supervisor.close() // every service stopped and reaped
      refresh()
      telemetry.close()
      arbiter.close()
      sidecar.setGpuArbiter(null)
      process.stdout.write(`${table.join('\n')}\n\nstopped: ${(model.services ?? []).map((s) => `${s.name} ${s.state}`).join(', ') || 'no services'}\n`)
      if (reportPath) {
        writeFileSync(reportPath, pageHtml(model, { live: false }))
        process.stdout.write(`report: ${reportPath}\n`)
      }
      return code
    })())
  // Nothing else keeps Node alive while the services run: events and signals do not.
  const keepAlive = setInterval(() => {}, 1 << 30)
  /** @type {(code: number) => void} */
  let finish = () => {}
  const finished = new Promise((done) => (finish = done))
  const onSignal = (/** @type {NodeJS.Signals} */ signal) => stop(0, signal).then(finish)
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  const outcomes = await supervisor.startAll().catch(() => [])
  for (const o of outcomes) say(`${clock(Date.now())} start ${o.service}: ${o.status}${o.status === 'ready' ? ` in ${Math.round(o.timeToReadyMs)} ms` : o.status === 'failed' ? ` ${o.error.code}: ${o.error.message}` : ''}`)
  if (script && !stopping) {
    say(`${clock(Date.now())} script ${script}`)
    let code = 0
    try {
      const mod = await import(pathToFileURL(script).href)
      await mod.default({ arbiter, telemetry, supervisor, config, model })
    } catch (error) {
      process.stderr.write(`script failed: ${/** @type {Error} */ (error).stack ?? error}\n`)
      code = 1
    }
    stop(code, 'script done').then(finish)
  }
  if (!script) say(`${clock(Date.now())} running; Ctrl-C or SIGTERM stops`)
  const code = await finished
  clearInterval(keepAlive)
  process.removeListener('SIGINT', onSignal)
  process.removeListener('SIGTERM', onSignal)
  return code
}

module.exports = { usage, options, main }
