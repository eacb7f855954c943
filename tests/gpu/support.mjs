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

/**
 * A PyTorch "model" service that allocates `gib` GiB on cuda:0, then waits three telemetry
 * intervals (`intervalMs`) before it says it is ready: the gate reads the latest sample, and the
 * next service's check must see this allocation (a model server warms up after its load in the
 * same way). `rest` is merged into the service config (its `gpu`, eviction settings).
 */
export function torchModel(name, gib, intervalMs, rest) {
  const code = [
    'import torch, time',
    `x = torch.empty(${gib} * 2**30, dtype=torch.uint8, device='cuda:0')`,
    'torch.cuda.synchronize()',
    `print('allocated ${gib} GiB', flush=True)`,
    `time.sleep(${(3 * intervalMs) / 1000})`,
    "print('[SERVICE_READY]', flush=True)",
    'time.sleep(600)',
  ].join('\n')
  return {
    name,
    command: 'python3',
    args: ['-c', code],
    readiness: { logLine: { pattern: '\\[SERVICE_READY\\]' } },
    readinessTimeoutMs: 120000,
    probeIntervalMs: 50,
    stopTimeoutMs: 5000,
    ...rest,
  }
}
