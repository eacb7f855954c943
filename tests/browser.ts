// Where the status page's browser test finds a Chromium, and what it does without one.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'

export type BrowserPlan =
  | { run: true; executablePath: string }
  | { run: false; fail: boolean; message: string }

/** Chromium or Chrome names on PATH, and the usual install paths (Debian, macOS, Windows). */
const NAMES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']
const PATHS = [
  '/usr/bin/chromium',
  '/usr/bin/chromium-browser',
  '/usr/bin/google-chrome',
  '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
  '/Applications/Chromium.app/Contents/MacOS/Chromium',
  'C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe',
  'C:\\Program Files (x86)\\Google\\Chrome\\Application\\chrome.exe',
]

function onPath(name: string, env: NodeJS.ProcessEnv): string | undefined {
  try {
    const finder = process.platform === 'win32' ? 'where' : 'which'
    const found = execFileSync(finder, [name], { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'ignore'] })
    return found.split(/\r?\n/)[0].trim() || undefined
  } catch {
    return undefined
  }
}

/**
 * `CHROME_PATH`, else a Chromium or Chrome on PATH or in its usual place. Without one the test is
 * skipped with a message saying how to run it, except in CI (`CI=true`), where a missing browser
 * is a failure: `.ci/run` installs Debian's chromium.
 */
export function planBrowserTest(env: NodeJS.ProcessEnv = process.env, paths: string[] = PATHS): BrowserPlan {
  if (env.CHROME_PATH) {
    if (existsSync(env.CHROME_PATH)) return { run: true, executablePath: env.CHROME_PATH }
    return { run: false, fail: true, message: `CHROME_PATH=${env.CHROME_PATH} does not exist` }
  }
  for (const name of NAMES) {
    const found = onPath(name, env)
    if (found) return { run: true, executablePath: found }
  }
  const installed = paths.find((p) => existsSync(p))
  if (installed) return { run: true, executablePath: installed }
  const how = 'install Chromium (Debian/Ubuntu: apt-get install -y chromium; bash .ci/run does) or set CHROME_PATH to a Chrome or Chromium binary'
  if (env.CI === 'true') return { run: false, fail: true, message: `no Chromium found, and CI needs the browser test: ${how}` }
  return { run: false, fail: false, message: `skipped the status page's browser test: no Chromium found. To run it, ${how}, then npm test again.` }
}
