// Shared by the GPU tests: the addon, and whether this machine can run them.
import { createRequire } from 'node:module'

export const sidecar = createRequire(import.meta.url)('../../gpu-sidecar.js')
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** The first sample a Telemetry takes (polling `latest()`, so nothing else keeps Node busy). */
export async function firstSample(telemetry) {
  for (let i = 0; i < 100; i++) {
    const s = telemetry.latest()
    if (s) return s
    await sleep(20)
  }
  throw new Error('no sample')
}

/** `false` where NVML sees a GPU, else why the GPU tests skip (node:test's `skip` option). */
export async function skipWithoutNvml() {
  const probe = new sidecar.Telemetry({ intervalMs: 50 })
  const sample = await firstSample(probe)
  probe.close()
  return sample.nvml.available && sample.gpus.length > 0 ? false : `no NVML here (${sample.nvml.reason})`
}

/** One sample from a short-lived Telemetry: the GPUs as they are before a test starts. */
export async function probeSample() {
  const probe = new sidecar.Telemetry({ intervalMs: 50 })
  try {
    return await firstSample(probe)
  } finally {
    probe.close()
  }
}
