// Service supervisor: how soon readiness is detected after a service becomes ready, how long
// four services take to start (makespan) one at a time, one at a time behind the VRAM gate
// (replayed telemetry), and all at once; and after ready, how soon a hung service is detected
// (liveness, or its leases' watchdog revokes) and how long it takes to be ready again, beside a
// cold start of the same service. The services are tests/fixtures/services/service.py and
// after_ready.py: they print `READY_AT` / `HUNG_AT <epoch ms>` at the moment they become ready
// or hang.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import sidecar from '../gpu-sidecar.js'

const { GpuArbiter, ServiceSupervisor, Telemetry } = sidecar
const SERVICE = fileURLToPath(new URL('../tests/fixtures/services/service.py', import.meta.url))
const AFTER_READY = fileURLToPath(new URL('../tests/fixtures/services/after_ready.py', import.meta.url))
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
        host: { totalMb: 24000, availableMb: 20000, swapTotalMb: 0, swapUsedMb: 0, cpuPercent: 0, processes: [], zombieChildren: 0 },
      }),
    )
  }
  writeFileSync(path, lines.join('\n') + '\n')
  const telemetry = new Telemetry({ replay: path, replaySpeed: 1 })
  while (!telemetry.latest()) await sleep(5)
  return telemetry
}

/** Waits until `check()` returns something, polling every 5 ms. */
async function until(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

/**
 * One hang and its recovery: starts `service` (restart policy on-failure), waits for it to hang
 * (`HUNG_AT` line, or `hang()` for a hang only its leases show), then for the unhealthy/hung event
 * and the next ready. Returns detection (event minus the hang) and recovery (event to ready) in ms.
 */
async function hangAndRecover(service, hang) {
  const supervisor = new ServiceSupervisor({ services: [service] })
  const arbiter = hang ? new GpuArbiter({ gpuKeys: ['gpu:0'], maxConcurrentLeases: 4, watchdogAction: 'revoke' }) : null
  if (arbiter) supervisor.attachArbiter(arbiter)
  let hungAt = null
  let detectedAt = null
  let readyAgainAt = null
  supervisor.onEvent((e) => {
    if (e.type === 'log' && e.line.startsWith('HUNG_AT ')) hungAt ??= Number(e.line.slice(8))
    if ((e.type === 'unhealthy' || e.type === 'hung') && detectedAt === null) detectedAt = e.at
    if (e.type === 'ready' && detectedAt !== null) readyAgainAt ??= e.at
  })
  // The arbiter's deadline timer does not keep Node alive; this run must.
  const keepAlive = setInterval(() => {}, 1000)
  try {
    const [outcome] = await supervisor.startAll()
    if (outcome.status !== 'ready') throw new Error(`${service.name}: ${JSON.stringify(outcome)}`)
    if (hang) hungAt = await hang(arbiter)
    await until(() => readyAgainAt, 30000, `${service.name} to be ready again`)
    return { detection: detectedAt - hungAt, recovery: readyAgainAt - detectedAt }
  } finally {
    clearInterval(keepAlive)
    await supervisor.close()
    arbiter?.close()
  }
}

/** Time to ready of a cold start of `service` (its peer: what a recovery costs at least). */
async function coldStart(service, runs) {
  const supervisor = new ServiceSupervisor({ services: [service] })
  const times = []
  for (let i = 0; i < runs; i++) {
    const t = performance.now()
    const outcome = await supervisor.start(service.name)
    if (outcome.status !== 'ready') throw new Error(JSON.stringify(outcome))
    times.push(performance.now() - t)
    await supervisor.stop(service.name)
  }
  await supervisor.close()
  return percentile(times, 50)
}

export async function benchRecovery(runs) {
  const intervalMs = 200
  const restart = { policy: 'on-failure', backoffMs: 10, jitter: 0 }
  const base = { command: 'python3', stopTimeoutMs: 500, restart }
  const kinds = [
    {
      kind: `http liveness (every ${intervalMs} ms, timeout 100 ms, threshold 1)`,
      make: async () => {
        const port = await freePort()
        const url = `http://127.0.0.1:${port}/health`
        return {
          ...base,
          name: 'http',
          args: [AFTER_READY, '--mode', 'http', '--port', String(port), '--hang-after-ms', '300'],
          port,
          probeIntervalMs: 20,
          readiness: { http: { url } },
          liveness: { http: { url }, intervalMs, timeoutMs: 100, failureThreshold: 1 },
        }
      },
    },
    {
      kind: `logLine heartbeat (every ${intervalMs} ms, threshold 1)`,
      make: async () => ({
        ...base,
        name: 'log',
        args: [AFTER_READY, '--mode', 'heartbeat', '--tick-ms', '20', '--hang-after-ms', '300'],
        readiness: READY_LINE,
        liveness: { logLine: { pattern: 'ALIVE' }, intervalMs, failureThreshold: 1 },
      }),
    },
    {
      kind: `notify WATCHDOG=1 (every ${intervalMs} ms, threshold 1)`,
      make: async () => ({
        ...base,
        name: 'notify',
        args: [AFTER_READY, '--mode', 'notify', '--tick-ms', '20', '--hang-after-ms', '300'],
        readiness: { notify: {} },
        liveness: { notify: {}, intervalMs, failureThreshold: 1 },
      }),
    },
    {
      // The service stops serving: each ASR job's lease is held until the watchdog revokes it
      // (holdMaxMs = the interval); the next job takes the next lease. Two revokes: hung.
      kind: `leases revoked (holdMaxMs ${intervalMs} ms, hangAfterRevokes 2)`,
      make: async () => ({
        ...base,
        name: 'asr',
        args: [AFTER_READY, '--mode', 'heartbeat', '--tick-ms', '1000'],
        readiness: READY_LINE,
        gpu: { key: 'gpu:0', taskTypes: ['ASR'] },
        hangAfterRevokes: 2,
      }),
      hang: async (arbiter) => {
        const hungAt = Date.now()
        for (let job = 0; job < 2; job++) {
          const lease = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', holdMaxMs: intervalMs })
          await new Promise((r) => lease.signal.addEventListener('abort', r, { once: true }))
        }
        return hungAt
      },
    },
  ]
  const rows = []
  for (const { kind, make, hang } of kinds) {
    const detection = []
    const recovery = []
    for (let i = 0; i < runs; i++) {
      const result = await hangAndRecover(await make(), hang)
      detection.push(result.detection)
      recovery.push(result.recovery)
    }
    const cold = await coldStart({ ...(await make()), liveness: undefined }, runs)
    // A lease hang takes two holdMaxMs by construction (two jobs); liveness aims at 2 intervals.
    const periods = hang ? 2 : 1
    const worst = Math.max(...detection)
    rows.push({
      'hang seen by': kind,
      runs,
      'detect p50 ms': Math.round(percentile(detection, 50)),
      'detect max ms': Math.round(worst),
      // For the lease hang, per holdMaxMs.
      'detect max / interval': Number((worst / intervalMs / periods).toFixed(2)),
      aim: 2,
      met: worst / intervalMs / periods <= 2 ? 'yes' : 'no',
      'event to ready p50 ms': Math.round(percentile(recovery, 50)),
      'cold start p50 ms': Math.round(cold),
      'recovery / cold start': Number((percentile(recovery, 50) / cold).toFixed(2)),
    })
  }
  console.log('\nHung service: from the hang to its unhealthy/hung event, and from that event to ready again (restart policy on-failure, backoff 10 ms, stop grace 500 ms)')
  console.table(rows)
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
  await benchRecovery(Number(process.env.BENCH_RECOVERY_RUNS ?? 5))
}
