"""Mini-program logins through the real path (gateway -> Redis stream -> auth workers -> WeChat sandbox -> user store
-> PostgreSQL -> reply) under wrk, at each connection count, with 25 % and with 100 % new users, for each signing
algorithm the product supports; and the applications and live tokens the other groups log in with.

``wx.login()`` codes are minted by the sandbox before each window and fed to wrk as a file of login bodies, each sent
once, so minting costs the window nothing. The warm-up logs in new users; they are the window's returning users.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import msgspec

from services.bench.cpu import StackCpu
from services.bench.harness import AUTH_WORKERS, BenchContext, measure, scenario, warm_up
from services.bench.results import ALGORITHMS, NEW_USER_SHARES, NOT_SUPPORTED, Scenario, key
from services.bench.stack import BenchStack, signing_alg_option
from services.bench.wrk import Load, run_wrk, threads_for, write_bodies
from shared import jwtcheck

TOKEN_PATH = "/api/login/oauth/access_token"
ACCESS_TOKEN = '"access_token":"'
#: Logins of one returning user in a window: under the workers' RATE_LIMIT_PER_WECHAT_USER (20 a minute) with the
#: warm-up's, and each window has users of its own.
RETURNING_USES = 10
#: Codes minted over the expected logins: room for a faster window before the pool runs dry.
HEADROOM = 2.0
#: Logins per second assumed before any window has been measured.
_FIRST_GUESS = 300.0
_MINTERS = 64
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoginApp:
    """An application with a mini-program provider the sandbox knows."""

    alg: str
    client_id: str
    client_secret: str
    appid: str


async def login_apps(stack: BenchStack) -> dict[str, LoginApp | None]:
    """An application per algorithm, None for those the product cannot sign with yet. Without a signing-algorithm
    option in the admin CLI, RS256 is the demo application (the only algorithm there is)."""
    option = await asyncio.to_thread(signing_alg_option)
    demo = stack.demo
    if option is None:
        rs256 = LoginApp("RS256", demo["clientId"], demo["clientSecret"], demo["wechatAppId"])
        return {alg: rs256 if alg == "RS256" else None for alg in ALGORITHMS}
    apps: dict[str, LoginApp | None] = {}
    for alg in ALGORITHMS:
        app = await asyncio.to_thread(_create_app, stack, option, alg)
        # The option may exist and still not sign with this algorithm: the token says what it is.
        token = (await live_tokens(stack, app, 1))[0]
        apps[alg] = app if jwtcheck.parse(token).alg == alg else None
    return apps


def _create_app(stack: BenchStack, option: str, alg: str) -> LoginApp:
    # Unique: a DATABASE_URL outlives the run, and its applications with it.
    name = f"bench-{alg.lower()}-{secrets.token_hex(4)}"
    admin = [sys.executable, "-m", "services", "admin"]
    created = subprocess.run(
        [*admin, "create-app", "--org", stack.demo["organization"], "--name", name, option, alg],
        env=stack.env,
        capture_output=True,
        check=True,
    )
    app = msgspec.json.decode(created.stdout)
    appid, secret = "wx" + secrets.token_hex(8), secrets.token_hex(16)
    subprocess.run(
        [*admin, "attach-provider", "--app", name, "--appid", appid],
        env={**stack.env, "WECHAT_APP_SECRET": secret},
        capture_output=True,
        check=True,
    )
    stack.register_sandbox_app(appid, secret)
    return LoginApp(alg, app["clientId"], app["clientSecret"], appid)


async def login_scenarios(ctx: BenchContext, apps: dict[str, LoginApp | None]) -> list[Scenario]:
    stack = await ctx.stack()
    meter = StackCpu.of(stack)
    results: list[Scenario] = []
    guess = _FIRST_GUESS
    for alg in ALGORITHMS:
        for connections in ctx.connections:
            for share in NEW_USER_SHARES:
                fields: dict[str, Any] = {
                    "key": key("minidoor", "login", alg=alg, connections=connections, new_users=share),
                    "system": "minidoor",
                    "kind": "login",
                    "label": f"minidoor: login, {alg} access token, {share:.0%} new users",
                    "alg": alg,
                    "connections": connections,
                }
                app = apps[alg]
                if app is None:
                    results.append(Scenario(**fields, new_users=share, status=NOT_SUPPORTED))
                    continue
                result = await _login_window(ctx, stack, meter, app, connections, share, guess, fields)
                # Answers, not successes: each takes a code from the pool.
                guess = max(result.requests / max(result.seconds, 0.1), _FIRST_GUESS / 3)
                results.append(result)
    return results


async def _login_window(
    ctx: BenchContext,
    stack: BenchStack,
    meter: StackCpu,
    app: LoginApp,
    connections: int,
    new_share: float,
    guess: float,
    fields: dict[str, Any],
) -> Scenario:
    url = stack.gateway + TOKEN_PATH
    size = math.ceil(guess * ctx.warmup * HEADROOM) + 2 * connections
    newcomers = [_new_openid() for _ in range(size)]
    codes = await mint_codes(stack, app, newcomers)
    bodies = write_bodies(ctx.scratch / "login-warmup.txt", [login_body(app, code) for code in codes])
    load = Load(url, bodies, connections, ctx.warmup, ACCESS_TOKEN, once=True)
    warm = await warm_up(load, meter)
    returning = _answered(newcomers, warm.sent_by_thread, connections)
    # Every answer takes a code, a fast refusal too; a warm-up that ran dry measured less than the stack can do.
    expected = max(warm.requests / warm.seconds * (2 if warm.dry_threads else 1), guess)
    openids, new = _mix(returning, math.ceil(expected * ctx.duration * HEADROOM) + 2 * connections, new_share)
    codes = await mint_codes(stack, app, openids)
    write_bodies(bodies, [login_body(app, code) for code in codes])
    window = await measure(replace(load, seconds=ctx.duration), meter)
    # The share among the logins sent, not the pool: its tail, past the returning users' uses, is all new.
    sent_new = _answered(new, window.report.sent_by_thread, connections) or new
    notes = [f"auth workers: {AUTH_WORKERS}"]
    if meter.unseen:
        notes.append("not counted: " + ", ".join(meter.unseen))
    if window.report.dry_threads:
        notes.append("the code pool ran dry before the window ended: the rate is a lower bound")
    measured = scenario(window, ctx.unit_ms, new_users=round(sum(sent_new) / len(sent_new), 3), notes=notes, **fields)
    # The window's new users are the profile window's returning ones: the warm-up's have had their share of logins.
    sent = _answered(list(zip(openids, new, strict=True)), window.report.sent_by_thread, connections)
    again = [openid for openid, is_new in sent if is_new] or returning

    async def profile_window() -> None:
        size = math.ceil(max(measured.rate, guess) * ctx.profile_seconds * HEADROOM) + 2 * connections
        codes = await mint_codes(stack, app, _mix(again, size, new_share)[0])
        write_bodies(bodies, [login_body(app, code) for code in codes])
        await asyncio.to_thread(run_wrk, replace(load, seconds=ctx.profile_seconds))

    return await ctx.explain(measured, meter.busiest, profile_window)


def _answered(lines: list[T], sent_by_thread: list[int], connections: int) -> list[T]:
    """The lines of a once-only pool that were answered: thread ``t`` of ``n`` sent the first ``sent`` of lines
    ``t, t + n, ...``; the last of them per connection may still have been in flight when wrk stopped, and are
    left out."""
    threads = threads_for(connections)
    in_flight = math.ceil(connections / threads)
    done: list[T] = []
    for thread, sent in enumerate(sent_by_thread):
        done += lines[thread::threads][: max(sent - in_flight, 0)]
    return done


def _mix(returning: list[str], size: int, new_share: float) -> tuple[list[str], list[bool]]:
    """``size`` openids, ``1 - new_share`` of them taken in turn from ``returning`` (each at most
    ``RETURNING_USES`` times), the rest new; and which of them are new."""
    openids: list[str] = []
    new: list[bool] = []
    reused = 0
    for i in range(size):
        returns = (i + 1) * (1 - new_share) >= reused + 1 and reused < RETURNING_USES * len(returning)
        openids.append(returning[reused % len(returning)] if returns else _new_openid())
        new.append(not returns)
        reused += returns
    return openids, new


def login_body(app: LoginApp, code: str) -> str:
    return f"tag=wechat_miniprogram&client_id={app.client_id}&code={code}"


async def mint_codes(stack: BenchStack, app: LoginApp, openids: list[str]) -> list[str]:
    """One sandbox ``wx.login()`` code per openid, in order."""
    codes = [""] * len(openids)
    pending = iter(enumerate(openids))

    async def minter(session: aiohttp.ClientSession) -> None:
        for i, openid in pending:
            wx = {"appid": app.appid, "openid": openid}
            async with session.post(stack.sandbox + "/sandbox/login", json=wx) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the sandbox minted no code: {resp.status} {await resp.text()}")
                codes[i] = (await resp.json())["code"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_MINTERS)) as session:
        await asyncio.gather(*(minter(session) for _ in range(_MINTERS)))
    return codes


async def live_tokens(stack: BenchStack, app: LoginApp, count: int) -> list[str]:
    """``count`` access tokens of new users of ``app``, through the real mini-program login."""
    codes = iter(await mint_codes(stack, app, [_new_openid() for _ in range(count)]))
    tokens: list[str] = []

    async def client(session: aiohttp.ClientSession) -> None:
        for code in codes:
            form = {"tag": "wechat_miniprogram", "client_id": app.client_id, "code": code}
            async with session.post(stack.gateway + TOKEN_PATH, data=form) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"the benchmark login failed: {resp.status} {body}")
            tokens.append(str(body["access_token"]))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(min(32, count))))
    return tokens


def _new_openid() -> str:
    """A user nobody has seen, even on a database that outlives the run."""
    return "o-bench-" + secrets.token_urlsafe(15)
