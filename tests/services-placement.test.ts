// A GPU service is told which GPU it runs on (issue 10, placement): `GPU_SIDECAR_GPU_KEY`, and
// `CUDA_VISIBLE_DEVICES` set to the GPU's UUID from telemetry; the service's own `env` wins.
import { GpuArbiter, GpuLeaseAcquired, ServiceConfig, ServiceEvent, ServiceSupervisor, Telemetry, TelemetrySample } from '../gpu-sidecar'
import { oneGpuSample, waitFor } from './support'

/** A service that prints the GPU environment it was given, then its ready line. */
function envPrinter(name: string, rest: Partial<ServiceConfig> = {}): ServiceConfig {
  const script =
    "console.log('GPU', process.env.CUDA_VISIBLE_DEVICES ?? '-', process.env.GPU_SIDECAR_GPU_KEY ?? '-');" +
    "console.log('[SERVICE_READY]'); setInterval(() => {}, 1000)"
  return { name, command: process.execPath, args: ['-e', script], readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } }, ...rest }
}

test('GPU services get their GPU key and the GPU UUID; an explicit env entry wins; CPU services get neither', async () => {
  const telemetry = new Telemetry({ source: 'manual' })
  const seen: TelemetrySample[] = []
  telemetry.onSample((s) => seen.push(s))
  telemetry.push(oneGpuSample({ uuid: 'GPU-5ee0b5c1-0d6e-4b7a-9f3e-1b2c3d4e5f60' }))
  await waitFor(() => seen.length === 1, 5000, 'the pushed sample')
  const supervisor = new ServiceSupervisor({
    services: [
      envPrinter('asr', { gpu: { key: 'gpu:0', vramMb: 1000 } }),
      envPrinter('pinned', { gpu: { key: 'gpu:0', vramMb: 1000 }, env: { CUDA_VISIBLE_DEVICES: '1' } }),
      envPrinter('cpu'),
    ],
  })
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  supervisor.attachTelemetry(telemetry)
  try {
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => o.status)).toEqual(['ready', 'ready', 'ready'])
    const printed = (service: string) =>
      events.find((e): e is Extract<ServiceEvent, { type: 'log' }> => e.type === 'log' && e.service === service && e.line.startsWith('GPU '))?.line
    expect(printed('asr')).toBe('GPU GPU-5ee0b5c1-0d6e-4b7a-9f3e-1b2c3d4e5f60 gpu:0')
    expect(printed('pinned')).toBe('GPU 1 gpu:0')
    expect(printed('cpu')).toBe('GPU - -')
  } finally {
    await supervisor.close()
    telemetry.close()
  }
})

test("a request for a task type a service claims goes to that service's GPU; detaching restores least-loaded placement", async () => {
  const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'], maxConcurrentLeases: 4 })
  const supervisor = new ServiceSupervisor({
    services: [envPrinter('asr', { gpu: { key: 'gpu:1', taskTypes: ['ASR'] } })],
  })
  try {
    const first = (await arbiter.acquire({ taskType: 'NMT' })) as GpuLeaseAcquired
    expect(first.gpuKey).toBe('gpu:0') // least-loaded: both empty, the first wins
    const detach = supervisor.attachArbiter(arbiter)
    const asr = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(asr.gpuKey).toBe('gpu:1')
    const asrAgain = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(asrAgain.gpuKey).toBe('gpu:1') // even though gpu:0 is now the less loaded
    detach()
    asr.release()
    asrAgain.release()
    const after = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(after.gpuKey).toBe('gpu:1') // least-loaded again: gpu:0 holds one lease, gpu:1 none
    first.release()
    after.release()
    const unrouted = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(unrouted.gpuKey).toBe('gpu:0')
  } finally {
    await supervisor.close()
    arbiter.close()
  }
})

/** A sample with two GPUs: `gpu:0` and `gpu:1` with these free figures and UUIDs `GPU-a`, `GPU-b`. */
function twoGpuSample(free0Mb: number, free1Mb: number): TelemetrySample {
  const one = oneGpuSample({ uuid: 'GPU-a', freeMb: free0Mb })
  const second = { ...one.gpus[0], index: 1, key: 'gpu:1', uuid: 'GPU-b', freeMb: free1Mb, usedMb: one.gpus[0].totalMb! - free1Mb }
  return { ...one, gpus: [one.gpus[0], second] }
}

