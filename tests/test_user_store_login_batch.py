"""A worker's logins at the user store (``auth_worker/user_store_logins.py``): those its jobs reach at once go as one
request, each with its own outcome; a lone login, and every login sent to a user store without the batch, go one
by one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import jwt
import msgspec
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from auth_worker.user_store_logins import UserStoreLogins
from shared.config import Secret, UserStoreConfig
from shared.errors import Unauthorized
from shared.messages import LoginResult, WechatLogin
from shared.user_store_client import UserStoreClient
from tests.conftest import SUMMARY
from user_store import admin, db
from user_store.app import create_app
from user_store.appkeys import METRICS

TOKEN = "t" * 32
APPID = "wx-batch-tests"
BATCH_ROUTE = "/internal/logins/wechat-miniprogram/batch"


def requests(store: TestServer, route: str) -> float:
    return (
        store.app[METRICS].registry.get_sample_value(
            "minidoor_user_store_requests_total", {"route": route, "status": "200"}
        )
        or 0.0
    )


async def test_concurrent_logins_share_one_request(pg_url):
    """Three logins at once: one request to the user store; two users get tokens, the unknown client alone gets
    its 401, each with its own request id in the user store's lines."""
    store = TestServer(create_app(UserStoreConfig(internal_token=Secret(TOKEN), database_url=Secret(pg_url))))
    async with store, aiohttp.ClientSession() as http:
        conn = await asyncpg.connect(pg_url)
        try:
            await admin.create_organization(conn, "acme")
            app = await admin.create_application(conn, "acme", "shop")
            await admin.attach_miniprogram_provider(conn, "shop", APPID, "secret")
        finally:
            await conn.close()
        logins = UserStoreLogins(UserStoreClient(http, str(store.make_url("")), Secret(TOKEN)))

        def login(client_id: str, openid: str, request_id: str) -> Awaitable[LoginResult]:
            wechat = WechatLogin(client_id=client_id, appid=APPID, openid=openid, session_key="sk")
            return logins.login(wechat, request_id=request_id, client_ip="10.0.0.1", answer_by=time.time() + 5)

        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
            first, second, unknown = await asyncio.gather(
                login(app.client_id, "o-1", "r-1"),
                login(app.client_id, "o-2", "r-2"),
                login("no-such-client", "o-3", "r-3"),
                return_exceptions=True,
            )
        outcomes = {line["request_id"]: line["outcome"] for line in lines if line["event"] == "login"}
        assert outcomes == {"r-1": "ok", "r-2": "ok", "r-3": "invalid_client"}
        assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
        assert first.created and second.created and first.user_id != second.user_id
        assert isinstance(unknown, Unauthorized) and unknown.error == "invalid_client"
        assert requests(store, BATCH_ROUTE) == 1
        assert requests(store, "/internal/logins/wechat-miniprogram") == 0

        alone = await login(app.client_id, "o-1", "r-4")
        assert not isinstance(alone, BaseException) and alone.user_id == first.user_id and not alone.created
        assert requests(store, "/internal/logins/wechat-miniprogram") == 1


async def test_a_store_without_the_batch_gets_logins_one_by_one():
    """A user store that answers the batch 404 (an older one, mid-upgrade) still logs every login in, one request
    each."""
    seen: list[str] = []
    count = 2

    async def single(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["openid"])
        token = {"access_token": "a", "id_token": "i", "refresh_token": "r", "token_type": "Bearer", "expires_in": 1,
                 "scope": "openid"}  # fmt: skip
        return web.json_response({"user_id": body["openid"], "user_name": "n", "created": False, "token": token})

    async def no_batch(request: web.Request) -> web.Response:
        return web.json_response({"error": "not_found", "error_description": "no such endpoint"}, status=404)

    old = web.Application()
    old.router.add_post("/internal/logins/wechat-miniprogram", single)
    old.router.add_post(BATCH_ROUTE, no_batch)
    async with TestServer(old) as store, aiohttp.ClientSession() as http:
        logins = UserStoreLogins(UserStoreClient(http, str(store.make_url("")), Secret(TOKEN)))
        results = await asyncio.gather(
            *(
                logins.login(
                    WechatLogin(client_id="c", appid=APPID, openid=f"o-{i}", session_key="sk"),
                    request_id=f"r-{i}",
                    client_ip="",
                    answer_by=time.time() + 5,
                )
                for i in range(count)
            )
        )
    assert [r.user_id for r in results] == [f"o-{i}" for i in range(count)]
    assert sorted(seen) == [f"o-{i}" for i in range(count)]


# --- the user store's side: a batch is one transaction --------------------------------------------------------------

