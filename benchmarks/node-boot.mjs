// The node's boot of its own manifests (tests/fixtures/node-services: the user's chosen six, four
// of them GPU loads that peak above what they keep) on one fake 16000 MB GPU, two ways, each in a
// child process on the fake NVML (tests/fixtures/node-services/_fake/boot.mjs):
//   gpu-sidecar: startAll({ only }) with every start allowed at once, the VRAM gate keeping the
//     loads apart (their peaks given in the config);
//   the node's current way (the peer): every chosen service spawned at once, no gate.
// Prints the makespan (until every one is ready) and the peak VRAM asked of the GPU over its
// capacity, for both. Linux only.
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { fakeNvmlLibDir } from './nvml.mjs'
const require = createRequire(import.meta.url)
const TOTAL_MB = 16000
const BASE_MB = 500
const CHOSEN = ['piper-tts', 'semantic-repair-zh', 'phonetic-correction', 'faster-whisper-vad', 'punctuation-restore', 'nmt-m2m100']
const PEAKS = { 'faster-whisper-vad': 4500, 'nmt-m2m100': 6000, 'semantic-repair-zh': 4500, 'piper-tts': 3000 }

async function boot(mode, root, libDir, run) {
  const { copyNodeServices, FIXTURE } = require('../tests/fixtures/node-services/_fake/copy.js')
  const { dir } = await copyNodeServices(join(root, `services-${mode}-${run}`))
  const procdir = join(root, `procs-${mode}-${run}`)
  mkdirSync(procdir)
  const scenario = join(root, `scenario-${mode}-${run}.txt`)
  writeFileSync(scenario, `procdir ${procdir}\ngpu 0 uuid=GPU-node name="NVIDIA RTX 4080" total=${TOTAL_MB} used=${BASE_MB}\n`)
  const section = { maxConcurrentStarts: 6, vramTimeoutMs: 60000, services: Object.entries(PEAKS).map(([name, vramMb]) => ({ name, gpu: { vramMb } })) }
  const r = spawnSync(process.execPath, [join(FIXTURE, '_fake', 'boot.mjs'), JSON.stringify({ mode, dir, only: CHOSEN, section, baseMb: BASE_MB, uuid: 'GPU-node' })], {
    env: { ...process.env, LD_LIBRARY_PATH: [libDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'), FAKE_NVML_SCENARIO: scenario, FAKE_NVML_PROCDIR: procdir },
    encoding: 'utf8',
    timeout: 120_000,
    maxBuffer: 64 << 20,
  })
  if (r.status !== 0) throw new Error(`node boot bench (${mode}) failed: ${r.stderr}`)
  const out = JSON.parse(r.stdout.trim().split('\n').pop())
  const notReady = out.outcomes.filter((o) => o.status !== 'ready')
  if (notReady.length) throw new Error(`node boot bench (${mode}): not ready: ${JSON.stringify(notReady)}`)
  return out
}

export async function benchNodeBoot() {
  console.log(`\n## The node's boot: its manifests' chosen ${CHOSEN.length} services (4 GPU loads) on one fake ${TOTAL_MB} MB GPU`)
  const libDir = fakeNvmlLibDir()
  if (!libDir) return
  const root = mkdtempSync(join(tmpdir(), 'node-boot-bench-'))
  try {
    const runs = Number(process.env.BENCH_NODE_BOOT_RUNS ?? 3)
    const results = { gated: [], ungated: [] }
    for (let run = 0; run < runs; run++) {
      for (const mode of ['gated', 'ungated']) results[mode].push(await boot(mode, root, libDir, run))
    }
    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
    const row = (what, rs) => {
      const makespan = median(rs.map((r) => r.makespanMs))
      const over = Math.max(...rs.map((r) => r.peakDemandMb - TOTAL_MB))
      console.log(`${what.padEnd(58)} makespan ${String(makespan).padStart(6)} ms   peak VRAM over capacity ${String(Math.max(0, over)).padStart(5)} MB (peak ${Math.max(...rs.map((r) => r.peakDemandMb))} of ${TOTAL_MB} MB)`)
      return { makespan, over: Math.max(0, over) }
    }
    const gated = row('gpu-sidecar: startAll({ only }), VRAM gate, 6 at once allowed', results.gated)
    const ungated = row("the node's current way: all at once, no gate (peer)", results.ungated)
    console.log(`median of ${runs} runs each; makespan ratio gated / all at once: ${(gated.makespan / ungated.makespan).toFixed(2)}x; over capacity: ${gated.over} MB vs ${ungated.over} MB (a real GPU fails those loads with CUDA out of memory)`)
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await benchNodeBoot()
