"""Token validation: RFC 7662 introspection through the gateway and the user store under wrk, over a pool of live
tokens, with one revoked mid-window and the time until every gateway replica reads it inactive; and local
verification with ``shared.verifier`` beside bare PyJWT on the same token and key, on one core."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from typing import Any

import aiohttp
import jwt

from services.bench.cpu import StackCpu
from services.bench.harness import BenchContext, cpu_rates, measure, scenario
from services.bench.logins import LoginApp, live_tokens
from services.bench.results import ALGORITHMS, NOT_SUPPORTED, Revocation, Scenario, key
from services.bench.stack import BenchStack
from services.bench.wrk import Load, run_wrk, write_bodies
from shared.jwtcheck import REQUIRED_CLAIMS
from shared.verifier import ALLOWED_ALGORITHMS, Verifier, http_jwks

INTROSPECT_PATH = "/api/login/oauth/introspect"
REVOKE_PATH = "/api/login/oauth/revoke"
ACTIVE, INACTIVE = '"active":true', '"active":false'
#: How long a replica may take to read a revoked token inactive before the run gives up on it.
_REVOCATION_DEADLINE = 10.0


async def introspection_scenarios(ctx: BenchContext, app: LoginApp) -> list[Scenario]:
    stack = await ctx.stack()
    meter = StackCpu.of(stack)
    # One more per window: each window revokes one.
    pool = await live_tokens(stack, app, ctx.tokens + len(ctx.connections))
    authorization = aiohttp.BasicAuth(app.client_id, app.client_secret).encode()
    results = []
    for connections in ctx.connections:
        bodies = write_bodies(
            ctx.scratch / "introspection.txt", [f"token={token}&token_type_hint=access_token" for token in pool]
        )
        url = stack.gateway + INTROSPECT_PATH
        load = Load(url, bodies, connections, ctx.duration, ACTIVE, authorization=authorization, also=INACTIVE)
        victim, lag = pool[-1], list[tuple[float, dict[str, float]]]()

        async def revoke_midway(victim: str = victim, lag: list[tuple[float, dict[str, float]]] = lag) -> None:
            await asyncio.sleep(ctx.duration / 2)
            lag.append(await _revocation_lag(stack, app, victim))

        window = await measure(load, meter, warmup=ctx.warmup, during=revoke_midway)
        pool.remove(victim)
        ((answered, inactive_after),) = lag
        revocation = Revocation(
            answered_ms=answered, inactive_after_ms=inactive_after, inactive_answers=window.report.also
        )
        measured = scenario(
            window,
            ctx.unit_ms,
            key=key("minidoor", "introspection", connections=connections),
            system="minidoor",
            kind="introspection",
            label=f"minidoor: introspection over {ctx.tokens:,} live tokens",
            connections=connections,
            revocation=revocation,
            notes=["not counted: " + ", ".join(meter.unseen)] if meter.unseen else [],
        )
        profile_load = replace(load, seconds=ctx.profile_seconds)

        async def profile_window(profile_load: Load = profile_load) -> None:
            await asyncio.to_thread(run_wrk, profile_load)

        results.append(await ctx.explain(measured, meter.busiest, profile_window))
    return results


async def _revocation_lag(stack: BenchStack, app: LoginApp, token: str) -> tuple[float, dict[str, float]]:
    """Revoke ``token``, then ask every gateway replica until each reads it inactive: milliseconds per replica,
    counted from the moment the revocation was sent; and when the revocation itself was answered."""
    auth = aiohttp.BasicAuth(app.client_id, app.client_secret)
    form = {"token": token, "token_type_hint": "access_token"}
    async with aiohttp.ClientSession(auth=auth) as session:
        sent = time.perf_counter()
        async with session.post(stack.gateway + REVOKE_PATH, data=form) as resp:
            if resp.status != 200:
                raise RuntimeError(f"the revocation failed: {resp.status} {await resp.text()}")
        answered = round(1000 * (time.perf_counter() - sent), 2)

        async def inactive_at(base: str) -> float:
            while time.perf_counter() - sent < _REVOCATION_DEADLINE:
                async with session.post(base + INTROSPECT_PATH, data=form) as resp:
                    if INACTIVE in await resp.text():
                        return round(1000 * (time.perf_counter() - sent), 2)
                await asyncio.sleep(0.001)
            raise RuntimeError(f"{base} still reads a revoked token active after {_REVOCATION_DEADLINE:g}s")

        lags = await asyncio.gather(*(inactive_at(base) for base in stack.gateways))
    return answered, {f"gateway {i + 1}": lag for i, lag in enumerate(lags)}


async def verification_scenarios(ctx: BenchContext, apps: dict[str, LoginApp | None]) -> list[Scenario]:
    """Per algorithm: ``Verifier.verify`` (JWKS cached; the revocation check is its dict lookup) on one core, beside
    ``jwt.decode`` with the same key and the same checks, in turns and in CPU time (``cpu_rates``)."""
    stack = await ctx.stack()
    results = []
    for alg in ALGORITHMS:
        fields: dict[str, Any] = {
            "key": key("minidoor", "verification", alg=alg),
            "system": "minidoor",
            "kind": "verification",
            "label": f"minidoor: local verification ({alg}), shared.verifier, 1 core",
            "alg": alg,
            "baseline": "bare PyJWT (jwt.decode, same checks), 1 core",
        }
        app = apps[alg]
        if app is None or alg not in ALLOWED_ALGORITHMS:
            results.append(Scenario(**fields, status=NOT_SUPPORTED))
            continue
        rate, bare = await _verification_rates(stack, app, ctx.duration, ctx.warmup)
        per_call = 1000 / rate
        units = round(per_call / ctx.unit_ms, 2) if ctx.unit_ms else 0.0
        results.append(
            Scenario(
                **fields,
                rate=round(rate, 1),
                seconds=ctx.duration,
                cpu_ms={"verifier": round(per_call, 4)},
                units={"verifier": units},
                units_total=units,
                baseline_rate=round(bare, 1),
            )
        )

        async def profile_window(app: LoginApp = app) -> None:
            # The same turns, bare PyJWT's included: the profile shows both side by side.
            await _verification_rates(stack, app, ctx.profile_seconds, 0)

        results[-1] = await ctx.explain(results[-1], lambda _: {"verifier": os.getpid()}, profile_window)
    return results


async def _verification_rates(stack: BenchStack, app: LoginApp, seconds: float, warmup: float) -> tuple[float, float]:
    """``Verifier.verify`` and ``jwt.decode`` of one token of ``app`` (whatever its algorithm), with the key the
    token's ``kid`` names in the JWKS, measured in turns."""
    token = (await live_tokens(stack, app, 1))[0]
    header = jwt.get_unverified_header(token)
    jwks_url = stack.gateway + "/.well-known/jwks"
    async with aiohttp.ClientSession() as session:
        async with session.get(jwks_url) as resp:
            signing_key = jwt.PyJWKSet.from_dict(await resp.json())[header["kid"]].key
        verifier = Verifier(issuer=stack.gateway, audience=app.client_id, jwks=http_jwks(session, jwks_url))

        async def bare() -> None:
            jwt.decode(
                token,
                signing_key,
                algorithms=[header["alg"]],
                audience=app.client_id,
                issuer=stack.gateway,
                options={"require": list(REQUIRED_CLAIMS)},
            )

        async with verifier:
            await verifier.verify(token)
            await bare()
            rate, bare_rate = await cpu_rates([lambda: verifier.verify(token), bare], seconds, warmup)
    return rate, bare_rate
