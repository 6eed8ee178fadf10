# Every ops task of minidoor. `make run` and `make test` set up everything they need.
.DEFAULT_GOAL := all
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
sources := gateway auth_worker user_store shared services tests
STAMP := $(VENV)/.installed-stamp

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "minidoor needs Python 3.11 or newer"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

.PHONY: install
install: $(STAMP)

.PHONY: lock
lock: install  ## re-resolve requirements.lock from pyproject.toml
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra embedded --extra build --python-version 3.11 \
		-o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra build --python-version 3.11 -o deploy/requirements.runtime.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra embedded --extra build --extra deploy-check \
		-c requirements.lock \
		--python-version 3.11 -o deploy/requirements.deploy-check.lock

.PHONY: run
run: install  ## the whole stack in the foreground (embedded Postgres/Redis/WeChat sandbox unless configured)
	$(PY) -m services run

# The official casdoor SDK pins older aiohttp/cryptography/PyJWT than ours: it gets a venv of its own, and the
# tests drive it as the external client it is (tests/test_casdoor_sdk.py).
SDK_VENV ?= .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed-stamp

$(SDK_STAMP): tests/sdk/requirements.lock
	@test -x $(SDK_VENV)/bin/python || $(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.lock
	@touch $@

.PHONY: sdk-venv
sdk-venv: $(SDK_STAMP)  ## the casdoor SDK in its own venv, for the SDK tests

.PHONY: test
test: install sdk-venv
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: chaos
chaos: install  ## only the fault tests (also part of `make test`); prints their figures
	$(PY) -m pytest tests/test_faults.py -s $(PYTEST_ARGS)

.PHONY: fuzz
fuzz: install  ## only the schemathesis and hypothesis fuzz tests (also part of `make test`), with their figures
	$(PY) -m pytest tests/test_fuzz.py tests/test_parsers_fuzz.py -s $(PYTEST_ARGS)

.PHONY: test-miniprogram
test-miniprogram: install  ## only the mini-program SDK's node tests against a live stack (also part of `make test`)
	$(PY) -m pytest tests/test_miniprogram_sdk.py -rs $(PYTEST_ARGS)

.PHONY: scale-test
scale-test: install  ## 11 hosts in network namespaces (root) under load and network faults; one line per run
	$(PY) -m services.scale_test

# `make bench`'s load tool and peer: Debian's wrk (installed when missing, as root: so it is here and in CI) and
# oidc-provider with its dependencies, pinned by services/bench/peer/package-lock.json (node_modules is ignored).
PEER_DIR := services/bench/peer
PEER_STAMP := $(PEER_DIR)/node_modules/.installed-stamp

$(PEER_STAMP): $(PEER_DIR)/package-lock.json
	cd $(PEER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: wrk
wrk:
	@command -v wrk >/dev/null || { test "$$(id -u)" = 0 || { echo "make bench needs wrk: apt-get install wrk, as root" >&2; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

.PHONY: bench
bench: install wrk $(PEER_STAMP)  ## minidoor beside oidc-provider under wrk: table, bench/results/<time>.{json,md,png} (~6 min)
	$(PY) -m services.bench $(BENCH_ARGS)

.PHONY: bench-smoke
# The smoke run checks that every process type is counted, so its stack is always the embedded one.
bench-smoke: install wrk $(PEER_STAMP)  ## every bench scenario for ~2 s, then a check of the files and fields, not speeds (CI)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m services.bench --smoke --out bench/results/smoke $(BENCH_ARGS)

.PHONY: testcov
testcov: install sdk-venv
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

.PHONY: format
format: install
	$(VENV)/bin/ruff format $(sources)
	$(VENV)/bin/ruff check --fix $(sources)

.PHONY: lint
lint: install
	$(VENV)/bin/ruff check $(sources)
	$(VENV)/bin/ruff format --check $(sources)

.PHONY: mypy
mypy: install
	$(VENV)/bin/mypy $(sources)

.PHONY: messages
messages: install  ## error messages the code has and a catalogue lacks: appended to shared/locale/*/minidoor.po, empty
	$(PY) -m services.catalogue

.PHONY: all
all: lint mypy test

# Admin tasks. They talk to DATABASE_URL, or to the embedded Postgres under STATE_DIR (default .run/).
.PHONY: create-org
create-org: install  ## make create-org NAME=acme
	$(PY) -m services admin create-org --name "$(NAME)"

.PHONY: create-app
create-app: install  ## make create-app ORG=acme NAME=shop [ALG=ES256] (default DEFAULT_SIGNING_ALG, else RS256)
	$(PY) -m services admin create-app --org "$(ORG)" --name "$(NAME)" $(if $(ALG),--alg "$(ALG)")

.PHONY: set-alg
set-alg: install  ## make set-alg APP=shop ALG=ES256: its new tokens signed so (its old ones stay valid)
	$(PY) -m services admin set-alg --app "$(APP)" --alg "$(ALG)"

.PHONY: attach-provider
attach-provider: install  ## make attach-provider APP=shop APPID=wx... [SECRET_FILE=path]; else WECHAT_APP_SECRET or a prompt
	$(if $(SECRET),$(error SECRET= is refused: it would show in ps and in make's echo; use SECRET_FILE=path, WECHAT_APP_SECRET or the prompt))
	$(PY) -m services admin attach-provider --app "$(APP)" --appid "$(APPID)" $(if $(SECRET_FILE),--secret-file "$(SECRET_FILE)")

.PHONY: create-user
create-user: install  ## make create-user ORG=acme NAME=alice PHONE=13800138000 [COUNTRY=86]: signs in with that phone
	$(PY) -m services admin create-user --org "$(ORG)" --name "$(NAME)" --phone "$(PHONE)" $(if $(COUNTRY),--country-code "$(COUNTRY)")

.PHONY: set-preprovisioned
set-preprovisioned: install  ## make set-preprovisioned APP=shop ON=1: phone sign-in only for users made by create-user
	$(PY) -m services admin set-preprovisioned --app "$(APP)" --on "$(ON)"

.PHONY: set-content-safety
set-content-safety: install  ## make set-content-safety APP=shop ON=1: names and avatars pass WeChat's content security; prints the message-push settings
	$(PY) -m services admin set-content-safety --app "$(APP)" --on "$(ON)"

.PHONY: list
list: install  ## organizations, applications and providers as JSON
	$(PY) -m services admin list

.PHONY: rotate-master-key
rotate-master-key: install  ## re-seal everything under MASTER_KEY (new), reading MASTER_KEY_PREVIOUS (old) too
	$(PY) -m services admin rotate-master-key

.PHONY: rotate-keys
rotate-keys: install  ## new signing key (of ALG, else of every algorithm in use), signing after ACTIVATE_IN s (90)
	$(PY) -m services admin rotate-keys $(if $(ALG),--alg "$(ALG)") $(if $(ACTIVATE_IN),--activate-in "$(ACTIVATE_IN)")

.PHONY: retire-key
retire-key: install  ## make retire-key KID=key-... (its tokens stop verifying at once)
	$(PY) -m services admin retire-key --kid "$(KID)"

.PHONY: list-keys
list-keys: install  ## signing keys and their status as JSON
	$(PY) -m services admin list-keys

.PHONY: certificate
certificate: install  ## make certificate APP=shop: the PEM a Casdoor server SDK verifies tokens with
	$(PY) -m services admin certificate --app "$(APP)" --pem

.PHONY: delete-user
delete-user: install  ## make delete-user ORG=acme NAME=alice: every token revoked, the user's data erased (a tombstone stays)
	$(PY) -m services admin delete-user --org "$(ORG)" --name "$(NAME)"

.PHONY: import-casdoor
import-casdoor: install  ## make import-casdoor FILE=init_data.json [DRY_RUN=1] [WITH_CERTS=1]: Casdoor's data, same clientIds
	$(PY) -m services admin import-casdoor --file "$(FILE)" $(if $(DRY_RUN),--dry-run) $(if $(WITH_CERTS),--with-certs)

.PHONY: audit
audit: install  ## the audit log as JSON lines, oldest first: make audit [ORG=acme] [SINCE=2026-12-01T00:00Z]
	$(PY) -m services admin audit $(if $(ORG),--org "$(ORG)") $(if $(SINCE),--since "$(SINCE)")

.PHONY: clean
clean:
	rm -rf $(VENV) $(SDK_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: clean-state
clean-state:  ## forget the embedded databases and demo data
	rm -rf .run

# Containers (deploy/README.md). Need a Docker engine; compose-up needs deploy/.env (from deploy/.env.example).
IMAGE ?= minidoor:latest

.PHONY: image
image:  ## the one container image of every service: make image [IMAGE=registry/minidoor:tag]
	docker build -f deploy/Dockerfile -t $(IMAGE) .

.PHONY: compose-up
compose-up:  ## PostgreSQL, Redis and two replicas of each service in Docker, gateway proxy on 127.0.0.1:8000
	docker compose -f deploy/compose.yaml --env-file deploy/.env up -d --build

# deploy-check's tools (kustomize in kubectl, kubernetes-validate, check-jsonschema, hadolint, yamllint, a PromQL
# parser) come from their own lock, a superset of requirements.lock with the same pins: never in the image.
DEPLOY_CHECK_STAMP := $(VENV)/.deploy-check-stamp

$(DEPLOY_CHECK_STAMP): $(STAMP) deploy/requirements.deploy-check.lock
	$(PY) -m pip install --quiet --disable-pip-version-check -r deploy/requirements.deploy-check.lock
	@touch $@

.PHONY: deploy-check
deploy-check: $(DEPLOY_CHECK_STAMP)  ## deploy/ checked offline: kustomize render, k8s/KEDA/compose schemas, hadolint, yamllint, alerts, env
	$(PY) -m services.deploy_check
	$(PY) -m pytest tests/test_deploy_check.py -q $(PYTEST_ARGS)
