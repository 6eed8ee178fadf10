"""Configuration: a malformed secret or URL stops each process at start with exit code 2 and one line naming the
variable, never a traceback and never the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ConfigError, GatewayConfig, RunnerConfig, UserStoreConfig, WorkerConfig, load_config
from tests.stack import ROOT

SHORT = "short-secret-value"
PASSWORD = "pw-in-the-url"
_BASE = {
    "INTERNAL_TOKEN": "t" * 32,
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "USER_STORE_URL": "http://127.0.0.1:1",
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "GATEWAY_PORT": "0",
    "USER_STORE_PORT": "0",
}


class TestLoadConfig:
    @pytest.mark.parametrize(
        ("config_type", "env", "message"),
        [
            (GatewayConfig, {"STREAM_SEAL_KEY": SHORT}, "STREAM_SEAL_KEY must be at least 32 characters"),
            (WorkerConfig, {"STREAM_SEAL_KEY": SHORT}, "STREAM_SEAL_KEY must be at least 32 characters"),
            (UserStoreConfig, {"MASTER_KEY": SHORT}, "MASTER_KEY must be at least 32 characters"),
            (
                UserStoreConfig,
                {"MASTER_KEY": "m" * 40, "MASTER_KEY_PREVIOUS": SHORT},
                "MASTER_KEY_PREVIOUS must be at least 32 characters",
            ),
            (UserStoreConfig, {"INTERNAL_TOKEN_PREVIOUS": SHORT[:8]}, "INTERNAL_TOKEN_PREVIOUS must be at least 16"),
            (UserStoreConfig, {"MASTER_KEY": "m" * 40, "MASTER_KEY_FILE": "/x"}, "MASTER_KEY or MASTER_KEY_FILE"),
            (UserStoreConfig, {"DATABASE_URL": f"mysql://root:{PASSWORD}@db/x"}, "DATABASE_URL must be a URL"),
            (GatewayConfig, {"REDIS_URL": f"http://:{PASSWORD}@redis"}, "REDIS_URL must be a URL starting redis://"),
        ],
    )
    def test_malformed_secret_is_a_config_error(self, config_type, env, message):
        """Each malformed secret or secret-bearing URL is a ``ConfigError`` naming the variable, not the value."""
        with pytest.raises(ConfigError, match=message) as info:
            load_config(config_type, {**_BASE, **env})
        assert SHORT not in info.value.description and PASSWORD not in info.value.description

    def test_empty_optional_secrets_are_fine(self):
        """Unset optional secrets (no seal key, no master key) are not errors: they mean "off"."""
        assert load_config(GatewayConfig, _BASE).stream_seal_key == ""
        assert load_config(UserStoreConfig, _BASE).master_key == ""

    def test_default_signing_alg(self):
        """The runner's DEFAULT_SIGNING_ALG is RS256 unless set to ES256; any other value names the variable."""
        assert load_config(RunnerConfig, {}).default_signing_alg == "RS256"
        assert load_config(RunnerConfig, {"DEFAULT_SIGNING_ALG": "ES256"}).default_signing_alg == "ES256"
        with pytest.raises(ConfigError, match="DEFAULT_SIGNING_ALG"):
            load_config(RunnerConfig, {"DEFAULT_SIGNING_ALG": "HS256"})


@pytest.mark.parametrize(
    ("module", "env", "line"),
    [
        ("gateway", {"STREAM_SEAL_KEY": SHORT}, "gateway: invalid configuration: STREAM_SEAL_KEY must be at least 32"),
        ("auth_worker", {"STREAM_SEAL_KEY": SHORT}, "auth_worker: invalid configuration: STREAM_SEAL_KEY must be"),
        ("user_store", {"MASTER_KEY": SHORT}, "user-store: invalid configuration: MASTER_KEY must be at least 32"),
        ("user_store", {"DATABASE_URL": f"postgresq://u:{PASSWORD}@h/d"}, "user-store: invalid configuration: DATA"),
        ("services", {"STREAM_SEAL_KEY": SHORT}, "minidoor: invalid configuration: STREAM_SEAL_KEY must be at least"),
    ],
)
def test_service_exits_2_with_one_line(tmp_path: Path, module: str, env: dict[str, str], line: str) -> None:
    """``python -m <service>`` with a malformed secret exits 2 at once with one line on stderr naming the
    variable: no traceback, no value, nothing started."""
    args = [sys.executable, "-m", module, *(["run"] if module == "services" else [])]
    full_env = {"PATH": "/usr/bin:/bin", "STATE_DIR": str(tmp_path / "state"), **_BASE, **env}
    out = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), out.stderr
    assert SHORT not in out.stderr and PASSWORD not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists()
