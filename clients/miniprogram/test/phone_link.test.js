// loginWithPhone and linkWechat against a live stack that serves phone sign-in (tag=wechat_miniprogram_phone) and
// POST /api/link-wechat; tests/test_miniprogram_sdk.py runs this file only once the gateway's OpenAPI document
// lists /api/link-wechat.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')

const minidoor = require('../minidoor.js')
const { createWx } = require('./wx_standin.js')

const env = process.env
const LIVE = Boolean(env.MINIDOOR_BASE_URL && env.MINIDOOR_SANDBOX_URL)
const skip = LIVE ? false : 'MINIDOOR_BASE_URL / MINIDOOR_SANDBOX_URL not set (run tests/test_miniprogram_sdk.py)'

/** One phone: its WeChat (openid given, or a new one) and an SDK client with storage of its own. */
function phone(openid) {
  const wx = createWx({ sandboxURL: env.MINIDOOR_SANDBOX_URL, appid: env.MINIDOOR_WECHAT_APPID, openid })
  const auth = minidoor.createClient({ baseURL: env.MINIDOOR_BASE_URL, clientId: env.MINIDOOR_CLIENT_ID, wx })
  return { wx, auth }
}

function newNumber() {
  return '139' + String(crypto.randomInt(0, 1e8)).padStart(8, '0')
}

async function account(auth) {
  return (await auth.request({ url: '/api/get-account' })).data.data
}

test('loginWithPhone signs in by phone and links the WeChat identity: login() then finds that account', { skip }, async () => {
  const number = newNumber()
  const { wx, auth } = phone()
  const session = await auth.loginWithPhone(await wx.phoneEvent(number))
  assert.ok(session.accessToken && session.refreshToken)
  const sent = new URLSearchParams(wx.requestsTo('/api/login/oauth/access_token')[0].body)
  assert.equal(sent.get('tag'), 'wechat_miniprogram_phone')
  assert.ok(sent.get('code') && sent.get('login_code'))
  const user = await account(auth)
  assert.ok(user.phone.endsWith(number), `phone ${user.phone}`)

  const again = phone(wx.openid)
  await again.auth.login()
  assert.equal((await account(again.auth)).id, user.id)
})

test('linkWechat links this WeChat identity to a phone-only account', { skip }, async () => {
  const number = newNumber()
  const { wx, auth } = phone()
  await auth.loginWithPhone(await wx.phoneEvent(number), { linkWechat: false })
  const sent = new URLSearchParams(wx.requestsTo('/api/login/oauth/access_token')[0].body)
  assert.equal(sent.get('login_code'), null)
  assert.equal(wx.logins, 0)
  const user = await account(auth)

  const linked = await auth.linkWechat()
  assert.equal(linked.status, 'ok')
  const link = wx.requestsTo('/api/link-wechat')[0]
  assert.equal(link.header.Authorization, `Bearer ${auth.session().accessToken}`)

  const again = phone(wx.openid)
  await again.auth.login()
  assert.equal((await account(again.auth)).id, user.id)
})

test("linkWechat with someone else's WeChat identity is refused with 409", { skip }, async () => {
  const first = phone()
  await first.auth.login() // this WeChat identity is now the first user's
  const second = phone(first.wx.openid)
  await second.auth.loginWithPhone(await second.wx.phoneEvent(newNumber()), { linkWechat: false })
  await assert.rejects(second.auth.linkWechat(), (err) => {
    assert.equal(err.statusCode, 409)
    assert.equal(err.data.status, 'error')
    return true
  })
  assert.equal(second.auth.isLoggedIn(), true) // a refused link leaves the session alone
})
