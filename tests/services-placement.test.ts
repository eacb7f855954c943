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
