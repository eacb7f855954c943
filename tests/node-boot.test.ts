// The node's boot on gpu-sidecar, on the fake NVML: its own manifests (tests/fixtures/node-services),
// the user's chosen subset through startAll({ only }), in the one turn an Electron main process
// writes. The subset starts in order, under the VRAM gate, with no over-commit of the GPU even
// with every start allowed at once, and each service is ready when its health says so, never earlier.
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { ServiceEvent, ServiceOutcome } from '../gpu-sidecar'
import { describeFakeNvml, runWithFakeNvml } from './fake-nvml'
import { tempDir } from './support'

const { copyNodeServices, FIXTURE } = require('./fixtures/node-services/_fake/copy.js') as {
  FIXTURE: string
  copyNodeServices(dest: string): Promise<{ dir: string; ports: Record<string, number> }>
}

const TOTAL_MB = 16000
const BASE_MB = 500
/** The user's switched-on services (the node's `{ "<id>": true }` map), in no particular order. */
const CHOSEN = ['piper-tts', 'semantic-repair-zh', 'phonetic-correction', 'faster-whisper-vad', 'punctuation-restore', 'nmt-m2m100']
/** Each GPU service's load peak, given in the node config (gpu-sidecar's own knob, not the manifest). */
const PEAKS: Record<string, number> = { 'faster-whisper-vad': 4500, 'nmt-m2m100': 6000, 'semantic-repair-zh': 4500, 'piper-tts': 3000 }

interface Boot {
  makespanMs: number
  peakDemandMb: number
  outcomes: ServiceOutcome[]
  events: ServiceEvent[]
  readyAt: Record<string, number>
  spawnedAt: Record<string, number>
}

describeFakeNvml('the node boots its chosen manifests on the fake NVML', () => {
  test('in order, under the VRAM gate with no over-commit, each ready when its health says so', async () => {
    const root = tempDir('node-boot-')
    const { dir } = await copyNodeServices(join(root, 'services'))
    const procdir = join(root, 'procs')
    mkdirSync(procdir)
    const section = {
      // Every chosen start may run at once: only the VRAM gate keeps the loads apart.
      maxConcurrentStarts: 6,
      vramTimeoutMs: 20000,
      services: Object.entries(PEAKS).map(([name, vramMb]) => ({ name, gpu: { vramMb } })),
    }
    const run = await runWithFakeNvml<Boot>(
      `procdir ${procdir}\ngpu 0 uuid=GPU-node name="NVIDIA RTX 4080" total=${TOTAL_MB} used=${BASE_MB}\n`,
      [join(FIXTURE, '_fake', 'boot.mjs'), JSON.stringify({ mode: 'gated', dir, only: CHOSEN, section, baseMb: BASE_MB, uuid: 'GPU-node' })],
      { env: { FAKE_NVML_PROCDIR: procdir }, timeoutMs: 60_000 },
    )
    expect(run.code).toBe(0)
    const { outcomes, events, readyAt, peakDemandMb } = run.out
    // Only the chosen ones, all ready; the others were never started.
    expect(outcomes.map((o) => [o.service, o.status]).sort()).toEqual(CHOSEN.map((n) => [n, 'ready']).sort())
    expect(events.filter((e) => e.type === 'starting').map((e) => e.service).sort()).toEqual([...CHOSEN].sort())
    // In order: the manifests' discovery order (folder names), whatever order the choice came in.
    const order = ['faster-whisper-vad', 'nmt-m2m100', 'phonetic-correction', 'punctuation-restore', 'semantic-repair-zh', 'piper-tts']
    const firstStarting = events.filter((e) => e.type === 'starting').map((e) => e.service)
    expect(firstStarting).toEqual(order)
    // Under the gate: placed on the GPU the reading lists, never gated off; the loads that did
    // not fit beside the ones on their way waited, and the GPU was never asked for more than it has.
    expect(events.filter((e) => e.type === 'vram-gate-off')).toEqual([])
    expect(events.filter((e) => e.type === 'placed').map((e) => e.service).sort()).toEqual(Object.keys(PEAKS).sort())
    expect(events.some((e) => e.type === 'vram-wait')).toBe(true)
    expect(peakDemandMb).toBeLessThanOrEqual(TOTAL_MB)
    // (All at once the same loads would ask for 500 + 4500 + 6000 + 4500 + 3000 = 18500 MB.)
    expect(BASE_MB + Object.values(PEAKS).reduce((a, b) => a + b, 0)).toBeGreaterThan(TOTAL_MB)
    // Each ready when its health (or its line) said so, never earlier.
    for (const name of CHOSEN) {
      const ready = events.find((e) => e.service === name && e.type === 'ready')
      expect(readyAt[name]).toBeGreaterThan(0)
      expect(ready!.at).toBeGreaterThanOrEqual(readyAt[name])
    }
  })
})
