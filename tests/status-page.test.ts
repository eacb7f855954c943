// serveStatus: routes, loopback-only binding, and the live page in a real headless Chromium.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import puppeteer, { type Browser, type Page } from 'puppeteer-core'
import { GpuArbiter, ServiceSupervisor, Telemetry, serveStatus, type StatusServer, type TelemetrySample } from '../gpu-sidecar'
import { planBrowserTest } from './browser'
import { RECORDED_EVENTS, recordingWithEvents } from './recording-events'
import { sleep, tempDir, waitFor } from './support'

const root = join(__dirname, '..')
const recording = join(root, 'examples/node-recording.jsonl')
const fakeService = join(root, 'examples/fake-model-service.mjs')

const browser = planBrowserTest()
if (!browser.run && !browser.fail) {
  // Said once, plainly, where npm test prints it: the rest of this file still runs.
  process.stderr.write(`\n[status-page.test] ${browser.message}\n\n`)
}

describe('serveStatus', () => {
  let arbiter: GpuArbiter
  let telemetry: Telemetry
  let supervisor: ServiceSupervisor
  let server: StatusServer

  beforeAll(async () => {
    arbiter = new GpuArbiter({ gpuKeys: ['gpu:0', 'gpu:1'] })
    telemetry = new Telemetry({ replay: recording, replaySpeed: 1 })
    telemetry.attachArbiter(arbiter)
    supervisor = new ServiceSupervisor({
      services: ['asr', 'tts'].map((name) => ({
        name,
        command: process.execPath,
        args: [fakeService, '--name', name, '--load-ms', '100'],
        readiness: { logLine: { pattern: 'SERVICE_READY' } },
      })),
    })
    supervisor.attachTelemetry(telemetry)
    server = await serveStatus({ arbiter, telemetry, supervisor, port: 0 })
    const outcomes = await supervisor.startAll()
    expect(outcomes.map((o) => o.status)).toEqual(['ready', 'ready'])
    await waitFor(() => telemetry.latest(), 5000, 'a replayed sample')
  })

  afterAll(async () => {
    await server?.close()
    await supervisor?.close()
    telemetry?.close()
    arbiter?.close()
  })

  test('binds to loopback by default', () => {
    expect(server.host).toBe('127.0.0.1')
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/`)
  })

  test('any other address needs allowRemote: true', () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.10', 'example.org']) {
      expect(() => serveStatus({ host, port: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('allowRemote: true') }))
    }
    expect(() => serveStatus({ port: 70000 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  test('any loopback address is served without allowRemote', async () => {
    const other = await serveStatus({ host: '127.0.0.2', port: 0 })
    expect(other.url).toBe(`http://127.0.0.2:${other.port}/`)
    expect((await fetch(`${other.url}status`)).status).toBe(200)
    await other.close()
  })

  test('a taken port rejects with PORT_IN_USE', async () => {
    await expect(serveStatus({ port: server.port })).rejects.toMatchObject({ code: 'PORT_IN_USE' })
  })

  test('/status is JSON with services, GPUs (leases and queue) and the latest sample', async () => {
    const res = await fetch(`${server.url}status`)
    expect(res.headers.get('content-type')).toContain('application/json')
    const status = await res.json()
    expect(status.services.map((s: { name: string; state: string }) => [s.name, s.state])).toEqual([['asr', 'ready'], ['tts', 'ready']])
    expect(status.gpus.map((g: { gpuKey: string }) => g.gpuKey)).toEqual(['gpu:0', 'gpu:1'])
    expect(status.gpus[0]).toHaveProperty('queueLength', 0)
    expect(status.telemetry.gpus[0].name).toBe('NVIDIA RTX 6000 Ada Generation')
  })

  test('/metrics is Prometheus text for the arbiter, the telemetry and the services', async () => {
    const lease = await arbiter.acquire({ taskType: 'ASR', gpuKey: 'gpu:0' })
    const res = await fetch(`${server.url}metrics`)
    if (lease.status === 'ACQUIRED') arbiter.release(lease.leaseId)
    expect(res.headers.get('content-type')).toContain('text/plain; version=0.0.4')
    const text = await res.text()
    expect(text).toMatch(/^gpu_arbiter_active_leases\{gpu="gpu:0"\} 1$/m)
    expect(text).toMatch(/^gpu_sidecar_gpu_memory_used_bytes\{gpu="gpu:0"/m)
    expect(text).toMatch(/^gpu_sidecar_service_up\{service="asr"\} 1$/m)
    expect(text).toMatch(/^gpu_sidecar_service_ready\{service="tts"\} 1$/m)
    expect(text).toMatch(/^gpu_sidecar_service_restarts\{service="asr"\} 0$/m)
    expect(text).toMatch(/^gpu_sidecar_service_time_to_ready_seconds\{service="asr"\} \d+(\.\d+)?$/m)
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
      expect(line).toMatch(/^[a-z_:][a-z0-9_:]*(\{[^}]*\})? [-+]?[0-9.eE+-]+$|NaN$/)
    }
  })

  test('unknown paths are 404 and other methods 405', async () => {
    expect((await fetch(`${server.url}nope`)).status).toBe(404)
    expect((await fetch(`${server.url}status`, { method: 'POST' })).status).toBe(405)
  })

  // Without a browser: skipped on a developer's machine (said above), failed in CI.
  const inBrowser = browser.run || browser.fail ? describe : describe.skip
  inBrowser('in headless Chromium', () => {
    let chromium: Browser

    beforeAll(async () => {
      if (!browser.run) throw new Error(browser.message)
      chromium = await puppeteer.launch({ executablePath: browser.executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
    })

    afterAll(async () => {
      await chromium?.close()
    })

    test('renders the replayed GPUs and the services, and updates when a new sample arrives', async () => {
      const page = await chromium.newPage()
      const failed: string[] = []
      page.on('requestfailed', (r) => failed.push(r.url()))
      page.on('pageerror', (e) => failed.push(String(e)))
      await page.setViewport({ width: 820, height: 1200 })
      await page.goto(server.url, { waitUntil: 'domcontentloaded' })
      await page.waitForSelector('body[data-connected="true"]', { timeout: 10_000 })
      expect(await page.$$eval('section.gpu', (s) => s.map((e) => e.getAttribute('data-gpu')))).toEqual(['gpu:0', 'gpu:1'])
      expect(await page.$eval('section.gpu h2', (e) => e.textContent)).toContain('NVIDIA RTX 6000 Ada Generation')
      expect(await page.$$eval('#services tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].slice(0, 2).map((td) => td.textContent)))).toEqual([
        ['asr', 'ready'],
        ['tts', 'ready'],
      ])
      expect(await page.$$eval('#leases tbody tr', (rows) => rows.length)).toBe(2)

      const before = Number(await page.$eval('body', (b) => b.dataset.lastSampleAt))
      const seen = await page.waitForFunction((t) => Number(document.body.dataset.lastSampleAt) > t && document.body.dataset.lastSampleAt, { timeout: 10_000 }, before)
      const after = Number(await seen.jsonValue())
      expect(after).toBeGreaterThan(before)
      // The page now shows what the server's telemetry has: the same latest sample.
      expect((await (await fetch(`${server.url}status`)).json()).telemetry.at).toBeGreaterThanOrEqual(after)
      expect(await page.$$eval('section.gpu[data-gpu="gpu:0"] path.series', (p) => p.length)).toBeGreaterThanOrEqual(2)

      const artifacts = join(root, 'tests/artifacts')
      if (!existsSync(artifacts)) mkdirSync(artifacts, { recursive: true })
      await page.screenshot({ path: join(artifacts, 'status-page.png'), fullPage: true })
      expect(existsSync(join(artifacts, 'status-page.png'))).toBe(true)
      expect(failed).toEqual([])
    })
  })
})

const MARK_KINDS = ['service-ready', 'service-failed', 'service-restarted', 'service-evicted', 'lease-revoked', 'alert-raised', 'alert-cleared']

/** Per chart (by its aria-label), the kinds of the marks on it and their hover titles. */
async function marksByChart(page: Page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('svg.chart')].map((c) => ({
      chart: `${c.closest('section')?.getAttribute('data-gpu') ?? c.closest('section')?.id}: ${c.getAttribute('aria-label')}`,
      marks: [...c.querySelectorAll('g.mark')].map((g) => ({ kind: g.getAttribute('data-kind')!, title: g.querySelector(':scope > title')?.textContent ?? '' })),
    })),
  )
}

