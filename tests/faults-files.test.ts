// Files a careless caller may name: devices, FIFOs, directories, huge files, and recordings a
// crash cut short. Each is refused (or played) without blocking the JS thread or eating memory.
import { spawnSync } from 'node:child_process'
import { truncateSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { Telemetry, TelemetryOptions, TelemetrySample, loadConfig } from '../gpu-sidecar'
import { tempDir } from './support'

const ENTRY = resolve(__dirname, '..', 'gpu-sidecar.js')

/**
 * Runs `code` (with `sidecar` loaded) in a child node, so a call that blocks the thread or grows
 * memory without bound cannot take the test runner down; returns what it printed, or null when
 * it had to be killed.
 */
function inChild(code: string, timeoutMs = 5000): string | null {
  const result = spawnSync(process.execPath, ['-e', `const sidecar = require(${JSON.stringify(ENTRY)});\n${code}`], {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  })
  if (result.signal) return null
  if (result.status !== 0) throw new Error(result.stderr)
  return result.stdout.trim()
}

/** The `code` and message of what `call` throws, as JSON, printed by the child. */
const thrown = (call: string) => `try { ${call}; console.log('no error') } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }`

function fifo(): string {
  const path = join(tempDir(), 'config.fifo')
  const made = spawnSync('mkfifo', [path])
  if (made.status !== 0) throw new Error(`mkfifo: ${made.stderr}`)
  return path
}

function sampleLine(at: number): string {
  const sample: TelemetrySample = {
    at,
    nvml: { available: false, reason: 'LIBRARY_NOT_FOUND' },
    gpus: [],
    host: { totalMb: 8000, availableMb: 4000, swapTotalMb: 0, swapUsedMb: 0, cpuPercent: 1, processes: [], zombieChildren: 0 },
  }
  return JSON.stringify(sample)
}

/** Replays `text` as a recording and collects the samples and the onEnd argument. */
async function replay(text: string, options: TelemetryOptions = {}) {
  const path = join(tempDir(), 'incident.jsonl')
  writeFileSync(path, text)
  const telemetry = new Telemetry({ replay: path, replaySpeed: 'asFastAsPossible', ...options })
  const samples: TelemetrySample[] = []
  telemetry.onSample((s) => samples.push(s))
  const ended = new Promise<Error | null>((r) => telemetry.onEnd(r))
  const keepAlive = setInterval(() => {}, 1000)
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<'silent'>((r) => (timer = setTimeout(() => r('silent'), 5000)))
  const error = await Promise.race([ended, timeout])
  clearTimeout(timer)
  clearInterval(keepAlive)
  telemetry.close()
  return { samples, error, path }
}

describe('loadConfig refuses what is not a regular file, and files over 16 MB', () => {
  test('/dev/zero is INVALID_CONFIG at once instead of growing memory', () => {
    const out = inChild(thrown(`sidecar.loadConfig('/dev/zero')`), 3000)
    expect(out).not.toBeNull()
    expect(JSON.parse(out!)).toEqual({ code: 'INVALID_CONFIG', message: 'cannot read config file: /dev/zero: not a regular file (a character device)' })
  })

  test('a FIFO with no writer does not block the JS thread', () => {
    const path = fifo()
    const out = inChild(thrown(`sidecar.loadConfig(${JSON.stringify(path)})`))
    expect(out).not.toBeNull()
    expect(JSON.parse(out!)).toEqual({ code: 'INVALID_CONFIG', message: `cannot read config file: ${path}: not a regular file (a FIFO)` })
  })

  test('a directory and a 16 MB + 1 byte file are INVALID_CONFIG naming the problem', () => {
    const dir = tempDir()
    expect(() => loadConfig(dir)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: `cannot read config file: ${dir}: not a regular file (a directory)` }))
    const big = join(dir, 'big.json')
    writeFileSync(big, '')
    truncateSync(big, 16 * 1024 * 1024 + 1)
    expect(() => loadConfig(big)).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: `cannot read config file: ${big}: too large: 16777217 bytes, the limit is 16 MiB` }),
    )
  })
})

describe('Telemetry replay files', () => {
  test('/dev/zero, a FIFO and a directory are refused at once with INVALID_ARGUMENT', () => {
    const out = inChild(thrown(`new sidecar.Telemetry({ replay: '/dev/zero' })`), 3000)
    expect(out).not.toBeNull()
    expect(JSON.parse(out!)).toEqual({ code: 'INVALID_ARGUMENT', message: 'replay file: /dev/zero: not a regular file (a character device)' })
    const path = fifo()
    const fromFifo = inChild(thrown(`new sidecar.Telemetry({ replay: ${JSON.stringify(path)} })`))
    expect(fromFifo).not.toBeNull()
    expect(JSON.parse(fromFifo!)).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('not a regular file (a FIFO)') })
    expect(() => new Telemetry({ replay: tempDir() })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('(a directory)') }))
  })

  test('a recording whose last line was cut off plays every whole line, then names the cut line in onEnd', async () => {
    const cut = sampleLine(3000).slice(0, 50)
    const { samples, error, path } = await replay([sampleLine(1000), sampleLine(2000)].join('\n') + '\n' + cut)
    expect(samples.map((s) => s.at)).toEqual([1000, 2000])
    expect(error).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining(`${path}:3: the last line is cut off`) })
    expect((error as Error).message).toContain('the 2 samples before it were played')
  })

  test('a bad line in the middle still refuses the whole file', () => {
    const path = join(tempDir(), 'bad.jsonl')
    writeFileSync(path, [sampleLine(1), '{"at": 2', sampleLine(3)].join('\n'))
    expect(() => new Telemetry({ replay: path })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('bad.jsonl:2: not a telemetry sample') }))
  })

  test('replaySpeed 1e-20 is INVALID_CONFIG at telemetry.replaySpeed', () => {
    expect(() => new Telemetry({ replay: '/nonexistent.jsonl', replaySpeed: 1e-20 })).toThrow(
      expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringMatching(/^telemetry\.replaySpeed: expected a speed factor from 0\.001 to 1000000/) }),
    )
  })

  test('a recorded gap of 1e300 ms is clamped: the replay goes on and ends with onEnd(null)', async () => {
    // At speed 1e6 a gap clamped to one hour takes 3.6 ms; unclamped it overflowed the wait and
    // killed the sampler thread without a word.
    const { samples, error } = await replay([sampleLine(0), sampleLine(1e300), sampleLine(1e300 + 1)].join('\n') + '\n', { replaySpeed: 1_000_000 })
    expect(error).toBeNull()
    expect(samples.map((s) => s.at)).toEqual([0, 1e300, 1e300 + 1])
  })
})
