// Runs on a machine with an NVIDIA GPU and PyTorch (node:test, no dependencies):
//   bash .gpu/gpu-node.sh node --test tests/gpu/
// Skips cleanly where NVML (or torch with CUDA) is absent.
//
// Three PyTorch "services" each allocate ~3/8 of the GPU (30 GiB on an 80 GiB H100) before they
// print ready, started with the VRAM gate reading a live Telemetry: two fit and run together, the
// third waits for memory (vram-wait) until one of the first two is stopped; nothing runs out of
// memory, and the learned profile records what each took.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { firstSample, probeSample, sidecar, skipWithoutNvml, sleep, torchModel } from './support.mjs'

const { Telemetry, ServiceSupervisor } = sidecar
const INTERVAL_MS = 100
const nvmlSkip = await skipWithoutNvml()
const torch = spawnSync('python3', ['-c', 'import torch; assert torch.cuda.is_available()'], { encoding: 'utf8' })
const skip = nvmlSkip
  ? nvmlSkip
  : torch.status !== 0
    ? 'no PyTorch with CUDA here'
    : false

/** A 3/8-of-the-GPU model gated on what it allocates plus 1 GiB. */
function torchService(name, gib, gpuKey) {
  return torchModel(name, gib, INTERVAL_MS, { gpu: { key: gpuKey, vramMb: gib * 1024 + 1024 } })
}

test('three 3/8-of-the-GPU PyTorch services: two run together, the third waits for memory, no OOM; the profile learns each', { skip, timeout: 300000 }, async () => {
  const gpu = (await probeSample()).gpus[0]
  const gib = Math.floor(((gpu.totalMb / 1024) * 3) / 8) // 30 on an 80 GB H100
  if (gpu.freeMb < gpu.totalMb * 0.9) {
    console.log(`gpu:0 has only ${gpu.freeMb} of ${gpu.totalMb} MiB free: something else uses it; skipped`)
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'gpu-sidecar-services-'))
  const stateFile = join(dir, 'state.json')
  const telemetry = new Telemetry({ intervalMs: INTERVAL_MS })
  await firstSample(telemetry)
  const supervisor = new ServiceSupervisor({
    maxConcurrentStarts: 1,
    vramHeadroomMb: 512,
    vramTimeoutMs: 120000,
    stateFile,
    services: ['asr', 'nmt', 'tts'].map((n) => torchService(n, gib, gpu.key)),
  })
  supervisor.attachTelemetry(telemetry)
  const events = []
  supervisor.onEvent((e) => {
    events.push(e)
    if (e.type !== 'log') console.log(`${new Date(e.at).toISOString()} ${e.service} ${e.type} ${JSON.stringify({ ...e, service: undefined, type: undefined, at: undefined })}`)
  })
  try {
    const starting = supervisor.startAll()
    // The third waits for memory while the first two run.
    for (let i = 0; i < 1200 && !events.some((e) => e.service === 'tts' && e.type === 'vram-wait'); i++) await sleep(100)
    const wait = events.find((e) => e.service === 'tts' && e.type === 'vram-wait')
    assert.ok(wait, 'tts never waited for memory')
    assert.deepEqual(
      supervisor.statuses().map((s) => s.state),
      ['ready', 'ready', 'starting'],
    )
    const sample = telemetry.latest()
    const running = sample.gpus[0].processes.filter((p) => p.service === 'asr' || p.service === 'nmt')
    console.log(`while tts waits: free ${sample.gpus[0].freeMb} MiB, needs ${wait.neededMb}; ${JSON.stringify(running)}`)
    assert.equal(running.length, 2)
    assert.ok(wait.freeMb < wait.neededMb)
    assert.ok(!events.some((e) => e.service === 'tts' && e.type === 'spawned'), 'tts spawned before memory was free')

    // Free one: the third starts.
    await supervisor.stop('asr')
    const outcomes = await starting
    assert.deepEqual(
      outcomes.map((o) => [o.service, o.status]),
      [
        ['asr', 'stopped'],
        ['nmt', 'ready'],
        ['tts', 'ready'],
      ],
    )
    const oom = events.filter((e) => e.type === 'log' && /out of memory/i.test(e.line))
    assert.deepEqual(oom, [])
    assert.deepEqual(events.filter((e) => e.type === 'failed' || e.type === 'exited'), [])
    assert.ok(!events.some((e) => e.type === 'vram-gate-off'))

    await supervisor.close()
    const learned = JSON.parse(readFileSync(stateFile, 'utf8')).services
    console.log(`learned: ${JSON.stringify(learned)}`)
    for (const name of ['asr', 'nmt', 'tts']) {
      const mb = learned[name].peakVramMb
      assert.ok(mb >= gib * 1024 && mb <= gib * 1024 + 2048, `${name} learned ${mb} MiB for ${gib} GiB`)
      assert.ok(learned[name].timeToReadyMs > 0)
    }
  } finally {
    await supervisor.close()
    telemetry.close()
    rmSync(dir, { recursive: true, force: true })
  }
})
