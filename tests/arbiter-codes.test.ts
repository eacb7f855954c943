// The arbiter's status and reason names live in the Rust core (arbiter::types). The TypeScript
// union of a refused request and GpuLeaseError's messages are written by hand: these tests fail
// when a status or reason is added in Rust and not there.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import * as sidecar from '../gpu-sidecar'

const { statuses, reasons } = (sidecar as unknown as { arbiterCodeNames(): { statuses: string[]; reasons: string[] } }).arbiterCodeNames()
const header = readFileSync(join(__dirname, '../src/binding/header.d.ts'), 'utf8')
const entry = readFileSync(join(__dirname, '../gpu-sidecar.d.ts'), 'utf8')
const refusals = statuses.filter((s) => s !== 'ACQUIRED')

/** The string literals of `field:` in `interface name { ... }` of header.d.ts. */
function union(name: string, field: string): string[] {
  const body = header.match(new RegExp(`interface ${name} \\{([^}]*)\\}`))?.[1] ?? ''
  const line = body.match(new RegExp(`\\b${field}: ([^\\n]*)`))?.[1] ?? ''
  return [...line.matchAll(/'([A-Z_]+)'/g)].map((m) => m[1])
}

test("GpuLeaseNotAcquired's status and reason unions are the core's names", () => {
  expect(union('GpuLeaseNotAcquired', 'status').sort()).toEqual([...refusals].sort())
  expect(union('GpuLeaseNotAcquired', 'reason').sort()).toEqual([...reasons].sort())
})

test('GpuLeaseError has a message and a declared code for every status but ACQUIRED, and refuses others', () => {
  for (const status of refusals) {
    expect(new sidecar.GpuLeaseError({ status, reason: reasons[0] } as never, 'ASR').code).toBe(`GPU_LEASE_${status}`)
  }
  const declared = entry.match(/class GpuLeaseError[^}]*readonly code: ([^\n]*)/)?.[1] ?? ''
  expect([...declared.matchAll(/'GPU_LEASE_([A-Z_]+)'/g)].map((m) => m[1]).sort()).toEqual([...refusals].sort())
  expect(() => new sidecar.GpuLeaseError({ status: 'ACQUIRED', reason: 'x' } as never, 'ASR')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
})
