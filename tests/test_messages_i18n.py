"""Error messages in the caller's language: the catalogue covers every message in the code, Accept-Language picks
the language by q-value, and the gateway answers in Chinese for its own errors, the worker's and the user store's,
on the OAuth routes (``error_description``) and the envelope routes (``msg``)."""

from __future__ import annotations

import string
from pathlib import Path

import msgspec
import pytest

from services.catalogue import Extraction, extract
from shared.errors import Forbidden, NotFound, error_from_wire
from shared.i18n import LANGUAGES, Catalogue, describe, load_catalogue, preferred_language
from shared.messages import LoginFailed, encoder, reply_decoder
from tests.account_helpers import api, app_params, new_user

ZH_CN = {"Accept-Language": "zh-CN"}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _conversions(template: str) -> set[str | None]:
    return {conversion for _, name, _, conversion in string.Formatter().parse(template) if name is not None}


@pytest.fixture(scope="module", name="found")
def _found() -> Extraction:
    return extract()


@pytest.fixture(scope="module", name="zh")
def _zh() -> Catalogue:
    return load_catalogue("zh")


class TestCatalogue:
    def test_every_message_in_the_code_is_a_template(self, found):
        """No error message is an f-string or anything else the catalogue cannot list."""
        problems = found.problems
        assert not problems, "messages the catalogue cannot know:\n" + "\n".join(problems)

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_every_message_is_translated(self, found, language):
        """Each error message the code can answer has a translation (``make messages`` adds the missing ones)."""
        assert len(found.messages) > 100, "the extraction found too few messages to be reading the code"
        catalogue = load_catalogue(language)
        missing = [
            f"{msgid!r} ({found.messages[msgid][0]})" for msgid in found.messages if msgid not in catalogue.messages
        ]
        assert not missing, f"{language}: no translation for {len(missing)} msgids:\n" + "\n".join(missing)

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_translations_have_the_fields_of_their_template(self, language):
        """A translation uses exactly its template's fields, with conversions that exist, and formats."""
        catalogue = load_catalogue(language)
        wrong = []
        for msgid, translated in catalogue.messages.items():
            if _fields(translated) != _fields(msgid) or not _conversions(translated) <= {None, "r", "s", "a", "t"}:
                wrong.append(f"{msgid!r} -> {translated!r}")
                continue
            params = {name: 1 for name in _fields(msgid)}
            if catalogue.translate(msgid, params) is None:
                wrong.append(f"{msgid!r} -> {translated!r} does not format")
        assert not wrong, "translations that do not fit their msgid:\n" + "\n".join(wrong)

    def test_extraction_reports_f_strings_and_reads_constants(self, tmp_path: Path):
        """The scan finds templates, constants and both branches of a conditional, and flags an f-string."""
        package = tmp_path / "gateway"
        package.mkdir()
        (package / "views.py").write_text(
            "from shared.errors import BadRequest, NotFound\n"
            'GONE = "it is gone"\n'
            "class Missing(NotFound): ...\n"
            "def f(x, y):\n"
            '    raise BadRequest("{x} is wrong", x=x)\n'
            "def g(x):\n"
            "    raise Missing(GONE)\n"
            "def h(x, y):\n"
            '    raise BadRequest("one" if x else "two")\n'
            "def i(x):\n"
            '    raise BadRequest(f"{x} is wrong")\n'
        )
        found = extract(tmp_path)
        assert set(found.messages) == {"{x} is wrong", "it is gone", "one", "two"}
        assert found.messages["it is gone"] == ["gateway/views.py:7"]
        assert len(found.problems) == 1 and found.problems[0].startswith("gateway/views.py:11: an f-string")


class TestLanguageChoice:
    @pytest.mark.parametrize(
        ("header", "language"),
        [
            ("zh", "zh"),
            ("zh-CN", "zh"),
            ("zh-Hans", "zh"),
            ("ZH-cn", "zh"),
            ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
            ("fr, zh;q=0.8", "zh"),
            ("zh, en", "zh"),
            ("en;q=0, *;q=0.5", "zh"),
            ("en;q=1, zh;q=0.5", "en"),
            ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
            ("en, zh", "en"),
            ("zh;q=0", "en"),
            ("zh;q=abc", "en"),
            ("zh;q=2", "en"),
            ("*", "en"),
            ("fr", "en"),
            ("", "en"),
            (None, "en"),
        ],
    )
    def test_q_values(self, header, language):
        """The highest q-value wins, the earlier range on a tie; zh's subtags are zh; q=0 refuses; English else."""
        assert preferred_language(header) == language


