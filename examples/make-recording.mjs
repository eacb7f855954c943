// Writes examples/node-recording.jsonl: 28 s of a two-GPU speech-translation node, one sample every
// 500 ms, in the format `new Telemetry({ record })` writes. The demo replays it as its telemetry,
// and `gpu-sidecar report` turns it into an incident report. Deterministic: rerun after changing
// the story below.
//
// The story: another app holds nearly all of gpu:1 until 6 s (VRAM_PRESSURE), so TTS waits at the
// VRAM gate; ASR, NMT and semantic repair load onto gpu:0 one after another; traffic drives gpu:0
// past 85 % from 9 s to 16 s (GPU_USAGE_HIGH); a burst of host workers pushes the machine into
// swap from 11 s to 18 s (HOST_MEMORY_PRESSURE, SWAP_ACTIVE).
import { writeFileSync } from 'node:fs'

const START = Date.UTC(2026, 10, 30, 10, 0, 0)
const TOTAL_MB = 49_140
const step = (t, from, to, at) => (t < at ? from : to)
const ramp = (t, t0, t1, from, to) => (t <= t0 ? from : t >= t1 ? to : from + ((to - from) * (t - t0)) / (t1 - t0))
const wobble = (i, amount) => Math.round(Math.sin(i * 1.7) * amount)

const lines = []
for (let i = 0; i < 56; i++) {
  const t = i * 0.5
  const gpu0 = [
    { pid: 3101, usedMb: step(t, 0, Math.round(ramp(t, 1, 2.5, 300, 4_200)), 1), service: 'asr' },
    { pid: 3102, usedMb: step(t, 0, Math.round(ramp(t, 3, 4.5, 300, 6_100)), 3), service: 'nmt' },
    { pid: 3104, usedMb: step(t, 0, Math.round(ramp(t, 7, 8, 200, 3_300)), 7), service: 'semantic-repair' },
  ].filter((p) => p.usedMb > 0)
  const gpu1 = [
    { pid: 2890, usedMb: step(t, 48_200, 0, 6), service: null },
    { pid: 3103, usedMb: step(t, 0, Math.round(ramp(t, 6.5, 8, 300, 5_200)), 6.5), service: 'tts' },
  ].filter((p) => p.usedMb > 0)
  const used0 = 420 + gpu0.reduce((s, p) => s + p.usedMb, 0)
  const used1 = 260 + gpu1.reduce((s, p) => s + p.usedMb, 0)
  const util0 = t < 8 ? 3 + (t > 1 ? 20 : 0) : t < 9 ? 62 : t < 16 ? 93 + wobble(i, 4) : 55 + wobble(i, 8)
  const util1 = t < 6 ? 71 + wobble(i, 5) : t < 8 ? 15 : 48 + wobble(i, 10)
  const available = Math.round(t < 10 ? 30_000 - t * 400 : t < 11 ? 9_000 : t < 18 ? 780 + wobble(i, 120) : ramp(t, 18, 20, 4_000, 26_000))
  const swapUsed = Math.round(t < 11 ? 0 : t < 18 ? ramp(t, 11, 13, 200, 1_400) : ramp(t, 18, 19, 1_400, 60))
  const gpu = (index, usedMb, utilizationGpu, processes, temperatureC) => ({
    index,
    key: `gpu:${index}`,
    uuid: `GPU-5d0e2f71-0000-4000-8000-00000000000${index}`,
    name: 'NVIDIA RTX 6000 Ada Generation',
    totalMb: TOTAL_MB,
    usedMb,
    freeMb: TOTAL_MB - usedMb,
    utilizationGpu,
    utilizationMemory: Math.round(utilizationGpu * 0.6),
    temperatureC,
    powerW: Math.round(60 + utilizationGpu * 3.5),
    processes,
    lost: false,
  })
  lines.push(
    JSON.stringify({
      at: START + i * 500,
      nvml: { available: true },
      gpus: [gpu(0, used0, util0, gpu0, 41 + Math.round(util0 / 4)), gpu(1, used1, util1, gpu1, 39 + Math.round(util1 / 4))],
      host: {
        totalMb: 64_000,
        availableMb: available,
        swapTotalMb: 8_192,
        swapUsedMb: swapUsed,
        cpuPercent: 20 + Math.round(util0 / 3),
        processes: [],
        zombieChildren: 0,
      },
    }),
  )
}
writeFileSync(new URL('./node-recording.jsonl', import.meta.url), `${lines.join('\n')}\n`)
console.log(`wrote examples/node-recording.jsonl (${lines.length} samples)`)
