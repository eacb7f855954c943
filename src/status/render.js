// @ts-check
// The one page renderer behind both the incident report (`gpu-sidecar report`, rendered once in
// Node) and the live status page (`serveStatus`, re-rendered in the browser on every update).
// It is self-contained on purpose: the live page inlines this file's source into a <script>, so
// it may not require anything and must run unchanged in Node and in a browser. Charts are inline
// SVG strings; nothing is fetched.

/** @typedef {import('../../index').TelemetrySample} TelemetrySample */
/** @typedef {import('../../index').TelemetryAlert} TelemetryAlert */
/** @typedef {import('../../index').ServiceStatus} ServiceStatus */
/** @typedef {import('../../index').GpuArbiterSnapshot} GpuArbiterSnapshot */

/**
 * An alert from the moment it was raised until it cleared (`end: null` while still active).
 * @typedef {{ code: string, gpuKey: string | null, level: string, message: string, start: number, end: number | null }} AlertSpan
 */

/**
 * Everything a page or report shows. `services` and `arbiter` are absent in a report made from a
 * recording alone.
 * @typedef {{
 *   title: string,
 *   source: string,
 *   samples: TelemetrySample[],
 *   alerts: AlertSpan[],
 *   services?: ServiceStatus[] | null,
 *   arbiter?: GpuArbiterSnapshot[] | null,
 * }} StatusModel
 */

/** Samples a live page keeps (15 minutes at one per second). */
const MAX_SAMPLES = 900

const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#475569']
const LEVEL_COLOURS = { info: '#0891b2', warning: '#d97706', critical: '#dc2626' }

/** @param {unknown} text */
function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] || c)
}

