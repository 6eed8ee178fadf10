"""``make deploy-check`` refuses a deliberate typo: in a manifest's environment variable, a Kubernetes field, the
compose file and an alert rule, each on a temporary copy of ``deploy/`` (the clean copy passes the same check).

Needs the tools of deploy/requirements.deploy-check.lock (``make deploy-check`` installs them, then runs this file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("kubernetes_validate", reason="deploy-check's tools are not installed (make deploy-check)")

from services.deploy_check import checks
from services.deploy_check.tools import ToolMissing, tool

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

try:
    tool("kubectl")
except ToolMissing as exc:
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(name="deploy")
def _deploy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEPLOY, tmp_path / "deploy"))


def problems(deploy: Path, *names: str) -> list[str]:
    """The problems the named checks find, after rendering k8s/ (which the k8s checks read)."""
    rendered = checks.Rendered()
    found: list[str] = []
    for name, check in checks.CHECKS:
        if name == "kustomize" or name in names:
            found += check(deploy, rendered)[1]
    return found


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the test's typo no longer applies"
    path.write_text(text.replace(old, new, 1))


def test_env_var_typo_in_a_manifest(deploy):
    """A ConfigMap key no service reads (LOGIN_TIMEOUT misspelt) and a Secret key misspelt are both named."""
    assert problems(deploy, "environment") == []
    edit(deploy / "k8s" / "configmap.yaml", "LOGIN_TIMEOUT:", "LOGIN_TIMEOUTS:")
    edit(deploy / "k8s" / "gateway.yaml", "key: STREAM_SEAL_KEY", "key: STREAM_SEAL_KY")
    found = problems(deploy, "environment")
    assert "ConfigMap minidoor: LOGIN_TIMEOUTS is read by no service that uses it" in found
    assert any("reads Secret key STREAM_SEAL_KY" in p for p in found), found


def test_required_env_var_missing_in_compose(deploy):
    """The gateway's ISSUER dropped from compose: named as needed and not set."""
    edit(
        deploy / "compose.yaml", '      GATEWAY_PORT: "8000"\n      ISSUER:', '      GATEWAY_PORT: "8000"\n      ISSUR:'
    )
    found = problems(deploy, "environment")
    assert "compose gateway: ISSUR is set but gateway does not read it" in found
    assert "compose gateway: gateway needs ISSUER, which is not set" in found


def test_kubernetes_field_typo(deploy):
    """An unknown field in a pod spec fails strict validation, on both Kubernetes versions."""
    assert problems(deploy, "kubernetes") == []
    edit(deploy / "k8s" / "user-store.yaml", "readinessProbe:", "readinesProbe:")
    found = problems(deploy, "kubernetes")
    assert len(found) == len(checks.K8S_VERSIONS), found
    assert all("Deployment/user-store" in p and "readinesProbe" in p for p in found), found


def test_keda_field_typo(deploy):
    """An unknown field in the ScaledObject fails against KEDA's vendored CRD schema."""
    assert problems(deploy, "keda") == []
    edit(deploy / "k8s" / "auth-worker-keda.yaml", "pollingInterval:", "pollingIntervall:")
    found = problems(deploy, "keda")
    assert any("ScaledObject/auth-worker" in p and "pollingIntervall" in p for p in found), found


def test_compose_typo(deploy):
    """A misspelt service key fails the compose-spec schema."""
    assert problems(deploy, "compose") == []
    edit(
        deploy / "compose.yaml",
        '    healthcheck:\n      test: ["CMD", "redis-cli"',
        '    healthchek:\n      test: ["CMD", "redis-cli"',
    )
    found = problems(deploy, "compose")
    assert len(found) == 1 and "healthchek" in found[0], found


def test_alert_rule_typos(deploy):
    """A misspelt metric, a misspelt label and a misspelt rule field are each refused."""
    assert problems(deploy, "alerts") == []
    alerts = deploy / "prometheus" / "alerts.yaml"
    edit(alerts, "max(minidoor_stream_oldest_waiting_seconds) > 2", "max(minidoor_stream_oldest_wait_seconds) > 2")
    edit(alerts, '{answered_by="user_store"}', '{answeredby="user_store"}')
    edit(alerts, "        for: 1m\n        labels:", "        fr: 1m\n        labels:")
    found = problems(deploy, "alerts")
    assert "alert MinidoorQueueWaiting: unknown metric minidoor_stream_oldest_wait_seconds" in found
    assert "alert MinidoorRevocationFeedLost: minidoor_gateway_introspections_total has no label answeredby" in found
    assert any("fr" in p and "alerts.yaml" in p for p in found), found


def test_dashboard_unknown_metric(deploy):
    """A panel whose query names a metric no service exports is refused."""
    assert problems(deploy, "dashboard") == []
    edit(deploy / "grafana" / "minidoor.json", "minidoor_worker_jobs_in_flight", "minidoor_worker_jobs_inflight")
    found = problems(deploy, "dashboard")
    assert found == ["panel 'Jobs in flight per worker': unknown metric minidoor_worker_jobs_inflight"]
