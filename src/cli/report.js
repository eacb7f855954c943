// @ts-check
// `gpu-sidecar report`: a telemetry recording as a single self-contained HTML incident report.

const { readFileSync, writeFileSync } = require('node:fs')
const { basename, resolve } = require('node:path')
const sidecar = require('../../gpu-sidecar.js')
const { usageError } = require('./errors.js')
const { pageHtml } = require('../status/page.js')
const render = require('../status/render.js')

/** @typedef {import('../status/render.js').StatusModel} StatusModel */

const usage = `Usage: gpu-sidecar report <rec.jsonl> [-o report.html] [--config <node-config.json>]

Turns a telemetry recording (new Telemetry({ record }) or gpu-sidecar run --record) into one HTML
file with inline SVG and no network fetches: per GPU utilization and used memory, memory per
service or process as stacked areas, host available memory and swap, and alert spans on the same
time axis, with numbered event marks on every axis (services ready, failed, restarting or
evicted, leases revoked by the watchdog, alerts raised and cleared) listed in an events table,
and a short summary (peaks, alerts, time in each), which is also printed here.

Options:
  -o, --output <file>  where to write the report (default: <rec>.html beside the recording)
  --config <file>      take alert thresholds from this node config's telemetry section
  -h, --help           this help`

const options = /** @type {const} */ ({
  output: { type: 'string', short: 'o' },
  config: { type: 'string' },
})

/**
 * Reads a recording and replays it through the alert engine.
 * @param {string} path @param {object | undefined} telemetryOptions
 * @returns {StatusModel}
 */
function reportModel(path, telemetryOptions) {
  const { samples, alerts, events } = sidecar.readRecording(path, /** @type {any} */ (telemetryOptions))
  /** @type {StatusModel} */
  const model = { title: `gpu-sidecar incident report: ${basename(path)}`, source: `recording ${resolve(path)}`, samples, alerts: [], events: [] }
  for (const alert of alerts) render.addAlert(model, alert)
  for (const e of events) render.addEvent(model, { at: e.at, ...e.event })
  return model
}

/**
 * @param {{ output?: string, config?: string }} values @param {string[]} positionals
 * @returns {Promise<number>}
 */
async function main(values, positionals) {
  if (positionals.length !== 1) throw usageError('report: expected exactly one recording (rec.jsonl)')
  const input = positionals[0]
  const telemetryOptions = values.config ? telemetrySection(values.config) : undefined
  const model = reportModel(input, telemetryOptions)
  const output = values.output ?? input.replace(/\.jsonl$/, '') + '.html'
  writeFileSync(output, pageHtml(model, { live: false }))
  process.stdout.write(`${render.summarize(model).join('\n')}\nreport: ${resolve(output)}\n`)
  return 0
}

/** The `telemetry` section of a node config, after loadConfig validated the rest. @param {string} path */
function telemetrySection(path) {
  sidecar.loadConfig(path)
  return JSON.parse(readFileSync(path, 'utf8')).telemetry
}

module.exports = { usage, options, main, reportModel }
