"""Every Redis key, stream and consumer-group name, built from one prefix that tests override."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: The code-exchange jobs the gateway publishes and the auth workers consume.
        self.job_stream = f"{prefix}:stream:code-exchange"
        self.worker_group = "auth-workers"

    def reply_stream(self, gateway_id: str) -> str:
        """Each gateway process reads its replies from a stream of its own."""
        return f"{self.prefix}:replies:{gateway_id}"

    def worker_heartbeat(self, worker_name: str) -> str:
        return f"{self.prefix}:worker:{worker_name}:alive"
