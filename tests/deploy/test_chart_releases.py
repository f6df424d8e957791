"""Many releases, one cluster: what one release renders never selects another release's series or pods.

Three releases are rendered with everything that queries Prometheus switched on (ServiceMonitor,
PrometheusRule, dashboards, the Rollout's AnalysisTemplate, KEDA's ScaledObject): two in one namespace
(``ferry`` and ``shop``) and one of the same name in another namespace. The series a release produces
are the label sets its ServiceMonitor gives its targets (``job`` from the scraped Services' job label,
``namespace`` theirs); the recorded series of its rules keep those two labels. Every vector selector of
every rule, dashboard panel, analysis and KEDA query is parsed (tests/support/promql.py) and checked:
it names a job and a namespace, it selects some series of its own release, and none of the other's.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

from support.promql import Selector, selectors  # noqa: E402

CHART = kv.CHART
# name: (release, namespace). "ferry" and "shop" share a namespace; "ferry" and "ferry-b" share a name.
RELEASES = {"ferry": ("ferry", "team-a"), "shop": ("shop", "team-a"), "ferry-b": ("ferry", "team-b")}
PAIRS = [pytest.param(a, b, id=f"{a}-vs-{b}") for a, b in itertools.permutations(RELEASES, 2)]
VALUES = [CHART / "ci/rollout-worker-values.yaml", CHART / "ci/monitoring-values.yaml"]
API_VERSIONS = ("argoproj.io/v1alpha1", "keda.sh/v1alpha1", *kv.MONITORING)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def _helm(release: str, namespace: str) -> str:
    argv = [kv.HELM, "template", release, str(CHART), "--namespace", namespace]
    argv += [arg for path in VALUES for arg in ("--values", str(path))]
    argv += [arg for api in API_VERSIONS for arg in ("--api-versions", api)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@cache
def rendered() -> dict[str, str]:
    """Every release's manifests, rendered side by side (one helm process each)."""
    with ThreadPoolExecutor(len(RELEASES)) as pool:
        texts = pool.map(lambda args: _helm(*args), RELEASES.values())
    return dict(zip(RELEASES, texts, strict=True))


@cache
def docs(name: str) -> tuple[dict, ...]:
    return tuple(kv.documents(rendered()[name]))


def of_kind(name: str, kind: str) -> list[dict]:
    return [d for d in docs(name) if d["kind"] == kind]


def series(name: str) -> list[dict[str, str]]:
    """The `job`/`namespace` labels of the series the release's ServiceMonitor scrapes."""
    (monitor,) = of_kind(name, "ServiceMonitor")
    spec = monitor["spec"]
    out = []
    for service in of_kind(name, "Service"):
        meta = service["metadata"]
        labels = meta.get("labels", {})
        selected = spec["selector"]["matchLabels"].items() <= labels.items() and all(
            e["key"] in labels for e in spec["selector"]["matchExpressions"] if e["operator"] == "Exists"
        )
        if selected and meta["namespace"] in spec["namespaceSelector"]["matchNames"]:
            out.append({"job": labels[spec["jobLabel"]], "namespace": meta["namespace"]})
    return out


