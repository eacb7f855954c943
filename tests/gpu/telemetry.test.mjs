// Runs on a machine with an NVIDIA GPU (node:test, no dependencies):
//   bash .gpu/gpu-node.sh node --test tests/gpu/
// Skips cleanly where NVML is absent.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { firstSample, sidecar, skipWithoutNvml, sleep } from './support.mjs'

const { Telemetry, GpuArbiter } = sidecar
const INTERVAL_MS = 250
const skip = await skipWithoutNvml()

test('a sample matches nvidia-smi memory.used and memory.total within 1%', { skip }, async () => {
  const telemetry = new Telemetry({ intervalMs: INTERVAL_MS })
  await firstSample(telemetry)
  await sleep(INTERVAL_MS * 2)
  const smi = execFileSync('nvidia-smi', ['--query-gpu=index,memory.used,memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8' })
  const sample = telemetry.latest()
  telemetry.close()
  for (const line of smi.trim().split('\n')) {
    const [index, used, total] = line.split(',').map((v) => Number(v.trim()))
    const gpu = sample.gpus.find((g) => g.index === index)
    console.log(`gpu:${index} nvidia-smi used/total ${used}/${total} MiB, sidecar ${gpu.usedMb}/${gpu.totalMb} MiB`)
    assert.ok(Math.abs(gpu.totalMb - total) <= total * 0.01, `total ${gpu.totalMb} vs ${total}`)
    assert.ok(Math.abs(gpu.usedMb - used) <= total * 0.01, `used ${gpu.usedMb} vs ${used}`)
    assert.equal(gpu.key, `gpu:${index}`)
    assert.ok(gpu.name && gpu.uuid)
  }
})

/** A PyTorch process that allocates `gib` GiB on gpu 0 and holds it until killed. */
function torchHolder(gib) {
  const code = `import torch, sys, time\nx = torch.empty(int(${gib} * 2**30), dtype=torch.uint8, device='cuda:0')\nprint('ALLOCATED', flush=True)\ntime.sleep(600)`
  const child = spawn('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => String(d).includes('ALLOCATED') && resolve())
    child.once('exit', (c) => reject(new Error(`python exited ${c}`)))
  })
  return { child, ready }
}

test('a PyTorch process allocating 4 GiB appears in processes[] within two intervals and disappears after it exits', { skip }, async () => {
  // Process lists every sample here: this measures how soon NVML lists a process.
  const telemetry = new Telemetry({ intervalMs: INTERVAL_MS, processIntervalMs: 0 })
  await firstSample(telemetry)
  const { child, ready } = torchHolder(4)
  await ready
  const seenAt = Date.now()
  let entry
  while (!entry && Date.now() - seenAt < 10 * INTERVAL_MS) {
    await sleep(INTERVAL_MS / 5)
    entry = telemetry.latest().gpus[0].processes.find((p) => p.pid === child.pid)
  }
  const delay = Date.now() - seenAt
  console.log(`pid ${child.pid} seen after ${delay} ms with ${entry?.usedMb} MiB`)
  assert.ok(entry, 'process not listed')
  assert.ok(delay <= 2 * INTERVAL_MS + 100, `seen after ${delay} ms`)
  assert.ok(entry.usedMb >= 4096 && entry.usedMb <= 4096 + 1024, `usedMb ${entry.usedMb}`)
  child.kill('SIGKILL')
  await new Promise((r) => child.once('exit', r))
  const goneAt = Date.now()
  while (telemetry.latest().gpus[0].processes.some((p) => p.pid === child.pid)) {
    assert.ok(Date.now() - goneAt < 10 * INTERVAL_MS, 'still listed after exit')
    await sleep(INTERVAL_MS / 5)
  }
  console.log(`gone ${Date.now() - goneAt} ms after exit`)
  telemetry.close()
})

test('process lists are read every processIntervalMs; the samples between carry them, marked by processesAt', { skip }, async () => {
  const telemetry = new Telemetry({ intervalMs: 100, processIntervalMs: 500 })
  const samples = []
  telemetry.onSample((s) => samples.push(s))
  await firstSample(telemetry)
  await sleep(2600)
  telemetry.close()
  const reads = samples.filter((s) => s.gpus[0].processesAt === s.at)
  console.log(`${samples.length} samples, ${reads.length} with fresh process lists`)
  assert.ok(samples.length >= 20, `${samples.length} samples`)
  assert.ok(reads.length >= 3 && reads.length <= 7, `${reads.length} process-list reads in 2.6 s at 500 ms`)
  let lastRead
  for (const s of samples) {
    for (const gpu of s.gpus) assert.ok(gpu.processesAt <= s.at, `processesAt ${gpu.processesAt} after at ${s.at}`)
    if (s.gpus[0].processesAt === s.at) {
      if (lastRead !== undefined) assert.ok(s.at - lastRead >= 450, `lists read ${s.at - lastRead} ms apart`)
      lastRead = s.at
    } else if (lastRead !== undefined) {
      assert.equal(s.gpus[0].processesAt, lastRead, 'a sample between reads carries the last lists')
    }
  }
})

test('VRAM admission grants a request that fits and holds back one that does not, against real free memory', { skip }, async () => {
  const telemetry = new Telemetry({ intervalMs: INTERVAL_MS })
  const arbiter = new GpuArbiter({ maxConcurrentLeases: 8, gpuUsage: { vramReserveMb: 1024 } })
  telemetry.attachArbiter(arbiter)
  await firstSample(telemetry)
  await sleep(INTERVAL_MS * 2)
  const freeMb = arbiter.snapshot('gpu:0').admission.sample.freeMb
  console.log(`gpu:0 free ${freeMb} MiB`)
  const fits = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0', vramMb: Math.floor((freeMb - 1024) / 2) })
  assert.equal(fits.status, 'ACQUIRED')
  const tooBig = await arbiter.acquire({ taskType: 'NMT', gpuKey: 'gpu:0', vramMb: freeMb, busyPolicy: 'SKIP' })
  assert.deepEqual(tooBig, { status: 'SKIPPED', reason: 'VRAM_LOW' })
  arbiter.close()
  telemetry.close()
})
