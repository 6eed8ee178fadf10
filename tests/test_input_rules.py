"""``user_store.user_rules``: what a valid name, display name, email and avatar is, on sign-up and update-user alike;
and the same rules seen through the running stack."""

from __future__ import annotations

import secrets

import pytest

from shared.config import Secret, UserStoreConfig
from shared.errors import BadRequest
from tests.account_helpers import account, new_user, update
from tests.oauth_helpers import stack_login

CONFIG = UserStoreConfig(
    internal_token=Secret("x" * 16), database_url=Secret("postgresql://"), issuer="http://127.0.0.1:8000"
)


@pytest.fixture(name="rules")
def _rules():
    from user_store.user_rules import UserRules

    return UserRules.from_config(CONFIG)


class TestReservedNames:
    @pytest.mark.parametrize(
        "name",
        [
            "admin", "Admin", "ADMIN", "root", "system", "casdoor", "minidoor", "support",
            "\u0430dmin",  # Cyrillic а
            "\uff21\uff24\uff2d\uff29\uff2e",  # full-width ＡＤＭＩＮ
            "adm1n", "r00t", "ad.min", "аdmіn",  # Cyrillic а and і
            "\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427",  # mathematical bold 𝐚𝐝𝐦𝐢𝐧
            "ѕуѕtеm",  # Cyrillic look-alikes of system
        ],
    )  # fmt: skip
    def test_reserved_and_look_alikes(self, rules, name):
        """A reserved name, in any case, width or script that reads the same, is reserved."""
        assert rules.is_reserved(name)
        with pytest.raises(BadRequest, match="reserved"):
            rules.display_name("displayName", name)

    @pytest.mark.parametrize("name", ["alice", "Alice 张", "adminton", "小明", "rooted", "supporter", "Bob"])
    def test_ordinary_names_pass(self, rules, name):
        """Names that merely contain or resemble part of a reserved one are not reserved."""
        assert not rules.is_reserved(name)
        assert rules.display_name("displayName", name) == name

    def test_user_name_rules(self, rules):
        """A user name is NFKC-normalized, in Casdoor's alphabet, at most 100 characters, and not reserved."""
        assert rules.user_name("name", "\uff41\uff4c\uff49\uff43\uff45") == "alice"  # full-width alice
        for bad in ("a b", "x" * 101, "-a", "admin", "r00t"):
            with pytest.raises(BadRequest):
                rules.user_name("name", bad)

    def test_one_length_cap_for_display_names(self, rules):
        """100 characters after NFKC pass, 101 do not: login and update-user share the cap."""
        assert rules.display_name("displayName", "x" * 100) == "x" * 100
        with pytest.raises(BadRequest, match="at most 100"):
            rules.display_name("displayName", "x" * 101)

    def test_reserved_list_comes_from_config(self):
        """The list is configuration: a deployment may reserve its own brand."""
        from user_store.user_rules import UserRules

        rules = UserRules.build("acme, shop-owner", "", "")
        assert rules.is_reserved("ACME") and rules.is_reserved("shop_owner") and not rules.is_reserved("admin")


class TestEmails:
    @pytest.mark.parametrize(
        "email", ["a@b..c", "<script>alert(1)</script>@x.y", "nope", "a@", "@b.cn", "a b@c.cn", "a@b.c\x00", "a@-b.cn"]
    )
    def test_invalid(self, rules, email):
        """Addresses a maintained validator refuses are 400."""
        with pytest.raises(BadRequest, match="email is invalid|at most"):
            rules.email("email", email)

    @pytest.mark.parametrize("email", ["alice@example.com", "zhang.san+mp@qq.com", "用户@例子.中国"])
    def test_valid(self, rules, email):
        """Ordinary and internationalized addresses pass (syntax only: no DNS is asked)."""
        assert rules.email("email", email)