class TestTranslation:
    def test_fields_and_terms(self, zh):
        """A template's fields are filled in; a field marked !t is itself translated as a term."""
        exc = NotFound("the user {value!r} does not exist in organization {owner!r}", value="bob", owner="acme")
        assert describe(exc, zh) == "组织 'acme' 中不存在用户 'bob'"
        exc2 = Forbidden("a user may only {action} itself; other users need an administrator", action="update")
        assert describe(exc2, zh) == "用户只能更新自己；其他用户需要管理员操作"

    def test_unknown_messages_stay_english(self, zh):
        """A message the catalogue lacks, or no catalogue, answers the English description."""
        exc = NotFound("nothing called {name} here", name="x")
        assert describe(exc, zh) == "nothing called x here"
        assert describe(NotFound("the user does not exist"), None) == "the user does not exist"

    def test_wire_errors_translate(self, zh):
        """An error rebuilt from the wire translates by its template, or (older sender) by its fieldless text."""
        rebuilt = error_from_wire(
            404,
            "not_found",
            "organization 'acme' does not exist",
            message="organization {name!r} does not exist",
            params={"name": "acme"},
        )
        assert describe(rebuilt, zh) == "组织 'acme' 不存在"
        assert describe(error_from_wire(404, "not_found", "the user does not exist"), zh) == "用户不存在"

    def test_login_failed_carries_the_template(self):
        """LoginFailed keeps its tag; a reply from an older worker (no template) still decodes."""
        exc = NotFound("organization {name!r} does not exist", name="acme")
        reply = reply_decoder.decode(encoder.encode(LoginFailed.of("j1", exc)))
        assert isinstance(reply, LoginFailed)
        assert (reply.message, reply.params) == ("organization {name!r} does not exist", {"name": "acme"})
        old = {"type": "login_failed.v1", "job_id": "j1", "status": 400, "error": "x", "error_description": "d"}
        decoded = reply_decoder.decode(msgspec.msgpack.encode(old))
        assert isinstance(decoded, LoginFailed) and (decoded.message, decoded.params) == ("", {})


class TestThroughTheGateway:
    async def test_oauth_route_gateway_error(self, session, stack):
        """The token endpoint's own error in Chinese for zh-CN, English otherwise or when English is preferred."""
        form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"]}
        cases = [(ZH_CN, "缺少 code，请发送 wx.login() 返回的 code", "zh-CN"), ({}, None, "en")]
        cases.append(({"Accept-Language": "en;q=1, zh;q=0.5"}, None, "en"))
        for headers, expected, content_language in cases:
            async with session.post(stack.token_url, data=form, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 400, body
                assert body["error"] == "invalid_request"
                assert body["error_description"] == (expected or "code is missing; send the code from wx.login()")
                assert resp.headers["Content-Language"] == content_language

    async def test_oauth_route_worker_error(self, session, stack):
        """WeChat's refusal of a code, raised in the worker with a field, answers in Chinese with that field; so
        does the replayed code's answer."""
        form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": "never-issued-code"}
        async with session.post(stack.token_url, data=form, headers=ZH_CN) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"] == "invalid_grant", body
        assert body["error_description"].startswith("code 无效或已过期（WeChat 40029"), body
        assert body["error_description"].endswith("），请重新调用 wx.login()"), body
        async with session.post(stack.token_url, data={**form, "code": "another-never-issued-code"}) as resp:
            body = await resp.json()
        assert body["error_description"].startswith("the code is invalid or expired (WeChat 40029"), body
        async with session.post(stack.token_url, data=form, headers=ZH_CN) as resp:
            body = await resp.json()
        assert body["error_description"] == "该 code 已被使用（40163: code been used），请重新调用 wx.login()", body

    async def test_envelope_route_gateway_error(self, session, stack):
        """An account call without credentials: Casdoor's "Please login first" in Chinese."""
        body = await api(session, stack, "GET", "/api/get-account", status=401, headers=ZH_CN)
        assert body["msg"] == "请先登录"
        body = await api(session, stack, "GET", "/api/get-account", status=401)
        assert body["msg"] == "Please login first"

    async def test_envelope_route_user_store_errors(self, session, stack):
        """Errors the user store raises (with fields, with a term) reach the envelope in Chinese."""
        user, other = await new_user(session, stack), await new_user(session, stack)
        params = {"id": f"demo/{other['name']}"}
        body = await api(session, stack, "GET", "/api/get-user", status=403, token=user["access_token"],
                         params=params, headers=ZH_CN)  # fmt: skip
        assert body["msg"] == "用户只能读取自己；其他用户需要管理员操作"
        query = app_params(stack, id="demo/nobody")
        body = await api(session, stack, "GET", "/api/get-user", status=404, params=query, headers=ZH_CN)
        assert body["msg"] == "组织 'demo' 中不存在用户 'nobody'"
        body = await api(session, stack, "GET", "/api/get-user", status=404, params=query)
        assert body["msg"] == "the user 'nobody' does not exist in organization 'demo'"
