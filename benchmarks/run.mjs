// npm run bench: every benchmark, each measured beside its peer in the same run.
import { benchArbiter } from './arbiter.mjs'
import { benchTelemetry } from './telemetry.mjs'
import { benchServices } from './services.mjs'
import { benchFlood } from './flood.mjs'
import { benchVram } from './vram.mjs'
import { benchNvml } from './nvml.mjs'
import { benchIdle } from './idle.mjs'
import { benchNodeBoot } from './node-boot.mjs'

await benchArbiter()
await benchTelemetry()
await benchServices()
await benchFlood()
await benchVram()
await benchNvml()
await benchIdle()
await benchNodeBoot()