/** @param {number} ms */
function formatDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const minutes = Math.floor(ms / 60_000)
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`
}

/** @param {number} at @param {boolean} [tenths] */
function clock(at, tenths = false) {
  return new Date(at).toISOString().slice(11, tenths ? 21 : 19)
}

/** @param {number | null | undefined} mb */
function formatMb(mb) {
  if (mb === null || mb === undefined) return '-'
  return mb >= 10_240 ? `${(mb / 1024).toFixed(1)} GiB` : `${Math.round(mb)} MiB`
}

/**
 * Adds a raised or cleared alert to the model's spans.
 * @param {StatusModel} model
 * @param {TelemetryAlert} alert
 */
function addAlert(model, alert) {
  const open = model.alerts.find((s) => s.end === null && s.code === alert.code && s.gpuKey === alert.gpuKey)
  if (alert.active && !open) {
    model.alerts.push({ code: alert.code, gpuKey: alert.gpuKey, level: alert.level, message: alert.message, start: alert.at, end: null })
  } else if (!alert.active && open) {
    open.end = alert.at
  }
}

/**
 * Appends a sample, keeping at most MAX_SAMPLES.
 * @param {StatusModel} model
 * @param {TelemetrySample} sample
 */
function addSample(model, sample) {
  model.samples.push(sample)
  if (model.samples.length > MAX_SAMPLES) model.samples.splice(0, model.samples.length - MAX_SAMPLES)
}

/** @param {StatusModel} model */
function timeRange(model) {
  const samples = model.samples
  if (samples.length === 0) return { t0: 0, t1: 1 }
  const t0 = samples[0].at
  const t1 = Math.max(samples[samples.length - 1].at, t0 + 1)
  return { t0, t1 }
}

/** @param {StatusModel} model */
function gpuKeys(model) {
  /** @type {string[]} */
  const keys = []
  for (const s of model.samples) for (const g of s.gpus) if (!keys.includes(g.key)) keys.push(g.key)
  return keys
}

/**
 * The figures a report or page states in words: peaks per GPU, host lows, and the time spent in
 * each alert.
 * @param {StatusModel} model
 * @returns {string[]}
 */
function summarize(model) {
  const { t0, t1 } = timeRange(model)
  const lines = [`${model.samples.length} samples over ${formatDuration(model.samples.length ? t1 - t0 : 0)} (${model.source})`]
  if (model.samples.length === 0) return lines
  for (const key of gpuKeys(model)) {
    let util = -1
    let utilAt = 0
    let used = -1
    let usedAt = 0
    let total = null
    let name = null
    for (const s of model.samples) {
      const g = s.gpus.find((x) => x.key === key)
      if (!g) continue
      name = g.name ?? name
      total = g.totalMb ?? total
      if (g.utilizationGpu !== null && g.utilizationGpu > util) [util, utilAt] = [g.utilizationGpu, s.at]
      if (g.usedMb !== null && g.usedMb > used) [used, usedAt] = [g.usedMb, s.at]
    }
    const parts = [`${key}${name ? ` (${name})` : ''}:`]
    parts.push(util >= 0 ? `peak utilization ${util.toFixed(0)} % at ${clock(utilAt)}` : 'no utilization figures')
    if (used >= 0) parts.push(`peak memory ${formatMb(used)} of ${formatMb(total)} at ${clock(usedAt)}`)
    lines.push(parts.join(' '))
  }
  const host = model.samples.map((s) => s.host)
  const lowest = host.reduce((a, h) => (h.availableMb < a.availableMb ? h : a), host[0])
  const swap = Math.max(...host.map((h) => h.swapUsedMb))
  const zombies = Math.max(...host.map((h) => h.zombieChildren))
  lines.push(`host: lowest available memory ${formatMb(lowest.availableMb)} of ${formatMb(lowest.totalMb)}, peak swap used ${formatMb(swap)}, most zombie children ${zombies}`)
  if (model.alerts.length === 0) {
    lines.push('alerts: none')
  } else {
    /** @type {Map<string, { count: number, ms: number, level: string, active: boolean }>} */
    const byCode = new Map()
    for (const span of model.alerts) {
      const name = span.gpuKey ? `${span.code} (${span.gpuKey})` : span.code
      const entry = byCode.get(name) ?? { count: 0, ms: 0, level: span.level, active: false }
      entry.count += 1
      entry.ms += (span.end ?? t1) - span.start
      entry.active ||= span.end === null
      byCode.set(name, entry)
    }
    lines.push(`alerts: ${model.alerts.length}`)
    for (const [name, e] of byCode) {
      lines.push(`  ${e.level} ${name}: raised ${e.count}x, ${formatDuration(e.ms)} in total${e.active ? ', still active' : ''}`)
    }
  }
  return lines
}

const CHART = { width: 760, height: 170, left: 56, right: 12, top: 22, bottom: 24 }

/**
 * Frame, gridlines and time axis of one chart; `x` and `y` map data to pixels.
 * @param {{ title: string, t0: number, t1: number, yMax: number, unit: string, height?: number }} o
 */
function frame(o) {
  const height = o.height ?? CHART.height
  const plotW = CHART.width - CHART.left - CHART.right
  const plotH = height - CHART.top - CHART.bottom
  /** @param {number} t */
  const x = (t) => CHART.left + ((t - o.t0) / (o.t1 - o.t0)) * plotW
  /** @param {number} v */
  const y = (v) => CHART.top + plotH - (Math.min(v, o.yMax) / o.yMax) * plotH
  let svg = `<text x="${CHART.left}" y="14" class="chart-title">${escapeHtml(o.title)}</text>`
  for (let i = 0; i <= 4; i++) {
    const v = (o.yMax * i) / 4
    const yy = y(v).toFixed(1)
    svg += `<line x1="${CHART.left}" x2="${CHART.width - CHART.right}" y1="${yy}" y2="${yy}" class="grid"/>`
    svg += `<text x="${CHART.left - 4}" y="${yy}" class="tick" text-anchor="end" dominant-baseline="middle">${escapeHtml(o.unit === 'MiB' ? formatMb(v) : `${Math.round(v)}${o.unit}`)}</text>`
  }
  for (let i = 0; i <= 4; i++) {
    const t = o.t0 + ((o.t1 - o.t0) * i) / 4
    const anchor = i === 0 ? 'start' : i === 4 ? 'end' : 'middle'
    svg += `<text x="${x(t).toFixed(1)}" y="${height - 6}" class="tick" text-anchor="${anchor}">${clock(t, o.t1 - o.t0 < 20_000)}</text>`
  }
  return { svg, x, y, height, open: `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${CHART.width} ${height}" class="chart" role="img" aria-label="${escapeHtml(o.title)}">` }
}

