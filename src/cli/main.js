#!/usr/bin/env node
// @ts-check
// `gpu-sidecar <command>`: the operators' entry point (package.json `bin`).

const { parseArgs } = require('node:util')
const { readFileSync } = require('node:fs')
const { join } = require('node:path')

const COMMANDS = {
  doctor: () => require('./doctor.js'),
  report: () => require('./report.js'),
  run: () => require('./run.js'),
}

const SUMMARIES = {
  doctor: 'check the driver, GPUs, host and a node config; print a fit plan',
  report: 'turn a telemetry recording into a self-contained HTML incident report',
  run: 'run the node headless: services, telemetry, arbiter, optional status page',
}

function version() {
  return JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')).version
}

const USAGE = `Usage: gpu-sidecar <command> [options]

Commands:
${Object.entries(SUMMARIES).map(([name, summary]) => `  ${name.padEnd(8)} ${summary}`).join('\n')}

Options:
  -h, --help     help (also: gpu-sidecar <command> --help)
  -v, --version  the package version

Exit codes: 0 success or healthy, 1 failure or unhealthy, 2 bad arguments.`

/**
 * Runs one command line; resolves with the exit code.
 * @param {string[]} argv the arguments after `gpu-sidecar`
 * @returns {Promise<number>}
 */
async function cli(argv) {
  const [name, ...rest] = argv
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(`${USAGE}\n`)
    return name === undefined ? 2 : 0
  }
  if (name === '-v' || name === '--version') {
    process.stdout.write(`${version()}\n`)
    return 0
  }
  const load = COMMANDS[/** @type {keyof typeof COMMANDS} */ (name)]
  if (!load) {
    process.stderr.write(`gpu-sidecar: unknown command ${JSON.stringify(name)}\n\n${USAGE}\n`)
    return 2
  }
  const command = load()
  let parsed
  try {
    parsed = parseArgs({ args: rest, options: { ...command.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true })
  } catch (error) {
    process.stderr.write(`gpu-sidecar ${name}: ${/** @type {Error} */ (error).message}\n\n${command.usage}\n`)
    return 2
  }
  if (parsed.values.help) {
    process.stdout.write(`${command.usage}\n`)
    return 0
  }
  try {
    return await command.main(/** @type {any} */ (parsed.values), parsed.positionals)
  } catch (error) {
    const e = /** @type {Error & { code?: string }} */ (error)
    if (e.code === 'USAGE') {
      process.stderr.write(`gpu-sidecar ${e.message}\n\n${command.usage}\n`)
      return 2
    }
    process.stderr.write(`gpu-sidecar ${name}: ${e.code ? `${e.code}: ` : ''}${e.message}\n`)
    return 1
  }
}

if (require.main === module) {
  cli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code
    },
    (error) => {
      process.stderr.write(`gpu-sidecar: ${error?.stack ?? error}\n`)
      process.exitCode = 1
    },
  )
}

module.exports = { cli }
