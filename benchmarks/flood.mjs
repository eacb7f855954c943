// A service flooding 100 MB of stdout (100-byte lines, then one endless line): how much the
// host's RSS grows and how long the event loop stalls while the lines reach a JS listener,
// measured with perf_hooks.monitorEventLoopDelay plus a 1 ms timer chain. The peer, in the same
// run: the same flood read by Node itself (child_process.spawn + readline), the obvious way a
// JS supervisor would do it. Aim (issue 8): RSS growth under 64 MB and no stall over 50 ms.
import { spawn } from 'node:child_process'
import { mkdtempSync, openSync, readSync, rmSync, statSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import sidecar from '../gpu-sidecar.js'

const { ServiceSupervisor } = sidecar
const ESCAPER = fileURLToPath(new URL('../tests/fixtures/services/escaper.py', import.meta.url))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const MB = 1024 * 1024

/** Watches the event loop and RSS until `stop()`: histogram p99, longest timer gap, peak RSS. */
function watch() {
  const histogram = monitorEventLoopDelay({ resolution: 1 })
  histogram.enable()
  const baseline = process.memoryUsage.rss()
  let peak = baseline
  let maxGap = 0
  let last = performance.now()
  let running = true
  const tick = () => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    peak = Math.max(peak, process.memoryUsage.rss())
    if (running) setTimeout(tick, 1)
  }
  setTimeout(tick, 1)
  return () => {
    running = false
    histogram.disable()
    return {
      'RSS growth MB': Math.round((peak - baseline) / MB),
      'loop p99 ms': Number((histogram.percentile(99) / 1e6).toFixed(1)),
      'max stall ms': Math.round(maxGap),
    }
  }
}

function args(mb, lineBytes) {
  return [ESCAPER, '--no-escape', '--flood-mb', String(mb), '--line-bytes', String(lineBytes)]
}

/** Whether `file` ends with the flood's last line. */
function floodDone(file) {
  try {
    const size = statSync(file).size
    const fd = openSync(file, 'r')
    const tail = Buffer.alloc(Math.min(size, 32))
    readSync(fd, tail, 0, tail.length, size - tail.length)
    closeSync(fd)
    return tail.toString().endsWith('FLOOD_DONE\n')
  } catch {
    return false
  }
}

async function throughSupervisor(dir, mb, lineBytes) {
  const logFile = join(dir, `flood-${lineBytes}.log`)
  const supervisor = new ServiceSupervisor({
    services: [{ name: 'flood', command: 'python3', args: args(mb, lineBytes), readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } }, logFile }],
  })
  let lines = 0
  let bytes = 0
  let dropped = 0
  let lastEvent = performance.now()
  supervisor.onEvent((e) => {
    lastEvent = performance.now()
    if (e.type === 'log') {
      lines++
      bytes += e.line.length
    } else if (e.type === 'log-dropped') dropped += e.count
  })
  const stop = watch()
  const started = performance.now()
  await supervisor.startAll()
  while (!floodDone(logFile)) await sleep(20)
  // Then until the queued events have all been delivered.
  while (performance.now() - lastEvent < 200) await sleep(20)
  const seconds = (performance.now() - started) / 1000
  const figures = stop()
  await supervisor.close()
  return { ...figures, 'lines delivered': lines, 'lines dropped': dropped, 'MB delivered': Math.round(bytes / MB), s: Number(seconds.toFixed(1)) }
}

async function throughReadline(mb, lineBytes) {
  const child = spawn('python3', args(mb, lineBytes), { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout })
  let count = 0
  let bytes = 0
  const stop = watch()
  const started = performance.now()
  await new Promise((resolve) => {
    lines.on('line', (line) => {
      count++
      bytes += line.length
      if (line === 'FLOOD_DONE') resolve()
    })
  })
  const seconds = (performance.now() - started) / 1000
  const figures = stop()
  child.kill('SIGKILL')
  return { ...figures, 'lines delivered': count, 'lines dropped': 0, 'MB delivered': Math.round(bytes / MB), s: Number(seconds.toFixed(1)) }
}

export async function benchFlood() {
  const mb = Number(process.env.BENCH_FLOOD_MB ?? 100)
  const dir = mkdtempSync(join(tmpdir(), 'gpu-sidecar-flood-'))
  const rows = []
  try {
    for (const [lineBytes, shape] of [[100, '100-byte lines'], [0, 'one endless line']]) {
      rows.push({ reader: 'ServiceSupervisor', flood: `${mb} MB, ${shape}`, ...(await throughSupervisor(dir, mb, lineBytes)) })
      await sleep(200)
      rows.push({ reader: 'spawn + readline (peer)', flood: `${mb} MB, ${shape}`, ...(await throughReadline(mb, lineBytes)) })
      await sleep(200)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  console.log(`\nLog flood: host RSS growth and event-loop stalls while a service writes ${mb} MB to stdout (aim: RSS growth < 64 MB, no stall > 50 ms)`)
  console.table(rows)
  for (let i = 0; i < rows.length; i += 2) {
    const [ours, peer] = [rows[i], rows[i + 1]]
    console.log(
      `${ours.flood}: max stall ${ours['max stall ms']} ms vs ${peer['max stall ms']} ms for the peer (x${(ours['max stall ms'] / Math.max(1, peer['max stall ms'])).toFixed(2)}), ` +
        `RSS growth ${ours['RSS growth MB']} MB vs ${peer['RSS growth MB']} MB; aims ${ours['RSS growth MB'] < 64 && ours['max stall ms'] <= 50 ? 'met' : 'NOT met'}`,
    )
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await benchFlood()