class TestAvatars:
    @pytest.mark.parametrize(
        "url",
        [
            "http://img.example/a.png",  # not https
            "https://169.254.169.254/latest/meta-data/",
            "https://127.0.0.1:8001/internal/applications/x",
            "https://2130706433/a.png",  # 127.0.0.1 as one decimal
            "https://0x7f000001/a.png",
            "https://0177.0.0.1/a.png",
            "https://[::1]/a.png",
            "https://[::ffff:169.254.169.254]/a.png",
            "https://localhost/a.png",
            "https://metadata/a.png",
            "https://user:pw@img.example/a.png",
            "https://img.example@169.254.169.254/a.png",
            "https://img.example:8001/a.png",
            "https://redis.default.svc.cluster.local/a.png",
            "https://db.internal/a.png",
            "https://printer.local/a.png",
            "javascript:alert(1)",
            "https://img.example/" + "x" * 1024,
            "https://img.example/a b.png",
        ],
    )
    def test_refused(self, rules, url):
        """Anything but https on a public host name (no IP literal, port, userinfo or internal suffix) is 400."""
        with pytest.raises(BadRequest, match="https URL"):
            rules.avatar("avatar", url)

    @pytest.mark.parametrize(
        "url",
        [
            "https://img.example/a.png",
            "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132",
            "https://img.example:443/a.png",
            "http://127.0.0.1:8000/avatars/a.png",  # under ISSUER: whatever its scheme
            "",
        ],
    )
    def test_allowed(self, rules, url):
        """Public https URLs, and any URL under minidoor's own ISSUER, pass unchanged."""
        assert rules.avatar("avatar", url) == url


class TestThroughTheStack:
    async def test_update_user_applies_the_rules(self, session, stack):
        """update-user refuses a loose email, an internal avatar and a reserved look-alike display name."""
        token = (await new_user(session, stack))["access_token"]
        for body, message in [
            ({"email": "a@b..c"}, "email is invalid"),
            ({"avatar": f"https://127.0.0.1:{stack.user_store_port}/internal/keys/jwks"}, "avatar must be an https"),
            ({"avatar": "https://169.254.169.254/latest/meta-data/"}, "avatar must be an https"),
            ({"displayName": "\u0430dmin"}, "displayName is reserved"),
        ]:
            refused = await update(session, stack, body, status=400, token=token)
            assert refused["msg"].startswith(message), refused
        await update(session, stack, {"displayName": "\uff21lice"}, token=token)
        assert (await account(session, stack, token))["displayName"] == "Alice"

    async def test_conflict_names_no_other_users_email(self, session, stack):
        """A 409 for an email or phone another user has does not echo it."""
        first, second = await new_user(session, stack), await new_user(session, stack)
        email = f"taken{secrets.token_hex(4)}@example.com"
        await update(session, stack, {"email": email}, token=first["access_token"])
        clash = await update(session, stack, {"email": email}, status=409, token=second["access_token"])
        assert email not in clash["msg"] and "that email" in clash["msg"]

    async def test_login_with_a_reserved_nickname(self, session, stack, db):
        """A WeChat nickname that is reserved is not refused (the code is already spent at WeChat) but not used:
        the user gets name ``wechat-<openid>`` and no display name."""
        openid = f"o-reserved-{secrets.token_hex(3)}"
        tokens = await stack_login(session, stack, openid, username="Аdmin")
        row = await db.fetchrow("SELECT name, display_name FROM users WHERE id = $1", _sub(tokens))
        assert (row["name"], row["display_name"]) == (f"wechat-{openid}", "")

    async def test_login_caps_the_display_name_as_update_user_does(self, session, stack, db):
        """A login's ``username`` longer than update-user's 100-character cap is 400, and no user is written."""
        openid = f"o-long-{secrets.token_hex(3)}"
        async with session.post(stack.sandbox + "/sandbox/login", json={"appid": stack.demo["wechatAppId"],
                                                                        "openid": openid}) as resp:  # fmt: skip
            code = (await resp.json())["code"]
        form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code, "username": "x" * 101}
        async with session.post(stack.token_url, data=form) as resp:
            body = await resp.json()
            assert resp.status == 400, body
        assert body["error"] == "invalid_request" and "at most 100" in body["error_description"]
        assert await db.fetchval("SELECT count(*) FROM users WHERE name = $1", f"wechat-{openid}") == 0


def _sub(tokens: dict[str, str]) -> str:
    from tests.oauth_helpers import claims_of

    return str(claims_of(tokens["access_token"])["sub"])
