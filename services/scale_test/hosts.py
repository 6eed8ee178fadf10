"""The scale test's hosts: one network namespace each, a veth pair from it to one bridge in the root namespace, and
addresses in ``10.213.0.0/24``, a private range only these namespaces use (the root namespace takes ``.1`` on the
bridge, so the test itself can seed the database and read every service's metrics).

A host's link is cut at the bridge's end of its veth pair (``ip link set mdst-w1 down``): the host keeps its address
and its sockets, and nothing it sends or is sent arrives, as when a machine stops answering without closing its
connections. A slow link is ``tc qdisc … tbf`` at a low rate on both ends of the pair (this kernel has no netem).

Every name starts with ``mdst-``: ``cleanup_stale`` removes what an earlier run left (a crash, a SIGKILL) before a
new one starts, and ``Network.destroy`` what this run made, on every way out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "mdst-"
BRIDGE = f"{PREFIX}br"
SUBNET = "10.213.0"
CONTROL_ADDRESS = f"{SUBNET}.1"
#: Host name -> last octet of its address.
HOSTS: dict[str, int] = {
    "db": 10,
    "lb": 11,
    "us1": 21,
    "us2": 22,
    "w1": 31,
    "w2": 32,
    "w3": 33,
    "gw1": 41,
    "gw2": 42,
    "wx": 50,
    "load": 60,
}


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def link(self) -> str:
        """The bridge's end of this host's veth pair, in the root namespace (at most 15 characters)."""
        return f"{PREFIX}{self.name}"

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *args]


def plan() -> dict[str, Host]:
    return {name: Host(name, f"{SUBNET}.{octet}") for name, octet in HOSTS.items()}


def cannot_run() -> str:
    """Why namespaces cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (iproute2)"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _our_namespaces() -> list[str]:
    listing = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(PREFIX)]


def _kill_namespace_processes(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Remove every ``mdst-`` namespace (killing what still runs in it), link and the bridge; return what it found."""
    found = _our_namespaces()
    for netns in found:
        _kill_namespace_processes(netns)
        _ip("netns", "del", netns, check=False)
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)
            found.append(name)
    return found


class Network:
    """The bridge and every host of ``plan()``; ``create`` makes them, ``destroy`` removes them."""

    def __init__(self) -> None:
        self.hosts = plan()

    def create(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{CONTROL_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("link", "set", host.link, "master", BRIDGE)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        cleanup_stale()

    def cut(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].link, "up")

    def slow(self, name: str, rate: str) -> None:
        """Both directions of ``name``'s link limited to ``rate`` (a token bucket; what overflows its queue is lost)."""
        for args in _tbf_commands(self.hosts[name], rate, "add"):
            subprocess.run(args, check=True, capture_output=True)

    def unslow(self, name: str) -> None:
        for args in _tbf_commands(self.hosts[name], "", "del"):
            subprocess.run(args, check=False, capture_output=True)


def _tbf_commands(host: Host, rate: str, action: str) -> list[list[str]]:
    shape = ["tbf", "rate", rate, "burst", "16kb", "latency", "300ms"] if action == "add" else []
    return [
        ["tc", "qdisc", action, "dev", host.link, "root", *shape],
        ["ip", "netns", "exec", host.netns, "tc", "qdisc", action, "dev", "eth0", "root", *shape],
    ]
