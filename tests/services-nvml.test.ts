// The supervisor on the real NVML path (issue 15): a live Telemetry reads the fake NVML
// (tests/fixtures/fake-nvml/) in a child process, and the fake's memory follows the services
// themselves: each fake model service writes its GPU and MB to the scenario's procdir while it
// runs, so the VRAM gate, learning, 'auto' placement and eviction see what a driver would show.
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { ServiceConfig, ServiceEvent, ServicesConfig, ServiceStatus, TelemetryGpu } from '../gpu-sidecar'
import { describeFakeNvml, FAKE_NVML_DIR, runWithFakeNvml } from './fake-nvml'
import { tempDir } from './support'

const SERVICES = join(FAKE_NVML_DIR, 'services.mjs')
const GPU_SERVICE = join(FAKE_NVML_DIR, 'gpu-service.mjs')

interface Run {
  results: Array<{ value?: unknown; error?: { code: string; message: string } }>
  events: ServiceEvent[]
  statuses: Record<string, ServiceStatus>
  gpus: TelemetryGpu[]
}

/** A fake model service taking `mb` on its GPU over `loadMs`. */
function model(name: string, mb: number, rest: Partial<ServiceConfig> = {}, loadMs = 300): ServiceConfig {
  return {
    name,
    command: process.execPath,
    args: [GPU_SERVICE, '--mb', String(mb), '--load-ms', String(loadMs)],
    readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
    stopTimeoutMs: 2000,
    ...rest,
  }
}

/** Runs the supervisor in a child on the fake NVML playing `scenario` (its procdir added). */
async function supervised(scenario: string, input: { services: ServicesConfig; actions: object[]; telemetry?: object; arbiter?: object }): Promise<Run> {
  const procdir = join(tempDir('fake-nvml-procs-'), 'procs')
  mkdirSync(procdir)
  const run = await runWithFakeNvml<Run>(`procdir ${procdir}\n${scenario}`, [SERVICES, JSON.stringify(input)], { env: { FAKE_NVML_PROCDIR: procdir }, timeoutMs: 45_000 })
  expect(run.code).toBe(0)
  return run.out
}

const of = <T extends ServiceEvent['type']>(run: Run, service: string, type: T) =>
  run.events.filter((e): e is Extract<ServiceEvent, { type: T }> => e.service === service && e.type === type)

