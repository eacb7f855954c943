// The boot every Electron main process writes, in one turn of the event loop:
//   const telemetry = new Telemetry(...); supervisor.attachTelemetry(telemetry); await supervisor.startAll()
// The Telemetry has no reading yet in that turn. The gates must wait for it, not turn off
// ('vram-gate-off') or fail 'auto' with NO_GPU: boot is when seed 000 happens.
import { join } from 'node:path'
import type { ServiceConfig, ServiceEvent, ServiceOutcome, ServiceStatus } from '../gpu-sidecar'
import { ServiceSupervisor, Telemetry } from '../gpu-sidecar'
import { describeFakeNvml, FAKE_NVML_DIR, runWithFakeNvml } from './fake-nvml'
import { oneGpuSample, tempDir } from './support'
import { mkdirSync } from 'node:fs'

const GPU_SERVICE = join(FAKE_NVML_DIR, 'gpu-service.mjs')

/** A fake model service taking `mb` on its GPU. */
function model(name: string, mb: number, gpu: ServiceConfig['gpu']): ServiceConfig {
  return {
    name,
    command: process.execPath,
    args: [GPU_SERVICE, '--mb', String(mb), '--load-ms', '100'],
    readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
    stopTimeoutMs: 2000,
    gpu,
  }
}

const services = {
  vramHeadroomMb: 0,
  vramTimeoutMs: 1500,
  services: [model('asr', 2000, { key: 'auto', vramMb: 2000 }), model('huge', 30000, { key: 'gpu:0', vramMb: 30000 })],
}

function expectGatesHeld(outcomes: ServiceOutcome[], events: ServiceEvent[], asr: ServiceStatus, waitSaid = true) {
  const byName = Object.fromEntries(outcomes.map((o) => [o.service, o]))
  // 'auto' waited for the reading and was placed on the GPU it lists.
  expect(byName.asr).toEqual(expect.objectContaining({ status: 'ready' }))
  expect(asr.gpuKey).toBe('gpu:0')
  // 30000 MB on a 24000 MB card never starts: the gate held it, it did not turn off.
  expect(byName.huge).toMatchObject({ status: 'failed', error: { code: 'VRAM_TIMEOUT' } })
  expect(events.filter((e) => e.type === 'vram-gate-off')).toEqual([])
  expect(events.filter((e) => e.service === 'huge' && e.type === 'spawned')).toEqual([])
  expect(events.find((e) => e.service === 'huge' && e.type === 'vram-wait')).toMatchObject({ neededMb: 30000 })
  // The first start said what it waited for. (A pushed sample may be taken before the first
  // gate looks, and then there is nothing to wait for.)
  if (waitSaid) expect(events.find((e) => e.type === 'telemetry-wait')).toMatchObject({ service: 'asr', gate: 'host-memory' })
}

describeFakeNvml('the one-turn boot on a live Telemetry (fake NVML)', () => {
  test('gates wait for the first reading: auto is placed, an oversized load is held', async () => {
    const procdir = join(tempDir('fake-nvml-procs-'), 'procs')
    mkdirSync(procdir)
    const run = await runWithFakeNvml<{ results: Array<{ value: ServiceOutcome[] }>; events: ServiceEvent[]; statuses: Record<string, ServiceStatus> }>(
      `procdir ${procdir}\ngpu 0 uuid=GPU-a total=24000 used=1000\n`,
      [join(FAKE_NVML_DIR, 'services.mjs'), JSON.stringify({ services, actions: [{ startAll: true }], oneTurnBoot: true, telemetry: { intervalMs: 200 } })],
      { env: { FAKE_NVML_PROCDIR: procdir }, timeoutMs: 30_000 },
    )
    expect(run.code).toBe(0)
    expectGatesHeld(run.out.results[0].value, run.out.events, run.out.statuses.asr)
  })
})

describe('the one-turn boot on a manual Telemetry', () => {
  test('a sample pushed in the same turn is waited for, not missed', async () => {
    const telemetry = new Telemetry({ source: 'manual' })
    // No fake driver here: the services' figures go nowhere the Telemetry reads.
    const env = { FAKE_NVML_PROCDIR: tempDir('manual-procs-') }
    const supervisor = new ServiceSupervisor({ ...services, services: services.services.map((s) => ({ ...s, env })) })
    const events: ServiceEvent[] = []
    supervisor.onEvent((e) => events.push(e))
    try {
      supervisor.attachTelemetry(telemetry)
      telemetry.push(oneGpuSample({ totalMb: 24000, freeMb: 23000 }))
      const outcomes = await supervisor.startAll()
      expectGatesHeld(outcomes, events, supervisor.status('asr'), false)
    } finally {
      await supervisor.close()
      telemetry.close()
    }
  })

  test('a manual Telemetry that never gets a sample fails the start with the gate timeout, saying why', async () => {
    const telemetry = new Telemetry({ source: 'manual' })
    const supervisor = new ServiceSupervisor({ hostMemTimeoutMs: 300, services: [model('asr', 10, { key: 'auto' })] })
    try {
      supervisor.attachTelemetry(telemetry)
      const [outcome] = await supervisor.startAll()
      expect(outcome).toMatchObject({ status: 'failed', error: { code: 'HOST_MEMORY_LOW' } })
      expect(outcome.status === 'failed' && outcome.error.message).toContain('took no sample within 300 ms (hostMemTimeoutMs)')
    } finally {
      await supervisor.close()
      telemetry.close()
    }
  })
})
