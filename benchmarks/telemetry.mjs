// Telemetry: the cost of one full sample (NVML for every GPU plus the host) beside one spawn of
// nvidia-smi, what sampling every 100 ms adds to the Node event loop's p99 delay, and what an
// attached Telemetry adds to the arbiter's acquire+release round trip (the arbiter then keeps a
// backlog board up to date for the sampler thread on every change).
import { spawnSync } from 'node:child_process'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import sidecar from '../gpu-sidecar.js'

const { GpuArbiter, Telemetry, recommendConcurrency } = sidecar
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function timeEach(n, fn) {
  fn() // warm-up (NVML initialises once per process)
  const start = performance.now()
  for (let i = 0; i < n; i++) fn()
  return ((performance.now() - start) * 1000) / n
}

async function loopDelayP99(ms, withTelemetry) {
  const telemetry = withTelemetry ? new Telemetry({ intervalMs: 100 }) : null
  telemetry?.onSample(() => {})
  // A steady trickle of JS work, as an Electron main process has.
  const tick = setInterval(() => JSON.stringify({ at: Date.now() }), 5)
  await sleep(300)
  const histogram = monitorEventLoopDelay({ resolution: 1 })
  histogram.enable()
  await sleep(ms)
  histogram.disable()
  clearInterval(tick)
  telemetry?.close()
  return histogram.percentile(99) / 1e6
}

/** Mean microseconds per acquire+release round trip over `ops`. */
async function roundTripUs(arbiter, ops) {
  const start = performance.now()
  for (let i = 0; i < ops; i++) {
    const lease = await arbiter.acquire({ taskType: 'ASR' })
    arbiter.release(lease.leaseId)
  }
  return ((performance.now() - start) * 1000) / ops
}

async function backlogBoardCost() {
  const ops = Number(process.env.BENCH_OPS ?? 100_000)
  const plain = new GpuArbiter({ defaultQueueLimit: 1024 })
  const watched = new GpuArbiter({ defaultQueueLimit: 1024 })
  const telemetry = new Telemetry({ source: 'manual' }) // samples nothing: only the board's cost shows
  telemetry.attachArbiter(watched)
  await roundTripUs(plain, ops)
  await roundTripUs(watched, ops)
  const plainRuns = []
  const watchedRuns = []
  for (let r = 0; r < 7; r++) {
    plainRuns.push(await roundTripUs(plain, ops))
    watchedRuns.push(await roundTripUs(watched, ops))
  }
  plain.close()
  watched.close()
  telemetry.close()
  return { plain: median(plainRuns), watched: median(watchedRuns) }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

export async function benchTelemetry() {
  const probe = new Telemetry({ intervalMs: 50 })
  const keepAlive = setInterval(() => {}, 1000) // a Telemetry alone never keeps Node running
  const sample = await new Promise((resolve) => probe.onSample(resolve))
  clearInterval(keepAlive)
  probe.close()
  const gpuCount = sample?.gpus.length ?? 0
  // A one-off sample through the public API: opens the host reader and reads every GPU, so this
  // is an upper bound on what the sampler thread spends per tick.
  const sampleUs = timeEach(50, () => recommendConcurrency({ perWorkerMb: 1 }))
  const smi = spawnSync('nvidia-smi', ['--query-gpu=utilization.gpu,memory.used,memory.total', '--format=csv'])
  const smiUs = smi.error
    ? null
    : timeEach(10, () => spawnSync('nvidia-smi', ['--query-gpu=utilization.gpu,memory.used,memory.total', '--format=csv']))
  console.log(`\nTelemetry: NVML ${sample?.nvml.available ? `available, ${gpuCount} GPU(s)` : `unavailable (${sample?.nvml.reason})`}`)
  console.table([
    { measure: 'one full sample (all GPUs + host, reader setup included), us', value: Number(sampleUs.toFixed(1)) },
    { measure: 'one nvidia-smi spawn, us', value: smiUs === null ? 'nvidia-smi not found' : Number(smiUs.toFixed(1)) },
    { measure: 'nvidia-smi / sample', value: smiUs === null ? 'n/a' : Number((smiUs / sampleUs).toFixed(1)) },
  ])
  // Alternating rounds, so drift in the machine's load falls on both sides; medians are shown.
  const seconds = Number(process.env.BENCH_LOOP_SECONDS ?? 2)
  const rounds = 3
  const baseRuns = []
  const telemetryRuns = []
  for (let r = 0; r < rounds; r++) {
    baseRuns.push(await loopDelayP99(seconds * 1000, false))
    telemetryRuns.push(await loopDelayP99(seconds * 1000, true))
  }
  const base = median(baseRuns)
  const withTelemetry = median(telemetryRuns)
  console.log(`event-loop delay p99, median of ${rounds} alternating ${seconds} s rounds (monitorEventLoopDelay, 1 ms resolution)`)
  console.table([
    { run: 'no telemetry', 'p99 ms': Number(base.toFixed(3)) },
    { run: 'telemetry every 100 ms', 'p99 ms': Number(withTelemetry.toFixed(3)) },
    { run: 'added by telemetry', 'p99 ms': Number((withTelemetry - base).toFixed(3)) },
  ])
  const board = await backlogBoardCost()
  console.log('arbiter acquire+release with a Telemetry attached (GPU_IDLE_WITH_BACKLOG reads its backlog board), median of 7 alternating rounds')
  console.table([
    { run: 'no Telemetry attached', 'us per round trip': Number(board.plain.toFixed(3)) },
    { run: 'a Telemetry attached', 'us per round trip': Number(board.watched.toFixed(3)) },
    { run: 'attached / not', 'us per round trip': Number((board.watched / board.plain).toFixed(3)) },
  ])
}
