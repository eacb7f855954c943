// Makes a fresh clone ready to test, demo or bench with no other step: installs the npm
// dependencies when missing or stale, and builds the addon when it is older than its sources.
// Node built-ins only (it runs before node_modules exists).
import { execSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const run = (cmd) => execSync(cmd, { cwd: root, stdio: 'inherit' })
const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0)

function newest(path) {
  const st = statSync(path)
  if (!st.isDirectory()) return st.mtimeMs
  return Math.max(st.mtimeMs, ...readdirSync(path).map((name) => newest(join(path, name))))
}

const installed = join(root, 'node_modules', '.package-lock.json')
if (mtime(installed) < mtime(join(root, 'package-lock.json'))) {
  // `npm ci` installs exactly the committed lock. Our platform packages are not in package.json
  // (`napi prepublish` adds them as optionalDependencies at publish time), so the lock is whole
  // for us. But a lock made on a registry that lacks some foreign-platform builds of third-party
  // tools (@napi-rs/lzma-*, @unrs/resolver-binding-*) has no entry for them, and `npm ci` rejects
  // such a lock on a machine whose registry does serve them; `npm install` then follows the lock
  // for everything else, and --no-save leaves it as committed.
  try {
    run('npm ci --no-audit --no-fund')
  } catch {
    console.warn('prepare: npm ci failed (see above); falling back to npm install --no-save')
    run('npm install --no-audit --no-fund --no-save')
  }
}

const sources = ['src', 'Cargo.toml', 'Cargo.lock', 'build.rs'].map((p) => newest(join(root, p)))
const addonFile = readdirSync(root).find((f) => /^gpu-sidecar\..+\.node$/.test(f))
if (!addonFile || mtime(join(root, addonFile)) < Math.max(...sources)) {
  run('npx napi build --platform --release')
}