def _dashboard_exprs(board: dict) -> list[str]:
    values = {v["name"]: v["current"]["value"] for v in board["templating"]["list"] if v.get("current")}

    # The pod and track variables select within the release; their "All" is the widest choice.
    values.update({"pod": ".*", "track": ".*"})

    def resolve(expr: str) -> str:
        expr = expr.replace("$__rate_interval", "5m")
        for var in ("namespace", "job", "pod", "track"):
            expr = expr.replace(f"${{{var}}}", values[var]).replace(f"${var}", values[var])
        assert "$" not in expr, f"unresolved dashboard variable in {expr!r}"
        return expr

    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(resolve(node["expr"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(board["panels"])
    walk(board["annotations"])
    return found


@cache
def queries(name: str) -> list[tuple[str, str]]:
    """(where, PromQL) of every query the release renders, templating variables resolved as rendered."""
    out = []
    for rule in of_kind(name, "PrometheusRule"):
        for group in rule["spec"]["groups"]:
            out += [(f"rule {r.get('record') or r['alert']}", r["expr"]) for r in group["rules"]]
    for configmap in of_kind(name, "ConfigMap"):
        if configmap["metadata"]["name"].endswith("-dashboards"):
            for key, text in configmap["data"].items():
                out += [(f"dashboard {key}", expr) for expr in _dashboard_exprs(json.loads(text))]
    (rollout,) = of_kind(name, "Rollout")
    args = {
        a["name"]: a.get("value", "0123abcd")
        for step in rollout["spec"]["strategy"]["canary"]["steps"]
        if "analysis" in step
        for a in step["analysis"]["args"]
    }
    for template in of_kind(name, "AnalysisTemplate"):
        for metric in template["spec"]["metrics"]:
            if "prometheus" in metric["provider"]:
                query = metric["provider"]["prometheus"]["query"]
                query = re.sub(r"\{\{args\.([a-z-]+)\}\}", lambda m: args[m[1]], query)
                out.append((f"analysis {metric['name']}", query))
    for scaled in of_kind(name, "ScaledObject"):
        out += [("keda", t["metadata"]["query"]) for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    return out


def test_the_releases_render_every_kind_that_queries() -> None:
    for name in RELEASES:
        where = {w.split(" ")[0] for w, _ in queries(name)}
        assert where == {"rule", "dashboard", "analysis", "keda"}, name
        assert len(series(name)) == 2, "the API and the worker Services are scraped"


@pytest.mark.parametrize(("mine", "other"), PAIRS)
def test_no_query_selects_the_other_releases_series(mine: str, other: str) -> None:
    own, foreign = series(mine), series(other)
    checked = 0
    for where, expr in queries(mine):
        for selector in selectors(expr):
            assert selector.on("job") and selector.on("namespace"), f"{mine} {where}: {selector} is not scoped"
            assert any(selector.matches(s) for s in own), f"{mine} {where}: {selector} selects none of {own}"
            hits = [s for s in foreign if selector.matches(s)]
            assert not hits, f"{mine} {where}: {selector} selects {other}'s series {hits}"
            checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (namespace, job) (rate(a{job="x"}[5m])) / ignoring(c) group_left b', [("a", 1), ("b", 0)]),
        ("c:rec:ratio_rate1h > (14.4 * 0.001) and on (job) d offset 5m", [("c:rec:ratio_rate1h", 0), ("d", 0)]),
        ('absent(e{job="x",namespace="y"}) or {__name__="f"} == bool 1e3', [("e", 2), ("", 1)]),
        ('histogram_quantile(0.99, sum by (le) (rate(g_bucket{le="0.3"}[5m:1m])))', [("g_bucket", 1)]),
    ],
)
def test_the_selector_parser_finds_every_selector(expr: str, expected: list[tuple[str, int]]) -> None:
    """Bare metric names count as selectors (they match every release): missing one would hide a leak."""
    assert [(s.metric, len(s.matchers)) for s in selectors(expr)] == expected


def test_a_selector_without_scope_is_caught() -> None:
    """The check above can fail: the generic rules (job only) select a same-named release elsewhere."""
    generic = yaml.safe_load((ROOT / "deploy/rules/ferry.rules.yaml").read_text())
    expr = generic["groups"][0]["rules"][0]["expr"]
    selector: Selector = selectors(expr)[0]
    assert not selector.on("namespace")
    assert selector.matches(series("ferry")[0]) and selector.matches(series("ferry-b")[0])


def test_rendered_rules_name_the_release_job_and_namespace() -> None:
    for name, (release, namespace) in RELEASES.items():
        job = release if "ferry" in release else f"{release}-ferry"
        assert {s["job"] for s in series(name)} == {job, f"{job}-worker"}
        scoped = (f'job="{job}",namespace="{namespace}"', f'job=~"{job}|{job}-worker",namespace="{namespace}"')
        for where, expr in queries(name):
            if where.startswith("rule"):
                assert any(s in expr for s in scoped), f"{name} {where}: {expr}"
        assert "__FERRY_" not in rendered()[name], "a placeholder left unsubstituted"


def test_dashboards_of_two_releases_neither_collide_nor_overwrite() -> None:
    uids, keys = [], []
    for name in RELEASES:
        (configmap,) = [c for c in of_kind(name, "ConfigMap") if c["metadata"]["name"].endswith("-dashboards")]
        for key, text in configmap["data"].items():
            board = json.loads(text)
            uids.append(board["uid"])
            keys.append(key)
            assert len(board["uid"]) <= 40, "Grafana's uid limit"
            release, namespace = RELEASES[name]
            assert namespace in board["title"] and key.startswith(f"{namespace}-{release}")
    assert len(set(uids)) == len(uids) and len(set(keys)) == len(keys)


def test_kubernetes_selectors_stay_in_their_release() -> None:
    """Same namespace: Services, workloads, the PDB, the NetworkPolicy and the ServiceMonitor of one
    release select none of the other's pods or Services."""

    def pods(name: str) -> list[dict[str, str]]:
        workloads = (d for d in docs(name) if d["kind"] in ("Deployment", "Rollout", "Job"))
        return [w["spec"]["template"]["metadata"]["labels"] for w in workloads]

    def workload_selectors(name: str) -> list[tuple[str, dict[str, str], str]]:
        out = []
        for d in docs(name):
            spec, where = d.get("spec", {}), f"{d['kind']} {d['metadata']['name']}"
            if d["kind"] == "Service":
                out.append((where, spec["selector"], "pods"))
            elif d["kind"] in ("Deployment", "Rollout", "PodDisruptionBudget"):
                out.append((where, spec["selector"]["matchLabels"], "pods"))
            elif d["kind"] == "NetworkPolicy":
                out.append((where, spec["podSelector"]["matchLabels"], "pods"))
            elif d["kind"] == "ServiceMonitor":
                out.append((where, spec["selector"]["matchLabels"], "services"))
        return out

    def services(name: str) -> list[dict[str, str]]:
        return [s["metadata"]["labels"] for s in of_kind(name, "Service")]

    for mine, other in (("ferry", "shop"), ("shop", "ferry")):
        targets = {"pods": (pods(mine), pods(other)), "services": (services(mine), services(other))}
        for where, selector, what in workload_selectors(mine):
            own, foreign = targets[what]
            assert any(selector.items() <= labels.items() for labels in own), f"{mine} {where} selects nothing"
            assert not any(selector.items() <= labels.items() for labels in foreign), f"{mine} {where} selects {other}"


def test_rendered_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make tools installs it)")
    (rule,) = of_kind("shop", "PrometheusRule")
    path = tmp_path / "shop.rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
