// The SDK against a small local server that answers what a test scripts (503s, 429s with Retry-After, a 401 that
// stays), and the module in a bare JS context like WeChat's: no require, process, Buffer or fetch.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const http = require('node:http')
const path = require('node:path')
const vm = require('node:vm')

const minidoor = require('../minidoor.js')
const { createWx } = require('./wx_standin.js')

const SDK_PATH = path.join(__dirname, '..', 'minidoor.js')

/** A server whose answers come from `script(req, body, seen)`; `seen` lists {method, url, auth, body, at}. */
async function scriptedServer(script) {
  const seen = []
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const entry = { method: req.method, url: req.url, auth: req.headers.authorization || '', body, at: Date.now() }
      seen.push(entry)
      const { status = 200, headers = {}, json = {} } = script(entry, seen) || {}
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers })
      res.end(JSON.stringify(json))
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const baseURL = `http://127.0.0.1:${server.address().port}`
  return { baseURL, seen, close: () => new Promise((resolve) => server.close(resolve)) }
}

/** The SDK loaded afresh in a bare context (as in WeChat: no require, process, Buffer, fetch), its setTimeout
 * recording the delays the SDK asks for. */
function bareSdk() {
  const delays = []
  const sandbox = {
    module: { exports: {} },
    setTimeout: (fn, ms) => {
      delays.push(ms)
      return setTimeout(fn, ms)
    },
    Promise,
    console,
  }
  sandbox.exports = sandbox.module.exports
  vm.runInNewContext(fs.readFileSync(SDK_PATH, 'utf8'), sandbox, { filename: 'minidoor.js' })
  return { sdk: sandbox.module.exports, delays }
}

const TOKEN = (n) => ({
  access_token: `access-${n}`,
  refresh_token: `refresh-${n}`,
  token_type: 'Bearer',
  expires_in: 3600,
  scope: 'openid profile',
})

function clientFor(server, wx, { sdk = minidoor, ...extra } = {}) {
  wx.setStorageSync('minidoor.session', {
    accessToken: 'access-1',
    refreshToken: 'refresh-1',
    tokenType: 'Bearer',
    expiresAt: Date.now() + 3600_000,
  })
  return sdk.createClient({ baseURL: server.baseURL, clientId: 'c1', wx, backoffMs: 40, ...extra })
}

test('the module runs in a bare context: no require, process, Buffer, fetch or async functions', () => {
  const source = fs.readFileSync(SDK_PATH, 'utf8')
  const { sdk } = bareSdk()
  assert.equal(typeof sdk.createClient, 'function')
  const wx = createWx({ sandboxURL: 'http://127.0.0.1:9', appid: 'x' })
  assert.equal(sdk.createClient({ baseURL: 'https://a.example', clientId: 'c', wx }).isLoggedIn(), false)
  // syntax WeChat's engine may not have without "enhanced compile"
  for (const banned of [/\basync\s+function\b/, /\bawait\b/, /\?\./, /\?\?/, /\.\.\.\w/]) {
    assert.doesNotMatch(source.replace(/^\s*(\/\/|\*).*$/gm, ''), banned)
  }
})

test('503 is retried with growing backoff until it succeeds', async () => {
  const server = await scriptedServer((req, seen) =>
    seen.length <= 3 ? { status: 503, json: { error: 'temporarily_unavailable' } } : { json: { ok: true } }
  )
  try {
    const wx = createWx({ sandboxURL: '', appid: 'x' })
    const { sdk, delays } = bareSdk()
    const auth = clientFor(server, wx, { retries: 3, sdk })
    const res = await auth.request({ url: '/api/thing' })
    assert.equal(res.statusCode, 200)
    assert.deepEqual(res.data, { ok: true })
    assert.equal(server.seen.length, 4)
    // backoffMs × 2^n with jitter in [½, 1]: 20–40, 40–80, 80–160 ms
    assert.equal(delays.length, 3)
    delays.forEach((ms, n) => assert.ok(ms >= 20 * 2 ** n && ms <= 40 * 2 ** n, `delays ${delays}`))
    const gaps = server.seen.slice(1).map((r, i) => r.at - server.seen[i].at)
    gaps.forEach((gap, n) => assert.ok(gap >= delays[n] - 2, `gap ${n} was ${gap} ms, asked ${delays[n]}`))
    assert.ok(server.seen.every((r) => r.auth === 'Bearer access-1'))
  } finally {
    await server.close()
  }
})

