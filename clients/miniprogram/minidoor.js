/**
 * minidoor for mini programs: WeChat login, phone sign-in, account linking and authorized requests against a
 * minidoor gateway (Casdoor's mini-program API). One CommonJS module, no dependencies; it uses only `wx`
 * (wx.login, wx.request, wx.setStorageSync/getStorageSync/removeStorageSync), Promise and setTimeout, and the
 * syntax of ES2015 (no async/await), so it runs in WeChat's JS engine with or without "enhanced compile".
 *
 *   const minidoor = require('./minidoor')
 *   const auth = minidoor.createClient({ baseURL: 'https://login.example.com', clientId: '…' })
 *   await auth.login()
 *   const res = await auth.request({ url: '/api/get-account' })
 *
 * See README.md beside this file.
 */
'use strict'

var VERSION = '0.1.0'
var TOKEN_PATH = '/api/login/oauth/access_token'
var REFRESH_PATH = '/api/login/oauth/refresh_token'
var LOGOUT_PATH = '/api/logout'
var LINK_PATH = '/api/link-wechat'
var FORM = 'application/x-www-form-urlencoded'

var DEFAULTS = {
  storageKey: 'minidoor.session',
  // 503 (and 429 with a short Retry-After) is retried this many times, waiting backoffMs, then twice as long each
  // time (with jitter, at most maxBackoffMs), and never less than the server's Retry-After.
  retries: 3,
  backoffMs: 500,
  maxBackoffMs: 8000,
  // A Retry-After longer than this is not waited out: the call fails at once with err.retryAfter (seconds), so
  // the page can say "try again in a minute" instead of hanging.
  maxRetryAfterMs: 10000,
  timeoutMs: 15000,
  // A stored access token this close to its expiry is refreshed before it is sent.
  refreshSkewMs: 30000,
}

/**
 * Every failure the SDK reports. `code` is one of: 'login_required' (no session, or the refresh token is dead:
 * call login() again), 'phone_denied' (the user closed the phone-number sheet), 'wx_login_failed', 'network',
 * or the server's OAuth `error` ('invalid_grant', 'temporarily_unavailable', …), else 'http_<status>'.
 * `statusCode`, `data` (the parsed body) and `retryAfter` (seconds, from Retry-After) are set when a server answered.
 */
function MinidoorError(message, fields) {
  var err = new Error(message)
  Object.setPrototypeOf(err, MinidoorError.prototype)
  err.name = 'MinidoorError'
  fields = fields || {}
  err.code = fields.code || 'error'
  err.statusCode = fields.statusCode || 0
  err.data = fields.data === undefined ? null : fields.data
  err.retryAfter = fields.retryAfter === undefined ? null : fields.retryAfter
  return err
}
MinidoorError.prototype = Object.create(Error.prototype)
MinidoorError.prototype.constructor = MinidoorError

function delay(ms) {
  return new Promise(function (resolve) {
    setTimeout(resolve, ms)
  })
}

function encodeForm(fields) {
  var parts = []
  Object.keys(fields).forEach(function (name) {
    var value = fields[name]
    if (value === undefined || value === null || value === '') return
    parts.push(encodeURIComponent(name) + '=' + encodeURIComponent(String(value)))
  })
  return parts.join('&')
}

function headerValue(headers, name) {
  if (!headers) return undefined
  var wanted = name.toLowerCase()
  var keys = Object.keys(headers)
  for (var i = 0; i < keys.length; i++) {
    if (keys[i].toLowerCase() === wanted) return headers[keys[i]]
  }
  return undefined
}

/** Retry-After in seconds (delta-seconds or an HTTP date), or null. */
function retryAfterOf(res) {
  var raw = headerValue(res.header, 'Retry-After')
  if (raw === undefined || raw === null || raw === '') return null
  raw = String(raw).trim()
  if (/^\d+$/.test(raw)) return parseInt(raw, 10)
  var when = Date.parse(raw)
  if (isNaN(when)) return null
  return Math.max(0, Math.ceil((when - Date.now()) / 1000))
}

