// The watched config file under the edits operators really make: a bad edit, bytes that are not
// UTF-8, a deleted file, a removed and re-created folder (issue 8, files).
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { GpuArbiter, GpuArbiterEvent } from '../gpu-sidecar'
import { tempDir, waitFor } from './support'

const config = (priority: number) => JSON.stringify({ gpuArbiter: { policies: { ASR: { priority } } } })

test('every rejected edit emits config-rejected; a vanished file or folder is reported and picked up again', async () => {
  const folder = join(tempDir(), 'cfg')
  mkdirSync(folder)
  const path = join(folder, 'electron-node-config.json')
  writeFileSync(path, config(91))
  const arbiter = GpuArbiter.fromFile(path, { watch: true })
  const events: GpuArbiterEvent[] = []
  arbiter.onEvent((e) => events.push(e))
  const seen = (type: string, n = 1) => () => events.filter((e) => e.type === type).length >= n
  const priority = () => arbiter.config().policies!.ASR.priority

  writeFileSync(path, Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])) // {"\xff\xfe"}: not UTF-8
  await waitFor(seen('config-rejected'), 10_000, 'config-rejected for a non-UTF-8 edit')
  expect(events.find((e) => e.type === 'config-rejected')!.detail).toContain('not valid UTF-8')
  expect(priority()).toBe(91)

  writeFileSync(path, '{ "gpuArbiter": { "policies": { "ASR": { "priority": "high" } } } }')
  await waitFor(seen('config-rejected', 2), 10_000, 'config-rejected for a bad value')
  expect(events.filter((e) => e.type === 'config-rejected')[1].detail).toContain('gpuArbiter.policies.ASR.priority')

  rmSync(path)
  await waitFor(seen('config-file-missing'), 10_000, 'config-file-missing for a deleted file')
  expect(priority()).toBe(91)
  writeFileSync(path, config(92))
  await waitFor(() => priority() === 92, 10_000, 'the re-created file applied')

  rmSync(folder, { recursive: true })
  await waitFor(seen('config-file-missing', 2), 10_000, 'config-file-missing for a removed folder')
  mkdirSync(folder)
  writeFileSync(path, config(93))
  await waitFor(() => priority() === 93, 10_000, 'the file in the re-created folder applied')
  expect(events.filter((e) => e.type === 'config-reloaded').length).toBeGreaterThanOrEqual(2)
  arbiter.close()
})

test('a config path that is not a regular file is refused without blocking', () => {
  const dir = tempDir()
  expect(() => GpuArbiter.fromFile(dir)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', message: expect.stringContaining('not a regular file') }))
  expect(() => GpuArbiter.fromFile('/dev/zero')).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }))
})