test('503 past the retries rejects with the status and the server message', async () => {
  const server = await scriptedServer(() => ({
    status: 503,
    json: { error: 'temporarily_unavailable', error_description: 'down for a bit' },
  }))
  try {
    const auth = clientFor(server, createWx({ appid: 'x' }), { retries: 2 })
    await assert.rejects(auth.request({ url: '/api/thing' }), (err) => {
      assert.ok(err instanceof minidoor.MinidoorError)
      assert.equal(err.statusCode, 503)
      assert.equal(err.code, 'temporarily_unavailable')
      assert.equal(err.message, 'down for a bit')
      return true
    })
    assert.equal(server.seen.length, 3)
  } finally {
    await server.close()
  }
})

test("429 waits out Retry-After, then succeeds", async () => {
  const server = await scriptedServer((req, seen) =>
    seen.length === 1 ? { status: 429, headers: { 'Retry-After': '1' }, json: { error: 'temporarily_unavailable' } } : {}
  )
  try {
    const auth = clientFor(server, createWx({ appid: 'x' }))
    const res = await auth.request({ url: '/api/thing', method: 'POST', data: { a: 1 } })
    assert.equal(res.statusCode, 200)
    assert.equal(server.seen.length, 2)
    const waited = server.seen[1].at - server.seen[0].at
    assert.ok(waited >= 990, `retried after ${waited} ms, Retry-After said 1 s`)
    assert.equal(server.seen[1].body, '{"a":1}')
  } finally {
    await server.close()
  }
})

test('429 with a Retry-After beyond maxRetryAfterMs fails at once with retryAfter', async () => {
  const server = await scriptedServer(() => ({
    status: 429,
    headers: { 'retry-after': '120' },
    json: { status: 'error', msg: 'too many requests' },
  }))
  try {
    const auth = clientFor(server, createWx({ appid: 'x' }), { maxRetryAfterMs: 5000 })
    const started = Date.now()
    await assert.rejects(auth.request({ url: '/api/thing' }), (err) => {
      assert.equal(err.statusCode, 429)
      assert.equal(err.retryAfter, 120)
      assert.equal(err.message, 'too many requests')
      return true
    })
    assert.equal(server.seen.length, 1)
    assert.ok(Date.now() - started < 5000) // not the 120 s it asked for
  } finally {
    await server.close()
  }
})

test('401 refreshes once; a second 401 is reported, not refreshed again', async () => {
  const server = await scriptedServer((req) => {
    if (req.url === '/api/login/oauth/refresh_token') return { json: TOKEN(2) }
    return { status: 401, headers: { 'WWW-Authenticate': 'Bearer' }, json: { status: 'error', msg: 'no' } }
  })
  try {
    const wx = createWx({ appid: 'x' })
    const auth = clientFor(server, wx)
    await assert.rejects(auth.request({ url: '/api/thing' }), (err) => err.statusCode === 401)
    assert.deepEqual(
      server.seen.map((r) => [r.url, r.auth]),
      [
        ['/api/thing', 'Bearer access-1'],
        ['/api/login/oauth/refresh_token', ''],
        ['/api/thing', 'Bearer access-2'],
      ]
    )
    const form = new URLSearchParams(server.seen[1].body)
    assert.equal(form.get('grant_type'), 'refresh_token')
    assert.equal(form.get('refresh_token'), 'refresh-1')
    assert.equal(form.get('client_id'), 'c1')
    assert.equal(auth.session().refreshToken, 'refresh-2')
  } finally {
    await server.close()
  }
})

