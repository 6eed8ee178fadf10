"""The mini-program SDK (``clients/miniprogram/``) under Node's test runner, against a live stack started here: its
own tests (``node --test``) get the gateway and sandbox URLs and the demo application in the environment. The
phone-number and link tests run only once the gateway documents ``/api/link-wechat`` in its OpenAPI document.
Without ``node`` on the PATH every test here is skipped with one line saying so."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SUMMARY, _stack_fixture
from tests.stack import ROOT, Stack

SDK_DIR = ROOT / "clients" / "miniprogram"
CORE_TESTS = ("test/sdk.test.js", "test/live.test.js")
PHONE_LINK_TESTS = ("test/phone_link.test.js",)
LINK_PATH = "/api/link-wechat"
NODE = shutil.which("node")


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30)
    found = re.match(r"v(\d+)\.", out.stdout)
    return int(found.group(1)) if found else 0


if _node_major() < 20:  # one line for the whole module, not one per test
    pytest.skip("node 20+ is not installed: the mini-program SDK tests need it", allow_module_level=True)
pytestmark = pytest.mark.timeout(240)  # a stack's start plus node's run on a busy machine

# Two profile changes a minute (the live 429), and one WeChat attempt per login (one sandbox fault is one 503).
sdk_stack = _stack_fixture("sdk_stack", RATE_LIMIT_USER_UPDATES="2", WECHAT_MAX_ATTEMPTS="1")


def run_node(stack: Stack, files: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """``node --test`` on ``files`` (one at a time: sandbox faults are global), with the stack in the environment;
    returns the run and the TAP summary counts."""
    assert NODE is not None
    env = {
        "PATH": str(Path(NODE).parent),
        "MINIDOOR_BASE_URL": stack.gateway,
        "MINIDOOR_SANDBOX_URL": stack.sandbox,
        "MINIDOOR_CLIENT_ID": stack.demo["clientId"],
        "MINIDOOR_WECHAT_APPID": stack.demo["wechatAppId"],
    }
    cmd = [NODE, "--test", "--test-concurrency=1", "--test-reporter=tap", *files]
    out = subprocess.run(cmd, cwd=SDK_DIR, env=env, capture_output=True, text=True, timeout=180)
    found = re.findall(r"^# (tests|pass|fail|skipped|cancelled|duration_ms) ([\d.]+)$", out.stdout, re.M)
    counts = {k: int(float(v)) for k, v in found}
    return out, counts


def check(out: subprocess.CompletedProcess[str], counts: dict[str, int], request: pytest.FixtureRequest) -> None:
    failed = "\n".join(line for line in out.stdout.splitlines() if line.startswith("not ok") or "error:" in line)
    assert out.returncode == 0, f"node --test failed:\n{failed}\n{out.stdout[-6000:]}\n{out.stderr[-2000:]}"
    assert counts.get("fail") == 0 and counts.get("skipped") == 0 and counts.get("pass", 0) > 0, out.stdout[-3000:]
    line = f"miniprogram sdk ({request.node.name}): node tests={counts['tests']} pass={counts['pass']} fail=0"
    line += f" seconds={counts.get('duration_ms', 0) / 1000:.1f}"
    request.config.stash.setdefault(SUMMARY, []).append(line)


def test_core(sdk_stack: Stack, request: pytest.FixtureRequest) -> None:
    """login, request() with the bearer, one refresh on 401 (concurrent requests share it), a dead refresh token,
    logout, 503 retried with backoff and 429's Retry-After (live and scripted), storage: every node test passes,
    none skipped."""
    out, counts = run_node(sdk_stack, CORE_TESTS)
    check(out, counts, request)
    assert counts["pass"] >= 17, out.stdout[-3000:]


def test_phone_and_link(sdk_stack: Stack, request: pytest.FixtureRequest) -> None:
    """loginWithPhone and linkWechat against the live stack, once the gateway serves phone sign-in and linking."""
    with urllib.request.urlopen(sdk_stack.gateway + "/api/openapi.json", timeout=10) as resp:
        paths = json.load(resp)["paths"]
    if LINK_PATH not in paths:
        pytest.skip(f"the gateway does not document {LINK_PATH} yet: SDK phone sign-in and link tests not run")
    out, counts = run_node(sdk_stack, PHONE_LINK_TESTS)
    check(out, counts, request)
