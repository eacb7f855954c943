// @ts-check
// `gpu-sidecar doctor`: is the NVIDIA stack usable, how are the GPUs and the host doing, and (with
// --config) is the node config valid, can its services start, and will their models fit.

const { existsSync, readFileSync, accessSync, constants, statSync } = require('node:fs')
const { createServer } = require('node:net')
const { delimiter, dirname, isAbsolute, join, resolve } = require('node:path')
const sidecar = require('../../gpu-sidecar.js')
const { fitPlan, hostFit } = require('./fit-plan.js')
const { formatMb } = require('../status/render.js')

/** @typedef {import('../../index').TelemetrySample} TelemetrySample */
/** @typedef {import('../../index').GpuInventory} GpuInventory */
/** @typedef {import('./fit-plan.js').GpuFit} GpuFit */
/** @typedef {import('./fit-plan.js').HostFit} HostFit */
/** @typedef {{ check: string, status: 'ok' | 'warn' | 'fail', detail: string, hint?: string }} Check */

const FIX_HINTS = {
  LIBRARY_NOT_FOUND: 'install the NVIDIA driver (it ships libnvidia-ml.so.1 / nvml.dll); in a container, run it with the NVIDIA Container Toolkit (--gpus all)',
  DRIVER_NOT_LOADED: 'load the kernel module (sudo modprobe nvidia) or reboot after a driver update; `nvidia-smi` should then list the GPUs',
  NO_PERMISSION: 'give this user access to /dev/nvidia* (usually the video group), or run as the service user that has it',
  GPU_LOST: 'a GPU fell off the bus: look for Xid 79 in dmesg, then reset it (nvidia-smi -r) or reboot',
  INIT_FAILED: 'run nvidia-smi to see NVML\'s own error message',
}

const usage = `Usage: gpu-sidecar doctor [--config <node-config.json>] [--replay <rec.jsonl>] [--json]

Checks NVML (with a fix hint when it is unavailable), the driver, NVML and CUDA driver versions,
each GPU (name, UUID, memory, utilization, temperature, persistence, compute and MIG mode, driver
model), host memory, swap and zombie children. With --config it also validates the file (errors
name their JSON path), checks that each service's command exists and its port is free, and prints
a fit plan per GPU: whether the services' vramMb (or learned peaks from stateFile) fit together,
only when started in sequence, only with eviction, or not at all; and for the host, whether every
service's hostMemMb (or learned peak RSS) plus hostMemHeadroomMb fits in the available memory.

Options:
  --config <file>   a node config file (gpuArbiter, services, telemetry sections)
  --replay <file>   take GPU and host figures from a telemetry recording's last sample
  --json            print one JSON object instead of text
  -h, --help        this help

Exit code: 0 when healthy (warnings allowed), 1 when any check fails, 2 for bad arguments.`

const options = /** @type {const} */ ({
  config: { type: 'string' },
  replay: { type: 'string' },
  json: { type: 'boolean', default: false },
})

/**
 * @param {{ config?: string, replay?: string, json?: boolean }} values
 * @returns {Promise<number>}
 */