CLOSED_APPID = "wx-batch-closed"
OTHER_APPID = "wx-batch-other"


@pytest.fixture(name="statements")
def _statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every statement the user store's pooled connections run from now on, as (connection, SQL), in order."""
    seen: list[tuple[int, str]] = []
    init = db._init_connection

    async def counting_init(conn: asyncpg.Connection) -> None:
        await init(conn)
        key = id(conn)
        conn.add_query_logger(lambda record: seen.append((key, record.query.strip())))

    monkeypatch.setattr(db, "_init_connection", counting_init)
    return seen


@dataclass(frozen=True)
class Store:
    server: TestServer
    #: The client_ids of "shop" and "closed".
    shop: str
    closed: str


@pytest.fixture(name="store")
async def _store(pg_url: str, statements: list[tuple[int, str]]) -> AsyncIterator[Store]:
    """A user store, and organization "acme" with application "shop" (mini programs ``APPID`` and ``OTHER_APPID``)
    and "closed" (``CLOSED_APPID``, sign-up disabled)."""
    server = TestServer(create_app(UserStoreConfig(internal_token=Secret(TOKEN), database_url=Secret(pg_url))))
    async with server:
        conn = await asyncpg.connect(pg_url)
        try:
            await admin.create_organization(conn, "acme")
            shop = await admin.create_application(conn, "acme", "shop")
            await admin.attach_miniprogram_provider(conn, "shop", APPID, "secret")
            await admin.attach_miniprogram_provider(conn, "shop", OTHER_APPID, "secret")
            closed = await admin.create_application(conn, "acme", "closed", enable_sign_up=False)
            await admin.attach_miniprogram_provider(conn, "closed", CLOSED_APPID, "secret")
        finally:
            await conn.close()
        yield Store(server, shop.client_id, closed.client_id)


@pytest.fixture(name="db_conn")
async def _db_conn(pg_url: str, store: Store) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


def shop_login(store: Store, openid: str, **fields: str) -> dict[str, str]:
    return {"client_id": store.shop, "appid": APPID, "openid": openid, "session_key": f"sk-{openid}", **fields}


