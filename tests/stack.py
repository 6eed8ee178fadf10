"""Running the real stack (``python -m services run``) as a subprocess, the way ``make run`` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from services.bench.stack import ONE_ADDRESS_LIMITS
from services.demo import READY_BANNER
from services.ports import free_ports
from services.processes import is_ready

ROOT = Path(__file__).resolve().parent.parent
#: Raises the per-WeChat-user login limit for test loads that reuse openids.
REUSED_WECHAT_USERS_LIMIT = {"RATE_LIMIT_PER_WECHAT_USER": "1000000"}
# Variables of the developer's shell that would steer the stack away from what a test asked for.
_STACK_VARS = ("DATABASE_URL", "REDIS_URL", "WECHAT_API_BASE", "STATE_DIR", "KEY_PREFIX", "INTERNAL_TOKEN")


class Stack:
    def __init__(self, state_dir: Path, env: Mapping[str, str]) -> None:
        self.state_dir = state_dir
        self.gateway_port, self.user_store_port, self.sandbox_port = free_ports(3)
        self.env = {k: v for k, v in os.environ.items() if k not in _STACK_VARS}
        # Every test request comes from 127.0.0.1, so the per-IP limits are raised; a test's own env may lower
        # them again (tests/test_rate_limits.py).
        self.env.update(ONE_ADDRESS_LIMITS)
        # Tests log one WeChat user in many times a minute (50 concurrent first logins of one person, say); the
        # per-user limit has tests of its own with a low value.
        self.env.update(REUSED_WECHAT_USERS_LIMIT)
        self.env.update(
            STATE_DIR=str(state_dir),
            GATEWAY_PORT=str(self.gateway_port),
            USER_STORE_PORT=str(self.user_store_port),
            WECHAT_SANDBOX_PORT=str(self.sandbox_port),
            LOG_FORMAT="json",
            LOG_LEVEL="info",
            **env,
        )
        self.log_path = state_dir / "stack.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.demo: dict[str, Any] = {}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def token_url(self) -> str:
        return self.gateway + "/api/login/oauth/access_token"

    def start(self, timeout: float = 90.0) -> Stack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        demo_file = self.state_dir / "demo.json"
        started = time.time()
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services", "run"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stack exited with {self.process.returncode}:\n{self.log_tail()}")
            # demo.json is rewritten on every start, after the seed; a restart must not rely on the old one. The
            # banner comes last, once every service answered: until then a user of `make run` has not been told to go.
            if (
                demo_file.exists()
                and demo_file.stat().st_mtime >= started - 1
                and READY_BANNER in self._log_since(log_start)
                and is_ready(self.gateway + "/readyz")
            ):
                self.demo = json.loads(demo_file.read_text())
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the stack was not ready within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def descendants(self) -> list[psutil.Process]:
        assert self.process is not None
        return list(psutil.Process(self.process.pid).children(recursive=True))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the runner and wait; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for child in self.descendants():
                child.kill()
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the stack did not stop within {timeout:.0f}s:\n{self.log_tail()}") from None

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def admin(self, *args: str, stdin: str = "") -> Any:
        """Run ``python -m services admin ...`` against this stack's database, ``stdin`` on its standard input (an
        AppSecret, say); returns its JSON output."""
        out = subprocess.run(
            [sys.executable, "-m", "services", "admin", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin.encode(),
            capture_output=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"admin {args} failed ({out.returncode}): {out.stderr.decode()}")
        return json.loads(out.stdout)
