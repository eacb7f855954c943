// Logs and ports (issue 9, point 5) with real Python services: logFile rotation with no line
// lost, lastLines, a stale port reclaimed and a foreign one refused, stop() waiting for the
// port, and reverse-dependency-order stops.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { tempDir, waitFor } from './support'
import { AFTER_READY, alive, freePort, of, py, supervise } from './services-support'

test('logFile rotates at logMaxBytes, keeps logKeep files, and every line is in them', async () => {
  const log = join(tempDir(), 'asr.log')
  const { supervisor } = supervise({
    services: [py('asr', 'lines', ['--lines', 2000], { logFile: log, logMaxBytes: 20000, logKeep: 10 })],
  })
  await supervisor.startAll()
  const files = [log, ...Array.from({ length: 10 }, (_, k) => `${log}.${k + 1}`)].filter(existsSync)
  expect(files.length).toBeGreaterThan(4)
  const lines = files
    .reverse()
    .flatMap((f) => {
      const text = readFileSync(f, 'utf8')
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(20000)
      return text.split('\n').filter(Boolean)
    })
  const numbered = lines.filter((l) => l.startsWith('line '))
  expect(numbered).toHaveLength(2000)
  numbered.forEach((l, k) => expect(l.startsWith(`line ${String(k).padStart(6, '0')}`)).toBe(true))
  expect(supervisor.status('asr').lastLines).toHaveLength(50)
  expect(supervisor.status('asr').lastLines.at(-1)).toBe('[SERVICE_READY]')
  await supervisor.stop('asr')
  expect(supervisor.status('asr')).toMatchObject({ state: 'stopped', lastLines: expect.arrayContaining(['[SERVICE_READY]']) })
})

test('logKeep bounds the rotated files', async () => {
  const log = join(tempDir(), 'asr.log')
  const { supervisor } = supervise({ services: [py('asr', 'lines', ['--lines', 2000], { logFile: log, logMaxBytes: 10000, logKeep: 2 })] })
  await supervisor.startAll()
  expect([existsSync(`${log}.1`), existsSync(`${log}.2`), existsSync(`${log}.3`)]).toEqual([true, true, false])
})

test('reclaimStalePort: a leftover of the same service is stopped; a foreign holder still fails with PORT_IN_USE', async () => {
  const port = await freePort()
  const args = [AFTER_READY, '--mode', 'port', '--port', String(port)]
  // A leftover of a crashed host: the same command line, holding the port.
  const leftover = spawn('python3', args, { stdio: ['ignore', 'pipe', 'ignore'] })
  await new Promise<void>((r) => leftover.stdout!.once('data', () => r()))
  const { supervisor, events } = supervise({
    services: [{ name: 'tts', command: 'python3', args, port, reclaimStalePort: true, readiness: { logLine: { pattern: 'SERVICE_READY' } } }],
  })
  expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'ready' })])
  expect(of(events, 'tts', 'port-reclaimed')).toEqual([expect.objectContaining({ port, pid: leftover.pid })])
  await waitFor(() => leftover.exitCode !== null || leftover.signalCode !== null, 5000, 'the leftover to exit')
  await supervisor.stop('tts')

  const foreign = createServer()
  await new Promise<void>((r) => foreign.listen(port, '127.0.0.1', r))
  try {
    const outcome = await supervisor.start('tts')
    expect(outcome).toMatchObject({ status: 'failed', error: { code: 'PORT_IN_USE', message: expect.stringContaining(`by pid ${process.pid}`) } })
    expect(of(events, 'tts', 'port-reclaimed')).toHaveLength(1)
  } finally {
    foreign.close()
  }
})

test('without reclaimStalePort a leftover is not touched', async () => {
  const port = await freePort()
  const args = [AFTER_READY, '--mode', 'port', '--port', String(port)]
  const leftover = spawn('python3', args, { stdio: ['ignore', 'pipe', 'ignore'] })
  try {
    await new Promise<void>((r) => leftover.stdout!.once('data', () => r()))
    const { supervisor } = supervise({ services: [{ name: 'tts', command: 'python3', args, port, readiness: { logLine: { pattern: 'SERVICE_READY' } } }] })
    expect(await supervisor.startAll()).toEqual([expect.objectContaining({ status: 'failed', error: expect.objectContaining({ code: 'PORT_IN_USE' }) })])
    expect(alive(leftover.pid!)).toBe(true)
  } finally {
    leftover.kill('SIGKILL')
  }
})

test('stop() resolves once the port is free; a port still held after portReleaseTimeoutMs is reported', async () => {
  const [port, other] = [await freePort(), await freePort()]
  const bind = `import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',${port}));s.listen(1)\nprint('[SERVICE_READY]',flush=True)\ntime.sleep(60)`
  const { supervisor, events } = supervise({
    services: [
      { name: 'nmt', command: 'python3', args: ['-c', bind], port, readiness: { logLine: { pattern: 'SERVICE_READY' } } },
      // Declares a port it never binds; the test takes it meanwhile.
      { name: 'idle', command: 'python3', args: ['-c', 'import time; time.sleep(60)'], port: other, readiness: { none: {} }, portReleaseTimeoutMs: 300 },
    ],
  })
  await supervisor.startAll()
  await supervisor.stop('nmt')
  const probe = createServer()
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject)
    probe.listen(port, '127.0.0.1', resolve)
  })
  await new Promise((r) => probe.close(r))
  expect(of(events, 'nmt', 'port-still-held')).toEqual([])

  const squatter = createServer()
  await new Promise<void>((r) => squatter.listen(other, '127.0.0.1', r))
  try {
    const started = Date.now()
    await supervisor.stop('idle')
    expect(Date.now() - started).toBeGreaterThanOrEqual(300)
    expect(of(events, 'idle', 'port-still-held')).toEqual([expect.objectContaining({ port: other, pid: process.pid, waitedMs: expect.any(Number) })])
    expect(of(events, 'idle', 'port-still-held')[0].waitedMs).toBeGreaterThanOrEqual(300)
  } finally {
    squatter.close()
  }
})

test('stopAll and close stop dependents before what they depend on', async () => {
  const order = join(tempDir(), 'stopped')
  const svc = (name: string, dependsOn: string[] = []) => py(name, 'talk', ['--name', name, '--on-term', order], { dependsOn })
  const { supervisor, events } = supervise({ services: [svc('web', ['asr', 'mt']), svc('asr'), svc('mt', ['asr'])] })
  await supervisor.startAll()
  await supervisor.stopAll()
  expect(events.filter((e) => e.type === 'stopped').map((e) => e.service)).toEqual(['web', 'mt', 'asr'])
  expect(readFileSync(order, 'utf8').split('\n').filter(Boolean)).toEqual(['web', 'mt', 'asr'])
  writeFileSync(order, '')
  await supervisor.startAll()
  await supervisor.close()
  expect(readFileSync(order, 'utf8').split('\n').filter(Boolean)).toEqual(['web', 'mt', 'asr'])
})
