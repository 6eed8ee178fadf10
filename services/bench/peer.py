"""The peer minidoor is measured beside: panva's ``oidc-provider`` 9 (``peer/``, pinned by its lockfile, installed
with ``npm ci`` by ``make bench``) in one Node process, under the same wrk and connection counts. It serves JWT
client-credentials grants signed RS256 and ES256, and introspection of opaque tokens (it does not introspect JWTs).
A bare Node ``http`` endpoint (``peer/unit.js``) is the peer's own unit, counted in minidoor's unit like the rest.
Node runs as it ships (``UV_THREADPOOL_SIZE`` unset: 4 threads sign beside the event loop), and its CPU is every
thread's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.bench.cpu import Processes
from services.bench.harness import BenchContext, measure, scenario
from services.bench.results import ALGORITHMS, Scenario, key
from services.bench.servers import servers
from services.bench.wrk import Load, write_bodies
from services.ports import free_port

PEER_DIR = Path(__file__).resolve().parent / "peer"
PEER = "peer"
_CLIENT_ID = "bench"
_ACCESS_TOKEN = '"access_token":"'
_ACTIVE = '"active":true'


@dataclass(frozen=True, slots=True)
class PeerServer:
    base: str
    pid: int
    authorization: str


@contextmanager
def peer_server(script: str = "server.js") -> Iterator[PeerServer]:
    """``peer/<script>`` on a free port, listening (production mode: no development helpers, no dev warnings)."""
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(f"the peer is not installed: run `npm ci` in {PEER_DIR} (make bench does)")
    port, secret = free_port(), secrets.token_urlsafe(24)
    env = {**os.environ, "NODE_ENV": "production"}
    with servers([["node", script, str(port), _CLIENT_ID, secret]], env=env, cwd=PEER_DIR) as (pid,):
        basic = base64.b64encode(f"{_CLIENT_ID}:{secret}".encode()).decode()
        yield PeerServer(f"http://127.0.0.1:{port}", pid, "Basic " + basic)


def grant_body(alg: str) -> str:
    return f"grant_type=client_credentials&scope=api&resource=urn%3Abench%3A{alg.lower()}"


async def peer_scenarios(ctx: BenchContext) -> list[Scenario]:
    """The peer's unit, its JWT grants with each algorithm and its introspections, at every connection count."""
    results = [await _node_unit(ctx)]
    with peer_server() as peer:
        meter = Processes({PEER: [peer.pid]})
        for alg in ALGORITHMS:
            bodies = write_bodies(ctx.scratch / f"peer-grant-{alg}.txt", [grant_body(alg)])
            results += await _each_connection_count(
                ctx, peer, meter, "/token", bodies, _ACCESS_TOKEN, "grant",
                f"peer: client-credentials grant, {alg} JWT", alg=alg,
            )  # fmt: skip
        tokens = await _opaque_tokens(peer, ctx.tokens)
        bodies = write_bodies(ctx.scratch / "peer-introspection.txt", [f"token={token}" for token in tokens])
        results += await _each_connection_count(
            ctx, peer, meter, "/token/introspection", bodies, _ACTIVE, "introspection",
            f"peer: introspection over {len(tokens):,} live opaque tokens",
        )  # fmt: skip
    return results


async def _each_connection_count(
    ctx: BenchContext,
    peer: PeerServer,
    meter: Processes,
    path: str,
    bodies: Path,
    expect: str,
    kind: str,
    label: str,
    alg: str = "",
) -> list[Scenario]:
    """One scenario per connection count of ``ctx``: ``bodies`` POSTed to the peer's ``path`` under wrk."""
    results = []
    for connections in ctx.connections:
        load = Load(peer.base + path, bodies, connections, ctx.duration, expect, authorization=peer.authorization)
        window = await measure(load, meter, warmup=ctx.warmup)
        results.append(
            scenario(
                window,
                ctx.unit_ms,
                key=key(PEER, kind, alg=alg, connections=connections),
                system=PEER,
                kind=kind,
                label=label,
                connections=connections,
                alg=alg,
            )
        )
    return results


async def _node_unit(ctx: BenchContext) -> Scenario:
    bodies = write_bodies(ctx.scratch / "peer-unit.txt", ["token=unit"])
    with peer_server("unit.js") as unit:
        load = Load(unit.base + "/", bodies, ctx.unit_connections, ctx.duration, _ACTIVE)
        window = await measure(load, Processes({PEER: [unit.pid]}), warmup=ctx.warmup)
    return scenario(
        window,
        ctx.unit_ms,
        key=key(PEER, "unit"),
        system=PEER,
        kind="unit",
        label="peer's unit: bare Node http JSON endpoint, 1 process",
        connections=ctx.unit_connections,
    )


async def _opaque_tokens(peer: PeerServer, count: int) -> list[str]:
    """``count`` live opaque access tokens of the peer (the introspection pool)."""
    tokens: list[str] = []
    headers = {"Authorization": peer.authorization, "Content-Type": "application/x-www-form-urlencoded"}

    async def mint(session: aiohttp.ClientSession) -> None:
        while len(tokens) < count:
            async with session.post(peer.base + "/token", data=grant_body("opaque"), headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"the peer minted no token: {resp.status} {body}")
            tokens.append(body["access_token"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(mint(session) for _ in range(16)))
    return tokens[:count]


def peer_versions() -> dict[str, str]:
    """Node's version and the installed oidc-provider's (from its package.json)."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    package = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    provider = json.loads(package.read_text())["version"] if package.exists() else "not installed"
    return {"node": node.removeprefix("v"), "oidc-provider": provider}