/** @param {Array<[number, number]>} points @param {(t: number) => number} x @param {(v: number) => number} y */
function path(points, x, y) {
  return points.map(([t, v], i) => `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join('')
}

/** @param {Array<{ name: string, colour: string }>} items */
function legend(items) {
  return `<div class="legend">${items.map((i) => `<span><i style="background:${i.colour}"></i>${escapeHtml(i.name)}</span>`).join('')}</div>`
}

/**
 * Lines over time.
 * @param {{ title: string, t0: number, t1: number, yMax: number, unit: string, series: Array<{ name: string, points: Array<[number, number]> }> }} o
 */
function lineChart(o) {
  const f = frame(o)
  let body = f.svg
  o.series.forEach((s, i) => {
    if (s.points.length) body += `<path d="${path(s.points, f.x, f.y)}" fill="none" stroke="${PALETTE[i % PALETTE.length]}" stroke-width="1.8" class="series" data-series="${escapeHtml(s.name)}"/>`
  })
  return `<figure>${f.open}${body}</svg>${legend(o.series.map((s, i) => ({ name: s.name, colour: PALETTE[i % PALETTE.length] })))}</figure>`
}

/**
 * Stacked areas over time: each layer on top of the ones before.
 * @param {{ title: string, t0: number, t1: number, yMax: number, unit: string, times: number[], layers: Array<{ name: string, values: number[] }> }} o
 */
function stackedArea(o) {
  const f = frame(o)
  let body = f.svg
  const base = o.times.map(() => 0)
  o.layers.forEach((layer, i) => {
    const top = base.map((b, j) => b + layer.values[j])
    /** @type {Array<[number, number]>} */
    const upper = o.times.map((t, j) => [t, top[j]])
    /** @type {Array<[number, number]>} */
    const lower = o.times.map((t, j) => /** @type {[number, number]} */ ([t, base[j]])).reverse()
    const d = `${path(upper, f.x, f.y)}${path(lower, f.x, f.y).replace(/^M/, 'L')}Z`
    body += `<path d="${d}" fill="${PALETTE[i % PALETTE.length]}" fill-opacity="0.55" stroke="${PALETTE[i % PALETTE.length]}" stroke-width="0.8" class="layer" data-layer="${escapeHtml(layer.name)}"/>`
    top.forEach((v, j) => (base[j] = v))
  })
  return `<figure>${f.open}${body}</svg>${legend(o.layers.map((l, i) => ({ name: l.name, colour: PALETTE[i % PALETTE.length] })))}</figure>`
}

/**
 * One lane per alert (code and GPU), a bar for each span, on the charts' time axis.
 * @param {AlertSpan[]} alerts @param {number} t0 @param {number} t1
 */
function alertLanes(alerts, t0, t1) {
  /** @type {string[]} */
  const lanes = []
  for (const a of alerts) {
    const lane = a.gpuKey ? `${a.code} ${a.gpuKey}` : a.code
    if (!lanes.includes(lane)) lanes.push(lane)
  }
  const height = CHART.top + CHART.bottom + Math.max(lanes.length, 1) * 20
  const f = frame({ title: 'Alerts', t0, t1, yMax: 1, unit: '', height })
  // The frame's value gridlines mean nothing here; keep only the title and the time axis.
  let body = f.svg.replace(/<line[^>]*class="grid"\/>|<text[^>]*text-anchor="end"[^>]*>[^<]*<\/text>/g, '')
  lanes.forEach((lane, i) => {
    const y = CHART.top + i * 20
    body += `<text x="${CHART.left - 4}" y="${y + 13}" class="tick" text-anchor="end">${escapeHtml(lane.split(' ')[1] ?? '')}</text>`
    for (const a of alerts) {
      if ((a.gpuKey ? `${a.code} ${a.gpuKey}` : a.code) !== lane) continue
      const x0 = f.x(Math.max(a.start, t0))
      const x1 = Math.max(f.x(a.end ?? t1), x0 + 2)
      const colour = LEVEL_COLOURS[/** @type {keyof typeof LEVEL_COLOURS} */ (a.level)] ?? '#475569'
      body += `<rect x="${x0.toFixed(1)}" y="${y + 2}" width="${(x1 - x0).toFixed(1)}" height="15" fill="${colour}" rx="2" class="alert-span" data-code="${escapeHtml(a.code)}"><title>${escapeHtml(a.message)}</title></rect>`
      body += `<text x="${(x0 + 4).toFixed(1)}" y="${y + 13}" class="span-label">${escapeHtml(a.code)}</text>`
    }
  })
  if (!lanes.length) body += `<text x="${CHART.left}" y="${CHART.top + 14}" class="tick">no alerts</text>`
  return `<figure>${f.open}${body}</svg></figure>`
}

/** @param {StatusModel} model @param {string} key @param {number} t0 @param {number} t1 */
function gpuSection(model, key, t0, t1) {
  /** @type {Array<[number, number]>} */ const util = []
  /** @type {Array<[number, number]>} */ const used = []
  let total = 0
  let name = ''
  /** @type {string[]} */
  const owners = []
  /** @param {{ pid: number, service: string | null }} p */
  const owner = (p) => p.service ?? `pid ${p.pid}`
  for (const s of model.samples) {
    const g = s.gpus.find((x) => x.key === key)
    if (!g) continue
    name = g.name ?? name
    total = Math.max(total, g.totalMb ?? 0)
    if (g.utilizationGpu !== null) util.push([s.at, g.utilizationGpu])
    if (g.usedMb !== null) used.push([s.at, g.usedMb])
    for (const p of g.processes) if (!owners.includes(owner(p))) owners.push(owner(p))
  }
  const times = model.samples.map((s) => s.at)
  const layers = owners.map((o) => ({
    name: o,
    values: model.samples.map((s) => {
      const g = s.gpus.find((x) => x.key === key)
      return g ? g.processes.filter((p) => owner(p) === o).reduce((sum, p) => sum + (p.usedMb ?? 0), 0) : 0
    }),
  }))
  const yMem = Math.max(total, ...used.map(([, v]) => v), 1)
  let html = `<section class="gpu" data-gpu="${escapeHtml(key)}"><h2>${escapeHtml(key)} ${escapeHtml(name)}</h2>`
  html += lineChart({ title: 'Utilization (%)', t0, t1, yMax: 100, unit: ' %', series: [{ name: 'utilization', points: util }] })
  html += lineChart({ title: `Used memory (of ${formatMb(total)})`, t0, t1, yMax: yMem, unit: 'MiB', series: [{ name: 'used', points: used }, { name: 'total', points: total ? [[t0, total], [t1, total]] : [] }] })
  html += stackedArea({ title: 'Memory per service or process', t0, t1, yMax: yMem, unit: 'MiB', times, layers })
  return `${html}</section>`
}

/** @param {ServiceStatus[]} services */
function servicesTable(services) {
  const rows = services
    .map((s) => `<tr data-service="${escapeHtml(s.name)}" class="state-${escapeHtml(s.state)}"><td>${escapeHtml(s.name)}</td><td>${escapeHtml(s.state)}</td><td>${s.pid ?? '-'}</td><td>${s.timeToReadyMs === null ? '-' : formatDuration(s.timeToReadyMs)}</td><td>${s.restarts}</td><td>${escapeHtml(s.error ? `${s.error.code}: ${s.error.message}` : (s.blockedBy ? `blocked by ${s.blockedBy}` : ''))}</td></tr>`)
    .join('')
  return `<section id="services"><h2>Services</h2><table><thead><tr><th>service</th><th>state</th><th>pid</th><th>time to ready</th><th>restarts</th><th>error</th></tr></thead><tbody>${rows}</tbody></table></section>`
}

/** @param {GpuArbiterSnapshot[]} snapshots */
function leasesTable(snapshots) {
  const rows = snapshots
    .map((s) => {
      const leases = s.activeLeases.map((l) => `${l.taskType} ${formatDuration(l.heldMs)}${l.watchdogFired ? ' (watchdog)' : ''}`).join(', ') || '-'
      const queue = s.queue.map((w) => `${w.taskType} ${formatDuration(w.waitedMs)}`).join(', ') || '-'
      return `<tr data-gpu="${escapeHtml(s.gpuKey)}"><td>${escapeHtml(s.gpuKey)}</td><td>${escapeHtml(s.admission.state)}</td><td>${s.activeLeases.length}/${s.capacity}</td><td>${escapeHtml(leases)}</td><td>${s.queueLength}</td><td>${escapeHtml(queue)}</td></tr>`
    })
    .join('')
  return `<section id="leases"><h2>GPU leases</h2><table><thead><tr><th>GPU</th><th>admission</th><th>leases</th><th>held by</th><th>queue</th><th>waiting</th></tr></thead><tbody>${rows}</tbody></table></section>`
}

/**
 * The page body: summary, services and leases (when known), per-GPU charts, host memory and the
 * alert lanes, all on one time axis.
 * @param {StatusModel} model
 */
function renderBody(model) {
  const { t0, t1 } = timeRange(model)
  let html = `<header><h1>${escapeHtml(model.title)}</h1><p class="source">${escapeHtml(model.source)}</p></header>`
  html += `<section id="summary"><h2>Summary</h2><pre>${escapeHtml(summarize(model).join('\n'))}</pre></section>`
  const active = model.alerts.filter((a) => a.end === null)
  html += `<section id="active-alerts"><h2>Active alerts</h2>${active.length ? `<ul>${active.map((a) => `<li class="level-${escapeHtml(a.level)}">${escapeHtml(a.level)} ${escapeHtml(a.code)}${a.gpuKey ? ` ${escapeHtml(a.gpuKey)}` : ''}: ${escapeHtml(a.message)}</li>`).join('')}</ul>` : '<p>none</p>'}</section>`
  if (model.services) html += servicesTable(model.services)
  if (model.arbiter) html += leasesTable(model.arbiter)
  for (const key of gpuKeys(model)) html += gpuSection(model, key, t0, t1)
  const host = model.samples.map((s) => s.host)
  const hostMax = Math.max(1, ...host.map((h) => Math.max(h.totalMb, h.swapTotalMb)))
  html += `<section id="host"><h2>Host</h2>${lineChart({
    title: 'Host available memory and swap used',
    t0,
    t1,
    yMax: hostMax,
    unit: 'MiB',
    series: [
      { name: 'available memory', points: model.samples.map((s) => /** @type {[number, number]} */ ([s.at, s.host.availableMb])) },
      { name: 'swap used', points: model.samples.map((s) => /** @type {[number, number]} */ ([s.at, s.host.swapUsedMb])) },
    ],
  })}</section>`
  html += `<section id="alerts">${alertLanes(model.alerts, t0, t1)}</section>`
  return html
}

const STYLE = `body{font:14px system-ui,sans-serif;margin:0 auto;max-width:800px;padding:16px;color:#0f172a;background:#fff}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:18px 0 6px}.source{color:#475569;margin:2px 0}
pre{background:#f1f5f9;padding:8px;white-space:pre-wrap}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e2e8f0;padding:3px 6px;text-align:left}figure{margin:4px 0 10px}
.chart{width:100%;height:auto}.chart-title{font-size:12px;font-weight:600;fill:#0f172a}.tick{font-size:10px;fill:#475569}
.grid{stroke:#e2e8f0}.span-label{font-size:10px;fill:#fff}.legend span{margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}.state-ready td:nth-child(2){color:#16a34a}
.state-failed td:nth-child(2){color:#dc2626}.level-critical{color:#dc2626}.level-warning{color:#b45309}`

const api = { MAX_SAMPLES, STYLE, addAlert, addSample, escapeHtml, formatDuration, formatMb, renderBody, summarize }
if (typeof module === 'object' && module.exports) module.exports = api
else /** @type {any} */ (globalThis).GpuSidecarRender = api
