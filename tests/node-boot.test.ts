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

/** Boots the fixture's CHOSEN subset on a fresh copy, `maxConcurrentStarts` at once. */
async function boot(maxConcurrentStarts: number) {
  const root = tempDir('node-boot-')
  const { dir } = await copyNodeServices(join(root, 'services'))
  const procdir = join(root, 'procs')
  mkdirSync(procdir)
  const section = {
    maxConcurrentStarts,
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
  // Under the gate: placed on the GPU the reading lists, never gated off, and the GPU was never
  // asked for more than it has.
  expect(events.filter((e) => e.type === 'vram-gate-off')).toEqual([])
  expect(events.filter((e) => e.type === 'placed').map((e) => e.service).sort()).toEqual(Object.keys(PEAKS).sort())
  expect(peakDemandMb).toBeLessThanOrEqual(TOTAL_MB)
  // Each ready when its health (or its line) said so, never earlier.
  for (const name of CHOSEN) {
    const ready = events.find((e) => e.service === name && e.type === 'ready')
    expect(readyAt[name]).toBeGreaterThan(0)
    expect(ready!.at).toBeGreaterThanOrEqual(readyAt[name])
  }
  return run.out
}

describeFakeNvml('the node boots its chosen manifests on the fake NVML', () => {
  // All at once the chosen loads would ask for 500 + 4500 + 6000 + 4500 + 3000 = 18500 MB.
  beforeAll(() => expect(BASE_MB + Object.values(PEAKS).reduce((a, b) => a + b, 0)).toBeGreaterThan(TOTAL_MB))

  test('one start at a time: in the manifests\' order, whatever order the choice came in; each ready when its health says so', async () => {
    const { events } = await boot(1)
    // The discovery order (folder names); with one start slot each spawn follows the last ready.
    const order = ['faster-whisper-vad', 'nmt-m2m100', 'phonetic-correction', 'punctuation-restore', 'semantic-repair-zh', 'piper-tts']
    expect(events.filter((e) => e.type === 'spawned').map((e) => e.service)).toEqual(order)
    for (let k = 1; k < order.length; k++) {
      const spawned = events.find((e) => e.service === order[k] && e.type === 'spawned')!
      const before = events.find((e) => e.service === order[k - 1] && e.type === 'ready')!
      expect(spawned.at).toBeGreaterThanOrEqual(before.at)
    }
  })

  test('every start allowed at once: the VRAM gate alone keeps the loads apart, with no over-commit', async () => {
    const { events } = await boot(6)
    // Some load did not fit beside the ones on their way, and waited for room.
    expect(events.some((e) => e.type === 'vram-wait')).toBe(true)
  })
})
