"""Property tests of the gateway's parameter, header and body parsers: any input either parses or raises one of the
project's own 4xx errors (``shared.errors``), never anything else (which the error middleware would answer 500).

Deterministic (``derandomize``) and bounded: a few hundred examples per property, well under a second each.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.params import JSON_FIELDS, _json_fields, caller_credentials, checked
from gateway.views.account import _int
from shared.errors import MinidoorError
from shared.forms import FORM, basic_pair, form_fields
from shared.guard import MAX_FIELD_CHARS, MAX_JSON_DEPTH, check_body, check_field, check_text, json_depth
from shared.messages import Credentials
from shared.user_store_client import application_path

fuzz = settings(
    max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

SCHEMES = st.sampled_from(["Basic", "basic", "BASIC", "Bearer", "bearer", "DPoP", "Digest", ""])
#: What a client may put after "Basic ": base64 of anything (valid UTF-8 or not, with or without a colon), or text.
BASIC_VALUES = st.one_of(
    st.binary(max_size=80).map(lambda raw: base64.b64encode(raw).decode()),
    st.tuples(st.text(max_size=40), st.text(max_size=40)).map(
        lambda pair: base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
    ),
    st.text(max_size=80),
)
AUTHORIZATION = st.one_of(
    st.text(max_size=120),
    st.tuples(SCHEMES, st.sampled_from([" ", "  ", "\t"]), st.one_of(BASIC_VALUES, st.text(max_size=80))).map("".join),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(st.sampled_from(JSON_FIELDS) | st.text(max_size=10), JSON_VALUES, max_size=6)
PARAM_NAMES = st.sampled_from(["client_id", "clientId", "client_secret", "token", "code", "tag"]) | st.text(max_size=12)
PARAMS = st.dictionaries(
    PARAM_NAMES,
    # Long values are built, not drawn character by character: drawing 4,096 characters is slow.
    st.text(max_size=40)
    | st.builds(str.__mul__, st.characters(), st.integers(MAX_FIELD_CHARS - 1, MAX_FIELD_CHARS + 2)),
)


def passes(check: Callable[[], None]) -> Callable[[], bool]:
    """``check`` as a parser: True once it returned."""

    def run() -> bool:
        check()
        return True

    return run


def parses_or_4xx(parse: Callable[[], Any]) -> Any:
    """``parse()``'s result, or None when it raised a 4xx ``MinidoorError``; anything else fails the test."""
    try:
        return parse()
    except MinidoorError as exc:
        assert 400 <= exc.status < 500, exc
        return None


class TestParams:
    @fuzz
    @given(encoded=BASIC_VALUES)
    @example(encoded="é")
    @example(encoded="Zm9v\u00e9")
    @example(encoded=base64.b64encode(b"\xff\xfe:x").decode())
    def test_basic_pair(self, encoded):
        """The part after "Basic " decodes to (client_id, secret) or is a 400, non-ASCII and non-UTF-8 included."""
        pair = parses_or_4xx(lambda: basic_pair(encoded))
        if pair is not None:
            assert base64.b64decode(encoded).decode() == f"{pair[0]}:{pair[1]}"

    @fuzz
    @given(params=PARAMS)
    @example(params={"client_id": "."})
    @example(params={"clientId": "{x}"})
    @example(params={"client_id": ".."})
    def test_checked(self, params):
        """checked() passes params whose client ids could be valid and whose fields are short; else 401 or 400."""
        result = parses_or_4xx(lambda: checked(dict(params)))
        if result is not None:
            assert result == params
            assert all(len(v) <= MAX_FIELD_CHARS for k, v in params.items() if k != "token")

    @fuzz
    @given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    @example(body=b"a=%ff%fe&b=%zz&&=&c")
    def test_form_fields(self, body):
        """A form body is fields or a 400 (not UTF-8), whatever the bytes."""
        fields = parses_or_4xx(lambda: form_fields(body))
        assert fields is None or all(isinstance(k, str) and isinstance(v, str) for k, v in fields)

    @fuzz
    @given(
        body=JSON_OBJECTS.map(lambda doc: json.dumps(doc).encode())
        | JSON_VALUES.map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=100),
        content_type=st.sampled_from(["application/json", "application/merge-patch+json", "text/plain", "", FORM]),
    )
    def test_json_fields(self, body, content_type):
        """A JSON body gives its string fields, or a 400/415; a non-string value of a known field is a 400."""
        fields = parses_or_4xx(lambda: _json_fields(body, content_type))
        assert fields is None or all(k in JSON_FIELDS and isinstance(v, str) for k, v in fields.items())

    @fuzz
    @given(value=st.text(max_size=12))
    @example(value="²")
    @example(value="١٢")
    @example(value="1" * 10)
    def test_page_numbers(self, value):
        """p and pageSize are ASCII digits (at most 9), or a 400: a superscript two is a digit to str.isdigit."""
        number = parses_or_4xx(lambda: _int({"p": value}, "p"))
        if number is not None:
            assert number == (int(value) if value else 0) and 0 <= number < 10**9


