"""Environment variables in the manifests and compose against what each service reads (``shared/config.py``).

A variable a container sets must be one its service's config reads, or one another of its variables refers to as
``$(NAME)`` (Kubernetes expands those), or one KEDA reads from the container (a trigger's ``…FromEnv``), or one a
library of the service reads (``LIBRARY_ENV``). A ConfigMap key, shared by several services through ``envFrom``,
must be read by at least one of them. Every variable a service cannot start without (``REQUIRED``, plus the
config's fields without a default) must be set, and every ``$(NAME)`` must name a variable set before it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from shared.config import GatewayConfig, SandboxConfig, UserStoreConfig, WorkerConfig

CONFIGS: dict[str, type[msgspec.Struct]] = {
    "gateway": GatewayConfig,
    "auth_worker": WorkerConfig,
    "user_store": UserStoreConfig,
    "services.wechat_sandbox": SandboxConfig,
}

#: Read by a library, not by shared/config.py: asyncpg takes the password from PGPASSWORD when the URL has none.
LIBRARY_ENV: dict[str, frozenset[str]] = {"user_store": frozenset({"PGPASSWORD"})}

#: Defaults fit for `make run` only: a deployment must set these (deploy/README.md, "Environment of each service").
REQUIRED: dict[str, frozenset[str]] = {
    "gateway": frozenset({"INTERNAL_TOKEN", "REDIS_URL", "USER_STORE_URL", "STREAM_SEAL_KEY", "ISSUER"}),
    "auth_worker": frozenset({"INTERNAL_TOKEN", "REDIS_URL", "USER_STORE_URL", "STREAM_SEAL_KEY"}),
    "user_store": frozenset({"INTERNAL_TOKEN", "DATABASE_URL", "MASTER_KEY", "ISSUER"}),
    "services.wechat_sandbox": frozenset(),
}

_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def reads(module: str) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(CONFIGS[module])) | LIBRARY_ENV.get(module, set())


def required(module: str) -> frozenset[str]:
    fields = {f.encode_name for f in msgspec.structs.fields(CONFIGS[module]) if f.required}
    return frozenset(fields) | REQUIRED[module]


def service_of(command: Any) -> str | None:
    """``["python", "-m", "gateway"]`` -> ``gateway``; None for a command that is not a minidoor service."""
    if isinstance(command, list) and len(command) == 3 and command[:2] == ["python", "-m"] and command[2] in CONFIGS:
        return str(command[2])
    return None


def check_k8s(docs: list[dict[str, Any]], secret_keys: Iterable[str]) -> list[str]:
    """Problems with the rendered objects' environments (ConfigMaps, Deployments, KEDA ScaledObjects)."""
    problems: list[str] = []
    configmaps = {d["metadata"]["name"]: dict(d.get("data") or {}) for d in docs if d["kind"] == "ConfigMap"}
    keda_env: dict[str, set[str]] = {}
    for d in docs:
        if d["kind"] == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]["name"]
            for trigger in d["spec"].get("triggers", []):
                for key, value in (trigger.get("metadata") or {}).items():
                    if key.endswith("FromEnv"):
                        keda_env.setdefault(target, set()).add(value)
    secret_keys = set(secret_keys)
    used_cm_keys: dict[str, set[str]] = {name: set() for name in configmaps}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            module = service_of(c.get("command"))
            if module is None:
                problems.append(f"{where}: command {c.get('command')} is not a minidoor service")
                continue
            problems += _check_container(
                where, module, c, configmaps, used_cm_keys, keda_env.get(d["metadata"]["name"], set()), secret_keys
            )
    for name, keys in configmaps.items():
        for key in sorted(set(keys) - used_cm_keys[name]):
            problems.append(f"ConfigMap {name}: {key} is read by no service that uses it")
    return problems


def _check_container(
    where: str,
    module: str,
    c: dict[str, Any],
    configmaps: Mapping[str, Mapping[str, str]],
    used_cm_keys: dict[str, set[str]],
    keda: set[str],
    secret_keys: set[str],
) -> list[str]:
    problems: list[str] = []
    defined: list[str] = []
    from_cm: dict[str, str] = {}
    for source in c.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name not in configmaps:
            problems.append(f"{where}: envFrom names ConfigMap {name}, which the kustomization does not render")
            continue
        for key in configmaps[name]:
            from_cm[key] = name
            defined.append(key)
    own: list[str] = []
    referenced: set[str] = set()
    for var in c.get("env", []):
        for ref in _REF.findall(str(var.get("value", ""))):
            referenced.add(ref)
            if ref not in defined:
                problems.append(f"{where}: {var['name']} refers to $({ref}), which is not set before it")
        secret = (var.get("valueFrom") or {}).get("secretKeyRef")
        if secret and secret.get("name") == "minidoor" and secret.get("key") not in secret_keys:
            problems.append(f"{where}: {var['name']} reads Secret key {secret.get('key')}, not in secret.example.yaml")
        defined.append(var["name"])
        own.append(var["name"])
    readable = reads(module)
    for name in own:
        if name not in readable and name not in referenced and name not in keda:
            problems.append(f"{where}: {name} is set but {module} does not read it")
    for key, cm in from_cm.items():
        if key in readable or key in referenced or key in keda:
            used_cm_keys[cm].add(key)
    for name in sorted(required(module) - set(defined)):
        problems.append(f"{where}: {module} needs {name}, which is not set")
    return problems


def check_compose(compose: dict[str, Any]) -> list[str]:
    """Problems with compose.yaml's environments (after YAML merge keys)."""
    problems: list[str] = []
    for name, svc in (compose.get("services") or {}).items():
        module = service_of(svc.get("command"))
        if module is None:
            continue
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.partition("=")[::2] for item in env)
        readable = reads(module)
        for var in env:
            if var not in readable:
                problems.append(f"compose {name}: {var} is set but {module} does not read it")
        for var in sorted(required(module) - set(env)):
            if module != "services.wechat_sandbox":
                problems.append(f"compose {name}: {module} needs {var}, which is not set")
    return problems


def check_dockerfile_env(dockerfile: str) -> list[str]:
    """The image's ENV: each variable read by some service, or Python's and pip's own."""
    problems: list[str] = []
    names: list[str] = []
    joined = dockerfile.replace("\\\n", " ")
    for line in joined.splitlines():
        if line.strip().startswith("ENV "):
            names += [m.group(1) for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=", line)]
    anyone = frozenset().union(*(reads(m) for m in CONFIGS))
    for name in names:
        if name not in anyone and not name.startswith(("PYTHON", "PIP_")):
            problems.append(f"Dockerfile: ENV {name} is read by no service")
    return problems
