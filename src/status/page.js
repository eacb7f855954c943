// @ts-check
// Whole HTML documents around the shared renderer (./render.js): the static incident report and
// the live status page. The live page inlines the renderer's own source, so the browser redraws
// with exactly the code that rendered the report.

const { readFileSync } = require('node:fs')
const { join } = require('node:path')
const render = require('./render.js')

/** @typedef {import('./render.js').StatusModel} StatusModel */

const RENDERER_SOURCE = readFileSync(join(__dirname, 'render.js'), 'utf8')

/** JSON safe inside a <script> element. @param {unknown} value */
function scriptJson(value) {
  return JSON.stringify(value).replace(/</g, '\\u003c')
}

/**
 * The browser side of the live page: keeps the model up to date from server-sent events and
 * redraws at most once per animation frame.
 */
function liveClient() {
  const R = /** @type {any} */ (globalThis).GpuSidecarRender
  const app = /** @type {HTMLElement} */ (document.getElementById('app'))
  let model = JSON.parse(/** @type {HTMLElement} */ (document.getElementById('model')).textContent || '{}')
  let pending = false
  const draw = () => {
    pending = false
    app.innerHTML = R.renderBody(model)
    document.body.dataset.samples = String(model.samples.length)
    document.body.dataset.lastSampleAt = String(model.samples.length ? model.samples[model.samples.length - 1].at : 0)
  }
  const schedule = () => {
    if (!pending) {
      pending = true
      requestAnimationFrame(draw)
    }
  }
  const events = new EventSource('events')
  events.addEventListener('snapshot', (e) => {
    model = JSON.parse(/** @type {MessageEvent} */ (e).data)
    schedule()
  })
  events.addEventListener('sample', (e) => {
    R.addSample(model, JSON.parse(/** @type {MessageEvent} */ (e).data))
    schedule()
  })
  events.addEventListener('alert', (e) => {
    R.addAlert(model, JSON.parse(/** @type {MessageEvent} */ (e).data))
    schedule()
  })
  events.addEventListener('mark', (e) => {
    R.addEvent(model, JSON.parse(/** @type {MessageEvent} */ (e).data))
    schedule()
  })
  events.addEventListener('state', (e) => {
    const state = JSON.parse(/** @type {MessageEvent} */ (e).data)
    model.services = state.services
    model.arbiter = state.arbiter
    schedule()
  })
  events.addEventListener('open', () => (document.body.dataset.connected = 'true'))
  events.addEventListener('error', () => (document.body.dataset.connected = 'false'))
  draw()
}

/**
 * A whole HTML document. The report (`live: false`) has no script at all and a Content Security
 * Policy that forbids every fetch; the live page may only talk back to its own server.
 * @param {StatusModel} model
 * @param {{ live: boolean }} options
 */
function pageHtml(model, { live }) {
  const csp = live
    ? "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
    : "default-src 'none'; style-src 'unsafe-inline'"
  const head = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${render.escapeHtml(model.title)}</title>
<style>${render.STYLE}</style></head>`
  const body = `<body data-samples="${model.samples.length}"><main id="app">${render.renderBody(model)}</main>`
  if (!live) return `${head}\n${body}</body></html>\n`
  return `${head}\n${body}
<script type="application/json" id="model">${scriptJson(model)}</script>
<script>${RENDERER_SOURCE}</script>
<script>(${liveClient.toString()})()</script>
</body></html>\n`
}

module.exports = { pageHtml }
