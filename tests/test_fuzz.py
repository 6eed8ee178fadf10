"""schemathesis against a live stack: every documented operation, with data that fits the document and data that
does not, then stateful runs along its links (login -> account calls, refresh, introspection, revocation).

Checks: no 5xx, and every response conforms to the document (status code, content type, headers, body schema).
Failures are collected rather than raised at once, so a run always has the same length and ends with one line of
figures (``fuzz: requests=… server_errors=… schema_violations=…``, shown by ``tests/conftest.py``) and, when it
fails, one reproducible curl command per distinct failure.

Bounded and deterministic: fixed example budgets, ``derandomize``, no example database. Logins succeed because a
hook (``login_hook``) turns a share of the generated token requests into real mini-program logins, whose code the
call step mints from the WeChat sandbox as the phone's wx.login() would. The stack turns its rate limits off: every
request comes from 127.0.0.1 and a few thousand of them in minutes would otherwise be mostly 429s.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup, ServerError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.openapi import PATH, build_document
from tests.conftest import SUMMARY, _stack_fixture
from tests.stack import Stack

#: 0 turns a limit off; the per-IP ones are already raised by tests/stack.py.
NO_RATE_LIMITS = {
    "RATE_LIMIT_CLIENT_FAILURES": "0",
    "RATE_LIMIT_PER_CODE": "0",
    "RATE_LIMIT_USER_UPDATES": "0",
    "RATE_LIMIT_AVATAR_UPLOADS": "0",
    "RATE_LIMIT_WECHAT_DATA": "0",
    "RATE_LIMIT_AVATARS_PER_IP": "0",
    "RATE_LIMIT_PER_WECHAT_USER": "0",
    "SANDBOX_USER_RATE_LIMIT": "1000000",
    "PASSWORD_CHANGES_PER_USER": "100",
}
fuzzed = _stack_fixture("fuzzed", **NO_RATE_LIMITS)

LOGIN = "/api/login/oauth/access_token"
CLIENT_AUTH = ("/api/login/oauth/introspect", "/api/login/oauth/revoke")
#: Examples per operation and mode; positive data reaches deeper, so it gets more.
BUDGET = {GenerationMode.POSITIVE: 120, GenerationMode.NEGATIVE: 50}
STATEFUL_SCENARIOS = 100
STATEFUL_STEPS = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Stands in for a wx.login() code until the request is sent.
MINT = "<minted by the sandbox>"
#: A few WeChat users, each logging in many times: new and returning users both.
OPENIDS = [f"fuzz-user-{n}" for n in range(6)]
#: (path, METHOD, mode): negative data only where there is input to break (parameters or a body).
OPERATIONS = [
    (path, method.upper(), mode)
    for path, item in build_document()["paths"].items()
    for method, op in item.items()
    for mode in BUDGET
    if mode is GenerationMode.POSITIVE or "parameters" in op or "requestBody" in op
]


def hypothesis_settings(max_examples: int, **extra: Any) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        **extra,
    )


@dataclass
class Fuzzer:
    """Sends cases to the stack, tallies them and keeps the first example of each distinct failure."""

    stack: Stack
    schema: Any
    session: requests.Session = field(default_factory=requests.Session)
    requests: int = 0
    stateful_steps: int = 0
    logins: int = 0
    #: Whether the login hook turns token requests into real logins (not while generating negative data).
    real_logins: bool = True
    server_errors: int = 0
    violations: int = 0
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    _openids: Iterator[str] = field(default_factory=lambda: itertools.cycle(OPENIDS))

    def mint_code(self) -> str:
        """A fresh wx.login() code from the sandbox, as the phone would get it."""
        body = {"appid": self.stack.demo["wechatAppId"], "openid": next(self._openids)}
        resp = self.session.post(self.stack.sandbox + "/sandbox/login", json=body, timeout=10)
        resp.raise_for_status()
        return str(resp.json()["code"])

    def prepare(self, case: Case[Any], *, stateful: bool) -> None:
        if isinstance(case.body, dict) and case.body.get("code") == MINT:
            case.body["code"] = self.mint_code()
            self.logins += 1
        if stateful and case.operation.path in CLIENT_AUTH and isinstance(case.body, dict):
            # A backend introspects or revokes with its own client credentials: the demo application's.
            if "client_id" not in case.body and "Authorization" not in case.headers:
                secret = f"{self.stack.demo['clientId']}:{self.stack.demo['clientSecret']}"
                case.headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()

    def send(self, case: Case[Any], *, stateful: bool = False) -> Any:
        self.prepare(case, stateful=stateful)
        response = case.call(session=self.session, timeout=30)
        self.requests += 1
        self.stateful_steps += stateful
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._record(case, response, failure)
        return response

    def _record(self, case: Case[Any], response: Any, failure: Failure) -> None:
        if isinstance(failure, ServerError):
            self.server_errors += 1
        else:
            self.violations += 1
        key = (case.operation.label, f"{type(failure).__name__}: {failure.title}")
        if key not in self.failures:
            curl = case.as_curl_command(headers=dict(response.request.headers))
            self.failures[key] = f"{key[0]}: {key[1]} -> {response.status_code} {response.text[:300]}\n  {curl}"

    def summary(self) -> str:
        return (
            f"fuzz: requests={self.requests} stateful_steps={self.stateful_steps} logins={self.logins} "
            f"server_errors={self.server_errors} "
            f"schema_violations={self.violations}"
        )


def login_hook(fuzzer: Fuzzer) -> Any:
    """The schema's ``flatmap_body`` hook: while ``fuzzer.real_logins`` (positive and stateful runs), three in four
    generated token requests become a real mini-program login (one of them with the generated ``username`` and
    ``avatar``, which are mostly refused), so fuzzing gets past the code check and the links get live tokens. The
    code is minted when the request is sent (``Fuzzer.prepare``)."""

    def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
        if not fuzzer.real_logins or context.operation is None or context.operation.path != LOGIN:
            return st.just(body)
        if not isinstance(body, dict):
            return st.just(body)
        # Hypothesis leans to the first choice: a plain login.
        kinds = st.sampled_from(["login", "fuzzed", "login with profile", "login"])
        return kinds.map(lambda kind: login_body(body, kind, fuzzer.stack.demo["clientId"]))

    return flatmap_body


def login_body(body: dict[str, Any], kind: str, client_id: str) -> dict[str, Any]:
    if kind == "fuzzed":
        return body
    kept = {key: body[key] for key in ("username", "avatar") if isinstance(body.get(key), str)}
    profile = kept if kind == "login with profile" else {}
    return {**profile, "tag": "wechat_miniprogram", "client_id": client_id, "code": MINT}


@pytest.fixture(scope="module", name="fuzzer")
def _fuzzer(fuzzed: Stack, request: pytest.FixtureRequest) -> Iterator[Fuzzer]:
    """The served document loaded by schemathesis (which validates it), with the login hook."""
    schema = schemathesis.openapi.from_url(fuzzed.gateway + PATH)
    schema.config.update(base_url=fuzzed.gateway)
    fuzzer = Fuzzer(fuzzed, schema)
    schema.hook("flatmap_body")(login_hook(fuzzer))
    started = time.monotonic()
    yield fuzzer
    line = f"{fuzzer.summary()} seconds={time.monotonic() - started:.0f}"
    request.config.stash.setdefault(SUMMARY, []).append(line)
    fuzzer.session.close()


def assert_no_failures(fuzzer: Fuzzer) -> None:
    assert not fuzzer.failures, "\n".join(fuzzer.failures.values())


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS, ids=[f"{m} {p} {g}" for p, m, g in OPERATIONS])
def test_operation(fuzzer: Fuzzer, path: str, method: str, mode: GenerationMode) -> None:
    """Generated requests of one operation, fitting the document (positive) or not (negative): no 5xx, and every
    answer is one the document describes."""
    before = len(fuzzer.failures)
    fuzzer.real_logins = mode is GenerationMode.POSITIVE
    strategy = fuzzer.schema[path][method].as_strategy(generation_mode=mode)

    @hypothesis_settings(BUDGET[mode])
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        fuzzer.send(case)

    run()
    assert len(fuzzer.failures) == before, "\n".join(list(fuzzer.failures.values())[before:])


@pytest.mark.timeout(600)
def test_stateful_links(fuzzer: Fuzzer) -> None:
    """Scenarios along the document's links: a login's tokens reach get-account, userinfo, update-user, logout,
    the refresh grant, introspection and revocation; get-account's user reaches get-user and get-users."""
    before = len(fuzzer.failures)
    fuzzer.real_logins = True
    machine = fuzzer.schema.as_state_machine()

    class Links(machine):  # type: ignore[misc, valid-type]
        def call(self, case: Case[Any], **kwargs: Any) -> Any:
            return fuzzer.send(case, stateful=True)

        def validate_response(self, response: Any, case: Case[Any], *args: Any, **kwargs: Any) -> None:
            pass  # Fuzzer.send checked it

    Links.run(settings=hypothesis_settings(STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS))
    assert fuzzer.stateful_steps > STATEFUL_SCENARIOS
    assert len(fuzzer.failures) == before, "\n".join(list(fuzzer.failures.values())[before:])
