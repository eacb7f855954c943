// Service supervisor: how soon readiness is detected after a service becomes ready, and how long
// four services take to start (makespan) one at a time, one at a time behind the VRAM gate
// (replayed telemetry), and all at once. The services are tests/fixtures/services/service.py:
// each prints `READY_AT <epoch ms>` at the moment it becomes ready.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import sidecar from '../gpu-sidecar.js'

const { ServiceSupervisor, Telemetry } = sidecar
const SERVICE = fileURLToPath(new URL('../tests/fixtures/services/service.py', import.meta.url))
const READY_LINE = { logLine: { pattern: '\\[SERVICE_READY\\]' } }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function freePort() {
  const server = createServer()
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address()
  await new Promise((r) => server.close(r))
  return port
}

/**
 * Starts `service` `runs` times; per run, the `ready` event's time (core) and the time the JS
 * listener got it, each minus the READY_AT time the service printed.
 */
async function detectionLatency(service, runs) {
  const supervisor = new ServiceSupervisor({ services: [service] })
  let readyAt = null
  let coreAt = null
  let jsAt = null
  supervisor.onEvent((e) => {
    if (e.type === 'log' && e.line.startsWith('READY_AT ')) readyAt = Number(e.line.slice(9))
    if (e.type === 'ready') {
      coreAt = e.at
      jsAt = Date.now()
    }
  })
  const core = []
  const js = []
  for (let i = 0; i < runs; i++) {
    readyAt = coreAt = jsAt = null
    const outcome = await supervisor.start(service.name)
    if (outcome.status !== 'ready') throw new Error(`${service.name}: ${JSON.stringify(outcome)}`)
    core.push(coreAt - readyAt)
    js.push(jsAt - readyAt)
    await supervisor.stop(service.name)
  }
  await supervisor.close()
  return { core, js }
}

function latencyRow(kind, bound, { core, js }) {
  return {
    readiness: kind,
    runs: core.length,
    'core p50 ms': Number(percentile(core, 50).toFixed(1)),
    'core p95 ms': Number(percentile(core, 95).toFixed(1)),
    'core max ms': Number(Math.max(...core).toFixed(1)),
    'JS p50 ms': Number(percentile(js, 50).toFixed(1)),
    'JS max ms': Number(Math.max(...js).toFixed(1)),
    aim: bound,
    met: Math.max(...core) <= bound ? 'yes' : 'no',
  }
}

/** Four services loading `loadMs` each; resolves with the startAll makespan in ms. */
async function makespan(loadMs, options, telemetry) {
  const services = ['asr', 'nmt', 'tts', 'repair'].map((name) => ({
    name,
    command: 'python3',
    args: [SERVICE, '--mode', 'log', '--name', name, '--load-ms', String(loadMs)],
    readiness: READY_LINE,
    ...(telemetry ? { gpu: { key: 'gpu:0', vramMb: 10000 }, probeIntervalMs: 50 } : {}),
  }))
  const supervisor = new ServiceSupervisor({ ...options, services })
  if (telemetry) supervisor.attachTelemetry(telemetry)
  let gateWaits = 0
  supervisor.onEvent((e) => {
    if (e.type === 'vram-wait') gateWaits++
  })
  const start = performance.now()
  const outcomes = await supervisor.startAll()
  const ms = performance.now() - start
  if (outcomes.some((o) => o.status !== 'ready')) throw new Error(JSON.stringify(outcomes))
  await supervisor.close()
  return { ms, gateWaits }
}

/** A replayed 80 GB GPU whose free memory grows by 10 GB every `stepMs` from 8 GB. */
async function risingTelemetry(dir, stepMs) {
  const path = join(dir, 'rising.jsonl')
  const t0 = Date.now()
  const lines = []
  for (let i = 0; i < 8; i++) {
    const freeMb = Math.min(8000 + i * 10000, 80000)
    lines.push(
      JSON.stringify({
        at: t0 + i * stepMs,
        nvml: { available: true },
        gpus: [{ index: 0, key: 'gpu:0', uuid: null, name: 'replayed', totalMb: 81559, usedMb: 81559 - freeMb, freeMb, utilizationGpu: 0, utilizationMemory: 0, temperatureC: null, powerW: null, processes: [], lost: false }],
        host: { totalMb: 1, availableMb: 1, swapTotalMb: 0, swapUsedMb: 0, cpuPercent: 0, processes: [], zombieChildren: 0 },
      }),
    )
  }
  writeFileSync(path, lines.join('\n') + '\n')
  const telemetry = new Telemetry({ replay: path, replaySpeed: 1 })
  while (!telemetry.latest()) await sleep(5)
  return telemetry
}

export async function benchServices() {
  const runs = Number(process.env.BENCH_READINESS_RUNS ?? 20)
  const rows = []
  const log = { name: 'log', command: 'python3', args: [SERVICE, '--mode', 'log', '--load-ms', '100'], readiness: READY_LINE }
  rows.push(latencyRow('logLine', 20, await detectionLatency(log, runs)))
  for (const probeIntervalMs of [50, 250]) {
    const port = await freePort()
    const http = {
      name: 'http',
      command: 'python3',
      args: [SERVICE, '--mode', 'http', '--bind-early', '--port', String(port), '--load-ms', '300'],
      port,
      probeIntervalMs,
      readiness: { http: { url: `http://127.0.0.1:${port}/health`, jsonField: 'status', jsonValue: 'ok' } },
    }
    rows.push(latencyRow(`http (probe every ${probeIntervalMs} ms)`, probeIntervalMs, await detectionLatency(http, Math.ceil(runs / 2))))
  }
  console.log(`\nService readiness detection: ready event minus the moment the service became ready (${process.platform}, node ${process.version})`)
  console.table(rows)

  const loadMs = 500
  const dir = mkdtempSync(join(tmpdir(), 'gpu-sidecar-bench-'))
  try {
    const sequenced = await makespan(loadMs, { maxConcurrentStarts: 1 })
    // Each GPU service needs 10 GB + 512 MB headroom; free memory reaches it 1 s in, then grows.
    const telemetry = await risingTelemetry(dir, 1000)
    const gated = await makespan(loadMs, { maxConcurrentStarts: 1, vramHeadroomMb: 512 }, telemetry)
    telemetry.close()
    const together = await makespan(loadMs, { maxConcurrentStarts: 4 })
    const startups = Array.from({ length: 5 }, () => {
      const t = performance.now()
      spawnSync('python3', ['-c', 'pass'])
      return performance.now() - t
    })
    const startup = Math.round(percentile(startups, 50))
    console.log(`Makespan of four services loading ${loadMs} ms each (startAll to the last ready); python3 itself takes ${startup} ms to start here`)
    console.table([
      { start: 'sequenced (maxConcurrentStarts 1)', 'makespan ms': Math.round(sequenced.ms), 'vram waits': 0 },
      { start: 'sequenced + VRAM gate (each needs 10.5 GB; replay: 8 GB free, +10 GB after 1 s)', 'makespan ms': Math.round(gated.ms), 'vram waits': gated.gateWaits },
      { start: 'all at once (maxConcurrentStarts 4)', 'makespan ms': Math.round(together.ms), 'vram waits': 0 },
    ])
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
