// Runs on a machine with an NVIDIA GPU and PyTorch (node:test, no dependencies):
//   bash .gpu/gpu-node.sh node --test tests/gpu/
// Skips cleanly where NVML (or torch with CUDA) is absent.
//
// Eviction on a real GPU (issue 10): four PyTorch "models" of 3/8 of the card each; two fit at
// once. asr (priority 90) and nmt (60) start; tts (on demand, 70) needs room and nmt, the lowest,
// is evicted; repair (on demand, 20) needs room and tts is evicted, asr never. No load runs out
// of memory, and the learned peaks are within 10% of what each process allocated.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { firstSample, probeSample, sidecar, skipWithoutNvml, torchModel } from './support.mjs'

const { Telemetry, ServiceSupervisor } = sidecar
const INTERVAL_MS = 100
const nvmlSkip = await skipWithoutNvml()
const torch = nvmlSkip ? null : spawnSync('python3', ['-c', 'import torch; assert torch.cuda.is_available()'], { encoding: 'utf8' })
const skip = nvmlSkip || (torch.status !== 0 ? 'no PyTorch with CUDA here' : false)

test('four 3/8-of-the-GPU models: the lowest priority idle one is evicted for each load, never an OOM; peaks learned within 10%', { skip, timeout: 300000 }, async () => {
  const gpu = (await probeSample()).gpus[0]
  if (gpu.freeMb < gpu.totalMb * 0.9) {
    console.log(`gpu:0 has only ${gpu.freeMb} of ${gpu.totalMb} MiB free: something else uses it; skipped`)
    return
  }
  const gib = Math.floor(((gpu.totalMb / 1024) * 3) / 8)
  const dir = mkdtempSync(join(tmpdir(), 'gpu-sidecar-eviction-'))
  const stateFile = join(dir, 'state.json')
  const telemetry = new Telemetry({ intervalMs: INTERVAL_MS, processIntervalMs: 0 })
  await firstSample(telemetry)
  const need = { vramMb: gib * 1024 + 1024 }
  const supervisor = new ServiceSupervisor({
    vramHeadroomMb: 512,
    vramTimeoutMs: 120000,
    stateFile,
    services: [
      torchModel('asr', gib, INTERVAL_MS, { evictable: true, priority: 90, gpu: { key: gpu.key, ...need } }),
      torchModel('nmt', gib, INTERVAL_MS, { evictable: true, priority: 60, gpu: { key: gpu.key, ...need } }),
      torchModel('tts', gib, INTERVAL_MS, { onDemand: true, priority: 70, gpu: { key: gpu.key, ...need } }),
      torchModel('repair', gib, INTERVAL_MS, { onDemand: true, priority: 20, gpu: { key: gpu.key, ...need } }),
    ],
  })
  supervisor.attachTelemetry(telemetry)
  const events = []
  supervisor.onEvent((e) => {
    events.push(e)
    if (e.type !== 'log') console.log(`${new Date(e.at).toISOString()} ${e.service} ${e.type} ${JSON.stringify({ ...e, service: undefined, type: undefined, at: undefined })}`)
  })
  try {
    assert.deepEqual((await supervisor.startAll()).map((o) => o.status), ['ready', 'ready'])
    assert.equal((await supervisor.ensure('tts')).state, 'ready')
    assert.equal((await supervisor.ensure('repair')).state, 'ready')
    const evicted = events.filter((e) => e.type === 'evicted')
    assert.deepEqual(evicted.map((e) => [e.service, e.for]), [['nmt', 'tts'], ['tts', 'repair']])
    for (const e of evicted) assert.ok(e.freedMb >= gib * 1024 * 0.9, `${e.service} freed ${e.freedMb} MiB`)
    assert.deepEqual(supervisor.statuses().map((s) => s.state), ['ready', 'stopped', 'stopped', 'ready'])
    assert.deepEqual(events.filter((e) => e.type === 'log' && /out of memory/i.test(e.line)), [])
    assert.deepEqual(events.filter((e) => e.type === 'failed' || e.type === 'oom-retry'), [])
    await supervisor.close()
    const learned = JSON.parse(readFileSync(stateFile, 'utf8')).services
    console.log(`learned: ${JSON.stringify(learned)}`)
    for (const name of ['asr', 'nmt', 'tts', 'repair']) {
      const mb = learned[name].peakVramMb
      assert.ok(Math.abs(mb - gib * 1024) <= gib * 1024 * 0.1, `${name} learned ${mb} MiB for ${gib} GiB`)
    }
  } finally {
    await supervisor.close()
    telemetry.close()
    rmSync(dir, { recursive: true, force: true })
  }
})