async def post_batch(
    store: Store, logins: list[dict[str, str]], request_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """The outcomes of one batch request (which must answer 200), in order."""
    body = {"logins": logins, "request_ids": request_ids or [f"r-{i}" for i in range(len(logins))]}
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(store.server.make_url(BATCH_ROUTE), json=body, headers=headers) as resp:
            text = await resp.text()
            assert resp.status == 200, text
    outcomes: list[dict[str, Any]] = msgspec.json.decode(text)["outcomes"]
    assert len(outcomes) == len(logins)
    return outcomes


def results(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert [o["status"] for o in outcomes] == [200] * len(outcomes), outcomes
    return [o["result"] for o in outcomes]


def claims(result: dict[str, Any]) -> dict[str, Any]:
    return jwt.decode(result["token"]["access_token"], options={"verify_signature": False})


#: What asyncpg's type introspection runs (with JIT off around it).
_INTROSPECTION = ("typeinfo_tree", "current_setting('jit')", "set_config('jit'")


async def login_transactions(statements: list[tuple[int, str]]) -> list[list[str]]:
    """The statements of each committed transaction that stored token rows, BEGIN and COMMIT included."""
    await asyncio.sleep(0)  # query loggers are called soon after each statement, not during it
    open_: dict[int, list[str]] = {}
    done: list[list[str]] = []
    for conn, query in statements:
        if query.startswith("BEGIN"):
            open_[conn] = [query]
        elif conn in open_:
            if any(marker in query for marker in _INTROSPECTION):
                continue  # asyncpg learning a type on this connection's first use of it, not the login's work
            open_[conn].append(query)
            if query.startswith(("COMMIT", "ROLLBACK")):
                transaction = open_.pop(conn)
                if query.startswith("COMMIT") and any("INSERT INTO tokens" in q for q in transaction):
                    done.append(transaction)
    return done


async def audited(conn: asyncpg.Connection, count: int) -> list[asyncpg.Record]:
    """The login audit rows, once there are ``count`` of them (the writer inserts them shortly after the commit)."""
    for _ in range(100):
        rows = await conn.fetch("SELECT * FROM audit_events WHERE action = 'login' ORDER BY request_id")
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} login audit rows, not {count}")


class TestBatchTransaction:
    async def test_sixty_four_new_users_in_one_transaction(self, store, db_conn, statements):
        """64 logins of new people: 64 users, identities and token rows, written by one transaction; a username
        wanted twice goes to the first login, the second falls back to wechat-<openid>."""
        logins = [shop_login(store, f"o-{i}", username=f"user{i}") for i in range(62)]
        logins += [shop_login(store, "o-62", username="twice"), shop_login(store, "o-63", username="twice")]
        answered = results(await post_batch(store, logins))
        assert all(r["created"] for r in answered)
        assert len({r["user_id"] for r in answered}) == 64
        assert [r["user_name"] for r in answered] == [f"user{i}" for i in range(62)] + ["twice", "wechat-o-63"]
        assert [claims(r)["sub"] for r in answered] == [r["user_id"] for r in answered]
        assert len({claims(r)["jti"] for r in answered}) == 64
        assert await db_conn.fetchval("SELECT count(*) FROM users") == 64
        identities = await db_conn.fetch("SELECT openid, user_id::text, session_key FROM wechat_identities")
        assert {(r["openid"], r["user_id"], r["session_key"]) for r in identities} == {
            (f"o-{i}", r["user_id"], f"sk-o-{i}") for i, r in enumerate(answered)
        }
        assert await db_conn.fetchval("SELECT count(DISTINCT family_id) FROM tokens") == 64
        assert len(await login_transactions(statements)) == 1
        rows = await audited(db_conn, 64)
        assert sorted(str(r["target_user_id"]) for r in rows) == sorted(r["user_id"] for r in answered)

    async def test_a_larger_batch_is_split(self, store, db_conn, statements):
        """65 logins in one request (more than a transaction takes): two transactions, every login answered in order."""
        answered = results(await post_batch(store, [shop_login(store, f"o-{i}") for i in range(65)]))
        assert [r["user_name"] for r in answered] == [f"wechat-o-{i}" for i in range(65)]
        assert sorted(len(t) for t in await login_transactions(statements)) == [8, 8]
        assert await db_conn.fetchval("SELECT count(*) FROM users") == 65

    async def test_a_bad_login_fails_alone(self, store, db_conn):
        """Among good logins, one malformed, one of an unknown client, one of an appid the application lacks, one
        with a NUL byte, one of a forbidden user and one refused sign-up each get the error they would get alone;
        the good ones get their tokens (and audit rows), and nothing is written for the bad ones."""
        forbidden = results(await post_batch(store, [shop_login(store, "o-forbidden")]))[0]
        await db_conn.execute("UPDATE users SET is_forbidden = true WHERE id = $1::uuid", forbidden["user_id"])
        logins = [
            shop_login(store, "o-good-1", username="good1"),
            shop_login(store, ""),
            shop_login(store, "o-unknown", client_id="no-such-client"),
            shop_login(store, "o-wrong-appid", appid="wx-not-attached"),
            shop_login(store, "o-nul", session_key="a\x00b"),
            shop_login(store, "o-forbidden", username="renamed"),
            {**shop_login(store, "o-closed"), "client_id": store.closed, "appid": CLOSED_APPID},
            shop_login(store, "o-good-2"),
        ]
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
            outcomes = await post_batch(store, logins, [f"r-{i}" for i in range(len(logins))])
        errors = [(o["status"], o["error"]["error"]) if o["error"] else (o["status"], "") for o in outcomes]
        assert errors == [
            (200, ""),
            (400, "invalid_request"),
            (401, "invalid_client"),
            (401, "invalid_client"),
            (400, "invalid_request"),
            (400, "invalid_grant"),
            (400, "invalid_grant"),
            (200, ""),
        ]
        assert outcomes[4]["error"]["error_description"] == "invalid wechat identity: CharacterNotInRepertoireError"
        assert outcomes[5]["error"]["error_description"] == "the user is forbidden to sign in"
        assert outcomes[6]["error"]["error_description"] == "the application does not allow to sign up new account"
        assert outcomes[0]["result"]["user_name"] == "good1" and outcomes[7]["result"]["created"]
        by_request = {line["request_id"]: line["outcome"] for line in lines if line["event"] == "login"}
        assert by_request == {f"r-{i}": error or "ok" for i, (_, error) in enumerate(errors)}
        assert sorted(await db_conn.fetchval("SELECT array_agg(openid) FROM wechat_identities")) == [
            "o-forbidden",
            "o-good-1",
            "o-good-2",
        ]
        assert await db_conn.fetchval("SELECT display_name FROM users WHERE name = 'wechat-o-forbidden'") == ""
        assert await db_conn.fetchval("SELECT count(*) FROM tokens") == 3
        rows = await audited(db_conn, 3)
        # r-0 twice: the forbidden user's first login (a batch of its own), then good1's.
        assert [r["request_id"] for r in rows] == ["r-0", "r-0", "r-7"]

    async def test_one_new_openid_twice_is_one_user(self, store, db_conn):
        """Two logins of one new openid in a batch: one user, created by the first; the second is a returning
        login (its profile applied, its session key the identity's), and each has its own token family."""
        first, second = results(
            await post_batch(
                store,
                [
                    shop_login(store, "o-twice", username="bob", session_key="sk-1"),
                    shop_login(store, "o-twice", username="Bob B", session_key="sk-2"),
                ],
            )
        )
        assert first["user_id"] == second["user_id"]
        assert (first["created"], second["created"]) == (True, False)
        assert first["user_name"] == second["user_name"] == "bob"
        assert (claims(first)["displayName"], claims(second)["displayName"]) == ("bob", "Bob B")
        assert await db_conn.fetchval("SELECT count(*) FROM users") == 1
        assert await db_conn.fetchval("SELECT display_name FROM users") == "Bob B"
        assert await db_conn.fetchval("SELECT session_key FROM wechat_identities") == "sk-2"
        assert await db_conn.fetchval("SELECT count(DISTINCT family_id) FROM tokens") == 2

    async def test_two_openids_sharing_a_unionid_are_one_user(self, store, db_conn):
        """Two new openids of two mini programs with one unionid in a batch make one user with two identities; a
        unionid a returning login gives for the first time links a new openid later in the same batch to it."""
        first, second = results(
            await post_batch(
                store,
                [
                    shop_login(store, "o-shop", unionid="u-1"),
                    {**shop_login(store, "o-other", unionid="u-1"), "appid": OTHER_APPID},
                ],
            )
        )
        assert first["user_id"] == second["user_id"]
        assert (first["created"], second["created"]) == (True, False)
        rows = await db_conn.fetch("SELECT appid, user_id::text, unionid FROM wechat_identities ORDER BY appid")
        assert [tuple(r) for r in rows] == [(OTHER_APPID, first["user_id"], "u-1"), (APPID, first["user_id"], "u-1")]

        known = results(await post_batch(store, [shop_login(store, "o-late")]))[0]
        late, linked = results(
            await post_batch(
                store,
                [
                    shop_login(store, "o-late", unionid="u-2"),
                    {**shop_login(store, "o-late-other", unionid="u-2"), "appid": OTHER_APPID},
                ],
            )
        )
        assert late["user_id"] == linked["user_id"] == known["user_id"]
        assert not late["created"] and not linked["created"]
        assert await db_conn.fetchval("SELECT count(*) FROM users") == 2

    async def test_statements_do_not_grow_with_the_batch(self, store, statements, request):
        """A batch of 1 and a batch of 64 logins each take one transaction of the same few statements, for new users
        as for returning ones (whose profile and identity are updated)."""
        counts: dict[str, int] = {}
        for kind, size in (("new", 1), ("new", 64), ("returning", 1), ("returning", 64)):
            statements.clear()
            name = "profile" if kind == "returning" else "user"
            logins = [shop_login(store, f"o-{size}-{i}", username=f"{name}{size}x{i}") for i in range(size)]
            answered = results(await post_batch(store, logins))
            assert all(r["created"] == (kind == "new") for r in answered)
            transactions = await login_transactions(statements)
            assert len(transactions) == 1, [len(t) for t in transactions]
            counts[f"{size} {kind}"] = len(transactions[0])
        request.config.stash.setdefault(SUMMARY, []).append(
            "[login batch] statements per transaction, BEGIN and COMMIT included: "
            + ", ".join(f"{count} for {key}" for key, count in counts.items())
        )
        assert counts["1 new"] == counts["64 new"] <= 8
        assert counts["1 returning"] == counts["64 returning"] <= 8

    async def test_an_outage_is_every_login_s_503(self, store, db_conn, pg_url):
        """PostgreSQL lost mid-transaction: each login of the batch gets 503 temporarily_unavailable (a malformed
        one still its 400), and nothing is written."""
        blocker = await asyncpg.connect(pg_url)
        try:
            await blocker.execute("BEGIN; LOCK TABLE applications IN ACCESS EXCLUSIVE MODE")
            logins = [shop_login(store, "o-1"), shop_login(store, ""), shop_login(store, "o-2")]
            answer = asyncio.ensure_future(post_batch(store, logins))
            for _ in range(200):
                killed = await db_conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if killed:
                    break
                await asyncio.sleep(0.02)
            assert killed == 1
            outcomes = await answer
        finally:
            await blocker.close()
        assert [o["status"] for o in outcomes] == [503, 400, 503]
        assert outcomes[0]["error"]["error"] == outcomes[2]["error"]["error"] == "temporarily_unavailable"
        assert outcomes[0]["retry_after"] == 1
        assert await db_conn.fetchval("SELECT count(*) FROM users") == 0
