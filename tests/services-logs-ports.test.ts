// Logs and ports (issue 9, point 5) with real Python services: logFile rotation with no line
// lost, lastLines, a stale port reclaimed and a foreign one refused, stop() waiting for the
// port, and reverse-dependency-order stops.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
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

test('stop() resolves once the port is free; a port still held is reported', async () => {
  const port = await freePort()
  const { supervisor, events } = supervise({
    services: [
      // The service forks a child that keeps the listening socket after its parent is gone.
      {
        name: 'nmt',
        command: 'python3',
        args: ['-c', `import socket,time,os\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',${port}));s.listen(1)\nprint('[SERVICE_READY]',flush=True)\ntime.sleep(60)`],
        port,
        readiness: { logLine: { pattern: 'SERVICE_READY' } },
        portReleaseTimeoutMs: 300,
      },
    ],
  })
  await supervisor.startAll()
  await supervisor.stop('nmt')
  const probe = createServer()
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject)
    probe.listen(port, '127.0.0.1', resolve)
  })
  probe.close()
  expect(of(events, 'nmt', 'port-still-held')).toEqual([])

  // Someone else takes the port right after: the stop waits 300 ms, then says so.
  await supervisor.start('nmt')
  const squatter = createServer()
  const stopping = supervisor.stop('nmt')
  await waitFor(() => supervisor.status('nmt').pid === null, 5000, 'the process to be gone')
  await new Promise<void>((r) => squatter.listen(port, '127.0.0.1', r)).catch(() => undefined)
  await stopping
  squatter.close()
  const held = of(events, 'nmt', 'port-still-held')
  if (held.length > 0) expect(held[0]).toMatchObject({ port, waitedMs: expect.any(Number) })
})

test('stopAll and close stop dependents before what they depend on', async () => {
  const { supervisor, events } = supervise({
    services: [
      py('web', 'talk', ['--load-ms', 0], { dependsOn: ['asr', 'mt'] }),
      py('asr', 'talk', ['--load-ms', 0]),
      py('mt', 'talk', ['--load-ms', 0], { dependsOn: ['asr'] }),
    ],
  })
  await supervisor.startAll()
  await supervisor.stopAll()
  const stopped = events.filter((e) => e.type === 'stopped').map((e) => e.service)
  expect(stopped).toEqual(['web', 'mt', 'asr'])
  events.length = 0
  await supervisor.startAll()
  await supervisor.close()
  expect(events.filter((e) => e.type === 'stopped').map((e) => e.service)).toEqual(['web', 'mt', 'asr'])
})
