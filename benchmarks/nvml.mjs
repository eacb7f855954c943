// NVML's real path on the fake driver (tests/fixtures/fake-nvml): the cost of one full sample
// (NVML for 4 GPUs with 50 processes between them, plus the host) beside the same sample with no
// processes listed, and with NVML unavailable (host figures only), each measured in a child
// process that loads the fake libnvidia-ml.so.1 through LD_LIBRARY_PATH. Then the same 4 GPUs and
// 50 processes on a consumer driver whose process-list call takes 5 ms. Linux only.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

const require = createRequire(import.meta.url)

/** In the child: mean µs per sample over `n` (after a warm-up that initialises NVML). */
function child(n) {
  const { recommendConcurrency, gpuInventory } = require('../gpu-sidecar.js')
  const sample = () => recommendConcurrency({ perWorkerMb: 1 }) // one live sample, processes included
  sample()
  const start = performance.now()
  for (let i = 0; i < n; i++) sample()
  const us = ((performance.now() - start) * 1000) / n
  process.stdout.write(`${JSON.stringify({ us, gpus: gpuInventory().gpus.length })}\n`)
}

function scenario({ gpus = 4, processes = 50, slowMs = 0, init = 'ok' } = {}) {
  const lines = [`init ${init}`]
  for (let g = 0; g < gpus; g++) {
    lines.push(`gpu ${g} uuid=GPU-bench-${g} name="NVIDIA A100-SXM4-80GB" total=81920 used=20000 util=40 temp=50 power=300`)
    if (slowMs) lines.push(`fault ${g} slow_procs=${slowMs}`)
  }
  for (let p = 0; p < processes; p++) lines.push(`proc ${p % gpus} ${200000 + p} ${256 + p}`)
  return `${lines.join('\n')}\n`
}

function measure(dir, text, n) {
  const path = join(dir, `scenario-${Math.random().toString(36).slice(2)}.txt`)
  writeFileSync(path, text)
  const r = spawnSync(process.execPath, [new URL(import.meta.url).pathname, '--child', String(n)], {
    env: { ...process.env, LD_LIBRARY_PATH: [libDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'), FAKE_NVML_SCENARIO: path },
    encoding: 'utf8',
    timeout: 120_000,
  })
  if (r.status !== 0) throw new Error(`nvml bench child failed: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop())
}

let libDir = ''

/** The fake libnvidia-ml.so.1's folder, built when missing; `null` off Linux, saying so. */
export function fakeNvmlLibDir() {
  if (process.platform !== 'linux') {
    console.log(`skipped: the fake NVML is a Linux shared library (this is ${process.platform})`)
    return null
  }
  return require('../tests/fixtures/fake-nvml/build.js').buildFakeNvml().current
}

export async function benchNvml() {
  console.log('\n## NVML on the fake driver (one full sample: recommendConcurrency)')
  libDir = fakeNvmlLibDir()
  if (!libDir) return
  const dir = mkdtempSync(join(tmpdir(), 'nvml-bench-'))
  try {
    const n = Number(process.env.BENCH_NVML_SAMPLES ?? 500)
    const full = measure(dir, scenario(), n)
    const noProcs = measure(dir, scenario({ processes: 0 }), n)
    const hostOnly = measure(dir, scenario({ init: 'driver_not_loaded' }), n)
    const slow = measure(dir, scenario({ slowMs: 5 }), 5)
    const row = (what, r) => console.log(`${what.padEnd(52)} ${r.us.toFixed(1).padStart(9)} µs`)
    row(`${full.gpus} GPUs, 50 processes`, full)
    row(`${noProcs.gpus} GPUs, no processes (peer)`, noProcs)
    row('NVML unavailable, host figures only (peer)', hostOnly)
    row('4 GPUs, 50 processes, 5 ms per process-list call', slow)
    console.log(`ratio 50 processes / no processes: ${(full.us / noProcs.us).toFixed(2)}x; NVML part of a full sample: ${(full.us - hostOnly.us).toFixed(1)} µs`)
    console.log(`with 5 ms process lists a sample costs ${(slow.us / 1000).toFixed(1)} ms: why lists are read every processIntervalMs, not every tick`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[2] === '--child') child(Number(process.argv[3]))
else if (import.meta.url === `file://${process.argv[1]}`) await benchNvml()
