"""``make run`` on a fresh machine: embedded PostgreSQL, Redis and WeChat sandbox, a printed demo, a clean stop,
and data that survives a restart."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from services import ports as ports_module
from services.ports import free_ports
from tests.stack import Stack


def _post(url: str, data: bytes, content_type: str) -> dict[str, Any]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(req, timeout=15) as resp:
        return dict(json.loads(resp.read()))


def demo_login(stack: Stack, openid: str) -> dict[str, Any]:
    """What the banner's curl pair does: a code from the sandbox, then the token endpoint."""
    appid = stack.demo["wechatAppId"]
    wx = _post(
        stack.sandbox + "/sandbox/login", json.dumps({"appid": appid, "openid": openid}).encode(), "application/json"
    )
    form = f"tag=wechat_miniprogram&client_id={stack.demo['clientId']}&code={wx['code']}".encode()
    return _post(stack.token_url, form, "application/x-www-form-urlencoded")


def _sub(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


@pytest.fixture
def embedded_stack(open_tmp: Callable[[str], Path]) -> Iterator[Stack]:
    """A stack given no DATABASE_URL/REDIS_URL/WECHAT_API_BASE: everything embedded under its state dir."""
    stack = Stack(open_tmp("runner") / "state", {"AUTH_WORKERS": "1"})
    yield stack
    if stack.process is not None and stack.process.poll() is None:  # a failed test leaves nothing running
        stack.stop()


def loose_modes(state_dir: Path) -> list[str]:
    """What under ``state_dir`` others could read: the directory beyond 0700 (0711 for root's embedded
    PostgreSQL), any directory beyond 0700 or file beyond 0600 (PostgreSQL's own data dir may allow its group)."""
    loose = []
    top = stat.S_IMODE(state_dir.stat().st_mode)
    if top != (0o711 if os.geteuid() == 0 else 0o700):
        loose.append(f"{state_dir} {top:o}")
    for path in state_dir.rglob("*"):
        if path.is_socket() or path.is_symlink() or path == state_dir / "stack.log":  # the tests' own output
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        allowed = 0o700 if path.is_dir() else 0o600
        if path.is_relative_to(state_dir / "postgres"):
            allowed |= (allowed >> 3) & 0o050
        if mode & ~allowed:
            loose.append(f"{path} {mode:o}")
    return loose


class TestEmbeddedRun:
    def test_fresh_start_login_stop_restart(self, embedded_stack: Stack) -> None:
        """The printed demo logs in; SIGTERM exits 0 with no process left; a restart keeps users and the demo."""
        stack = embedded_stack.start()
        demo = dict(stack.demo)
        assert set(demo) >= {"gateway", "sandbox", "organization", "application", "clientId", "clientSecret",
                             "wechatAppId"}  # fmt: skip
        first = demo_login(stack, "o-runner")
        assert first["token_type"] == "Bearer"
        assert "curl -s -X POST" in stack.log_tail(20_000)

        children = stack.descendants()
        assert len(children) >= 4  # sandbox, user store, a worker, the gateway (plus redis-server)
        assert stack.stop() == 0
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [p.pid for p in alive]
        # The master key, demo.json and Redis's append-only files (session keys, tokens) are the owner's alone.
        assert loose_modes(stack.state_dir) == [], "\n".join(loose_modes(stack.state_dir))

        stack.start()
        assert stack.demo["clientId"] == demo["clientId"]
        assert stack.demo["clientSecret"] == demo["clientSecret"]
        again = demo_login(stack, "o-runner")
        assert _sub(again["access_token"]) == _sub(first["access_token"])
        assert stack.stop() == 0

    def test_port_taken_is_a_clear_error(self, embedded_stack: Stack) -> None:
        """A taken port stops the start with a message naming the variable to change, and exit code 1."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", embedded_stack.gateway_port))
            sock.listen()
            with pytest.raises(RuntimeError, match="exited with 1"):
                embedded_stack.start()
        assert "set GATEWAY_PORT to a free port" in embedded_stack.log_tail()


class TestPorts:
    def test_ports_are_free_distinct_and_outside_the_ephemeral_range(self):
        """A stack's ports come from below the kernel's ephemeral range, where no client connection takes its source
        port between the choice and the bind (what made a stack fail with "address already in use")."""
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        ports = free_ports(8)
        assert len(set(ports)) == 8 and all(port < low for port in ports)
        with contextlib.ExitStack() as held:
            for port in ports:
                held.enter_context(socket.socket()).bind(("127.0.0.1", port))

    def test_a_taken_port_is_never_chosen(self, monkeypatch):
        """With a listener on the only port there is to choose, the choice fails instead of handing it out."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            monkeypatch.setattr(ports_module, "_listener_range", lambda: (port, port))
            with pytest.raises(RuntimeError, match="no 1 free ports"):
                free_ports(1)