/** A manual Telemetry showing `sample`, once its listeners have seen it. */
async function showing(sample: TelemetrySample): Promise<Telemetry> {
  const telemetry = new Telemetry({ source: 'manual' })
  let seen = false
  telemetry.onSample(() => (seen = true))
  telemetry.push(sample)
  await waitFor(() => seen, 5000, 'the pushed sample')
  return telemetry
}

const printedGpu = (events: ServiceEvent[], service: string) =>
  events.find((e): e is Extract<ServiceEvent, { type: 'log' }> => e.type === 'log' && e.service === service && e.line.startsWith('GPU '))?.line

const placedOf = (events: ServiceEvent[]) => events.filter((e): e is Extract<ServiceEvent, { type: 'placed' }> => e.type === 'placed')

test("gpu.key 'auto' places the service on the GPU with the most free memory: its env, status, event and task-type route say so", async () => {
  const telemetry = await showing(twoGpuSample(6000, 9000))
  const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'], maxConcurrentLeases: 4 })
  const supervisor = new ServiceSupervisor({ services: [envPrinter('asr', { gpu: { key: 'auto', taskTypes: ['ASR'] } })] })
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  supervisor.attachTelemetry(telemetry)
  supervisor.attachArbiter(arbiter)
  try {
    expect(supervisor.status('asr').gpuKey).toBeNull()
    const unrouted = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(unrouted.gpuKey).toBe('gpu:0') // no route before placement: least-loaded, the first
    unrouted.release()
    expect(await supervisor.start('asr')).toMatchObject({ status: 'ready' })
    expect(placedOf(events)).toEqual([expect.objectContaining({ service: 'asr', gpuKey: 'gpu:1', freeMb: 9000 })])
    expect(printedGpu(events, 'asr')).toBe('GPU GPU-b gpu:1')
    expect(supervisor.status('asr').gpuKey).toBe('gpu:1')
    const routed = (await arbiter.acquire({ taskType: 'ASR' })) as GpuLeaseAcquired
    expect(routed.gpuKey).toBe('gpu:1')
    routed.release()
  } finally {
    await supervisor.close()
    arbiter.close()
    telemetry.close()
  }
})

test("two 'auto' services started together spread over two GPUs when the roomier one cannot take both", async () => {
  const telemetry = await showing(twoGpuSample(10000, 8000))
  const supervisor = new ServiceSupervisor({
    maxConcurrentStarts: 2,
    vramHeadroomMb: 100,
    services: [envPrinter('a', { gpu: { key: 'auto', vramMb: 5000 } }), envPrinter('b', { gpu: { key: 'auto', vramMb: 5000 } })],
  })
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  supervisor.attachTelemetry(telemetry)
  try {
    expect((await supervisor.startAll()).map((o) => o.status)).toEqual(['ready', 'ready'])
    // Whichever is placed first takes gpu:0; the second sees gpu:0 less the first one's 5000 MB.
    const placed = placedOf(events)
    expect(placed.map((e) => [e.gpuKey, e.freeMb])).toEqual([['gpu:0', 10000], ['gpu:1', 8000]])
    for (const e of placed) {
      expect(supervisor.status(e.service).gpuKey).toBe(e.gpuKey)
      expect(printedGpu(events, e.service)).toBe(`GPU ${e.gpuKey === 'gpu:0' ? 'GPU-a' : 'GPU-b'} ${e.gpuKey}`)
    }
  } finally {
    await supervisor.close()
    telemetry.close()
  }
})

test("without telemetry an 'auto' service fails to start with NO_GPU", async () => {
  const supervisor = new ServiceSupervisor({ services: [envPrinter('asr', { gpu: { key: 'auto' } })] })
  try {
    expect(await supervisor.start('asr')).toMatchObject({
      status: 'failed',
      error: { code: 'NO_GPU', message: expect.stringContaining('asr: gpu.key is "auto" but no attached telemetry lists a GPU') },
    })
  } finally {
    await supervisor.close()
  }
})
