// The SDK against a live stack (tests/test_miniprogram_sdk.py starts one and sets the variables below): login
// through the gateway, the stream, the worker and the WeChat sandbox; the bearer on the account API; a refused
// access token refreshed once, by concurrent requests too; a dead login; logout; 503 and 429 from the real stack.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')

const minidoor = require('../minidoor.js')
const { createWx, rawRequest, postJSON } = require('./wx_standin.js')

const env = process.env
const LIVE = Boolean(env.MINIDOOR_BASE_URL && env.MINIDOOR_SANDBOX_URL)
const skip = LIVE ? false : 'MINIDOOR_BASE_URL / MINIDOOR_SANDBOX_URL not set (run tests/test_miniprogram_sdk.py)'

function phone(extra = {}) {
  const wx = createWx({ sandboxURL: env.MINIDOOR_SANDBOX_URL, appid: env.MINIDOOR_WECHAT_APPID })
  const auth = minidoor.createClient({ baseURL: env.MINIDOOR_BASE_URL, clientId: env.MINIDOOR_CLIENT_ID, wx, ...extra })
  return { wx, auth }
}

/** The stored session's access token with its signature's last characters changed: the gateway refuses it. */
function tamper(wx) {
  const s = wx.getStorageSync('minidoor.session')
  const t = s.accessToken
  wx.setStorageSync('minidoor.session', { ...s, accessToken: t.slice(0, -4) + (t.endsWith('AAAA') ? 'BBBB' : 'AAAA') })
  return s
}

test('login stores the session and request() reaches the account API with the bearer', { skip }, async () => {
  const { wx, auth } = phone()
  const session = await auth.login()
  assert.ok(session.accessToken && session.refreshToken)
  assert.equal(session.tokenType, 'Bearer')
  assert.ok(session.expiresAt > Date.now() + 3600_000)
  assert.deepEqual(wx.getStorageSync('minidoor.session'), session)
  assert.equal(auth.isLoggedIn(), true)

  const res = await auth.request({ url: '/api/get-account' })
  assert.equal(res.statusCode, 200)
  assert.equal(res.data.status, 'ok')
  assert.equal(res.data.data.name, `wechat-${wx.openid}`)
  const sent = wx.requestsTo('/api/get-account')[0]
  assert.equal(sent.header.Authorization, `Bearer ${session.accessToken}`)

  // the same WeChat user again: the same account, a new session
  const other = createWx({ sandboxURL: env.MINIDOOR_SANDBOX_URL, appid: env.MINIDOOR_WECHAT_APPID, openid: wx.openid })
  const sameUser = minidoor.createClient({ baseURL: env.MINIDOOR_BASE_URL, clientId: env.MINIDOOR_CLIENT_ID, wx: other })
  await sameUser.login()
  assert.notEqual(sameUser.session().accessToken, session.accessToken)
  assert.equal((await sameUser.request({ url: '/api/get-account' })).data.data.id, res.data.data.id)
})

test('a login the gateway refuses rejects with its OAuth error', { skip }, async () => {
  const wx = createWx({ sandboxURL: env.MINIDOOR_SANDBOX_URL, appid: env.MINIDOOR_WECHAT_APPID })
  const auth = minidoor.createClient({ baseURL: env.MINIDOOR_BASE_URL, clientId: 'no-such-client', wx })
  await assert.rejects(auth.login(), (err) => {
    assert.equal(err.statusCode, 401)
    assert.equal(err.code, 'invalid_client')
    return true
  })
  assert.equal(auth.isLoggedIn(), false)
})

