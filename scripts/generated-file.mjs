// The last step of each generator script (config-types.mjs, event-types.mjs): write the file, or
// with `--check` only say whether it is current (exit 1 when it is not).
import { readFileSync, writeFileSync } from 'node:fs'

/** @param {string} path @param {string} generated */
export function writeOrCheck(path, generated) {
  if (process.argv.includes('--check')) {
    const current = readFileSync(path, 'utf8') === generated
    console.log(current ? `${path} is current` : `${path} is out of date: run \`npm run schema\``)
    process.exitCode = current ? 0 : 1
  } else {
    writeFileSync(path, generated)
    console.log(`wrote ${path}`)
  }
}
