"""Every Redis key, stream and consumer-group name, built from one prefix that tests override."""

from __future__ import annotations

import hashlib


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: The code-exchange jobs the gateway publishes and the auth workers consume.
        self.job_stream = f"{prefix}:stream:code-exchange"
        self.worker_group = "auth-workers"
        #: Sorted set of revoked token ids (jti), scored by the last ``exp`` of the row's tokens; pruned as they
        #: expire. Every verifier reloads it when it (re)subscribes to ``token_events``.
        self.revoked_tokens = f"{prefix}:tokens:revoked"
        #: Pub/sub channel of ``shared.messages.TokenEvent``: revocations and signing-key changes.
        self.token_events = f"{prefix}:tokens:events"
        #: Pub/sub channel on which every user store that broadcasts revocations says so, every
        #: ``revocations.HEARTBEAT_EVERY``: a verifier that hears none knows no revocation would reach it either.
        self.revocation_heartbeat = f"{prefix}:tokens:heartbeat"
        #: ``shared.messages.AuditEvent`` from processes without a database (rate-limit trips at the gateway or the
        #: worker, ``shared/audit.py``); the user stores drain it into ``audit_events`` as one consumer group.
        self.audit_stream = f"{prefix}:stream:audit"
        self.audit_group = "audit-writers"

    def reply_stream(self, gateway_id: str) -> str:
        """Each gateway process reads its replies from a stream of its own."""
        return f"{self.prefix}:replies:{gateway_id}"

    def worker_heartbeat(self, worker_name: str) -> str:
        return f"{self.prefix}:worker:{worker_name}:alive"

    def code_exchange(self, appid: str, client_id: str, code: str) -> str:
        """The exactly-once record of one wx.login() code (``auth_worker/exchange.py``); the code itself is hashed,
        so no usable code ever appears in a key name. The client is part of the key: one application's answer
        must never reach another that shares the WeChat appid."""
        digest = hashlib.sha256(code.encode()).hexdigest()
        return f"{self.prefix}:exchange:{appid}:{client_id}:{digest}"

    def wechat_token(self, appid: str) -> str:
        """The cluster's one WeChat access token of ``appid`` (``auth_worker/access_token.py``): a hash of the token
        (sealed), its expiry (ms since the epoch) and the fencing token of the refresh that wrote it."""
        return f"{self.prefix}:wechat-token:{appid}"

    def wechat_token_lock(self, appid: str) -> str:
        """Held (with a fencing token as its value) by the one process refreshing ``appid``'s access token."""
        return f"{self.prefix}:wechat-token:{appid}:lock"

    def wechat_token_fence(self, appid: str) -> str:
        """The counter fencing tokens of ``wechat_token_lock`` come from; only grows."""
        return f"{self.prefix}:wechat-token:{appid}:fence"

    def wechat_token_forced(self, appid: str) -> str:
        """Set for 30 s by a ``force_refresh`` of ``appid``'s token: at most one per 30 s across the cluster."""
        return f"{self.prefix}:wechat-token:{appid}:forced"

    def rate_limit(self, limit: str, key_hash: str) -> str:
        """One key's GCRA state under one limit (``shared/ratelimit.py``); the key is hashed by the caller."""
        return f"{self.prefix}:ratelimit:{limit}:{key_hash}"

    def rate_limit_audited(self, limit: str, key_hash: str) -> str:
        """Set for one period by a key's first refusal under a limit: later refusals in the period are not audited."""
        return f"{self.prefix}:ratelimit-audited:{limit}:{key_hash}"

    @staticmethod
    def delivered_answer(record: str) -> str:
        """Where a record's final answer moves once delivered, kept only while jobs published before the delivery
        may still wait for it (``auth_worker/exchange.py``): a token does not sit in Redis for the record's TTL."""
        return f"{record}:delivered-answer"
