"""``shared.logs``: what production log lines may and may not contain."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.stack import ROOT

_PROGRAM = """
import structlog
from shared.logs import configure_logging
configure_logging("info", "json", service="test")
secret = "internal-token-0123456789"
try:
    raise RuntimeError("boom")
except RuntimeError:
    structlog.get_logger().exception("failed")
"""


def test_tracebacks_carry_no_local_variables():
    """An exception logged in JSON mode shows where it failed, never the values of local variables (secrets)."""
    out = subprocess.run([sys.executable, "-c", _PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=30)
    line = out.stderr.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "failed" and event["service"] == "test"
    assert event["exception"][0]["exc_value"] == "boom"
    assert "internal-token" not in out.stderr
