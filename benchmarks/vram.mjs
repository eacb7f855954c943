// GPU memory as a managed resource: the swap time, a request for a model that is not loaded and
// does not fit until the idle one is evicted (from the request to its grant), beside the load
// time alone (a request for a model that fits, same path). Two on-demand services of 6 GB on a
// 10 GB GPU that a manual Telemetry plays (its free memory follows the live services), so every
// request for the other model is a swap. Aim: swap at most the load time plus 1 s.
import { fileURLToPath } from 'node:url'
import sidecar from '../gpu-sidecar.js'

const { GpuArbiter, ServiceSupervisor, Telemetry } = sidecar
const SERVICE = fileURLToPath(new URL('../tests/fixtures/services/service.py', import.meta.url))
const LOAD_MS = 1500
const TOTAL_MB = 10_000

const model = (name, taskType) => ({
  name,
  command: 'python3',
  args: [SERVICE, '--mode', 'log', '--load-ms', String(LOAD_MS)],
  readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
  probeIntervalMs: 20,
  stopTimeoutMs: 1000,
  onDemand: true,
  gpu: { key: 'gpu:0', vramMb: 6000, taskTypes: [taskType] },
})

/** Request to grant for `taskType`, in ms. */
async function grantMs(arbiter, taskType) {
  const started = performance.now()
  const lease = await arbiter.acquire({ taskType, maxWaitMs: 100 })
  if (lease.status !== 'ACQUIRED') throw new Error(`${taskType}: ${JSON.stringify(lease)}`)
  const ms = performance.now() - started
  lease.release()
  return ms
}

export async function benchVram(rounds = 3) {
  const config = { vramHeadroomMb: 0, services: [model('whisper', 'ASR'), model('m2m100', 'NMT')] }
  const supervisor = new ServiceSupervisor(config)
  const telemetry = new Telemetry({ source: 'manual' })
  const holding = new Map()
  const push = () => {
    const used = [...holding.values()].reduce((a, b) => a + b, 0)
    const at = Date.now()
    telemetry.push({ at, nvml: { available: true }, gpus: [{ index: 0, key: 'gpu:0', uuid: 'GPU-0', name: 'bench', totalMb: TOTAL_MB, usedMb: used, freeMb: TOTAL_MB - used, utilizationGpu: 0, utilizationMemory: 0, temperatureC: 40, powerW: 100, processes: [], lost: false }], host: { totalMb: 24000, availableMb: 20000, swapTotalMb: 0, swapUsedMb: 0, cpuPercent: 5, processes: [], zombieChildren: 0 } })
  }
  supervisor.onEvent((e) => {
    if (e.type === 'spawned') holding.set(e.service, 6000)
    if (e.type === 'exited' || e.type === 'stopped') holding.delete(e.service)
    if (['spawned', 'exited', 'stopped'].includes(e.type)) push()
  })
  push()
  const timer = setInterval(push, 50)
  supervisor.attachTelemetry(telemetry)
  const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'] })
  supervisor.attachArbiter(arbiter)
  const loads = []
  const swaps = []
  try {
    for (let i = 0; i < rounds; i++) {
      await supervisor.stopAll()
      loads.push(await grantMs(arbiter, 'ASR')) // fits: the load alone
      swaps.push(await grantMs(arbiter, 'NMT')) // whisper evicted first
    }
  } finally {
    clearInterval(timer)
    await supervisor.close()
    telemetry.close()
    arbiter.close()
  }
  const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]
  const load = median(loads)
  const swap = median(swaps)
  console.log(`\n== VRAM: on-demand load and swap (service.py --load-ms ${LOAD_MS}, ${rounds} rounds) ==`)
  console.log(`load alone (request -> grant): median ${load.toFixed(0)} ms  [${loads.map((v) => v.toFixed(0)).join(', ')}]`)
  console.log(`swap (evict + recovery + load): median ${swap.toFixed(0)} ms  [${swaps.map((v) => v.toFixed(0)).join(', ')}]`)
  console.log(`swap - load: ${(swap - load).toFixed(0)} ms (aim: at most 1000 ms)`)
}

if (import.meta.url === `file://${process.argv[1]}`) await benchVram()
