// The browser test's plan: run with a found Chromium, skip with a message on a developer's
// machine without one, fail in CI without one.
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { planBrowserTest } from './browser'

const noBrowserPath = mkdtempSync(join(tmpdir(), 'no-browser-'))

const describeUnix = process.platform === 'win32' ? describe.skip : describe

describeUnix('planBrowserTest', () => {
  test('without a browser, a developer run skips and says how to run the test', () => {
    const plan = planBrowserTest({ PATH: noBrowserPath }, [])
    expect(plan).toEqual({ run: false, fail: false, message: expect.stringContaining('skipped the status page\'s browser test') })
    if (!plan.run) expect(plan.message).toMatch(/apt-get install -y chromium.*CHROME_PATH/)
  })

  test('without a browser, CI fails', () => {
    expect(planBrowserTest({ PATH: noBrowserPath, CI: 'true' }, [])).toMatchObject({ run: false, fail: true, message: expect.stringContaining('CI needs the browser test') })
  })

  test('a chromium on PATH is used', () => {
    const dir = mkdtempSync(join(tmpdir(), 'with-browser-'))
    const fake = join(dir, 'chromium')
    writeFileSync(fake, '#!/bin/sh\n')
    chmodSync(fake, 0o755)
    expect(planBrowserTest({ PATH: `${dir}:/usr/bin:/bin`, CI: 'true' }, [])).toEqual({ run: true, executablePath: fake })
  })

  test('CHROME_PATH wins, and one that does not exist is an error, not a skip', () => {
    const fake = join(mkdtempSync(join(tmpdir(), 'chrome-path-')), 'chrome')
    writeFileSync(fake, '')
    expect(planBrowserTest({ PATH: noBrowserPath, CHROME_PATH: fake }, [])).toEqual({ run: true, executablePath: fake })
    expect(planBrowserTest({ PATH: noBrowserPath, CHROME_PATH: `${fake}-missing` }, [])).toMatchObject({ run: false, fail: true })
  })

  test('a browser in its usual place is found without PATH', () => {
    const fake = join(mkdtempSync(join(tmpdir(), 'usual-')), 'chromium')
    writeFileSync(fake, '')
    expect(planBrowserTest({ PATH: noBrowserPath }, ['/nonexistent/chrome', fake])).toEqual({ run: true, executablePath: fake })
  })
})
