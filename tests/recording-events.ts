// A recording with an event line of each kind beside its samples: examples/node-recording.jsonl
// (whose samples raise and clear alerts) with a service ready, failed, restarting and evicted and
// a lease the watchdog revoked, at times inside it, as `gpu-sidecar run --record` writes them.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from './support'

export const RECORDING = join(__dirname, '..', 'examples/node-recording.jsonl')

/** The recorded events: [ms after the first sample, kind, subject, label]. */
export const RECORDED_EVENTS: Array<[number, string, string, string]> = [
  [2_000, 'service-ready', 'asr', 'asr ready in 1.8 s'],
  [6_000, 'lease-revoked', 'gpu:0', 'ASR lease 17 on gpu:0 revoked by the hold watchdog after 8.0 s'],
  [9_000, 'service-failed', 'nmt', 'nmt failed: SERVICE_EXITED: exited with code 1'],
  [9_500, 'service-restarted', 'nmt', 'nmt restarting (attempt 1) in 1.0 s'],
  [15_000, 'service-evicted', 'semantic-repair', 'semantic-repair evicted from gpu:0 to make room for tts'],
]

/** Writes the recording with its event lines, each after the last sample before it; returns its path. */
export function recordingWithEvents(): string {
  const lines = readFileSync(RECORDING, 'utf8').trim().split('\n')
  const t0 = JSON.parse(lines[0]).at as number
  const out: string[] = []
  const pending = [...RECORDED_EVENTS]
  for (const line of lines) {
    const at = JSON.parse(line).at as number
    while (pending.length && t0 + pending[0][0] <= at) {
      const [dt, kind, subject, label] = pending.shift()!
      out.push(JSON.stringify({ at: t0 + dt, event: { kind, subject, label } }))
    }
    out.push(line)
  }
  const path = join(tempDir('recording-events-'), 'with-events.jsonl')
  writeFileSync(path, `${out.join('\n')}\n`)
  return path
}
