"""Auth worker: exchanges wx.login() codes from the Redis stream with WeChat and replies to the gateway."""
