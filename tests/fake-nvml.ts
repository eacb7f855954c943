// The fake NVML (tests/fixtures/fake-nvml/fake_nvml.c): builds it, and runs a child Node process
// that loads it through the ordinary library search path (LD_LIBRARY_PATH is read at process
// start, and NVML is initialised once per process, so every scenario gets its own process).
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from './support'

const { buildFakeNvml } = require('./fixtures/fake-nvml/build.js') as { buildFakeNvml(): { current: string; old: string } }

export const FAKE_NVML_DIR = join(__dirname, 'fixtures', 'fake-nvml')

/** Linux only (the fake is an ELF shared object); elsewhere the suites skip with this reason. */
export const fakeNvmlSkip = process.platform === 'linux' ? null : `the fake NVML is a Linux shared library (this is ${process.platform})`

/** `describe`, or `describe.skip` with the reason printed, off Linux. */
export function describeFakeNvml(name: string, body: () => void) {
  if (fakeNvmlSkip) {
    console.warn(`skipping "${name}": ${fakeNvmlSkip}`)
    describe.skip(name, body)
  } else describe(name, body)
}

export interface FakeNvmlRun<T> {
  code: number | null
  out: T
  stdout: string
  stderr: string
}

export interface FakeNvmlOptions {
  /** The R470 variant (no MemoryInfo_v2, no *_v3 process lists). */
  oldDriver?: boolean
  env?: Record<string, string>
  timeoutMs?: number
  /** `false`: the output is text; `out` is null. */
  json?: boolean
}

/** Writes `scenario` to a file and returns its path. */
export function scenarioFile(scenario: string): string {
  const path = join(tempDir('fake-nvml-'), 'scenario.txt')
  writeFileSync(path, scenario)
  return path
}

/** The environment that makes a child load the fake with `scenarioPath`. */
export function fakeNvmlEnv(scenarioPath: string, options: FakeNvmlOptions = {}): NodeJS.ProcessEnv {
  const dirs = buildFakeNvml()
  const dir = options.oldDriver ? dirs.old : dirs.current
  const ld = [dir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':')
  return { ...process.env, LD_LIBRARY_PATH: ld, FAKE_NVML_SCENARIO: scenarioPath, ...options.env }
}

/**
 * Runs `node <args>` with the fake NVML playing `scenario` (a path, or the text), and parses the
 * last stdout line as JSON (or the whole stdout, for pretty-printed JSON).
 */
export function runWithFakeNvml<T = unknown>(scenario: string, args: string[], options: FakeNvmlOptions = {}): Promise<FakeNvmlRun<T>> {
  const path = scenario.includes('\n') ? scenarioFile(scenario) : scenario
  const child = spawn(process.execPath, args, { env: fakeNvmlEnv(path, options), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
  return new Promise((resolve, reject) => {
    child.on('close', (code) => {
      clearTimeout(timer)
      const last = stdout.trim().split('\n').pop() ?? ''
      if (options.json === false) return resolve({ code, out: null as T, stdout, stderr })
      try {
        resolve({ code, out: JSON.parse(last.startsWith('}') ? stdout : last) as T, stdout, stderr })
      } catch {
        reject(new Error(`the child printed no JSON (exit ${code}):\n${stdout}\n${stderr}`))
      }
    })
  })
}
