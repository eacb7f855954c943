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
 * What an event mark is about: a service ready, failed, restarting or evicted; a lease the hold
 * watchdog revoked; an alert raised or cleared.
 * @typedef {'service-ready' | 'service-failed' | 'service-restarted' | 'service-evicted' | 'lease-revoked' | 'alert-raised' | 'alert-cleared'} MarkKind
 */

/**
 * Something that happened, marked on every time axis (as Grafana annotations are) and listed in
 * the page's numbered events table. `subject`: the service, GPU key or `host` it is about.
 * @typedef {{ at: number, kind: MarkKind, subject: string | null, label: string }} EventMark
 */

/**
 * Everything a page or report shows. `services` and `arbiter` are absent in a report made from a
 * recording alone.
 * @typedef {{
 *   title: string,
 *   source: string,
 *   samples: TelemetrySample[],
 *   alerts: AlertSpan[],
 *   events?: EventMark[],
 *   services?: ServiceStatus[] | null,
 *   arbiter?: GpuArbiterSnapshot[] | null,
 * }} StatusModel
 */

/** Samples a live page keeps (15 minutes at one per second). */
const MAX_SAMPLES = 900

/** Event marks a live page keeps (the oldest go first). */
const MAX_EVENTS = 500

/** Each mark kind's colour and its name in the events table. */
const MARK_KINDS = {
  'service-ready': { colour: '#16a34a', name: 'service ready' },
  'service-failed': { colour: '#dc2626', name: 'service failed' },
  'service-restarted': { colour: '#d97706', name: 'service restarting' },
  'service-evicted': { colour: '#7c3aed', name: 'service evicted' },
  'lease-revoked': { colour: '#db2777', name: 'lease revoked (watchdog)' },
  'alert-raised': { colour: '#b45309', name: 'alert raised' },
  'alert-cleared': { colour: '#0891b2', name: 'alert cleared' },
}

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
 * How every screen prints an alert (the CLI, the report, the live page): level, code, then the
 * alert's own message, which begins with its subject (`gpu:0: ...`, `host: ...`), so the
 * subject is named once.
 * @param {{ level: string, code: string, message: string }} alert
 */
function alertText(alert) {
  return `${alert.level} ${alert.code} ${alert.message}`
}

/**
 * Adds a raised or cleared alert to the model's spans, and its mark.
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
  addEvent(model, alertMark(alert))
}

/**
 * Adds an event mark, keeping at most MAX_EVENTS. A mark whose `at` is not a finite number, or
 * whose kind is unknown, is not added.
 * @param {StatusModel} model
 * @param {EventMark | null} mark
 */
function addEvent(model, mark) {
  if (!mark || !Number.isFinite(mark.at) || !(mark.kind in MARK_KINDS)) return
  const events = (model.events ??= [])
  events.push({ at: mark.at, kind: mark.kind, subject: mark.subject ?? null, label: String(mark.label) })
  if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS)
}

/** @param {TelemetryAlert} alert @returns {EventMark} */
function alertMark(alert) {
  return { at: alert.at, kind: alert.active ? 'alert-raised' : 'alert-cleared', subject: alert.gpuKey ?? 'host', label: `${alert.active ? 'raised' : 'cleared'} ${alertText(alert)}` }
}

/**
 * The mark for a supervisor event (`ServiceSupervisor#onEvent`): ready, failed, restarting and
 * evicted are marked; other events are not (null).
 * @param {any} e
 * @returns {EventMark | null}
 */
function serviceMark(e) {
  const at = e.at
  switch (e.type) {
    case 'ready':
      return { at, kind: 'service-ready', subject: e.service, label: `${e.service} ready in ${formatDuration(e.timeToReadyMs)}` }
    case 'failed':
      return { at, kind: 'service-failed', subject: e.service, label: `${e.service} failed: ${e.error?.code ?? 'ERROR'}: ${e.error?.message ?? ''}`.trimEnd() }
    case 'restarting':
      return { at, kind: 'service-restarted', subject: e.service, label: `${e.service} restarting (attempt ${e.attempt}) in ${formatDuration(e.delayMs)}` }
    case 'evicted':
      return { at, kind: 'service-evicted', subject: e.service, label: `${e.service} evicted from ${e.gpuKey} to make room for ${e.for}` }
    default:
      return null
  }
}

