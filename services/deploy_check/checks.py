"""The checks of ``make deploy-check``, each a function of the deploy directory returning its problems."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

from services.deploy_check import env, promql
from services.deploy_check.tools import check_jsonschema, run
from shared.redis_keys import RedisKeys

#: The oldest and the newest Kubernetes the manifests support (README "Running in production").
K8S_VERSIONS = ("1.27.0", "1.37.0")
KEDA_CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

# kubernetes-validate reads and parses its 1.8 MB definitions file again for every object: read each file once.
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
        kubernetes_validate.utils.schema_contents
    )


@dataclass
class Rendered:
    """What several checks share: the kustomize output, parsed once."""

    docs: list[dict[str, Any]] = field(default_factory=list)


def yaml_lint(deploy: Path, _r: Rendered) -> tuple[str, list[str]]:
    code, out = run("yamllint", "--strict", "-c", str(deploy / ".yamllint"), str(deploy))
    return "yamllint clean", [out] if code else []


def dockerfile(deploy: Path, _r: Rendered) -> tuple[str, list[str]]:
    code, out = run("hadolint", str(deploy / "Dockerfile"))
    problems = [out] if code else []
    text = (deploy / "Dockerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.upper().startswith("FROM ")]
    problems += [f"Dockerfile: FROM {image} has no @sha256 digest" for image in froms if not _DIGEST.search(image)]
    problems += env.check_dockerfile_env(text)
    return f"hadolint clean, {len(froms)} FROM by digest, ENV read by the services", problems


def kustomize(deploy: Path, rendered: Rendered) -> tuple[str, list[str]]:
    code, out = run("kubectl", "kustomize", str(deploy / "k8s"))
    if code:
        return "", [f"kubectl kustomize failed: {out}"]
    rendered.docs = [d for d in yaml.safe_load_all(out) if d]
    problems = []
    for d in rendered.docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            tag = image.partition("@")[0].rpartition(":")[2] if ":" in image.partition("@")[0] else ""
            if "/" not in image.partition(":")[0] or (tag in ("", "latest") and "@" not in image):
                problems.append(f"{d['metadata']['name']}: image {image} needs a registry and a tag other than latest")
            if d["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False:
                problems.append(f"{d['metadata']['name']}: automountServiceAccountToken is not false")
    kinds = sorted({d["kind"] for d in rendered.docs})
    return f"{len(rendered.docs)} objects ({', '.join(kinds)})", problems


def kubernetes(deploy: Path, rendered: Rendered) -> tuple[str, list[str]]:
    problems = []
    builtin = [d for d in rendered.docs if not d["apiVersion"].startswith("keda.sh/")]
    for version in K8S_VERSIONS:
        for d in builtin:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{d['kind']}/{d['metadata']['name']} on {version}: {exc.message} at {exc.path}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                problems.append(f"{d['kind']}/{d['metadata']['name']} on {version}: no schema ({exc})")
    if not builtin:
        problems.append("no built-in objects rendered")
    return f"{len(builtin)} objects strict on Kubernetes {' and '.join(K8S_VERSIONS)}", problems


def _strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused, as the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def keda(deploy: Path, rendered: Rendered) -> tuple[str, list[str]]:
    schemas: dict[tuple[str, str], Any] = {}
    for name in KEDA_CRDS:
        crd = yaml.safe_load((deploy / "schemas" / name).read_text())
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"].pop("metadata", None)
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = schema
    problems = []
    objects = [d for d in rendered.docs if d["apiVersion"].startswith("keda.sh/")]
    for d in objects:
        schema = schemas.get((d["apiVersion"], d["kind"]))
        if schema is None:
            problems.append(f"{d['kind']} {d['apiVersion']}: not in the vendored KEDA CRDs")
            continue
        body = {k: v for k, v in d.items() if k != "metadata"}
        for error in jsonschema.Draft7Validator(schema).iter_errors(body):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {error.message} at {path or '(top)'}")
        if d["kind"] == "ScaledObject":
            problems += _keda_stream(d, rendered.docs)
    return f"{len(objects)} KEDA objects match KEDA's CRD schemas, stream and group follow KEY_PREFIX", problems


def _keda_stream(scaled: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    prefix = next((d["data"].get("KEY_PREFIX", "minidoor") for d in docs if d["kind"] == "ConfigMap"), "minidoor")
    keys = RedisKeys(prefix)
    problems = []
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger.get("metadata", {})
        if trigger["type"] == "redis-streams":
            if meta.get("stream") != keys.job_stream:
                problems.append(f"KEDA stream {meta.get('stream')} is not the job stream {keys.job_stream}")
            if meta.get("consumerGroup") != keys.worker_group:
                problems.append(f"KEDA consumerGroup {meta.get('consumerGroup')} is not {keys.worker_group}")
    return problems


def environment(deploy: Path, rendered: Rendered) -> tuple[str, list[str]]:
    secret = yaml.safe_load((deploy / "k8s" / "secret.example.yaml").read_text())
    problems = env.check_k8s(rendered.docs, secret.get("stringData", {}))
    problems += env.check_compose(yaml.safe_load((deploy / "compose.yaml").read_text()))
    return "every variable set is read, every variable needed is set (k8s and compose)", problems


def compose(deploy: Path, _r: Rendered) -> tuple[str, list[str]]:
    code, out = check_jsonschema(deploy / "schemas" / "compose-spec.json", deploy / "compose.yaml")
    problems = [out] if code else []
    data = yaml.safe_load((deploy / "compose.yaml").read_text())
    for name, svc in data["services"].items():
        image = svc.get("image", "")
        if "build" not in svc and not _DIGEST.search(image):
            problems.append(f"compose {name}: image {image} has no @sha256 digest")
    return "compose-spec schema, base images by digest", problems


def alerts(deploy: Path, _r: Rendered) -> tuple[str, list[str]]:
    path = deploy / "prometheus" / "alerts.yaml"
    code, out = check_jsonschema(deploy / "schemas" / "prometheus.rules.json", path)
    problems = [out] if code else []
    series = promql.exported_series()
    rules = [r for g in (yaml.safe_load(path.read_text()) or {}).get("groups") or [] for r in g.get("rules") or []]
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        problems += [f"alert {name}: {p}" for p in promql.check_expr(str(rule.get("expr", "")), series)]
    if not rules:
        problems.append("alerts.yaml has no rules")
    return f"{len(rules)} rules: rule-file schema, every expr parses and names exported metrics", problems


def dashboard(deploy: Path, _r: Rendered) -> tuple[str, list[str]]:
    path = deploy / "grafana" / "minidoor.json"
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        return "", [f"grafana/minidoor.json is not JSON: {exc}"]
    series = promql.exported_series()
    problems = []
    panels = list(data.get("panels", []))
    exprs = 0
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])  # rows
        targets = panel.get("targets", [])
        if panel.get("type") != "row" and not targets:
            problems.append(f"panel {panel.get('title')!r} has no query")
        for target in targets:
            exprs += 1
            problems += [
                f"panel {panel.get('title')!r}: {p}" for p in promql.check_expr(target.get("expr", ""), series)
            ]
    return f"{exprs} panel queries parse and name exported metrics", problems


CHECKS: tuple[tuple[str, Callable[[Path, Rendered], tuple[str, list[str]]]], ...] = (
    ("yamllint", yaml_lint),
    ("dockerfile", dockerfile),
    ("kustomize", kustomize),
    ("kubernetes", kubernetes),
    ("keda", keda),
    ("compose", compose),
    ("environment", environment),
    ("alerts", alerts),
    ("dashboard", dashboard),
)


def check_all(deploy: Path, report: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Run every check on ``deploy``; ``report`` gets one line per check. The problems, by check."""
    rendered = Rendered()
    failures: dict[str, list[str]] = {}
    for name, check in CHECKS:
        try:
            summary, problems = check(deploy, rendered)
        except Exception as exc:  # a check that cannot run (a file gone, a tool missing) is a failure, named
            summary, problems = "", [f"{type(exc).__name__}: {exc}"]
        if problems:
            failures[name] = problems
            report(f"deploy-check {name}: FAIL")
            for problem in problems:
                report(f"    {problem}")
        else:
            report(f"deploy-check {name}: ok ({summary})")
    return failures