/** Whether the page scrolls sideways at this width (it must not). */
async function horizontalOverflow(page: Page, width: number) {
  await page.setViewport({ width, height: 900 })
  return page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
}

/** Every chart carries a mark of each kind, each labelled; hovering one lands on it. */
async function expectMarksEverywhere(page: Page) {
  const charts = await marksByChart(page)
  expect(charts.length).toBeGreaterThanOrEqual(5)
  for (const { chart, marks } of charts) {
    expect({ chart, kinds: [...new Set(marks.map((m) => m.kind))].sort() }).toEqual({ chart, kinds: [...MARK_KINDS].sort() })
    for (const m of marks) expect(m.title).toMatch(/^\d+\. \d\d:\d\d:\d\d\.\d [a-z ()]+: \S/)
  }
  // A pointer on a mark's line is on the mark, whose title the browser shows on hover (the line
  // is 0 px wide; its hit stroke is 9).
  for (const kind of MARK_KINDS) {
    // One evaluate from query to answer: the live page redraws every frame, and an element handle
    // kept across calls may be detached by then.
    const hit = await page.evaluate((selector) => {
      const line = document.querySelector(selector)!
      const r = line.getBoundingClientRect()
      line.scrollIntoView({ block: 'center' })
      const after = line.getBoundingClientRect()
      const x = after.left + 2
      const y = after.top + after.height / 2
      const g = document.elementFromPoint(x, y)?.closest('g.mark')
      return { height: r.height, title: g?.querySelector(':scope > title')?.textContent ?? null }
    }, `svg.chart g.mark[data-kind="${kind}"] line.mark-hit`)
    expect(hit.height).toBeGreaterThan(20)
    expect(hit.title).toMatch(/^\d+\. \d\d:\d\d:\d\d\.\d /)
  }
}