test('an access token past its expiry is refreshed before it is sent', async () => {
  const server = await scriptedServer((req) => (req.url.includes('refresh_token') ? { json: TOKEN(2) } : {}))
  try {
    const wx = createWx({ appid: 'x' })
    const auth = clientFor(server, wx)
    wx.setStorageSync('minidoor.session', { ...auth.session(), expiresAt: Date.now() - 1000 })
    await auth.request({ url: '/api/thing' })
    assert.deepEqual(
      server.seen.map((r) => [r.url, r.auth]),
      [
        ['/api/login/oauth/refresh_token', ''],
        ['/api/thing', 'Bearer access-2'],
      ]
    )
    assert.ok(auth.session().expiresAt > Date.now() + 3000_000)
  } finally {
    await server.close()
  }
})

test('the bearer goes only to baseURL and bearerOrigins', async () => {
  const own = await scriptedServer(() => ({}))
  const other = await scriptedServer(() => ({}))
  const api = await scriptedServer(() => ({}))
  try {
    const auth = clientFor(own, createWx({ appid: 'x' }), { bearerOrigins: [api.baseURL] })
    await auth.request({ url: own.baseURL + '/a' })
    await auth.request({ url: other.baseURL + '/b' })
    await auth.request({ url: api.baseURL + '/c' })
    await auth.request({ url: '/d', auth: false })
    assert.deepEqual(
      own.seen.map((r) => r.auth),
      ['Bearer access-1', '']
    )
    assert.equal(other.seen[0].auth, '')
    assert.equal(api.seen[0].auth, 'Bearer access-1')
  } finally {
    await Promise.all([own.close(), other.close(), api.close()])
  }
})

test('request without a session and a declined phone sheet reject without a network call', async () => {
  const server = await scriptedServer(() => ({}))
  try {
    const wx = createWx({ appid: 'x' })
    const auth = minidoor.createClient({ baseURL: server.baseURL, clientId: 'c1', wx })
    await assert.rejects(auth.request({ url: '/api/get-account' }), (err) => err.code === 'login_required')
    await assert.rejects(auth.loginWithPhone(wx.deniedPhoneEvent()), (err) => {
      assert.equal(err.code, 'phone_denied')
      assert.match(err.message, /user deny/)
      return true
    })
    assert.deepEqual(await auth.logout(), { revoked: false })
    assert.equal(server.seen.length, 0)
  } finally {
    await server.close()
  }
})

test('concurrent 401s share one refresh, even when all arrive before it answers', async () => {
  const server = await scriptedServer((req) => {
    if (req.url === '/api/login/oauth/refresh_token') return { json: TOKEN(2) }
    return req.auth === 'Bearer access-2' ? { json: { ok: true } } : { status: 401, json: { msg: 'expired' } }
  })
  try {
    const wx = createWx({ appid: 'x' })
    // hold the refresh's answer until the SDK has been handed all three 401s
    const request = wx.request
    let refused = 0
    const held = []
    wx.request = (opts) => {
      const success = opts.success
      if (opts.url.endsWith('/refresh_token')) {
        return request({ ...opts, success: (res) => (refused === 3 ? success(res) : held.push(() => success(res))) })
      }
      return request({
        ...opts,
        success: (res) => {
          success(res)
          if (res.statusCode === 401 && ++refused === 3) setTimeout(() => held.splice(0).forEach((f) => f()), 0)
        },
      })
    }
    const auth = clientFor(server, wx)
    const results = await Promise.all([1, 2, 3].map(() => auth.request({ url: '/api/thing' })))
    results.forEach((res) => assert.deepEqual(res.data, { ok: true }))
    assert.equal(refused, 3)
    assert.equal(server.seen.filter((r) => r.url.endsWith('/refresh_token')).length, 1)
  } finally {
    await server.close()
  }
})
