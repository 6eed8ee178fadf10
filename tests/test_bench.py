"""``make bench``: the login benchmark, end to end on a tiny window against an embedded stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.stack import ROOT

# The benchmark must find every process of its stack, so nothing may point it at external servers.
_EXTERNAL = ("DATABASE_URL", "REDIS_URL", "WECHAT_API_BASE", "STATE_DIR", "KEY_PREFIX")


class TestLoginBenchmark:
    def test_tiny_window(self) -> None:
        """Logins per second beside the baseline's rate, and the stack's CPU-ms per login split over gateway,
        auth workers, user store, embedded PostgreSQL and Redis, printed as JSON."""
        env = {k: v for k, v in os.environ.items() if k not in _EXTERNAL}
        args = ["login", "--duration", "1", "--warmup", "0.2", "--concurrency", "4", "--json"]
        out = subprocess.run(
            [sys.executable, "-m", "services.bench", *args], cwd=ROOT, env=env, capture_output=True, timeout=240
        )
        assert out.returncode == 0, out.stderr.decode(errors="replace")[-4000:]

        rate, cpu = json.loads(out.stdout)
        assert rate["name"] == "login over HTTP"
        # Only what holds on a loaded machine too: no rates compared, and a short window may run its pool dry.
        assert rate["rate"] > 0 and rate["baselineRate"] > 0
        assert cpu["unit"] == "ms" and "note" not in cpu
        parts = cpu["parts"]
        assert list(parts) == ["gateway", "auth workers", "user store", "postgres", "redis"]
        assert cpu["rate"] > 0 and abs(sum(parts.values()) - cpu["rate"]) < 0.01
        assert cpu["baselineRate"] > 0
