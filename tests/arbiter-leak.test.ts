// A closed GpuArbiter, and one only dropped, is collected whole: its JS half, mailbox, promises
// and native state. Each case runs 2 x 20,000 arbiters in a child Node with --expose-gc
// (tests/fixtures/leak/arbiter-churn.mjs) and reads what stayed after a full GC.
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'

const script = join(__dirname, 'fixtures/leak/arbiter-churn.mjs')

type Churn = { heapGrowthMb: number; rssGrowthMb: number; secondBatchHeapGrowthMb: number; secondBatchRssGrowthMb: number }

function churn(mode: 'close' | 'drop' | 'listen'): Churn {
  const out = execFileSync(process.execPath, ['--expose-gc', script, '20000', mode], { encoding: 'utf8', timeout: 120_000 })
  return JSON.parse(out.trim().split('\n').pop()!)
}

describe.each(['close', 'drop', 'listen'] as const)('20,000 arbiters, each %s', (mode) => {
  test('leave under 4 MB of JS heap and under 50 MB of RSS after GC, and a second batch adds nothing', () => {
    const r = churn(mode)
    // Before the fix: 751 MB of heap and 942-1092 MB of RSS per batch, and each batch added as much.
    expect(r.heapGrowthMb).toBeLessThan(4)
    expect(r.rssGrowthMb).toBeLessThan(50)
    expect(r.secondBatchHeapGrowthMb).toBeLessThan(4)
    expect(r.secondBatchRssGrowthMb).toBeLessThan(25)
  })
})
