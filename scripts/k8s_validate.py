"""``make helm-validate``: prove the chart and the kustomize overlays offline, with real tools.

Steps (each prints one summary line; the run fails when any step fails):

1. ``helm lint --strict`` of the chart, with its defaults and with every ``ci/*-values.yaml``;
2. ``helm template`` of every scenario (``SCENARIOS``: values file, ``--api-versions``, the kinds
   that must and must not render — trap 11);
3. every rendered object validated: core kinds with kubernetes-validate ``--strict`` for each of
   ``KUBE_VERSIONS``, custom resources with the strict JSON Schemas in ``--crd-schemas``
   (``{group}/{kind}_{version}.json``; a kind without a schema is an error);
4. every kustomize overlay built with ``kubectl kustomize`` and validated the same way;
5. checkov (``--skip-download``, helm on PATH) on the chart and on everything rendered, with the
   skips in ``deploy/helm/checkov-skips.yaml`` (each with its reason);
6. yamllint on the values files and overlays; hadolint on the Dockerfile;
7. the generated chart files, README and ``deploy/k8s`` base drift-checked.

The functions are importable: ``tests/deploy`` renders the same scenarios with them.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/ferry"
OVERLAYS = ROOT / "deploy/k8s/overlays"
TOOLS = ROOT / ".tools/bin"
HELM = os.environ.get("HELM", str(TOOLS / "helm"))
KUBECTL = os.environ.get("KUBECTL", str(TOOLS / "kubectl"))
CHECKOV = os.environ.get("CHECKOV", str(ROOT / ".tools/checkov/bin/checkov"))
CHECKOV_SKIPS = ROOT / "deploy/helm/checkov-skips.yaml"
YAMLLINT_CONFIG = ROOT / "deploy/helm/yamllint.yaml"
DEFAULT_CRD_SCHEMAS = ROOT.parent / "shared/crds/jsonschema-strict"
# Kubernetes minors validated against (kubernetes-validate ships 1.25..1.37 schemas): the chart's
# floor is 1.30 (preStop sleep action); 1.33 is the oldest still in upstream support, 1.37 the newest.
KUBE_VERSIONS = ("1.33.0", "1.37.0")
RELEASE, NAMESPACE = "ferry", "ferry"
MONITORING = (
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
CORE_GROUPS = {"", "apps", "autoscaling", "policy", "batch", "networking.k8s.io", "rbac.authorization.k8s.io"}


@dataclass(frozen=True)
class Scenario:
    values: str
    api_versions: tuple[str, ...] = ()
    present: tuple[str, ...] = ()  # kinds that must render
    absent: tuple[str, ...] = ()  # kinds that must not
    counts: dict[str, int] = field(default_factory=dict)  # exact counts where they matter


BASE = ("ConfigMap", "Service", "Pod")
SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(
        "default-values.yaml",
        present=(
            *BASE,
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceAccount",
        ),
        # No monitoring API offered: the CRD-gated objects stay out (and NOTES.txt says so).
        absent=("ServiceMonitor", "PrometheusRule", "Rollout", "ScaledObject", "Ingress"),
        counts={"Deployment": 1, "Service": 1, "ConfigMap": 2},
    ),
    "canary": Scenario(
        "canary-values.yaml",
        present=(*BASE, "Deployment"),
        absent=("Rollout", "AnalysisTemplate"),
        counts={"Deployment": 2, "Service": 3},
    ),
    "rollout": Scenario(
        "rollout-values.yaml",
        api_versions=("argoproj.io/v1alpha1", *MONITORING),
        present=(*BASE, "Rollout", "AnalysisTemplate", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"),
        absent=("Deployment",),
        counts={"Service": 3, "Rollout": 1, "AnalysisTemplate": 1},
    ),
    "autoscaling-keda": Scenario(
        "autoscaling-keda-values.yaml",
        api_versions=("keda.sh/v1alpha1", *MONITORING),
        present=(*BASE, "HorizontalPodAutoscaler", "ScaledObject", "Deployment", "ServiceMonitor"),
        counts={"Deployment": 2, "ScaledObject": 1, "HorizontalPodAutoscaler": 1},
    ),
    "loadtest": Scenario(
        "loadtest-values.yaml",
        present=(*BASE, "Job", "Deployment"),
        counts={"Job": 1, "Deployment": 2, "Service": 2},
    ),
    "monitoring": Scenario(
        "monitoring-values.yaml",
        api_versions=MONITORING,
        present=(*BASE, "ServiceMonitor", "PrometheusRule"),
        counts={"ServiceMonitor": 1, "PrometheusRule": 1, "ConfigMap": 2},
    ),
    "ingress": Scenario("ingress-values.yaml", present=(*BASE, "Ingress"), counts={"Ingress": 1}),
    "worker-redis": Scenario(
        "worker-redis-values.yaml",
        present=(*BASE, "Deployment", "NetworkPolicy"),
        absent=("ScaledObject",),
        counts={"Deployment": 2, "Service": 2},
    ),
    "minimal": Scenario(
        "minimal-values.yaml",
        present=BASE,
        absent=(
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceAccount",
            "ServiceMonitor",
            "PrometheusRule",
        ),
        counts={"ConfigMap": 1, "Deployment": 1, "Service": 1},
    ),
}


def ensure_k8s_tools() -> None:
    """helm and kubectl in .tools/bin (the Makefile's checksum-verified install), for direct pytest runs."""
    if Path(HELM).exists() and Path(KUBECTL).exists():
        return
    subprocess.run(
        ["bash", str(ROOT / "scripts/install-k8s-tools.sh"), str(TOOLS)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
    )


class Failure(Exception):
    """A validation step found problems; the message lists them."""


# --- rendering ---------------------------------------------------------------------------------
def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError:
        raise Failure(f"{argv[0]} not found: run `make k8s-tools` (helm, kubectl) / `make checkov`") from None


def helm_template(values: list[Path] | None = None, api_versions: tuple[str, ...] = (), *extra: str) -> str:
    argv = [HELM, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values or []:
        argv += ["--values", str(path)]
    for api in api_versions:
        argv += ["--api-versions", api]
    result = run([*argv, *extra])
    if result.returncode != 0:
        raise Failure(result.stderr.strip())
    return result.stdout


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def render_scenario(name: str, *extra: str) -> tuple[dict, ...]:
    scenario = SCENARIOS[name]
    return tuple(documents(helm_template([CHART / "ci" / scenario.values], scenario.api_versions, *extra)))


@functools.cache
def build_overlay(name: str) -> tuple[dict, ...]:
    result = run([KUBECTL, "kustomize", str(OVERLAYS / name)])
    if result.returncode != 0:
        raise Failure(f"kubectl kustomize overlays/{name}: {result.stderr.strip()}")
    return tuple(documents(result.stdout))


def kinds(docs: tuple[dict, ...] | list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    return counts


def check_kinds(name: str, docs: tuple[dict, ...]) -> list[str]:
    scenario, found = SCENARIOS[name], kinds(docs)
    problems = [f"{name}: {kind} missing" for kind in scenario.present if kind not in found]
    problems += [f"{name}: {kind} rendered but must not" for kind in scenario.absent if kind in found]
    problems += [
        f"{name}: {found.get(kind, 0)} {kind} rendered, expected {count}"
        for kind, count in scenario.counts.items()
        if found.get(kind, 0) != count
    ]
    return problems


# --- schema validation ---------------------------------------------------------------------------
def _group_version(doc: dict) -> tuple[str, str]:
    group, _, version = doc["apiVersion"].rpartition("/")
    return group, version


def is_core(doc: dict) -> bool:
    return _group_version(doc)[0] in CORE_GROUPS


@functools.cache
def _kubernetes_validate() -> Any:
    import kubernetes_validate.utils as utils

    # Each call re-reads the (large) schema files; they never change during a run.
    utils.schema_contents = functools.cache(utils.schema_contents)
    return utils


def validate_core(doc: dict, version: str) -> str | None:
    utils = _kubernetes_validate()
    try:
        utils.validate(doc, version, strict=True)
    except utils.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message} at /{path}"
    except utils.SchemaNotFoundError as exc:
        return f"{doc['kind']}/{doc['metadata']['name']}: {exc}"
    return None


@functools.cache
def _cr_validator(schema_dir: str, group: str, kind: str, version: str) -> Any:
    import jsonschema

    path = Path(schema_dir) / group / f"{kind.lower()}_{version}.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text())
    return jsonschema.Draft7Validator(schema)


def validate_cr(doc: dict, schema_dir: Path) -> list[str]:
    group, version = _group_version(doc)
    validator = _cr_validator(str(schema_dir), group, doc["kind"], version)
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if validator is None:
        wanted = f"{group}/{doc['kind'].lower()}_{version}.json"
        return [f"{name}: no schema {wanted} in {schema_dir} (a kind without a schema fails)"]
    return [
        f"{name}: {error.message} at /{'/'.join(str(p) for p in error.absolute_path)}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def validate_docs(label: str, docs: tuple[dict, ...], schema_dir: Path | None) -> tuple[list[str], dict[str, int]]:
    """Problems of every object in ``docs``; and how many core / custom objects were checked."""
    problems, counted = [], {"core": 0, "custom": 0, "custom-unchecked": 0}
    for doc in docs:
        if is_core(doc):
            counted["core"] += 1
            problems += [f"{label}: {p}" for v in KUBE_VERSIONS if (p := validate_core(doc, v))]
        elif schema_dir is None:
            counted["custom-unchecked"] += 1
        else:
            counted["custom"] += 1
            problems += [f"{label}: {p}" for p in validate_cr(doc, schema_dir)]
    return problems, counted


# --- checkov -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skip:
    id: str
    reason: str
    frameworks: tuple[str, ...] = ()  # empty: every framework
    resources: tuple[str, ...] = ()  # fnmatch patterns of checkov resource ids; empty: every resource

    def covers(self, framework: str, check_id: str, resource: str) -> bool:
        return (
            check_id == self.id
            and (not self.frameworks or framework in self.frameworks)
            and (not self.resources or any(fnmatch.fnmatchcase(resource, p) for p in self.resources))
        )


def checkov_skips() -> list[Skip]:
    """The skips in deploy/helm/checkov-skips.yaml; an entry without an id or a reason is an error."""
    entries = yaml.safe_load(CHECKOV_SKIPS.read_text())["skips"] or []
    bad = [e for e in entries if not str(e.get("reason", "")).strip() or not str(e.get("id", "")).startswith("CKV")]
    if bad:
        raise Failure(f"{CHECKOV_SKIPS.name}: every skip needs an id and a reason: {bad}")
    return [
        Skip(e["id"], " ".join(e["reason"].split()), tuple(e.get("frameworks", ())), tuple(e.get("resources", ())))
        for e in entries
    ]


def _json_stream(text: str) -> list[dict]:
    """checkov prints one JSON document per directory/framework, back to back."""
    decoder, out, i, text = json.JSONDecoder(), [], 0, text.strip()
    while i < len(text):
        obj, i = decoder.raw_decode(text, i)
        out.extend(obj if isinstance(obj, list) else [obj])
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def run_checkov(rendered: dict[str, tuple[dict, ...]]) -> tuple[list[str], dict[str, int]]:
    """checkov on the chart (helm framework: checkov renders it with helm) and on every rendered
    scenario and overlay (kubernetes framework). Skips that apply everywhere go to --skip-check;
    scoped ones (a framework, some resources) are matched here against checkov's failures."""
    skips = checkov_skips()
    global_ids = [s.id for s in skips if not s.frameworks and not s.resources]
    env = {**os.environ, "PATH": f"{Path(HELM).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="ferry-checkov-") as tmp:
        for label, docs in rendered.items():
            (Path(tmp) / f"{label}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        argv = [CHECKOV, "--skip-download", "--quiet", "--compact", "--output", "json"]
        argv += ["--framework", "helm", "kubernetes", "--directory", str(CHART), "--directory", tmp]
        if global_ids:
            argv += ["--skip-check", ",".join(global_ids)]
        result = run(argv, env=env)
    try:
        reports = _json_stream(result.stdout)
    except json.JSONDecodeError:
        raise Failure(
            f"checkov printed no JSON (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        ) from None
    problems, totals = [], {"passed": 0, "failed": 0, "skipped": 0, "accepted": 0}
    frameworks = set()
    for report in reports:
        if "check_type" not in report:  # a framework with nothing to scan reports only a summary
            continue
        framework = report["check_type"]
        frameworks.add(framework)
        for key in ("passed", "skipped"):
            totals[key] += report["summary"].get(key, 0)
        for check in report["results"].get("failed_checks", []):
            if any(s.covers(framework, check["check_id"], check["resource"]) for s in skips):
                totals["accepted"] += 1
                continue
            totals["failed"] += 1
            problems.append(
                f"{framework}: {check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
            )
    if not {"helm", "kubernetes"} <= frameworks:
        problems.append(f"checkov scanned with {sorted(frameworks)}; helm and kubernetes expected (is helm on PATH?)")
    return problems, totals


# --- the run -------------------------------------------------------------------------------------
class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool | None, str]] = []

    def step(self, name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = fn()
            ok: bool | None = True
        except Failure as exc:
            detail, ok = str(exc), False
        except SkipStep as exc:
            detail, ok = str(exc), None
        took = time.monotonic() - started
        mark = {True: "ok  ", False: "FAIL", None: "SKIP"}[ok]
        first, *rest = detail.splitlines() or [""]
        print(f"  {mark} {name:<34} {first} ({took:.1f}s)", flush=True)
        for line in rest[:60]:
            print(f"         {line}")
        self.rows.append((name, ok, detail))

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.rows if ok is False]


class SkipStep(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description="Validate the ferry chart and kustomize overlays offline.")
    parser.add_argument("--crd-schemas", default=os.environ.get("CRD_SCHEMAS", str(DEFAULT_CRD_SCHEMAS)))
    parser.add_argument(
        "--skip-checkov", action="store_true", help="for quick local runs; make helm-validate never skips"
    )
    args = parser.parse_args()
    schema_dir: Path | None = Path(args.crd_schemas).resolve()
    if not schema_dir.is_dir():
        print(
            f"\n  !!! CRD schema directory {args.crd_schemas} not found: custom resources (ServiceMonitor, "
            "PrometheusRule, Rollout, AnalysisTemplate, ScaledObject) are NOT validated.\n"
            "  !!! Set CRD_SCHEMAS=<dir with {group}/{kind}_{version}.json>.\n",
            flush=True,
        )
        schema_dir = None

    report = Report()
    rendered: dict[str, tuple[dict, ...]] = {}
    print(f"helm-validate: chart {CHART.relative_to(ROOT)}, Kubernetes {', '.join(KUBE_VERSIONS)}")

    def lint() -> str:
        failures = []
        for values in [None, *sorted((CHART / "ci").glob("*-values.yaml"))]:
            argv = [HELM, "lint", "--strict", str(CHART), *(["--values", str(values)] if values else [])]
            result = run(argv)
            if result.returncode != 0:
                failures.append(f"{values.name if values else 'defaults'}: {result.stdout}{result.stderr}")
        if failures:
            raise Failure("\n".join(failures))
        return f"defaults + {len(list((CHART / 'ci').glob('*-values.yaml')))} ci values files"

    report.step("helm lint --strict", lint)

    def render() -> str:
        problems = []
        for name in SCENARIOS:
            try:
                rendered[name] = render_scenario(name)
            except Failure as exc:
                problems.append(f"{name}: {exc}")
                continue
            problems += check_kinds(name, rendered[name])
        missing = {p.name for p in (CHART / "ci").glob("*-values.yaml")} - {s.values for s in SCENARIOS.values()}
        problems += [f"ci/{m} is not a scenario in scripts/k8s_validate.py" for m in sorted(missing)]
        if problems:
            raise Failure("\n".join(problems))
        return ", ".join(f"{n}={len(d)}" for n, d in rendered.items())

    report.step("helm template (scenarios, kinds)", render)

    def overlays() -> str:
        for overlay in sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()):
            rendered[f"overlay-{overlay}"] = build_overlay(overlay)
        return ", ".join(f"{n}={len(d)}" for n, d in rendered.items() if n.startswith("overlay-"))

    report.step("kubectl kustomize (overlays)", overlays)

    def schemas() -> str:
        problems, total = [], {"core": 0, "custom": 0, "custom-unchecked": 0}
        for label, docs in rendered.items():
            found, counted = validate_docs(label, docs, schema_dir)
            problems += found
            for key, value in counted.items():
                total[key] += value
        if problems:
            raise Failure("\n".join(problems))
        detail = (
            f"{total['core']} core objects x Kubernetes {'/'.join(KUBE_VERSIONS)} (kubernetes-validate --strict), "
            f"{total['custom']} custom resources (strict CRD schemas)"
        )
        if total["custom-unchecked"]:
            raise SkipStep(f"{detail}; {total['custom-unchecked']} custom resources NOT checked: no CRD_SCHEMAS dir")
        return detail

    report.step("schemas (core + CRDs)", schemas)

    def checkov() -> str:
        if args.skip_checkov:
            raise SkipStep("--skip-checkov")
        problems, totals = run_checkov(rendered)
        if problems:
            raise Failure("\n".join(problems))
        everywhere = [s.id for s in checkov_skips() if not s.frameworks and not s.resources]
        return (
            f"{totals['passed']} passed, 0 failed; skipped everywhere: {', '.join(everywhere)}; "
            f"{totals['accepted']} scoped failures accepted (reasons: {CHECKOV_SKIPS.relative_to(ROOT)})"
        )

    report.step("checkov (helm + rendered)", checkov)

    def yamllint() -> str:
        files = [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml")), *sorted(OVERLAYS.rglob("*.yaml"))]
        result = run([sys.executable, "-m", "yamllint", "--strict", "-c", str(YAMLLINT_CONFIG), *map(str, files)])
        if result.returncode != 0:
            raise Failure(result.stdout + result.stderr)
        return f"{len(files)} files"

    report.step("yamllint (values, overlays)", yamllint)

    def hadolint() -> str:
        result = run([str(Path(sys.executable).parent / "hadolint"), str(ROOT / "service/Dockerfile")])
        if result.returncode != 0:
            raise Failure(result.stdout + result.stderr)
        return "service/Dockerfile"

    report.step("hadolint", hadolint)

    def generated() -> str:
        result = run([sys.executable, str(ROOT / "scripts/generate_deploy.py"), "--check"])
        if result.returncode != 0:
            raise Failure(result.stdout + result.stderr)
        return "chart files/, chart README, deploy/k8s base and canary"

    report.step("generated files up to date", generated)

    failed = report.failed
    skipped = [name for name, ok, _ in report.rows if ok is None]
    print(
        f"helm-validate: {len(report.rows) - len(failed) - len(skipped)} of {len(report.rows)} steps ok"
        + (f", SKIPPED: {', '.join(skipped)}" if skipped else "")
        + (f", FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    if shutil.which(HELM) is None and not Path(HELM).exists():
        sys.exit(f"{HELM} not found: run `make k8s-tools`")
    sys.exit(main())