async function main(values) {
  const report = await diagnose(values)
  if (values.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
  else process.stdout.write(formatReport(report))
  return report.healthy ? 0 : 1
}

/**
 * Runs every check; never throws for an unhealthy machine or a bad config (those are results).
 * @param {{ config?: string, replay?: string }} values
 */
async function diagnose(values) {
  /** @type {Check[]} */
  const checks = []
  const inventory = values.replay ? null : sidecar.gpuInventory()
  const sample = values.replay ? lastRecordedSample(values.replay) : await liveSample()
  const nvml = sample.nvml
  if (nvml.available) {
    checks.push({ check: 'nvml', status: 'ok', detail: values.replay ? `available (recorded in ${values.replay})` : 'available' })
  } else {
    const reason = nvml.reason ?? 'INIT_FAILED'
    checks.push({ check: 'nvml', status: 'fail', detail: `unavailable: ${reason}`, hint: FIX_HINTS[reason] })
  }
  if (inventory?.nvml.available) {
    checks.push({ check: 'versions', status: 'ok', detail: `driver ${inventory.driverVersion ?? '?'}, NVML ${inventory.nvmlVersion ?? '?'}, CUDA driver ${inventory.cudaDriverVersion ?? '?'}` })
  }
  const gpus = sample.gpus.map((g) => ({ ...g, ...(inventory?.gpus.find((i) => i.index === g.index) ?? {}) }))
  for (const g of gpus) {
    const modes = inventory ? gpuModes(/** @type {any} */ (g)) : 'modes not recorded'
    const figures = `${g.name ?? '?'} ${g.uuid ?? ''}, ${formatMb(g.usedMb)} used of ${formatMb(g.totalMb)}, ${g.utilizationGpu ?? '?'} % busy, ${g.temperatureC ?? '?'} °C, ${modes}`
    if (g.lost) checks.push({ check: g.key, status: 'fail', detail: `lost (fell off the bus): ${figures}`, hint: FIX_HINTS.GPU_LOST })
    else if (/** @type {any} */ (g).computeMode === 'PROHIBITED') checks.push({ check: g.key, status: 'fail', detail: figures, hint: 'compute mode PROHIBITED: no CUDA context can be made; sudo nvidia-smi -i N -c DEFAULT' })
    else checks.push({ check: g.key, status: 'ok', detail: figures })
  }
  const h = sample.host
  checks.push({ check: 'host memory', status: h.availableMb < 1024 ? 'warn' : 'ok', detail: `${formatMb(h.availableMb)} available of ${formatMb(h.totalMb)}` })
  checks.push({ check: 'swap', status: h.swapUsedMb > 512 ? 'warn' : 'ok', detail: `${formatMb(h.swapUsedMb)} used of ${formatMb(h.swapTotalMb)}`, ...(h.swapUsedMb > 512 ? { hint: 'the host is swapping: fewer or smaller workers (see recommendConcurrency)' } : {}) })
  checks.push({ check: 'zombies', status: h.zombieChildren > 0 ? 'warn' : 'ok', detail: `${h.zombieChildren} zombie children of this process` })

  /** @type {{ gpus: GpuFit[], host: HostFit | null } | null} */
  let plan = null
  if (values.config) plan = await checkConfig(values.config, sample, checks)
  return {
    healthy: checks.every((c) => c.status !== 'fail'),
    checks,
    inventory,
    host: h,
    gpus,
    fitPlan: plan?.gpus ?? null,
    hostFit: plan?.host ?? null,
  }
}

/** @param {{ persistenceMode?: boolean | null, computeMode?: string | null, migMode?: { current: boolean } | null, driverModel?: string | null }} g */
function gpuModes(g) {
  const parts = [`persistence ${g.persistenceMode === undefined || g.persistenceMode === null ? 'n/a' : g.persistenceMode ? 'on' : 'off'}`]
  parts.push(`compute ${g.computeMode ?? 'n/a'}`)
  parts.push(`MIG ${g.migMode ? (g.migMode.current ? 'on' : 'off') : 'n/a'}`)
  if (g.driverModel) parts.push(`driver model ${g.driverModel}`)
  return parts.join(', ')
}

/**
 * One live sample: a Telemetry sampling every 50 ms, closed after its first sample. A Telemetry
 * never keeps Node alive, so a timer does until the sample comes.
 * @returns {Promise<TelemetrySample>}
 */
function liveSample() {
  return new Promise((done, fail) => {
    const telemetry = new sidecar.Telemetry({ intervalMs: 50 })
    const timeout = setTimeout(() => {
      telemetry.close()
      fail(Object.assign(new Error('no telemetry sample within 10 s'), { code: 'INTERNAL' }))
    }, 10_000)
    const off = telemetry.onSample((sample) => {
      clearTimeout(timeout)
      off()
      telemetry.close()
      done(sample)
    })
  })
}

/** @param {string} path */
function lastRecordedSample(path) {
  const { samples } = sidecar.readRecording(path)
  return samples[samples.length - 1]
}

/**
 * @param {string} path @param {TelemetrySample} sample @param {Check[]} checks
 * @returns {Promise<{ gpus: GpuFit[], host: HostFit | null } | null>}
 */
async function checkConfig(path, sample, checks) {
  let config
  try {
    config = sidecar.loadConfig(path)
  } catch (error) {
    const e = /** @type {Error & { code?: string }} */ (error)
    checks.push({ check: 'config', status: 'fail', detail: `${e.code ?? 'ERROR'}: ${e.message}` })
    return null
  }
  checks.push({ check: 'config', status: config.warnings.length ? 'warn' : 'ok', detail: config.warnings.length ? config.warnings.join('; ') : `${path} is valid` })
  // A manifest the node would skip is no service at all: say so beside the config.
  for (const d of config.manifests?.diagnostics ?? []) {
    checks.push({ check: 'manifest skipped', status: 'warn', detail: `${d.path}${d.jsonPath ? ` at ${d.jsonPath}` : ''}: ${d.message}` })
  }
  const services = config.services
  if (!services) return { gpus: [], host: null }
  const configDir = dirname(resolve(path))
  for (const s of services.services ?? []) {
    const found = findCommand(s.command, s.cwd ? resolve(configDir, s.cwd) : process.cwd(), s.env?.PATH ?? process.env.PATH ?? '')
    checks.push(found ? { check: `${s.name} command`, status: 'ok', detail: found } : { check: `${s.name} command`, status: 'fail', detail: `${s.command} not found${s.command.includes('/') ? '' : ' on PATH'} or not executable` })
    if (s.port != null) {
      const free = await portFree(s.port)
      checks.push({ check: `${s.name} port`, status: free ? 'ok' : 'fail', detail: free ? `${s.port} is free` : `${s.port} is taken by another process (PORT_IN_USE at start)` })
    }
  }
  const learned = learnedPeaks(services.stateFile ?? undefined, configDir)
  const plan = fitPlan(services, learned, sample)
  const sequential = (services.maxConcurrentStarts ?? 1) === 1
  for (const fit of plan) {
    const status = fit.verdict === 'together' || (fit.verdict === 'sequence' && sequential) ? 'ok' : fit.verdict === 'sequence' || fit.verdict === 'unknown' ? 'warn' : 'fail'
    checks.push({ check: `fit ${fit.gpuKey}`, status, detail: `${fit.verdict}: ${fit.explanation}` })
  }
  const host = hostFit(services, learned, sample)
  if (host.services.length) {
    checks.push({ check: 'fit host', status: host.verdict === 'together' ? 'ok' : host.verdict === 'no-fit' ? 'fail' : 'warn', detail: `${host.verdict}: ${host.explanation}` })
  }
  return { gpus: plan, host }
}

/** @param {string | undefined} stateFile @param {string} configDir @returns {Record<string, { peakVramMb?: number, peakRssMb?: number }>} */
function learnedPeaks(stateFile, configDir) {
  if (!stateFile) return {}
  const path = isAbsolute(stateFile) ? stateFile : resolve(process.cwd(), stateFile)
  for (const candidate of [path, resolve(configDir, stateFile)]) {
    if (!existsSync(candidate)) continue
    try {
      return JSON.parse(readFileSync(candidate, 'utf8')).services ?? {}
    } catch {
      return {} // the supervisor ignores an unreadable state file too
    }
  }
  return {}
}

/** The executable `command` resolves to, as the supervisor would spawn it, or null. @param {string} command @param {string} cwd @param {string} pathVar */
function findCommand(command, cwd, pathVar) {
  const candidates = command.includes('/') ? [resolve(cwd, command)] : pathVar.split(delimiter).filter(Boolean).map((dir) => join(dir, command))
  for (const candidate of candidates) {
    try {
      if (!statSync(candidate).isFile()) continue
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return null
}

/** Whether nothing listens on `port` (checked as the supervisor does, by binding it). @param {number} port */
function portFree(port) {
  return new Promise((done) => {
    const server = createServer()
    server.once('error', () => done(false))
    server.listen(port, '127.0.0.1', () => server.close(() => done(true)))
  })
}

const MARK = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' }

/** @param {Awaited<ReturnType<typeof diagnose>>} report */
function formatReport(report) {
  let out = ''
  const width = Math.max(...report.checks.map((c) => c.check.length))
  for (const c of report.checks) {
    out += `${MARK[c.status]}  ${c.check.padEnd(width)}  ${c.detail}\n`
    if (c.hint) out += `      ${''.padEnd(width)}  fix: ${c.hint}\n`
  }
  if (report.fitPlan && report.fitPlan.length) {
    out += '\nfit plan\n'
    for (const fit of report.fitPlan) {
      out += `  ${fit.gpuKey}: ${fit.verdict.toUpperCase()}, ${fit.explanation}\n`
      for (const s of fit.services) {
        out += `    ${s.name.padEnd(18)} ${s.needMb === null ? '?' : formatMb(s.needMb)}${s.peakMb !== null && s.peakMb !== s.needMb ? ` (peak ${formatMb(s.peakMb)})` : ''}  from ${s.source}\n`
      }
    }
  }
  if (report.hostFit && report.hostFit.services.length) {
    out += `${report.fitPlan && report.fitPlan.length ? '' : '\nfit plan\n'}  host: ${report.hostFit.verdict.toUpperCase()}, ${report.hostFit.explanation}\n`
    for (const s of report.hostFit.services) {
      out += `    ${s.name.padEnd(18)} ${s.needMb === null ? '?' : formatMb(s.needMb)}  from ${s.source}\n`
    }
  }
  out += `\n${report.healthy ? 'healthy' : 'NOT healthy'}\n`
  return out
}

module.exports = { usage, options, main, diagnose }
