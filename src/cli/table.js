// @ts-check
// The status table `gpu-sidecar run` redraws in a terminal and prints when it stops.

const { alertText, formatDuration, formatMb } = require('../status/render.js')

/** @typedef {import('../status/render.js').StatusModel} StatusModel */

/** @param {string[][]} rows */
function columns(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]))).join('  ').trimEnd())
}

/**
 * Services (state, pid, VRAM, time to ready, restarts), GPUs (utilization, memory, leases,
 * queue) and active alerts, as lines of text.
 * @param {StatusModel} model
 * @returns {string[]}
 */
function statusTable(model) {
  const latest = model.samples[model.samples.length - 1]
  /** @param {string} name */
  const vramOf = (name) => {
    if (!latest) return null
    const mine = latest.gpus.flatMap((g) => g.processes.filter((p) => p.service === name))
    return mine.length ? mine.reduce((s, p) => s + (p.usedMb ?? 0), 0) : null
  }
  const lines = []
  if (model.services) {
    lines.push(
      ...columns([
        ['SERVICE', 'STATE', 'PID', 'VRAM', 'READY IN', 'RESTARTS', 'NOTE'],
        ...model.services.map((s) => [
          s.name,
          s.state,
          s.pid === null ? '-' : String(s.pid),
          formatMb(vramOf(s.name)),
          s.timeToReadyMs === null ? '-' : formatDuration(s.timeToReadyMs),
          String(s.restarts),
          s.error ? s.error.code : s.blockedBy ? `blocked by ${s.blockedBy}` : '',
        ]),
      ]),
      '',
    )
  }
  const keys = new Set([...(latest?.gpus.map((g) => g.key) ?? []), ...(model.arbiter?.map((a) => a.gpuKey) ?? [])])
  lines.push(
    ...columns([
      ['GPU', 'UTIL', 'MEMORY', 'LEASES', 'QUEUE', 'ADMISSION'],
      ...[...keys].map((key) => {
        const g = latest?.gpus.find((x) => x.key === key)
        const a = model.arbiter?.find((x) => x.gpuKey === key)
        return [
          key,
          g?.utilizationGpu === null || g?.utilizationGpu === undefined ? '-' : `${Math.round(g.utilizationGpu)} %`,
          g ? `${formatMb(g.usedMb)} / ${formatMb(g.totalMb)}` : '-',
          a ? `${a.activeLeases.length}/${a.capacity}${a.activeLeases.length ? ` ${a.activeLeases.map((l) => l.taskType).join(',')}` : ''}` : '-',
          a ? String(a.queueLength) : '-',
          a ? a.admission.state : '-',
        ]
      }),
    ]),
  )
  if (latest && !latest.nvml.available && keys.size === 0) lines.push(`(no GPU figures: NVML ${latest.nvml.reason})`)
  const active = model.alerts.filter((a) => a.end === null)
  lines.push('', active.length ? 'ACTIVE ALERTS' : 'ACTIVE ALERTS: none')
  for (const a of active) lines.push(`  ${alertText(a)}`)
  return lines
}

module.exports = { statusTable }