/**
 * The mark for an arbiter event (`GpuArbiter#onEvent`): a lease the hold watchdog revoked
 * (`watchdog` with detail `revoke`); a watchdog warning and other events are not marked.
 * @param {any} e
 * @returns {EventMark | null}
 */
function arbiterMark(e) {
  if (e.type !== 'watchdog' || e.detail !== 'revoke') return null
  const held = e.heldMs === undefined ? '' : ` after ${formatDuration(e.heldMs)}`
  return { at: e.at, kind: 'lease-revoked', subject: e.gpuKey ?? null, label: `${e.taskType ?? 'lease'} lease${e.leaseId ? ` ${e.leaseId}` : ''} on ${e.gpuKey ?? 'a GPU'} revoked by the hold watchdog${held}` }
}

/** How far a sample's time may be from the wall clock at its arrival and still be live. */
const LIVE_SKEW_MS = 60_000

/**
 * Puts events on the samples' time axis. Live samples carry the wall-clock time they were taken,
 * so an event's own time is right. A replay's samples carry their recorded times: an event during
 * a replay is placed after the latest sample by the wall time since that sample came, scaled by
 * the replay's speed (measured from the last two samples' recorded and arrival times).
 * Call `sample(at)` for each sample as it arrives, and `at(eventAt)` for each event.
 */
function sampleClock() {
  /** @type {Array<{ at: number, wall: number }>} */
  let last = []
  return {
    /** @param {number} at @param {number} [wall] */
    sample(at, wall = Date.now()) {
      last = [...last.slice(-1), { at, wall }]
    },
    /** @param {number} eventAt @param {number} [wall] */
    at(eventAt, wall = Date.now()) {
      const latest = last[last.length - 1]
      if (!latest || Math.abs(latest.at - latest.wall) < LIVE_SKEW_MS) return eventAt
      const previous = last.length === 2 ? last[0] : null
      const speed = previous && latest.wall > previous.wall && latest.at > previous.at ? (latest.at - previous.at) / (latest.wall - previous.wall) : 1
      return latest.at + Math.max(0, Math.min(eventAt, wall) - latest.wall) * speed
    },
  }
}

/**
 * The model's marks in time order, numbered from 1: the numbers on the charts and in the events
 * table.
 * @param {StatusModel} model
 * @returns {Array<EventMark & { n: number }>}
 */
function numberedMarks(model) {
  return (model.events ?? [])
    .map((m, i) => ({ m, i }))
    .sort((a, b) => a.m.at - b.m.at || a.i - b.i)
    .map(({ m }, i) => ({ ...m, n: i + 1 }))
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
 * The figures a report or page states: what was sampled, peaks per GPU, host lows, and the time
 * spent in each alert (by code and subject).
 * @param {StatusModel} model
 */
function summaryFigures(model) {
  const { t0, t1 } = timeRange(model)
  const overall = `${model.samples.length} samples over ${formatDuration(model.samples.length ? t1 - t0 : 0)}`
  /** @type {Array<{ key: string, name: string | null, util: string, memory: string | null }>} */
  const gpus = []
  /** @type {{ available: string, swap: string, zombies: number } | null} */
  let host = null
  /** @type {Array<{ level: string, code: string, subject: string, count: number, ms: number, active: boolean }>} */
  const alerts = []
  if (model.samples.length === 0) return { overall, gpus, host, alerts }
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
    gpus.push({
      key,
      name,
      util: util >= 0 ? `peak utilization ${util.toFixed(0)} % at ${clock(utilAt)}` : 'no utilization figures',
      memory: used >= 0 ? `peak memory ${formatMb(used)} of ${formatMb(total)} at ${clock(usedAt)}` : null,
    })
  }
  const hosts = model.samples.map((s) => s.host)
  const lowest = hosts.reduce((a, h) => (h.availableMb < a.availableMb ? h : a), hosts[0])
  host = {
    available: `lowest available memory ${formatMb(lowest.availableMb)} of ${formatMb(lowest.totalMb)}`,
    swap: `peak swap used ${formatMb(Math.max(...hosts.map((h) => h.swapUsedMb)))}`,
    zombies: Math.max(...hosts.map((h) => h.zombieChildren)),
  }
  for (const span of model.alerts) {
    const subject = span.gpuKey ?? 'host'
    let entry = alerts.find((a) => a.code === span.code && a.subject === subject)
    if (!entry) alerts.push((entry = { level: span.level, code: span.code, subject, count: 0, ms: 0, active: false }))
    entry.count += 1
    entry.ms += (span.end ?? t1) - span.start
    entry.active ||= span.end === null
  }
  return { overall, gpus, host, alerts }
}