class TestAuthorization:
    @fuzz
    @given(header=AUTHORIZATION, params=PARAMS, required=st.booleans())
    @example(header="Basic é", params={}, required=True)
    @example(header="Basic " + base64.b64encode("é:x".encode()).decode(), params={}, required=True)
    @example(header="Bearer ", params={}, required=False)
    def test_credentials(self, header, params, required):
        """Any Authorization header and parameters give Credentials, or a 400/401."""
        request = make_mocked_request("GET", "/api/get-account", headers={"Authorization": header})
        found = parses_or_4xx(lambda: caller_credentials(request, dict(params), required=required))
        assert found is None or isinstance(found, Credentials)


class TestGuard:
    @fuzz
    @given(raw=st.binary(max_size=200))
    def test_check_text(self, raw):
        """Bytes are text exactly when they are UTF-8; else a 400."""
        text = parses_or_4xx(lambda: check_text(raw, "body"))
        if text is not None:
            assert text.encode() == raw

    @fuzz
    @given(
        depth=st.integers(0, 3 * MAX_JSON_DEPTH), opener=st.sampled_from(["[", '{"a":']), junk=st.binary(max_size=20)
    )
    def test_check_body_depth(self, depth, opener, junk):
        """JSON nested up to MAX_JSON_DEPTH passes; deeper is a 400, with junk after it or not."""
        closer = "]" if opener == "[" else "}"
        raw = (opener * depth + "1" + closer * depth).encode() + junk
        passed = parses_or_4xx(passes(lambda: check_body(raw)))
        if depth > MAX_JSON_DEPTH:
            assert passed is None
        elif passed is None:
            assert junk  # only bytes after the document (not UTF-8) can refuse a shallow one

    @fuzz
    @given(raw=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
    @example(raw=b'"\\\\"[[[' + b"[" * 40)
    @example(raw=b'["\\"]]]]"' + b"]" * 40)
    def test_json_depth_any_bytes(self, raw):
        """json_depth answers a non-negative count for any bytes; check_body passes or answers a 400."""
        assert json_depth(raw) >= 0
        parses_or_4xx(lambda: check_body(raw))

    @fuzz
    @given(value=st.text(max_size=MAX_FIELD_CHARS + 5))
    def test_check_field(self, value):
        """A field is refused (400) exactly when it is longer than MAX_FIELD_CHARS."""
        passed = parses_or_4xx(passes(lambda: check_field("x", value)))
        assert (passed is None) == (len(value) > MAX_FIELD_CHARS)


class TestUserStorePaths:
    @fuzz
    @given(client_id=st.text(max_size=70) | st.sampled_from([".", "..", "{x}", "a/b", "%2e", "a" * 64]))
    def test_application_path(self, client_id):
        """A client id becomes exactly one path segment of the user store's URL, or is refused (401): ".", ".."
        and braces never reach it."""
        path = parses_or_4xx(lambda: application_path(client_id, "wechat-miniprogram"))
        if path is not None:
            prefix, segment, rest = path.rsplit("/", 2)
            assert (prefix, segment, rest) == ("/internal/applications", client_id, "wechat-miniprogram")


@pytest.mark.parametrize("header", ["Basic é", "basic Zm9v\u00e9", "Basic \u00ff\u00fe"])
def test_non_ascii_basic_is_a_400(header):
    """Non-ASCII in HTTP Basic credentials (the base64 part) is 400 invalid_request, not a crash."""
    request = make_mocked_request("GET", "/api/get-account", headers={"Authorization": header})
    with pytest.raises(MinidoorError) as caught:
        caller_credentials(request, {})
    assert caught.value.status == 400 and caught.value.error == "invalid_request"
