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
  // Not `npm ci`: the lock has no entry for optional platform packages the registry does not
  // serve (ours before their first publish, some of @napi-rs/cli's), and `npm ci` rejects that.
  // `npm install` follows the lock for everything else; --no-save leaves the lock as committed.
  run('npm install --no-audit --no-fund --no-save')
}

const sources = ['src', 'Cargo.toml', 'Cargo.lock', 'build.rs'].map((p) => newest(join(root, p)))
const addonFile = readdirSync(root).find((f) => /^gpu-sidecar\..+\.node$/.test(f))
if (!addonFile || mtime(join(root, addonFile)) < Math.max(...sources)) {
  run('npx napi build --platform --release')
}
