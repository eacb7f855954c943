// What a GPU service took is learned from its load (issue 10 §5): its processes' own GPU memory
// where telemetry lists it ('process'), else the rise in its GPU's used memory while it loaded
// alone there ('gpu-delta': NVML on Windows in WDDM mode has no per-process figures).
import { join } from 'node:path'
import { ServiceEvent, ServiceSupervisor, Telemetry, TelemetryGpuProcess, TelemetrySample } from '../gpu-sidecar'
import { oneGpuSample, tempDir, waitFor } from './support'

const SERVICE = join(__dirname, 'fixtures', 'services', 'service.py')
const TOTAL_MB = 81559

/** One GPU with `usedMb` in use; `processes` as telemetry lists them (none under WDDM). */
function sample(usedMb: number, processes: TelemetryGpuProcess[] = []): TelemetrySample {
  return oneGpuSample({ totalMb: TOTAL_MB, freeMb: TOTAL_MB - usedMb, processes })
}

const open: Array<{ close(): unknown }> = []

afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close()
})

/**
 * A manual Telemetry showing `baseline` MB used, and a supervisor attached to it with one GPU
 * service (no `vramMb`) that loads for a while; `whileLoading(pid)` pushes what its load shows.
 */
async function learnFrom(baselineMb: number, whileLoading: (pid: number) => TelemetrySample) {
  const telemetry = new Telemetry({ source: 'manual' })
  open.push(telemetry)
  const seen: TelemetrySample[] = []
  telemetry.onSample((s) => seen.push(s))
  const push = async (s: TelemetrySample) => {
    const want = seen.length + 1
    telemetry.push(s)
    await waitFor(() => seen.length >= want, 5000, 'the pushed sample')
  }
  await push(sample(baselineMb))
  const stateFile = join(tempDir(), 'state.json')
  const supervisor = new ServiceSupervisor({
    stateFile,
    services: [
      {
        name: 'asr',
        command: 'python3',
        args: [SERVICE, '--mode', 'log', '--load-ms', '2000', '--name', 'asr'],
        readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
        gpu: { key: 'gpu:0' },
      },
    ],
  })
  open.push(supervisor)
  const events: ServiceEvent[] = []
  supervisor.onEvent((e) => events.push(e))
  supervisor.attachTelemetry(telemetry)
  const outcome = supervisor.start('asr')
  const spawned = await waitFor(
    () => events.find((e): e is Extract<ServiceEvent, { type: 'spawned' }> => e.type === 'spawned'),
    10000,
    'the spawn',
  )
  await push(whileLoading(spawned.pid))
  expect(await outcome).toMatchObject({ status: 'ready' })
  return { supervisor, stateFile }
}

test("without process lists, the peak is the rise in the GPU's used memory over the service's lone load", async () => {
  const { supervisor, stateFile } = await learnFrom(20000, () => sample(23500))
  expect(supervisor.status('asr').learned).toEqual({ timeToReadyMs: expect.any(Number), peakVramMb: 3500, peakVramMethod: 'gpu-delta', peakRssMb: expect.any(Number) })
  // Kept in the state file for the next start's VRAM gate.
  const again = new ServiceSupervisor({ stateFile, services: [{ name: 'asr', command: 'python3', readiness: { none: {} }, gpu: { key: 'gpu:0' } }] })
  open.push(again)
  expect(again.status('asr').learned).toMatchObject({ peakVramMb: 3500, peakVramMethod: 'gpu-delta' })
})

test("with process lists, the peak is the service's own processes' memory", async () => {
  const { supervisor } = await learnFrom(20000, (pid) => sample(25000, [{ pid, usedMb: 4200, service: null }]))
  expect(supervisor.status('asr').learned).toMatchObject({ peakVramMb: 4200, peakVramMethod: 'process' })
})
