// The real NVML path (issue 15), with no GPU: a live Telemetry in a child process loads the fake
// libnvidia-ml.so.1 (tests/fixtures/fake-nvml/) through LD_LIBRARY_PATH, and nvml-wrapper, our
// reader, the sampler and the alerts run unchanged on what its scenario plays.
import { ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import type { GpuInventory, TelemetryAlert, TelemetryGpu, TelemetrySample } from '../gpu-sidecar'
import { describeFakeNvml, FAKE_NVML_DIR, runWithFakeNvml } from './fake-nvml'

const SAMPLE = join(FAKE_NVML_DIR, 'sample.mjs')

interface Sampled {
  inventory: GpuInventory
  samples: Array<{ t: number; nvml: TelemetrySample['nvml']; gpus: TelemetryGpu[] }>
  alerts: Array<TelemetryAlert & { t: number }>
  metrics: string
}

async function sampled(scenario: string, options: object = {}, oldDriver = false): Promise<Sampled> {
  const run = await runWithFakeNvml<Sampled>(scenario, [SAMPLE, JSON.stringify(options)], { oldDriver })
  expect(run.code).toBe(0)
  expect(run.out.samples.length).toBeGreaterThan(2)
  return run.out
}

const gpu = (s: { gpus: TelemetryGpu[] }, index: number) => s.gpus.find((g) => g.index === index)!
const A100 = 'NVIDIA A100-SXM4-80GB'

/** Real processes, so that pids in the scenario are alive and can be registered with labels. */
const children: ChildProcess[] = []
function sleeper(): number {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  children.push(child)
  return child.pid!
}
afterAll(() => {
  for (const c of children) c.kill('SIGKILL')
})

describeFakeNvml('the real NVML path on the fake driver', () => {
  test('samples and the inventory carry the scenario: UUIDs, names, memory, utilization, per-process memory by pid, changes over time', async () => {
    const [asr, tts, other] = [sleeper(), sleeper(), sleeper()]
    const out = await sampled(
      `driver 550.54.15
nvml 12.550.54.15
cuda 12040
gpu 0 uuid=GPU-11111111-aaaa name="${A100}" total=81920 used=4000 util=30 memutil=12 temp=41 power=250 mig=0
gpu 1 uuid=GPU-22222222-bbbb name="NVIDIA GeForce RTX 4090" total=24564 used=1500 util=3 memutil=1 temp=35 power=60 compute=3
proc 0 ${asr} 2500
proc 0 ${other} 700 both
proc 1 ${tts} 1200
@350 gpu 0 used=9000 util=88
@350 proc 0 ${asr} 7500
@350 proc 1 ${tts} gone
`,
      { forMs: 800, register: [[asr, 'asr'], [tts, 'tts']] },
    )
    expect(out.inventory).toMatchObject({ nvml: { available: true }, driverVersion: '550.54.15', nvmlVersion: '12.550.54.15', cudaDriverVersion: '12.4' })
    expect(out.inventory.gpus).toEqual([
      expect.objectContaining({ index: 0, key: 'gpu:0', name: A100, uuid: 'GPU-11111111-aaaa', persistenceMode: true, computeMode: 'DEFAULT', migMode: { current: false, pending: false } }),
      expect.objectContaining({ index: 1, key: 'gpu:1', name: 'NVIDIA GeForce RTX 4090', uuid: 'GPU-22222222-bbbb', computeMode: 'EXCLUSIVE_PROCESS' }),
    ])
    const first = out.samples[0]
    expect(first.nvml).toEqual({ available: true })
    expect(gpu(first, 0)).toMatchObject({ key: 'gpu:0', uuid: 'GPU-11111111-aaaa', name: A100, totalMb: 81920, usedMb: 4000, freeMb: 77920, utilizationGpu: 30, utilizationMemory: 12, temperatureC: 41, powerW: 250, lost: false })
    // Listed as compute and graphics: once, with its figure; registered pids carry their label.
    expect(gpu(first, 0).processes).toEqual([
      { pid: Math.min(asr, other), usedMb: asr < other ? 2500 : 700, service: asr < other ? 'asr' : null },
      { pid: Math.max(asr, other), usedMb: asr < other ? 700 : 2500, service: asr < other ? null : 'asr' },
    ])
    expect(gpu(first, 1)).toMatchObject({ totalMb: 24564, usedMb: 1500, freeMb: 23064, utilizationGpu: 3, processes: [{ pid: tts, usedMb: 1200, service: 'tts' }] })
    const last = out.samples[out.samples.length - 1]
    expect(last.t).toBeGreaterThan(400)
    expect(gpu(last, 0)).toMatchObject({ usedMb: 9000, freeMb: 72920, utilizationGpu: 88 })
    expect(gpu(last, 0).processes).toContainEqual({ pid: asr, usedMb: 7500, service: 'asr' })
    expect(gpu(last, 1).processes).toEqual([])
    expect(out.metrics).toMatch(/gpu_sidecar_nvml_available\{reason=""\} 1/)
    expect(out.metrics).toContain(`gpu_sidecar_gpu_memory_used_bytes{gpu="gpu:0"} ${9000 * 1024 * 1024}`)
    expect(out.metrics).toContain(`gpu_sidecar_gpu_process_memory_bytes{gpu="gpu:0",pid="${asr}",service="asr"} ${7500 * 1024 * 1024}`)
  })

  test('alerts fire on what the driver reports: VRAM_PRESSURE, GPU_USAGE_HIGH and a critical XID event', async () => {
    const out = await sampled(
      `gpu 0 uuid=GPU-a total=10000 used=2000 util=20
gpu 1 uuid=GPU-b total=10000 used=2000 util=20
@250 gpu 0 used=9800 util=97
@250 xid 1 79
`,
      { forMs: 900, thresholds: { minDurationMs: 0, clearDurationMs: 0 } },
    )
    const raised = (code: string) => out.alerts.filter((a) => a.code === code && a.active)
    expect(raised('VRAM_PRESSURE')).toEqual([expect.objectContaining({ gpuKey: 'gpu:0', figures: expect.objectContaining({ freeMb: 200, totalMb: 10000 }) })])
    expect(raised('GPU_USAGE_HIGH')).toEqual([expect.objectContaining({ gpuKey: 'gpu:0' })])
    expect(raised('XID_ERROR')).toEqual([expect.objectContaining({ gpuKey: 'gpu:1', level: 'critical', figures: expect.objectContaining({ xid: 79 }) })])
    expect(raised('VRAM_PRESSURE')[0].t).toBeGreaterThanOrEqual(250)
  })

  test('an XID queued just before its GPU is lost, read in the same interval, names that GPU (nvmlDeviceGetIndex fails GPU_IS_LOST by then)', async () => {
    const out = await sampled(
      `gpu 0 uuid=GPU-a total=10000 used=2000
gpu 1 uuid=GPU-b total=10000 used=2000
@250 xid 1 79
@250 fault 1 lost=1
`,
      { forMs: 700, thresholds: { minDurationMs: 0, clearDurationMs: 0 } },
    )
    const xid = out.alerts.filter((a) => a.code === 'XID_ERROR')
    expect(xid).toEqual([expect.objectContaining({ gpuKey: 'gpu:1', active: true, level: 'critical', figures: expect.objectContaining({ xid: 79 }) })])
    expect(xid[0].message).not.toContain('?')
    // The loss itself was read in that same sample.
    expect(gpu(out.samples[out.samples.length - 1], 1).lost).toBe(true)
  })

  test('WDDM: processes are listed by pid without per-process memory', async () => {
    const pid = sleeper()
    const out = await sampled(`gpu 0 uuid=GPU-w total=8192 used=3000\nfault 0 wddm=1\nproc 0 ${pid} 2048\n`, { register: [[pid, 'asr']] })
    for (const s of out.samples) expect(gpu(s, 0).processes).toEqual([{ pid, usedMb: null, service: 'asr' }])
    expect(gpu(out.samples[0], 0)).toMatchObject({ usedMb: 3000, freeMb: 5192 })
  })

  test('a GPU lost mid-run is reported lost with no figures; the other GPU and NVML carry on', async () => {
    const out = await sampled(`gpu 0 uuid=GPU-a total=10000 used=1000\ngpu 1 uuid=GPU-b total=10000 used=1000\n@300 fault 1 lost=1\n`, { forMs: 800 })
    expect(gpu(out.samples[0], 1)).toMatchObject({ uuid: 'GPU-b', usedMb: 1000, lost: false })
    const last = out.samples[out.samples.length - 1]
    expect(last.nvml).toEqual({ available: true })
    expect(gpu(last, 1)).toMatchObject({ lost: true, uuid: null, totalMb: null, usedMb: null, freeMb: null, processes: [] })
    expect(gpu(last, 0)).toMatchObject({ lost: false, usedMb: 1000 })
    // Lost from the step on, never before it.
    const lostAt = out.samples.filter((s) => gpu(s, 1).lost).map((s) => s.t)
    expect(Math.min(...lostAt)).toBeGreaterThanOrEqual(300)
  })

  test('alerts active on a GPU when it is lost clear, saying the GPU was lost, and GPU_LOST is raised once; none stays with stale figures', async () => {
    const out = await sampled(
      `gpu 0 uuid=GPU-a total=10000 used=1000 util=10
gpu 1 uuid=GPU-b total=10000 used=9800 util=97
@350 fault 1 lost=1
`,
      { forMs: 900, thresholds: { minDurationMs: 0, clearDurationMs: 0 } },
    )
    const on1 = out.alerts.filter((a) => a.gpuKey === 'gpu:1')
    const raisedBefore = on1.filter((a) => a.active && a.code !== 'GPU_LOST').map((a) => a.code).sort()
    expect(raisedBefore).toEqual(['GPU_USAGE_HIGH', 'VRAM_PRESSURE'])
    const lostAt = Math.min(...out.samples.filter((s) => gpu(s, 1).lost).map((s) => s.t))
    const cleared = on1.filter((a) => !a.active)
    expect(cleared.map((a) => a.code).sort()).toEqual(['GPU_USAGE_HIGH', 'VRAM_PRESSURE'])
    for (const a of cleared) {
      expect(a).toMatchObject({ level: 'info', message: 'gpu:1: cleared because the GPU was lost; its figures can no longer be read', figures: { gpuLost: true } })
      expect(a.t).toBeGreaterThanOrEqual(350)
    }
    expect(on1.filter((a) => a.code === 'GPU_LOST')).toEqual([expect.objectContaining({ active: true, level: 'critical', figures: { index: 1, uuid: 'GPU-b' } })])
    expect(lostAt).toBeGreaterThanOrEqual(350)
    // gpu:0 is untouched.
    expect(out.alerts.filter((a) => a.gpuKey === 'gpu:0')).toEqual([])
  })

  test('INSUFFICIENT_SIZE from a process list (processes started between the count and the fetch): the list is read again, not reported empty', async () => {
    const [a, b] = [sleeper(), sleeper()]
    const out = await sampled(`gpu 0 uuid=GPU-a total=10000 used=3000\nfault 0 insufficient_size=2\nproc 0 ${a} 1000\nproc 0 ${b} 2000\n`)
    for (const s of out.samples) expect(gpu(s, 0).processes.map((p) => p.pid).sort()).toEqual([a, b].sort())
  })

  test('a process-list call that takes 5 ms: lists stay right, and are read only every processIntervalMs', async () => {
    const pid = sleeper()
    const out = await sampled(`gpu 0 uuid=GPU-a total=10000 used=3000\nfault 0 slow_procs=5\nproc 0 ${pid} 1000\n`, { forMs: 900, processIntervalMs: 300 })
    for (const s of out.samples) expect(gpu(s, 0).processes).toEqual([{ pid, usedMb: 1000, service: null }])
    const reads = new Set(out.samples.map((s) => gpu(s, 0).processesAt))
    expect(reads.size).toBeLessThan(out.samples.length)
    expect(reads.size).toBeLessThanOrEqual(5)
  })

  test('a driver without some fields (power, temperature, MIG, process lists) still reports the rest', async () => {
    const out = await sampled(`gpu 0 uuid=GPU-a name="Tesla T4" total=15360 used=500 util=7 temp=none power=none mig=none\nfault 0 procs_not_supported=1 no_events=1\n`)
    const g = gpu(out.samples[0], 0)
    expect(g).toMatchObject({ name: 'Tesla T4', totalMb: 15360, usedMb: 500, utilizationGpu: 7, temperatureC: null, powerW: null, processes: [], lost: false })
    expect(out.inventory.gpus[0]).toMatchObject({ uuid: 'GPU-a' })
    expect(out.inventory.gpus[0].migMode ?? null).toBeNull()
  })

  test('an R470 driver (no nvmlDeviceGetMemoryInfo_v2, no *_v3 process lists) still gives memory and processes', async () => {
    const pid = sleeper()
    const out = await sampled(`driver 470.223.02\ngpu 0 uuid=GPU-old name="Tesla V100-SXM2-16GB" total=16384 used=4000 util=50\nproc 0 ${pid} 3000\n`, {}, true)
    expect(gpu(out.samples[0], 0)).toMatchObject({ uuid: 'GPU-old', totalMb: 16384, usedMb: 4000, freeMb: 12384, utilizationGpu: 50 })
    expect(gpu(out.samples[0], 0).processes).toEqual([{ pid, usedMb: 3000, service: null }])
  })

  test('a driver that is not loaded: NVML unavailable with the reason, host figures still flow', async () => {
    const out = await sampled('init driver_not_loaded\ngpu 0 uuid=GPU-a\n')
    expect(out.samples[0].nvml).toEqual({ available: false, reason: 'DRIVER_NOT_LOADED' })
    expect(out.samples[0].gpus).toEqual([])
    expect(out.inventory.nvml).toEqual({ available: false, reason: 'DRIVER_NOT_LOADED' })
  })
})

describeFakeNvml('gpu-sidecar doctor on the fake driver', () => {
  const bin = join(__dirname, '..', 'src', 'cli', 'main.js')
  const scenario = `driver 550.54.15\ngpu 0 uuid=GPU-11111111-aaaa name="${A100}" total=81920 used=4096 util=30 temp=41\ngpu 1 uuid=GPU-22222222-bbbb name="${A100}" total=81920 used=0 util=0 compute=2\n`

  test('prints each GPU with its name, UUID, memory and modes, and the driver versions', async () => {
    const run = await runWithFakeNvml<unknown>(scenario, [bin, 'doctor', '--json'])
    const report = run.out as { healthy: boolean; checks: Array<{ check: string; status: string; detail: string }> }
    const check = (name: string) => report.checks.find((c) => c.check === name)
    expect(check('nvml')).toMatchObject({ status: 'ok', detail: 'available' })
    expect(check('versions')?.detail).toBe('driver 550.54.15, NVML 12.550.54.15, CUDA driver 12.4')
    expect(check('gpu:0')).toMatchObject({ status: 'ok', detail: expect.stringContaining(`${A100} GPU-11111111-aaaa`) })
    expect(check('gpu:0')?.detail).toContain('30 % busy, 41 °C, persistence on, compute DEFAULT')
    // Compute mode PROHIBITED: no CUDA context can be made, so the check fails with a hint.
    expect(check('gpu:1')).toMatchObject({ status: 'fail', detail: expect.stringContaining('GPU-22222222-bbbb') })
    expect(report.healthy).toBe(false)
    expect(run.code).toBe(1)
  })

  test('the text report lists the GPUs too', async () => {
    const run = await runWithFakeNvml<null>(scenario.replace(' compute=2', ''), [bin, 'doctor'], { json: false })
    expect(run.code).toBe(0)
    expect(run.stdout).toMatch(/gpu:0.*NVIDIA A100-SXM4-80GB GPU-11111111-aaaa/)
    expect(run.stdout).toMatch(/gpu:1.*GPU-22222222-bbbb/)
  })
})