describeFakeNvml('the supervisor on the fake driver', () => {
  test('the VRAM gate holds a start until the driver shows room: a foreign process frees its memory later', async () => {
    // 10000 MB; a foreign process holds 6000 until 1500 ms; 'a' takes 3000, so 'b' (3000) waits.
    const run = await supervised(`gpu 0 uuid=GPU-a total=10000 used=6000\n@1500 gpu 0 used=500\n`, {
      services: { vramHeadroomMb: 0, vramTimeoutMs: 15_000, services: [model('a', 3000, { gpu: { key: 'gpu:0', vramMb: 3000 } }), model('b', 3000, { gpu: { key: 'gpu:0', vramMb: 3000 }, dependsOn: ['a'] })] },
      actions: [{ startAll: true }],
    })
    expect(run.statuses.a.state).toBe('ready')
    expect(run.statuses.b.state).toBe('ready')
    const wait = of(run, 'b', 'vram-wait')[0]
    expect(wait).toMatchObject({ gpuKey: 'gpu:0', neededMb: 3000 })
    expect(wait.freeMb).toBeLessThan(3000)
    // Not when 'a' was ready (about 500 ms after the driver's start) but once the step at 1500 ms freed memory.
    expect(of(run, 'b', 'spawned')[0].at - of(run, 'a', 'ready')[0].at).toBeGreaterThan(600)
    // What the driver shows at the end: the foreign 500 plus both services' own 3000.
    expect(run.gpus[0]).toMatchObject({ usedMb: 6500, freeMb: 3500 })
    expect(run.gpus[0].processes.map((p) => [p.service, p.usedMb]).sort()).toEqual([['a', 3000], ['b', 3000]])
  })

  test("learning 'process': a service with no vramMb is measured by its own process's memory", async () => {
    const run = await supervised(`gpu 0 uuid=GPU-a total=20000 used=5000\n`, {
      services: { stateFile: join(tempDir(), 'state.json'), services: [model('asr', 2400, { gpu: { key: 'gpu:0' } }, 600)] },
      actions: [{ start: 'asr' }],
    })
    expect(run.statuses.asr.learned).toMatchObject({ peakVramMb: 2400, peakVramMethod: 'process' })
  })

  test("learning 'gpu-delta': under WDDM (no per-process memory) it is the rise in the GPU's used memory", async () => {
    const run = await supervised(`gpu 0 uuid=GPU-a total=20000 used=5000\nfault 0 wddm=1\n`, {
      services: { stateFile: join(tempDir(), 'state.json'), services: [model('asr', 2400, { gpu: { key: 'gpu:0' } }, 600)] },
      actions: [{ start: 'asr' }],
    })
    expect(run.gpus[0].processes).toEqual([expect.objectContaining({ usedMb: null, service: 'asr' })])
    expect(run.statuses.asr.learned).toMatchObject({ peakVramMb: 2400, peakVramMethod: 'gpu-delta' })
  })

  test("gpu.key 'auto' places a service on the GPU with the most free memory; its memory lands there", async () => {
    const run = await supervised(`gpu 0 uuid=GPU-aaaa total=10000 used=4000\ngpu 1 uuid=GPU-bbbb total=10000 used=1000\n`, {
      services: { services: [model('asr', 2000, { gpu: { key: 'auto', vramMb: 2000 } })] },
      actions: [{ start: 'asr' }],
    })
    expect(of(run, 'asr', 'placed')).toEqual([expect.objectContaining({ gpuKey: 'gpu:1', freeMb: 9000 })])
    expect(of(run, 'asr', 'log').map((e) => e.line)).toContain('GPU GPU-bbbb gpu:1')
    expect(run.statuses.asr.gpuKey).toBe('gpu:1')
    const gpu1 = run.gpus.find((g) => g.key === 'gpu:1')!
    expect(gpu1).toMatchObject({ usedMb: 3000 })
    expect(gpu1.processes).toEqual([expect.objectContaining({ usedMb: 2000, service: 'asr' })])
    expect(run.gpus.find((g) => g.key === 'gpu:0')).toMatchObject({ usedMb: 4000, processes: [] })
  })

  test('eviction: a service that does not fit evicts an evictable one, whose exit the driver shows as freed memory', async () => {
    const run = await supervised(`gpu 0 uuid=GPU-a total=10000 used=500\n`, {
      services: {
        vramHeadroomMb: 0,
        vramTimeoutMs: 15_000,
        services: [
          model('old', 4000, { evictable: true, gpu: { key: 'gpu:0', vramMb: 4000 } }),
          model('kept', 4000, { pinned: true, gpu: { key: 'gpu:0', vramMb: 4000 } }),
          model('new', 4000, { onDemand: true, gpu: { key: 'gpu:0', vramMb: 4000 } }),
        ],
      },
      actions: [{ startAll: true }, { ensure: 'new' }],
    })
    expect(run.results[1].error).toBeUndefined()
    const evicted = run.events.filter((e): e is Extract<ServiceEvent, { type: 'evicted' }> => e.type === 'evicted')
    expect(evicted).toEqual([expect.objectContaining({ service: 'old', for: 'new', gpuKey: 'gpu:0', expectedMb: 4000, freedMb: 4000 })])
    expect(of(run, 'new', 'spawned')[0].at).toBeGreaterThanOrEqual(of(run, 'old', 'stopped')[0].at)
    expect(run.statuses.new.state).toBe('ready')
    expect(run.statuses.kept.state).toBe('ready')
    expect(run.gpus[0].processes.map((p) => p.service).sort()).toEqual(['kept', 'new'])
  })
})