const inChromium = browser.run || browser.fail ? describe : describe.skip
inChromium('event marks and layout in headless Chromium', () => {
  let chromium: Browser

  beforeAll(async () => {
    if (!browser.run) throw new Error(browser.message)
    chromium = await puppeteer.launch({ executablePath: browser.executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  })

  afterAll(async () => {
    await chromium?.close()
  })

  test('the report of a recording with each kind of event: labelled marks on every time axis, a numbered events table, no sideways scroll at 1400 and 800 px', async () => {
    const { reportModel } = require('../src/cli/report.js')
    const { pageHtml } = require('../src/status/page.js')
    const file = join(tempDir('report-marks-'), 'report.html')
    writeFileSync(file, pageHtml(reportModel(recordingWithEvents()), { live: false }))
    const page = await chromium.newPage()
    await page.setViewport({ width: 1400, height: 900 })
    await page.goto(`file://${file}`, { waitUntil: 'load' })
    await expectMarksEverywhere(page)
    const titles = (await marksByChart(page)).flatMap((c) => c.marks.map((m) => m.title))
    for (const [, , , label] of RECORDED_EVENTS) expect(titles.some((t) => t.endsWith(label))).toBe(true)
    expect(titles.some((t) => /alert raised: raised warning GPU_USAGE_HIGH gpu:0: utilization/.test(t))).toBe(true)
    // In print: each mark's number and what it was, in the events table.
    const rows = await page.$$eval('#events tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)))
    expect(rows.map((r) => Number(r[0]))).toEqual(rows.map((_, i) => i + 1))
    expect(rows.find((r) => r[3] === 'asr ready in 1.8 s')?.[2]).toBe('service ready')
    // The plots use the width: two or more side by side at 1400 px, one per row at 800.
    const lefts = () => page.$$eval('section.gpu[data-gpu="gpu:0"] svg.chart', (c) => c.map((e) => Math.round(e.getBoundingClientRect().left)))
    expect(await horizontalOverflow(page, 1400)).toBe(0)
    expect(new Set(await lefts()).size).toBeGreaterThanOrEqual(2)
    const wide = await page.$eval('svg.chart', (c) => c.getBoundingClientRect().width)
    expect(wide).toBeGreaterThan(560)
    expect(await horizontalOverflow(page, 800)).toBe(0)
    expect(new Set(await lefts()).size).toBe(1)
    // The summary is definition rows, not a text block.
    expect(await page.$$eval('#summary dl.figures dt', (dts) => dts.map((d) => d.textContent))).toEqual(['sampled', 'gpu:0 NVIDIA RTX 6000 Ada Generation', 'gpu:1 NVIDIA RTX 6000 Ada Generation', 'host'])
    expect(await page.$$('#summary pre')).toEqual([])
    await page.close()
  })

  test('the live page marks services ready, failed, restarting and evicted, a revoked lease and alerts raised and cleared; its services table shows GPU, VRAM, RSS and leases; no sideways scroll at 1400 and 800 px', async () => {
    const TOTAL = 10_000
    const node = process.execPath
    const ready = { logLine: { pattern: 'SERVICE_READY' } }
    const arbiter = new GpuArbiter({ gpuKeys: ['gpu:0'], watchdogAction: 'revoke', maxConcurrentLeases: 4 })
    const telemetry = new Telemetry({ source: 'manual', thresholds: { minDurationMs: 0, clearDurationMs: 0 } })
    const supervisor = new ServiceSupervisor({
      vramHeadroomMb: 0,
      vramTimeoutMs: 10_000,
      services: [
        { name: 'old', command: node, args: [fakeService, '--name', 'old', '--load-ms', '50'], readiness: ready, stopTimeoutMs: 1000, evictable: true, gpu: { key: 'gpu:0', vramMb: 6000 } },
        { name: 'broken', command: node, args: ['-e', 'process.exit(3)'], readiness: ready, restart: { policy: 'on-failure', maxRestarts: 1, backoffMs: 100, jitter: 0 } },
        { name: 'new', command: node, args: [fakeService, '--name', 'new', '--load-ms', '50'], readiness: ready, stopTimeoutMs: 1000, onDemand: true, gpu: { key: 'gpu:0', vramMb: 6000, taskTypes: ['NMT'] } },
      ],
    })
    // The GPU as a manual Telemetry shows it: each running service holds its vramMb and 300 MB RSS.
    const vram: Record<string, number> = { old: 6000, new: 6000 }
    const running = new Map<string, number>()
    let util = 95
    let closed = false
    const push = () => {
      if (closed) return
      const procs = [...running].filter(([name]) => vram[name])
      const used = procs.reduce((sum, [name]) => sum + vram[name], 0)
      const sample: TelemetrySample = {
        at: Date.now(),
        nvml: { available: true },
        gpus: [{ index: 0, key: 'gpu:0', uuid: 'GPU-0', name: 'Test GPU', totalMb: TOTAL, usedMb: used, freeMb: TOTAL - used, utilizationGpu: util, utilizationMemory: 5, temperatureC: 40, powerW: 100, processes: procs.map(([service, pid]) => ({ pid, usedMb: vram[service], service })), lost: false }],
        host: { totalMb: 32000, availableMb: 20000, swapTotalMb: 0, swapUsedMb: 0, cpuPercent: 5, processes: [...running].map(([label, pid]) => ({ pid, label, rssMb: 300 })), zombieChildren: 0 },
      }
      telemetry.push(sample)
    }
    supervisor.onEvent((e) => {
      if (e.type === 'spawned') running.set(e.service, e.pid)
      if (e.type === 'exited' || e.type === 'stopped') running.delete(e.service)
      if (e.type === 'spawned' || e.type === 'exited' || e.type === 'stopped') push()
    })
    push()
    const timer = setInterval(push, 50)
    supervisor.attachTelemetry(telemetry)
    supervisor.attachArbiter(arbiter)
    const server = await serveStatus({ arbiter, telemetry, supervisor, port: 0 })
    const page = await chromium.newPage()
    try {
      const outcomes = await supervisor.startAll()
      expect(outcomes.map((o) => [o.service, o.status])).toEqual([['old', 'ready'], ['broken', 'failed']])
      const stuck = await arbiter.acquire({ taskType: 'OTHER', gpuKey: 'gpu:0', holdMaxMs: 150 })
      expect(stuck.status).toBe('ACQUIRED')
      await waitFor(() => stuck.status === 'ACQUIRED' && stuck.signal.aborted, 5000, 'the watchdog to revoke the lease')
      util = 10
      await sleep(200)
      await supervisor.ensure('new')
      const nmt = await arbiter.acquire({ taskType: 'NMT', gpuKey: 'gpu:0' })
      await sleep(300)

      await page.setViewport({ width: 1400, height: 900 })
      await page.goto(server.url, { waitUntil: 'domcontentloaded' })
      await page.waitForSelector('body[data-connected="true"]', { timeout: 10_000 })
      await page.waitForFunction((kinds: string[]) => kinds.every((k) => document.querySelector(`svg.chart g.mark[data-kind="${k}"]`)), { timeout: 10_000 }, MARK_KINDS)
      await expectMarksEverywhere(page)
      const titles = (await marksByChart(page))[0].marks.map((m) => m.title)
      expect(titles).toEqual(expect.arrayContaining([
        expect.stringMatching(/service ready: old ready in \d+ ms$/),
        expect.stringMatching(/service failed: broken failed: SERVICE_EXITED: /),
        expect.stringMatching(/service restarting: broken restarting \(attempt 1\) in 100 ms$/),
        expect.stringMatching(/service evicted: old evicted from gpu:0 to make room for new$/),
        expect.stringMatching(/lease revoked \(watchdog\): OTHER lease \S+ on gpu:0 revoked by the hold watchdog after \d+ ms$/),
        expect.stringMatching(/alert raised: raised warning GPU_USAGE_HIGH gpu:0: utilization 95% at or above 85%$/),
        expect.stringMatching(/alert cleared: cleared info GPU_USAGE_HIGH gpu:0: utilization 10% back under 78%$/),
      ]))
      // The services table: each service's GPU, VRAM now and learned peak, RSS now and learned peak, leases held.
      expect(await page.evaluate(() => [...document.querySelectorAll('#services thead th')].map((t) => t.textContent))).toEqual(['service', 'state', 'GPU', 'VRAM now', 'VRAM peak (learned)', 'RSS now', 'RSS peak (learned)', 'leases held', 'pid', 'ready in', 'restarts', 'note'])
      await page.waitForFunction(() => document.querySelector('#services tr[data-service="new"] td:nth-child(8)')?.textContent === '1: NMT', { timeout: 5000 })
      const row = await page.evaluate(() => [...document.querySelectorAll('#services tr[data-service="new"] td')].map((td) => td.textContent))
      expect(row.slice(0, 4)).toEqual(['new', 'ready', 'gpu:0', '6000 MiB'])
      expect(row[5]).toBe('300 MiB')
      expect(row[7]).toBe('1: NMT')
      expect(await page.evaluate(() => document.querySelectorAll('#services tr[data-service="old"] td')[2].textContent)).toBe('gpu:0')
      // The active alerts and the lanes print each alert with its subject once.
      expect(await page.evaluate(() => document.getElementById('app')!.textContent)).not.toMatch(/\b(gpu:\d+|host): \1:/)
      expect(await horizontalOverflow(page, 1400)).toBe(0)
      expect(await horizontalOverflow(page, 800)).toBe(0)
      const artifacts = join(root, 'tests/artifacts')
      if (!existsSync(artifacts)) mkdirSync(artifacts, { recursive: true })
      await page.setViewport({ width: 1400, height: 900 })
      await page.screenshot({ path: join(artifacts, 'status-page-marks.png'), fullPage: true })
      if (nmt.status === 'ACQUIRED') nmt.release()
    } finally {
      closed = true
      clearInterval(timer)
      await page.close()
      await server.close()
      await supervisor.close()
      telemetry.close()
      arbiter.close()
    }
  }, 60_000)
})