/**
 * The summary as lines of text (the CLI prints them).
 * @param {StatusModel} model
 * @returns {string[]}
 */
function summarize(model) {
  const f = summaryFigures(model)
  const lines = [`${f.overall} (${model.source})`]
  if (!f.host) return lines
  for (const g of f.gpus) lines.push(`${g.key}${g.name ? ` (${g.name})` : ''}: ${g.util}${g.memory ? `, ${g.memory}` : ''}`)
  lines.push(`host: ${f.host.available}, ${f.host.swap}, most zombie children ${f.host.zombies}`)
  if (f.alerts.length === 0) {
    lines.push('alerts: none')
  } else {
    lines.push(`alerts: ${model.alerts.length}`)
    for (const a of f.alerts) lines.push(`  ${alertTotal(a)}`)
  }
  return lines
}

/**
 * One alert's total, printed as alerts are (level, code, subject once).
 * @param {{ level: string, code: string, subject: string, count: number, ms: number, active: boolean }} a
 */
function alertTotal(a) {
  return `${a.level} ${a.code} ${a.subject}: raised ${a.count}x, ${formatDuration(a.ms)} in total${a.active ? ', still active' : ''}`
}

/**
 * The summary as a page shows it: definition rows, and a small table of alert totals.
 * @param {StatusModel} model
 */
function summaryHtml(model) {
  const f = summaryFigures(model)
  /** @type {Array<[string, string]>} */
  const rows = [['sampled', `${f.overall}, ${model.source}`]]
  for (const g of f.gpus) rows.push([`${g.key}${g.name ? ` ${g.name}` : ''}`, `${g.util}${g.memory ? `; ${g.memory}` : ''}`])
  if (f.host) rows.push(['host', `${f.host.available}; ${f.host.swap}; most zombie children ${f.host.zombies}`])
  let html = `<dl class="figures">${rows.map(([term, text]) => `<div><dt>${escapeHtml(term)}</dt><dd>${escapeHtml(text)}</dd></div>`).join('')}</dl>`
  if (f.alerts.length) {
    html += `<table class="alert-totals"><thead><tr><th>level</th><th>alert</th><th>subject</th><th>raised</th><th>time in total</th><th>now</th></tr></thead><tbody>${f.alerts
      .map((a) => `<tr class="level-${escapeHtml(a.level)}"><td>${escapeHtml(a.level)}</td><td>${escapeHtml(a.code)}</td><td>${escapeHtml(a.subject)}</td><td>${a.count}x</td><td>${formatDuration(a.ms)}</td><td>${a.active ? 'active' : 'cleared'}</td></tr>`)
      .join('')}</tbody></table>`
  } else if (f.host) {
    html += '<p>No alerts.</p>'
  }
  return html
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
  let svg = `<text x="${CHART.left}" y="12" class="chart-title">${escapeHtml(o.title)}</text>`
  for (let i = 0; i <= 4; i++) {
    const v = (o.yMax * i) / 4
    const yy = y(v).toFixed(1)
    svg += `<line x1="${CHART.left}" x2="${CHART.width - CHART.right}" y1="${yy}" y2="${yy}" class="grid"/>`
    svg += `<text x="${CHART.left - 4}" y="${yy}" class="tick ytick" text-anchor="end" dominant-baseline="middle">${escapeHtml(o.unit === 'MiB' ? formatMb(v) : `${Math.round(v)}${o.unit}`)}</text>`
  }
  for (let i = 0; i <= 4; i++) {
    const t = o.t0 + ((o.t1 - o.t0) * i) / 4
    const anchor = i === 0 ? 'start' : i === 4 ? 'end' : 'middle'
    svg += `<text x="${x(t).toFixed(1)}" y="${height - 6}" class="tick" text-anchor="${anchor}">${clock(t, o.t1 - o.t0 < 20_000)}</text>`
  }
  return { svg, x, y, height, top: CHART.top, bottom: CHART.top + plotH, open: `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${CHART.width} ${height}" class="chart" role="img" aria-label="${escapeHtml(o.title)}">` }
}

