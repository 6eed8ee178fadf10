"""The stack a benchmark runs against: ``python -m services run`` in a temporary state directory on free ports,
with embedded PostgreSQL and Redis unless ``DATABASE_URL`` / ``REDIS_URL`` are set."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from services.ports import free_ports
from services.processes import is_ready

_START_TIMEOUT = 120.0


#: Benchmarks, load tests and test stacks send everything from 127.0.0.1: the per-IP rate limits (README "Rate
#: limits") would refuse them at once, so they are raised. The per-client, per-code and per-user ones stay.
ONE_ADDRESS_LIMITS = {
    "RATE_LIMIT_TOKEN_PER_IP": "10000000",
    "RATE_LIMIT_AUTH_FAILURES_PER_IP": "10000000",
    "RATE_LIMIT_BAD_TOKENS_PER_IP": "10000000",
}
ONE_ADDRESS_NOTE = "note: per-IP rate limits raised (RATE_LIMIT_*_PER_IP=10000000): all traffic comes from one address"


class BenchStack:
    """Started by ``start()``, stopped (with everything it started) by ``stop()``."""

    def __init__(self, **env: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="minidoor-bench-")
        self.state_dir = Path(self._tmp.name)
        names = ("GATEWAY_PORT", "USER_STORE_PORT", "WECHAT_SANDBOX_PORT")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        self.sandbox = f"http://127.0.0.1:{ports['WECHAT_SANDBOX_PORT']}"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("STATE_DIR", "KEY_PREFIX", "WECHAT_API_BASE")},
            **{name: str(port) for name, port in ports.items()},
            "STATE_DIR": str(self.state_dir),
            "KEY_PREFIX": f"bench-{os.getpid()}",
            "LOG_FORMAT": "json",
            **ONE_ADDRESS_LIMITS,
            **env,
        }
        self.demo: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def gateways(self) -> list[str]:
        """Every gateway replica's base URL (the runner starts one)."""
        return [self.gateway]

    @property
    def pid(self) -> int:
        """The runner's process id; the services and embedded Redis are its children."""
        if self._process is None:
            raise RuntimeError("the benchmark stack is not started")
        return self._process.pid

    def start(self) -> BenchStack:
        print(ONE_ADDRESS_NOTE, file=sys.stderr)
        log = (self.state_dir / "stack.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services", "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        demo_file = self.state_dir / "demo.json"
        while not (demo_file.exists() and is_ready(self.gateway + "/readyz")):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the benchmark stack did not start; see {self.state_dir / 'stack.log'}")
            time.sleep(0.2)
        self.demo = json.loads(demo_file.read_text())
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._tmp.cleanup()

    def register_sandbox_app(self, appid: str, secret: str) -> None:
        """Teach the running sandbox a mini-program's AppSecret (the runner gave it the demo's at start)."""
        body = json.dumps({"appid": appid, "secret": secret}).encode()
        request = urllib.request.Request(
            self.sandbox + "/sandbox/apps", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def signing_alg_option() -> str | None:
    """The admin CLI's option that chooses an application's signing algorithm (such as ``--signing-alg``), or None
    while the product has none and signs everything RS256."""
    help_text = subprocess.run(
        [sys.executable, "-m", "services", "admin", "create-app", "--help"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"--[a-z-]*alg[a-z-]*", help_text)
    return found.group(0) if found else None
