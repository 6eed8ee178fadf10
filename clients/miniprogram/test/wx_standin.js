/**
 * A stand-in for the parts of WeChat's `wx` the SDK uses, for Node tests: wx.login gets a real code from the
 * minidoor WeChat sandbox (POST /sandbox/login), wx.request goes over Node's http, storage is a Map holding what
 * wx would (a copy: values go through JSON, and a missing key reads as ''), and phoneEvent() is what
 * <button open-type="getPhoneNumber"> hands its handler, with a code from POST /sandbox/phone-code.
 *
 * Every request is recorded in wx.requests ({method, url, header, body}) for the tests to look at.
 */
'use strict'

const http = require('node:http')
const crypto = require('node:crypto')

function rawRequest(method, url, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        // keep the header names as the server spelled them, as wx does
        const header = {}
        for (let i = 0; i < res.rawHeaders.length; i += 2) header[res.rawHeaders[i]] = res.rawHeaders[i + 1]
        resolve({ statusCode: res.statusCode, header, text: Buffer.concat(chunks).toString('utf8') })
      })
    })
    req.on('error', reject)
    if (body) req.write(body)
    req.end()
  })
}

async function postJSON(url, payload) {
  const res = await rawRequest('POST', url, JSON.stringify(payload), { 'Content-Type': 'application/json' })
  if (res.statusCode !== 200) throw new Error(`${url} answered ${res.statusCode}: ${res.text}`)
  return JSON.parse(res.text)
}

function headerOf(header, name) {
  const key = Object.keys(header).find((k) => k.toLowerCase() === name)
  return key === undefined ? undefined : header[key]
}

function formEncode(data) {
  return Object.entries(data)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&')
}

/**
 * createWx({sandboxURL, appid, openid}): one phone's WeChat. openid defaults to a new random one; unionid is
 * passed to the sandbox when given.
 */
function createWx({ sandboxURL, appid, openid, unionid } = {}) {
  const store = new Map()
  const who = { openid: openid || `sdk-${crypto.randomBytes(6).toString('hex')}`, unionid }
  const wx = {
    openid: who.openid,
    requests: [],
    logins: 0,

    login({ success, fail, complete } = {}) {
      wx.logins += 1
      const body = { appid, openid: who.openid }
      if (who.unionid) body.unionid = who.unionid
      postJSON(`${sandboxURL}/sandbox/login`, body).then(
        (res) => {
          const out = { code: res.code, errMsg: 'login:ok' }
          if (success) success(out)
          if (complete) complete(out)
        },
        (err) => {
          const out = { errMsg: `login:fail ${err.message}` }
          if (fail) fail(out)
          if (complete) complete(out)
        }
      )
    },

    request({ url, method = 'GET', data, header = {}, timeout = 60000, dataType = 'json', success, fail, complete }) {
      method = method.toUpperCase()
      const headers = { ...header }
      let body = ''
      if (data !== undefined && data !== null && data !== '') {
        if (method === 'GET' || method === 'HEAD') {
          const query = typeof data === 'string' ? data : formEncode(data)
          url += (url.includes('?') ? '&' : '?') + query
        } else if (typeof data === 'string') {
          body = data
        } else if ((headerOf(headers, 'content-type') || '').startsWith('application/x-www-form-urlencoded')) {
          body = formEncode(data)
        } else {
          body = JSON.stringify(data)
        }
      }
      if (!headerOf(headers, 'content-type')) headers['content-type'] = 'application/json'
      wx.requests.push({ method, url, header: headers, body })
      let finished = false
      const timer = setTimeout(() => {
        finished = true
        const out = { errMsg: 'request:fail timeout' }
        if (fail) fail(out)
        if (complete) complete(out)
      }, timeout)
      rawRequest(method, url, body, headers).then(
        (res) => {
          if (finished) return
          clearTimeout(timer)
          let parsed = res.text
          if (dataType === 'json') {
            try {
              parsed = JSON.parse(res.text)
            } catch {
              /* wx hands the text over when it is not JSON */
            }
          }
          const out = { statusCode: res.statusCode, header: res.header, data: parsed, errMsg: 'request:ok' }
          if (success) success(out)
          if (complete) complete(out)
        },
        (err) => {
          if (finished) return
          clearTimeout(timer)
          const out = { errMsg: `request:fail ${err.message}` }
          if (fail) fail(out)
          if (complete) complete(out)
        }
      )
      return { abort() {} }
    },

    setStorageSync(key, value) {
      store.set(key, JSON.stringify(value))
    },
    getStorageSync(key) {
      return store.has(key) ? JSON.parse(store.get(key)) : ''
    },
    removeStorageSync(key) {
      store.delete(key)
    },

    /** The event of <button open-type="getPhoneNumber"> after the user agreed to share phoneNumber. */
    async phoneEvent(phoneNumber, countryCode) {
      const body = { appid, phoneNumber }
      if (countryCode) body.countryCode = countryCode
      const { code } = await postJSON(`${sandboxURL}/sandbox/phone-code`, body)
      return { type: 'getphonenumber', detail: { code, errMsg: 'getPhoneNumber:ok' } }
    },
    /** The same button's event when the user declined. */
    deniedPhoneEvent() {
      return { type: 'getphonenumber', detail: { errMsg: 'getPhoneNumber:fail user deny' } }
    },

    /** Requests made so far whose URL contains `part`. */
    requestsTo(part) {
      return wx.requests.filter((r) => r.url.includes(part))
    },
  }
  return wx
}

module.exports = { createWx, rawRequest, postJSON }
