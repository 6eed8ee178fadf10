"""``make deploy-check``: everything in ``deploy/`` checked offline (no cluster, no Docker engine, no network).

- ``k8s/`` rendered by the kustomize inside the pinned ``kubectl`` wheel; every built-in object validated strictly
  (unknown fields are errors) by ``kubernetes-validate`` on the oldest and newest supported Kubernetes; the KEDA
  objects against KEDA's CRD schemas vendored in ``deploy/schemas/`` (made strict the same way); the image a
  registry's, never ``latest``; KEDA's stream and group those of ``shared/redis_keys.py``;
- ``compose.yaml`` against the vendored compose-spec schema (``check-jsonschema``); base images by digest;
- ``Dockerfile`` by ``hadolint``, its ``FROM`` by digest; every YAML file by ``yamllint``;
- ``prometheus/alerts.yaml`` against the vendored rule-file schema, each ``expr`` parsed by ``promql-parser`` and
  every metric it names one the services export; ``grafana/minidoor.json`` likewise;
- every environment variable the manifests and compose set is one the service reads (``shared/config.py``), and
  every variable it needs is set (:mod:`services.deploy_check.env`).

Each check prints one line, ``deploy-check <check>: ok (…)`` or ``deploy-check <check>: FAIL …``.
"""
