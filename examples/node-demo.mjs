// npm run demo: the whole node in about 20 seconds, no GPU needed. `gpu-sidecar run` starts four
// fake model services (fake-model-service.mjs) in order behind the VRAM gate, on telemetry
// replayed from node-recording.jsonl, then runs traffic.mjs through withGpuLease, stops every
// service, and prints the status table and the path of the incident report it wrote.
import { spawn } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = fileURLToPath(new URL('.', import.meta.url))
const report = join(mkdtempSync(join(tmpdir(), 'gpu-sidecar-demo-')), 'demo-report.html')
const args = [
  join(here, '..', 'src', 'cli', 'main.js'),
  'run',
  join(here, 'node-config.json'),
  '--replay', join(here, 'node-recording.jsonl'),
  '--script', join(here, 'traffic.mjs'),
  '--report', report,
]
console.log(`$ gpu-sidecar ${args.slice(1).join(' ')}\n`)
const started = Date.now()
// stdout is not handed over as a terminal, so `run` prints one line per event instead of redrawing.
const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
child.stdout.pipe(process.stdout)
child.on('exit', (code) => {
  console.log(`\ndemo finished in ${((Date.now() - started) / 1000).toFixed(1)} s (exit ${code}); open the report in a browser: ${report}`)
  process.exitCode = code ?? 1
})