function originOf(url) {
  var m = /^(https?:\/\/[^/?#]+)/i.exec(url)
  return m ? m[1].toLowerCase() : ''
}

/** The server's message: OAuth's error_description, Casdoor's envelope msg, or the status. */
function errorFromResponse(res) {
  var data = res.data
  var code = 'http_' + res.statusCode
  var message = 'HTTP ' + res.statusCode
  if (data && typeof data === 'object') {
    if (typeof data.error === 'string' && data.error) code = data.error
    if (typeof data.error_description === 'string' && data.error_description) message = data.error_description
    else if (typeof data.msg === 'string' && data.msg) message = data.msg
  }
  return MinidoorError(message, { code: code, statusCode: res.statusCode, data: data, retryAfter: retryAfterOf(res) })
}

/**
 * A client for one minidoor application. options: baseURL and clientId (both required); wx (default: the global
 * `wx`); bearerOrigins (other origins, e.g. your own API's, that may receive the access token: by default only
 * baseURL's); and any of DEFAULTS above.
 */
function createClient(options) {
  options = options || {}
  if (!options.baseURL) throw new Error('minidoor: baseURL is required')
  if (!options.clientId) throw new Error('minidoor: clientId is required')
  var wxApi = options.wx || (typeof wx !== 'undefined' ? wx : null) // eslint-disable-line no-undef
  if (!wxApi) throw new Error('minidoor: no wx object (pass options.wx outside a mini program)')
  var cfg = {}
  Object.keys(DEFAULTS).forEach(function (k) {
    cfg[k] = options[k] === undefined ? DEFAULTS[k] : options[k]
  })
  var baseURL = String(options.baseURL).replace(/\/+$/, '')
  var trusted = [originOf(baseURL)].concat((options.bearerOrigins || []).map(originOf))
  var refreshing = null // the one refresh in flight: a refresh token works once, so concurrent 401s share it

  function resolveURL(url) {
    if (/^https?:\/\//i.test(url)) return url
    return baseURL + (url.charAt(0) === '/' ? url : '/' + url)
  }

  // -- storage ---------------------------------------------------------------------------------------------------
  function readSession() {
    var s
    try {
      s = wxApi.getStorageSync(cfg.storageKey)
    } catch (e) {
      return null
    }
    if (typeof s === 'string' && s) {
      try {
        s = JSON.parse(s)
      } catch (e) {
        return null
      }
    }
    return s && typeof s === 'object' && s.accessToken ? s : null
  }

  function saveSession(token) {
    var session = {
      accessToken: token.access_token,
      refreshToken: token.refresh_token || '',
      tokenType: token.token_type || 'Bearer',
      scope: token.scope || '',
      expiresAt: token.expires_in ? Date.now() + token.expires_in * 1000 : 0,
    }
    wxApi.setStorageSync(cfg.storageKey, session)
    return session
  }

  function clearSession() {
    try {
      wxApi.removeStorageSync(cfg.storageKey)
    } catch (e) {
      /* nothing stored */
    }
  }

  // -- transport -------------------------------------------------------------------------------------------------
  function wxRequest(req) {
    return new Promise(function (resolve, reject) {
      wxApi.request({
        url: req.url,
        method: req.method || 'GET',
        data: req.data,
        header: req.header || {},
        timeout: req.timeout || cfg.timeoutMs,
        dataType: req.dataType || 'json',
        responseType: req.responseType || 'text',
        success: function (res) {
          resolve({ statusCode: res.statusCode, data: res.data, header: res.header || {} })
        },
        fail: function (err) {
          reject(MinidoorError((err && err.errMsg) || 'request failed', { code: 'network' }))
        },
      })
    })
  }

  function backoff(attempt) {
    var full = Math.min(cfg.maxBackoffMs, cfg.backoffMs * Math.pow(2, attempt))
    return full / 2 + (Math.random() * full) / 2
  }

  /**
   * Send build()'s request (build is called again before every attempt: a login needs a fresh wx.login() code),
   * retrying 503 with backoff and 429 after its Retry-After; resolves with the last response, whatever its status.
   */
  function send(build) {
    function attempt(n) {
      return Promise.resolve(build(n)).then(function (req) {
        return wxRequest(req).then(function (res) {
          if ((res.statusCode !== 503 && res.statusCode !== 429) || n >= cfg.retries) return res
          var after = retryAfterOf(res)
          if (after !== null && after * 1000 > cfg.maxRetryAfterMs) return res
          if (res.statusCode === 429 && after === null) return res // a limit that says nothing of when: do not hammer it
          var wait = after === null ? backoff(n) : Math.max(after * 1000, res.statusCode === 503 ? backoff(n) : 0)
          return delay(wait).then(function () {
            return attempt(n + 1)
          })
        })
      })
    }
    return attempt(0)
  }

  function expectOk(res) {
    if (res.statusCode >= 200 && res.statusCode < 300) return res
    throw errorFromResponse(res)
  }

  function postForm(path, fields) {
    return {
      url: baseURL + path,
      method: 'POST',
      data: encodeForm(fields),
      header: { 'content-type': FORM },
    }
  }

  // -- tokens ----------------------------------------------------------------------------------------------------
  function wxLoginCode() {
    return new Promise(function (resolve, reject) {
      wxApi.login({
        success: function (res) {
          if (res && res.code) resolve(res.code)
          else reject(MinidoorError((res && res.errMsg) || 'wx.login gave no code', { code: 'wx_login_failed' }))
        },
        fail: function (err) {
          reject(MinidoorError((err && err.errMsg) || 'wx.login failed', { code: 'wx_login_failed' }))
        },
      })
    })
  }

  function tokenRequest(build) {
    return send(build)
      .then(expectOk)
      .then(function (res) {
        return saveSession(res.data)
      })
  }

  function doRefresh(session) {
    if (!session.refreshToken) {
      clearSession()
      return Promise.reject(MinidoorError('the session has no refresh token; log in again', { code: 'login_required' }))
    }
    var fields = { grant_type: 'refresh_token', refresh_token: session.refreshToken, client_id: options.clientId }
    return send(function () {
      return postForm(REFRESH_PATH, fields)
    }).then(function (res) {
      if (res.statusCode >= 200 && res.statusCode < 300) return saveSession(res.data)
      var err = errorFromResponse(res)
      if (res.statusCode === 400 || res.statusCode === 401) {
        // the refresh token is dead (expired, revoked, replayed): only a new login helps
        clearSession()
        err.code = 'login_required'
      }
      throw err
    })
  }

  /** A fresh session for a request whose access token `used` was refused; one refresh at a time. */
  function refreshAfter(used) {
    var current = readSession()
    if (!current) return Promise.reject(MinidoorError('not logged in', { code: 'login_required' }))
    if (current.accessToken !== used) return Promise.resolve(current) // someone refreshed (or logged in) meanwhile
    if (!refreshing) {
      refreshing = doRefresh(current).then(
        function (s) {
          refreshing = null
          return s
        },
        function (e) {
          refreshing = null
          throw e
        }
      )
    }
    return refreshing
  }

  function liveSession() {
    var session = readSession()
    if (!session) return Promise.reject(MinidoorError('not logged in', { code: 'login_required' }))
    if (session.expiresAt && session.refreshToken && Date.now() > session.expiresAt - cfg.refreshSkewMs) {
      return refreshAfter(session.accessToken)
    }
    return Promise.resolve(session)
  }

  /**
   * build(n)'s request with the bearer; on 401 the session is refreshed once and the request sent again.
   * Resolves with the response, whatever its status.
   */
  function authorized(build) {
    return liveSession().then(function (session) {
      function withBearer(s) {
        return send(function (n) {
          return Promise.resolve(build(n)).then(function (req) {
            var header = {}
            Object.keys(req.header || {}).forEach(function (k) {
              if (k.toLowerCase() !== 'authorization') header[k] = req.header[k]
            })
            header.Authorization = 'Bearer ' + s.accessToken
            return Object.assign({}, req, { header: header })
          })
        })
      }
      return withBearer(session).then(function (res) {
        if (res.statusCode !== 401) return res
        return refreshAfter(session.accessToken).then(withBearer)
      })
    })
  }

  // -- public API ------------------------------------------------------------------------------------------------
  var client = {
    /** Log in with wx.login(): resolves with the stored session. extra: { username, avatar } for a new user. */
    login: function (extra) {
      extra = extra || {}
      return tokenRequest(function () {
        return wxLoginCode().then(function (code) {
          return postForm(TOKEN_PATH, {
            tag: 'wechat_miniprogram',
            client_id: options.clientId,
            code: code,
            username: extra.username,
            avatar: extra.avatar,
          })
        })
      })
    },

    /**
     * Sign in with the phone number from <button open-type="getPhoneNumber" bindgetphonenumber="…">'s event.
     * By default the WeChat identity is linked in the same step (a wx.login() code as login_code), so login()
     * finds this account later; opts.linkWechat === false leaves it out.
     */
    loginWithPhone: function (event, opts) {
      opts = opts || {}
      var detail = (event && event.detail) || {}
      if (!detail.code) {
        var msg = detail.errMsg || 'no phone code in the event (getPhoneNumber needs base library 2.21.2+)'
        return Promise.reject(MinidoorError(msg, { code: 'phone_denied' }))
      }
      return tokenRequest(function () {
        var loginCode = opts.linkWechat === false ? Promise.resolve('') : wxLoginCode()
        return loginCode.then(function (code) {
          return postForm(TOKEN_PATH, {
            tag: 'wechat_miniprogram_phone',
            client_id: options.clientId,
            code: detail.code,
            login_code: code,
          })
        })
      })
    },

    /** Link this WeChat identity (a fresh wx.login() code) to the logged-in account. 409: it is someone else's. */
    linkWechat: function () {
      return authorized(function () {
        return wxLoginCode().then(function (code) {
          return postForm(LINK_PATH, { code: code })
        })
      })
        .then(expectOk)
        .then(function (res) {
          return res.data
        })
    },

    /**
     * wx.request with the bearer (for baseURL and opts.bearerOrigins; a relative url is under baseURL), one
     * refresh on 401, 503 retried with backoff, 429 after Retry-After. Resolves with { statusCode, data, header }
     * for a 2xx, rejects with a MinidoorError otherwise. req.auth === false sends no token.
     */
    request: function (req) {
      var url = resolveURL(req.url)
      var built = Object.assign({}, req, { url: url })
      delete built.auth
      var build = function () {
        return built
      }
      var bearer = req.auth !== false && trusted.indexOf(originOf(url)) >= 0
      return (bearer ? authorized(build) : send(build)).then(expectOk)
    },

    /** Revoke this login on the server (access and refresh token) and forget it here; never rejects. */
    logout: function () {
      if (!readSession()) return Promise.resolve({ revoked: false })
      return authorized(function () {
        return postForm(LOGOUT_PATH, {})
      }).then(
        function (res) {
          clearSession()
          return { revoked: res.statusCode >= 200 && res.statusCode < 300 }
        },
        function () {
          clearSession()
          return { revoked: false }
        }
      )
    },

    /** The stored session ({accessToken, refreshToken, tokenType, scope, expiresAt}) or null. */
    session: readSession,
    isLoggedIn: function () {
      return readSession() !== null
    },
  }
  return client
}

module.exports = {
  createClient: createClient,
  MinidoorError: MinidoorError,
  VERSION: VERSION,
}