/** @param {Array<[number, number]>} points @param {(t: number) => number} x @param {(v: number) => number} y */
function path(points, x, y) {
  return points.map(([t, v], i) => `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join('')
}

/**
 * The event marks on one chart's time axis: a dashed line at each mark's time with its number
 * above it, and its label (time and what happened) as the SVG title a pointer shows on hover.
 * Marks outside the axis are left out (the events table lists them all).
 * @param {Array<EventMark & { n: number }>} marks
 * @param {{ x: (t: number) => number, top: number, bottom: number }} f
 * @param {number} t0 @param {number} t1
 */
function markLayer(marks, f, t0, t1) {
  let svg = ''
  for (const m of marks) {
    if (m.at < t0 || m.at > t1) continue
    const xx = f.x(m.at).toFixed(1)
    const colour = MARK_KINDS[m.kind].colour
    svg += `<g class="mark" data-kind="${m.kind}" data-n="${m.n}"><title>${escapeHtml(markLabel(m))}</title>`
    svg += `<line x1="${xx}" x2="${xx}" y1="${f.top}" y2="${f.bottom}" stroke="${colour}" stroke-width="1.2" stroke-dasharray="3 2"/>`
    svg += `<line x1="${xx}" x2="${xx}" y1="${f.top - 9}" y2="${f.bottom}" class="mark-hit"/>`
    svg += `<text x="${xx}" y="${f.top - 2}" text-anchor="middle" class="mark-n" fill="${colour}">${m.n}</text></g>`
  }
  return svg
}

/** A mark's label: its number, time, kind and what happened. @param {EventMark & { n: number }} m */
function markLabel(m) {
  return `${m.n}. ${clock(m.at, true)} ${MARK_KINDS[m.kind].name}: ${m.label}`
}

/** @param {Array<{ name: string, colour: string }>} items */
function legend(items) {
  return `<div class="legend">${items.map((i) => `<span><i style="background:${i.colour}"></i>${escapeHtml(i.name)}</span>`).join('')}</div>`
}

/**
 * Lines over time.
 * @param {{ title: string, t0: number, t1: number, yMax: number, unit: string, marks: Array<EventMark & { n: number }>, series: Array<{ name: string, points: Array<[number, number]> }> }} o
 */
function lineChart(o) {
  const f = frame(o)
  let body = f.svg
  o.series.forEach((s, i) => {
    if (s.points.length) body += `<path d="${path(s.points, f.x, f.y)}" fill="none" stroke="${PALETTE[i % PALETTE.length]}" stroke-width="1.8" class="series" data-series="${escapeHtml(s.name)}"/>`
  })
  body += markLayer(o.marks, f, o.t0, o.t1)
  return `<figure>${f.open}${body}</svg>${legend(o.series.map((s, i) => ({ name: s.name, colour: PALETTE[i % PALETTE.length] })))}</figure>`
}

/**
 * Stacked areas over time: each layer on top of the ones before.
 * @param {{ title: string, t0: number, t1: number, yMax: number, unit: string, marks: Array<EventMark & { n: number }>, times: number[], layers: Array<{ name: string, values: number[] }> }} o
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
  body += markLayer(o.marks, f, o.t0, o.t1)
  return `<figure>${f.open}${body}</svg>${legend(o.layers.map((l, i) => ({ name: l.name, colour: PALETTE[i % PALETTE.length] })))}</figure>`
}

/**
 * One lane per alert (code and GPU), a bar for each span, on the charts' time axis.
 * @param {AlertSpan[]} alerts @param {number} t0 @param {number} t1 @param {Array<EventMark & { n: number }>} marks
 */
function alertLanes(alerts, t0, t1, marks) {
  /** @type {string[]} */
  const lanes = []
  for (const a of alerts) {
    const lane = a.gpuKey ? `${a.code} ${a.gpuKey}` : a.code
    if (!lanes.includes(lane)) lanes.push(lane)
  }
  const height = CHART.top + CHART.bottom + Math.max(lanes.length, 1) * 20
  const f = frame({ title: 'Alerts', t0, t1, yMax: 1, unit: '', height })
  // The frame's value gridlines mean nothing here; keep only the title and the time axis.
  let body = f.svg.replace(/<line[^>]*class="grid"\/>|<text[^>]*class="tick ytick"[^>]*>[^<]*<\/text>/g, '')
  lanes.forEach((lane, i) => {
    const y = CHART.top + i * 20
    body += `<text x="${CHART.left - 4}" y="${y + 13}" class="tick" text-anchor="end">${escapeHtml(lane.split(' ')[1] ?? '')}</text>`
    for (const a of alerts) {
      if ((a.gpuKey ? `${a.code} ${a.gpuKey}` : a.code) !== lane) continue
      const x0 = f.x(Math.max(a.start, t0))
      const x1 = Math.max(f.x(a.end ?? t1), x0 + 2)
      const colour = LEVEL_COLOURS[/** @type {keyof typeof LEVEL_COLOURS} */ (a.level)] ?? '#475569'
      body += `<rect x="${x0.toFixed(1)}" y="${y + 2}" width="${(x1 - x0).toFixed(1)}" height="15" fill="${colour}" rx="2" class="alert-span" data-code="${escapeHtml(a.code)}"><title>${escapeHtml(alertText(a))}</title></rect>`
      body += `<text x="${(x0 + 4).toFixed(1)}" y="${y + 13}" class="span-label">${escapeHtml(a.code)}</text>`
    }
  })
  if (!lanes.length) body += `<text x="${CHART.left}" y="${CHART.top + 14}" class="tick">no alerts</text>`
  body += markLayer(marks, { x: f.x, top: CHART.top, bottom: height - CHART.bottom }, t0, t1)
  return `<figure>${f.open}${body}</svg></figure>`
}

/**
 * @param {StatusModel} model @param {string} key @param {number} t0 @param {number} t1
 * @param {Array<EventMark & { n: number }>} marks
 */
function gpuSection(model, key, t0, t1, marks) {
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
  let html = `<section class="gpu" data-gpu="${escapeHtml(key)}"><h2>${escapeHtml(key)} ${escapeHtml(name)}</h2><div class="charts">`
  html += lineChart({ title: 'Utilization (%)', t0, t1, yMax: 100, unit: ' %', marks, series: [{ name: 'utilization', points: util }] })
  html += lineChart({ title: `Used memory (of ${formatMb(total)})`, t0, t1, yMax: yMem, unit: 'MiB', marks, series: [{ name: 'used', points: used }, { name: 'total', points: total ? [[t0, total], [t1, total]] : [] }] })
  html += stackedArea({ title: 'Memory per service or process', t0, t1, yMax: yMem, unit: 'MiB', marks, times, layers })
  return `${html}</div></section>`
}

/**
 * One row per service, with what explains a start that waits: its GPU, its VRAM now (its
 * processes' GPU memory in the latest sample) and learned peak, its RSS now (its registered
 * processes' resident memory) and learned peak, and the leases it holds.
 * @param {ServiceStatus[]} services @param {TelemetrySample | undefined} latest
 */
function servicesTable(services, latest) {
  /** @param {string} name */
  const vramNow = (name) => {
    const mine = latest ? latest.gpus.flatMap((g) => g.processes.filter((p) => p.service === name)) : []
    return mine.length ? mine.reduce((sum, p) => sum + (p.usedMb ?? 0), 0) : null
  }
  /** @param {string} name */
  const rssNow = (name) => {
    const mine = latest ? latest.host.processes.filter((p) => p.label === name && p.rssMb !== null) : []
    return mine.length ? mine.reduce((sum, p) => sum + (p.rssMb ?? 0), 0) : null
  }
  const rows = services
    .map((s) => {
      const leases = s.leases?.active ?? []
      const held = leases.length ? `${leases.length}: ${leases.map((l) => l.taskType).join(', ')}` : '0'
      const note = s.error ? `${s.error.code}: ${s.error.message}` : s.blockedBy ? `blocked by ${s.blockedBy}` : s.waiting ?? ''
      const cells = [
        escapeHtml(s.name),
        escapeHtml(s.state),
        escapeHtml(s.gpuKey ?? '-'),
        formatMb(vramNow(s.name)),
        formatMb(s.learned?.peakVramMb),
        formatMb(rssNow(s.name)),
        formatMb(s.learned?.peakRssMb),
        escapeHtml(held),
        String(s.pid ?? '-'),
        s.timeToReadyMs === null ? '-' : formatDuration(s.timeToReadyMs),
        String(s.restarts),
        escapeHtml(note),
      ]
      return `<tr data-service="${escapeHtml(s.name)}" class="state-${escapeHtml(s.state)}">${cells.map((c) => `<td>${c}</td>`).join('')}</tr>`
    })
    .join('')
  const head = ['service', 'state', 'GPU', 'VRAM now', 'VRAM peak (learned)', 'RSS now', 'RSS peak (learned)', 'leases held', 'pid', 'ready in', 'restarts', 'note']
  return `<section id="services"><h2>Services</h2><table><thead><tr>${head.map((h) => `<th>${h}</th>`).join('')}</tr></thead><tbody>${rows}</tbody></table></section>`
}

/**
 * The numbered event marks as a table: the charts carry the numbers, this says what each was
 * (and is what a printed report shows).
 * @param {Array<EventMark & { n: number }>} marks
 */
function eventsTable(marks) {
  const rows = marks
    .map((m) => `<tr data-kind="${m.kind}"><td>${m.n}</td><td>${clock(m.at, true)}</td><td><i style="background:${MARK_KINDS[m.kind].colour}"></i>${escapeHtml(MARK_KINDS[m.kind].name)}</td><td>${escapeHtml(m.label)}</td></tr>`)
    .join('')
  return `<section id="events"><h2>Events</h2>${marks.length ? `<table><thead><tr><th>#</th><th>time</th><th>event</th><th>what happened</th></tr></thead><tbody>${rows}</tbody></table>` : '<p>none</p>'}</section>`
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
 * The page body: summary and active alerts, services and leases (when known), per-GPU charts,
 * host memory and the alert lanes, all on one time axis with the event marks, then the numbered
 * events.
 * @param {StatusModel} model
 */
function renderBody(model) {
  const { t0, t1 } = timeRange(model)
  const marks = numberedMarks(model)
  let html = `<header><h1>${escapeHtml(model.title)}</h1><p class="source">${escapeHtml(model.source)}</p></header>`
  const active = model.alerts.filter((a) => a.end === null)
  html += `<div class="top"><section id="summary"><h2>Summary</h2>${summaryHtml(model)}</section>`
  html += `<section id="active-alerts"><h2>Active alerts</h2>${active.length ? `<ul>${active.map((a) => `<li class="level-${escapeHtml(a.level)}">${escapeHtml(alertText(a))}</li>`).join('')}</ul>` : '<p>none</p>'}</section></div>`
  if (model.services) html += servicesTable(model.services, model.samples[model.samples.length - 1])
  if (model.arbiter) html += leasesTable(model.arbiter)
  for (const key of gpuKeys(model)) html += gpuSection(model, key, t0, t1, marks)
  const host = model.samples.map((s) => s.host)
  const hostMax = Math.max(1, ...host.map((h) => Math.max(h.totalMb, h.swapTotalMb)))
  html += `<section id="host"><h2>Host and alerts</h2><div class="charts">${lineChart({
    title: 'Host available memory and swap used',
    t0,
    t1,
    yMax: hostMax,
    unit: 'MiB',
    marks,
    series: [
      { name: 'available memory', points: model.samples.map((s) => /** @type {[number, number]} */ ([s.at, s.host.availableMb])) },
      { name: 'swap used', points: model.samples.map((s) => /** @type {[number, number]} */ ([s.at, s.host.swapUsedMb])) },
    ],
  })}<div id="alerts">${alertLanes(model.alerts, t0, t1, marks)}</div></div></section>`
  html += eventsTable(marks)
  return html
}

const STYLE = `*{box-sizing:border-box}body{font:14px system-ui,sans-serif;margin:0 auto;max-width:2400px;padding:12px 20px;color:#0f172a;background:#fff}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:18px 0 6px}.source{color:#475569;margin:2px 0}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{border-bottom:1px solid #e2e8f0;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{font-weight:600;color:#334155}figure{margin:4px 0 10px;min-width:0}
.top{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,480px),1fr));gap:0 24px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:0 20px}
dl.figures{margin:0}dl.figures div{display:grid;grid-template-columns:minmax(90px,max-content) 1fr;gap:12px;border-bottom:1px solid #e2e8f0;padding:3px 0}
dl.figures dt{font-weight:600;color:#334155}dl.figures dd{margin:0;overflow-wrap:anywhere}.alert-totals{margin-top:8px}
.chart{width:100%;height:auto;display:block}.chart-title{font-size:12px;font-weight:600;fill:#0f172a}.tick{font-size:10px;fill:#475569}
.grid{stroke:#e2e8f0}.span-label{font-size:10px;fill:#fff}.legend span{margin-right:12px;font-size:12px}
.legend i,#events i{display:inline-block;width:10px;height:10px;margin-right:4px}
.mark-n{font-size:9px;font-weight:700}.mark-hit{stroke:transparent;stroke-width:9;pointer-events:stroke}.mark:hover line:first-of-type{stroke-width:2.5}
.state-ready td:nth-child(2){color:#16a34a}.state-failed td:nth-child(2){color:#dc2626}.level-critical{color:#dc2626}.level-warning{color:#b45309}
#active-alerts ul{margin:0;padding-left:18px}#services table{font-size:12px}#services td:last-child,#events td:last-child{overflow-wrap:anywhere}
@media print{body{max-width:none;padding:0}.charts{grid-template-columns:1fr}section{break-inside:avoid}}`

const api = { MAX_SAMPLES, MAX_EVENTS, MARK_KINDS, STYLE, addAlert, addEvent, addSample, alertText, arbiterMark, escapeHtml, formatDuration, formatMb, renderBody, sampleClock, serviceMark, summarize }
if (typeof module === 'object' && module.exports) module.exports = api
else /** @type {any} */ (globalThis).GpuSidecarRender = api