test('a refused access token is refreshed once, also for concurrent requests', { skip }, async () => {
  const { wx, auth } = phone()
  await auth.login()
  const before = tamper(wx)
  const results = await Promise.all([1, 2, 3].map(() => auth.request({ url: '/api/get-account' })))
  results.forEach((res) => assert.equal(res.statusCode, 200))
  // one refresh: a second use of the same refresh token would be a replay and revoke the whole login
  assert.equal(wx.requestsTo('/api/login/oauth/refresh_token').length, 1)
  const after = auth.session()
  assert.notEqual(after.refreshToken, before.refreshToken)
  assert.notEqual(after.accessToken, before.accessToken)
  assert.equal((await auth.request({ url: '/api/get-account' })).statusCode, 200)
  assert.equal(wx.requestsTo('/api/login/oauth/refresh_token').length, 1)
})

test('a dead refresh token ends the session with login_required', { skip }, async () => {
  const { wx, auth } = phone()
  await auth.login()
  const s = tamper(wx)
  wx.setStorageSync('minidoor.session', { ...wx.getStorageSync('minidoor.session'), refreshToken: s.refreshToken + 'x' })
  await assert.rejects(auth.request({ url: '/api/get-account' }), (err) => {
    assert.equal(err.code, 'login_required')
    assert.equal(err.statusCode, 400)
    return true
  })
  assert.equal(auth.isLoggedIn(), false)
  assert.equal(wx.getStorageSync('minidoor.session'), '')
})

test('logout revokes the login on the server and forgets it here', { skip }, async () => {
  const { wx, auth } = phone()
  const session = await auth.login()
  assert.deepEqual(await auth.logout(), { revoked: true })
  assert.equal(auth.isLoggedIn(), false)
  assert.equal(wx.getStorageSync('minidoor.session'), '')
  const account = await rawRequest('GET', env.MINIDOOR_BASE_URL + '/api/get-account', '', {
    Authorization: `Bearer ${session.accessToken}`,
  })
  assert.equal(account.statusCode, 401)
  const refresh = await rawRequest(
    'POST',
    env.MINIDOOR_BASE_URL + '/api/login/oauth/refresh_token',
    `grant_type=refresh_token&client_id=${env.MINIDOOR_CLIENT_ID}&refresh_token=${session.refreshToken}`,
    { 'Content-Type': 'application/x-www-form-urlencoded' }
  )
  assert.equal(refresh.statusCode, 400, refresh.text)
  await assert.rejects(auth.request({ url: '/api/get-account' }), (err) => err.code === 'login_required')
})

test("a login answered 503 (WeChat failing) is retried after Retry-After with a fresh wx.login() code", { skip }, async () => {
  const { wx, auth } = phone()
  // the stack's worker tries WeChat once (WECHAT_MAX_ATTEMPTS=1): one system error is one 503 for the login
  await postJSON(env.MINIDOOR_SANDBOX_URL + '/sandbox/faults', { errcode: -1, count: 1 })
  await auth.login()
  assert.equal(auth.isLoggedIn(), true)
  const tries = wx.requestsTo('/api/login/oauth/access_token')
  assert.equal(tries.length, 2)
  assert.equal(wx.logins, 2)
  const codes = tries.map((r) => new URLSearchParams(r.body).get('code'))
  assert.notEqual(codes[0], codes[1])
})

test('a real 429 with a long Retry-After fails at once with retryAfter', { skip }, async () => {
  // the stack allows RATE_LIMIT_USER_UPDATES=2 profile changes per user a minute
  const { wx, auth } = phone({ maxRetryAfterMs: 3000 })
  await auth.login()
  const update = (name) =>
    auth.request({ url: '/api/update-user', method: 'POST', data: { displayName: name } })
  assert.equal((await update('Ann')).data.data, 'Affected')
  assert.equal((await update('Bea')).data.data, 'Affected')
  const started = Date.now()
  await assert.rejects(update('Cy'), (err) => {
    assert.equal(err.statusCode, 429)
    assert.ok(err.retryAfter > 3, `Retry-After ${err.retryAfter}`)
    assert.equal(err.data.status, 'error')
    return true
  })
  assert.ok(Date.now() - started < 3000) // not waited out
  assert.equal(wx.requestsTo('/api/update-user').length, 3)
})
