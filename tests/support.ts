// Shared test utilities: temporary folders that are removed afterwards, and polling for a condition.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TelemetryGpuProcess, TelemetrySample } from '../gpu-sidecar'

const made: string[] = []

export function tempDir(prefix = 'gpu-sidecar-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  made.push(dir)
  return dir
}

afterAll(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true })
})

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(check: () => T | undefined | null | false, timeoutMs = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

/** `/proc/<pid>/stat` fields after the command name: [state, ppid, pgrp, ...]; `null` when gone. */
export function procStat(pid: number): string[] | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return text.slice(text.lastIndexOf(')') + 2).split(' ')
  } catch {
    return null
  }
}

/**
 * Running: it exists and is not a zombie. (This machine's init reaps orphans slowly, so a
 * zombie reparented to it is dead; `kill(pid, 0)` would still say it exists.)
 */
export function alive(pid: number): boolean {
  const fields = procStat(pid)
  return fields !== null && fields[0] !== 'Z'
}

/** The figures of a telemetry sample with one GPU (`gpu:0`) that tests choose. */
export interface OneGpuFigures {
  at?: number
  uuid?: string
  name?: string
  totalMb?: number
  freeMb?: number
  util?: number
  processes?: TelemetryGpuProcess[]
  swapTotalMb?: number
  swapUsedMb?: number
}

/** A telemetry sample with one GPU (`gpu:0`, an 80 GB H100 unless told otherwise), as replayed or pushed. */
export function oneGpuSample({
  at = Date.now(),
  uuid = 'GPU-0',
  name = 'NVIDIA H100 80GB HBM3',
  totalMb = 81559,
  freeMb = 60000,
  util = 10,
  processes = [],
  swapTotalMb = 0,
  swapUsedMb = 0,
}: OneGpuFigures = {}): TelemetrySample {
  return {
    at,
    nvml: { available: true },
    gpus: [
      {
        index: 0,
        key: 'gpu:0',
        uuid,
        name,
        totalMb,
        usedMb: totalMb - freeMb,
        freeMb,
        utilizationGpu: util,
        utilizationMemory: 5,
        temperatureC: 40,
        powerW: 120,
        processes,
        lost: false,
      },
    ],
    host: { totalMb: 24000, availableMb: 20000, swapTotalMb, swapUsedMb, cpuPercent: 5, processes: [], zombieChildren: 0 },
  }
}
