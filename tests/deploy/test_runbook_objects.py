"""The runbooks' commands name what the chart really deploys (docs/runbooks/*.md).

The chart is rendered with the real helm for a release that is NOT named ferry (`shop` in namespace
`team-a`: full name `shop-ferry`) in each deployment shape: a plain Deployment, a replica-ratio canary,
an Argo Rollout, and the job worker with KEDA. Every `kubectl`/`helm` command of the runbooks' shell
blocks (and every inline `kubectl ...`/`helm ...` span of their prose) is split into simple commands,
the preamble's shell variables (docs/runbooks/README.md) are substituted, and each object the command
names must exist in the scenario's render:

- `TYPE/NAME` and `TYPE NAME` (deploy, rollout, svc, configmap, hpa, pdb, networkpolicy,
  servicemonitor, scaledobject, ...), the Argo Rollouts plugin's rollout name, endpoints (a Service's);
- `-l` selectors: they match the pods (pod templates, with a Rollout's stable/canary metadata) or the
  objects of the kinds the command lists; `-c` names a container of those pods; a port-forward's
  remote port is one the Service or the container declares;
- helm: the release is `$RELEASE`, the namespace `$NS`, and an upgrade's `--set` values render
  (the strict schema refuses a value name the chart does not have).

A command for one shape only carries a tag in its comment (`# [deployment]`, `# [canary]`,
`# [rollout]`, `# [worker]`) and is checked against that scenario; an untagged one against every
shape. Commands in another namespace (`-n "$MON_NS"`, `-A`) name objects the chart does not render
and are only checked for placeholders. No command line may keep a placeholder (`<pod>`, `...`), and
every variable a command uses is set by the preamble or by an assignment on the runbook's pages.
The triage blocks name dashboard panels (the dashboard's title, an angle quote, the panel's title in
bold): each must exist in the generated dashboards.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

RUNBOOKS = ROOT / "docs/runbooks"
PREAMBLE = RUNBOOKS / "README.md"
ENVIRONMENTS = ROOT / "deploy/helm/environments"
RELEASE, NAMESPACE = "shop", "team-a"
API_VERSIONS = ("argoproj.io/v1alpha1", "keda.sh/v1alpha1", *kv.MONITORING)
SHAPES = ("deployment", "canary", "rollout")
SCENARIOS: dict[str, tuple[str, ...]] = {
    "deployment": ("-f", str(ENVIRONMENTS / "prod.yaml")),
    "canary": (
        "-f",
        str(ENVIRONMENTS / "prod.yaml"),
        "-f",
        str(ENVIRONMENTS / "canary.yaml"),
        "--set",
        "canary.image.tag=0.2.0",
    ),
    "rollout": ("-f", str(ENVIRONMENTS / "prod.yaml"), "-f", str(ENVIRONMENTS / "rollout.yaml")),
    "worker": (
        "-f",
        str(ENVIRONMENTS / "prod.yaml"),
        "-f",
        str(kv.CHART / "ci/worker-redis-values.yaml"),
        "--set",
        "keda.enabled=true",
    ),
}
TAG = re.compile(r"\[(deployment|canary|rollout|worker)\]")
PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9 _.-]*>")
ELLIPSIS = re.compile(r"\.\.\.|…")
PANEL_REF = re.compile(r"(ferry / (?:service overview|model)) \u203a \*\*(.+?)\*\*")
KINDS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "rollout": "Rollout", "rollouts": "Rollout", "ro": "Rollout",
    "svc": "Service", "service": "Service", "services": "Service",
    "cm": "ConfigMap", "configmap": "ConfigMap", "configmaps": "ConfigMap",
    "hpa": "HorizontalPodAutoscaler", "horizontalpodautoscaler": "HorizontalPodAutoscaler",
    "pdb": "PodDisruptionBudget", "poddisruptionbudget": "PodDisruptionBudget",
    "netpol": "NetworkPolicy", "networkpolicy": "NetworkPolicy", "networkpolicies": "NetworkPolicy",
    "servicemonitor": "ServiceMonitor", "servicemonitors": "ServiceMonitor",
    "prometheusrule": "PrometheusRule", "prometheusrules": "PrometheusRule",
    "scaledobject": "ScaledObject", "scaledobjects": "ScaledObject", "so": "ScaledObject",
    "job": "Job", "jobs": "Job", "analysistemplate": "AnalysisTemplate", "sa": "ServiceAccount",
    "serviceaccount": "ServiceAccount", "ingress": "Ingress", "ing": "Ingress",
    "endpoints": "Endpoints", "ep": "Endpoints",
    "pod": "Pod", "pods": "Pod", "po": "Pod",
}  # fmt: skip
RUNTIME_KINDS = {"Pod", "Endpoints"}  # made by controllers from rendered objects
VALUE_FLAGS = {
    "-n", "--namespace", "-l", "--selector", "-c", "--container", "-o", "--output", "-p", "--patch", "--type",
    "--tail", "--since", "--max-log-requests", "--replicas", "--subresource", "--requests", "--limits",
    "--grace-period", "--timeout", "-L", "--label-columns", "--field-selector", "--sort-by", "--set",
    "--version", "--max", "--filter", "-f", "--values", "--revision", "--for",
}  # fmt: skip
SHELL_SPECIAL = {"1", "2", "@", "*", "?", "!", "#", "0", "HOME", "PATH"}


# --- the chart, rendered --------------------------------------------------------------------------
@functools.cache
def render(scenario: str, *extra: str) -> tuple[dict, ...]:
    argv = [kv.HELM, "template", RELEASE, str(kv.CHART), "--namespace", NAMESPACE, *SCENARIOS[scenario], *extra]
    argv += [arg for api in API_VERSIONS for arg in ("--api-versions", api)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm template {scenario} {' '.join(extra)}: {result.stderr.strip()}")
    return tuple(kv.documents(result.stdout))


def objects(scenario: str, kind: str) -> list[dict]:
    kind = "Service" if kind == "Endpoints" else kind
    return [doc for doc in render(scenario) if doc["kind"] == kind]


@dataclass
class PodShape:
    labels: dict[str, str]
    containers: set[str]
    ports: set[str]


def pods(scenario: str) -> list[PodShape]:
    """The pods the scenario's workloads make; a Rollout's carry its stable or canary metadata."""
    out = []
    for doc in render(scenario):
        if doc["kind"] not in ("Deployment", "Rollout", "Job"):
            continue
        template = doc["spec"]["template"]
        spec = template["spec"]
        names = {c["name"] for c in [*spec.get("containers", []), *spec.get("initContainers", [])]}
        ports = {
            str(v) for c in spec["containers"] for p in c.get("ports", []) for v in (p["name"], p["containerPort"])
        }
        labels = dict(template["metadata"].get("labels", {}))
        extra = [{}]
        if doc["kind"] == "Rollout":
            canary = doc["spec"]["strategy"]["canary"]
            extra = [canary[key].get("labels", {}) for key in ("stableMetadata", "canaryMetadata")]
        out += [PodShape({**labels, **more}, names, ports) for more in extra]
    return out


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in re.split(r",(?![^()]*\))", selector):
        term = term.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m[3].split(",")}
            if (labels.get(m[1]) in values) != (m[2] == "in"):
                return False
        elif m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", term):
            if (labels.get(m[1]) == m[3]) != (m[2] != "!="):
                return False
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            if (m[2] in labels) == bool(m[1]):
                return False
        else:
            raise AssertionError(f"cannot read selector term {term!r}")
    return True


# --- the runbooks' shell --------------------------------------------------------------------------
@dataclass
class Command:
    page: str
    line: str
    words: list[str]
    tags: set[str]
    variables: set[str] = field(default_factory=set)


def shell_blocks(text: str) -> Iterator[str]:
    for m in re.finditer(r"^\s*```(?:bash|sh|shell)\s*\n(.*?)^\s*```", text, flags=re.M | re.S):
        yield m[1]


def logical_lines(block: str) -> Iterator[str]:
    pending = ""
    for raw in block.splitlines():
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a shell line: the comment starts at an unquoted `#` after a blank."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i], line[i:]
    return line, ""


def simple_commands(code: str) -> list[str]:
    """The simple commands of a line: split at | ; & && || and out of every $( ... )."""
    done: list[str] = []
    stack: list[tuple[list[str], str | None]] = [([], None)]
    i = 0
    while i < len(code):
        chars, quote = stack[-1]
        c = code[i]
        if quote == "'":
            chars.append(c)
            if c == "'":
                stack[-1] = (chars, None)
        elif c == "\\":
            chars.append(code[i : i + 2])
            i += 1
        elif code.startswith("$(", i):
            chars.append("SUBSTITUTED")
            stack.append(([], None))
            i += 1
        elif c == ")" and quote is None and len(stack) > 1:
            done.append("".join(chars))
            stack.pop()
        elif c == '"':
            chars.append(c)
            stack[-1] = (chars, None if quote == '"' else '"')
        elif c == "'" and quote is None:
            chars.append(c)
            stack[-1] = (chars, "'")
        elif c in "|;&" and quote is None:
            done.append("".join(chars))
            stack[-1] = ([], None)
        else:
            chars.append(c)
        i += 1
    done += ["".join(chars) for chars, _ in stack]
    return [cmd.strip() for cmd in done if cmd.strip()]


def expand(command: str, values: dict[str, str]) -> tuple[list[str], set[str]]:
    """Words of a simple command with $VAR/${VAR} expanded outside single quotes; the variables used."""
    used: set[str] = set()
    pattern = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}|\$(\w+)")

    def substitute_match(m: re.Match[str]) -> str:
        name = m[1] or m[3]
        used.add(name)
        if name in values:
            return values[name]
        fallback = m[2] or ""
        for inner in re.findall(r"\$(\w+)", fallback):
            used.add(inner)
        return re.sub(r"\$(\w+)", lambda n: values.get(n[1], ""), fallback)

    def sub(text: str) -> str:
        return pattern.sub(substitute_match, text)

    parts = re.split(r"('[^']*')", command)
    text = "".join(part if part.startswith("'") else sub(part) for part in parts)
    return shlex.split(text), used


def preamble_values() -> dict[str, str]:
    """The preamble's variables for the rendered release: NS and JOB from the alert, the rest as it sets them."""
    job = service_job()
    values = {"NS": NAMESPACE, "JOB": job, "RELEASE": RELEASE}
    for block in shell_blocks(PREAMBLE.read_text()):
        for line in logical_lines(block):
            code, _ = split_comment(line)
            m = re.fullmatch(r"\s*export (\w+)=(\"[^\"]*\"|\S+)\s*", code)
            if m and m[1] != "RELEASE" and "$(" not in m[2]:
                (value,), _used = expand(m[2], values)
                values[m[1]] = value
    return values


def service_job() -> str:
    (main,) = [s for s in objects("deployment", "Service") if "ferry-serving.io/job" in s["metadata"]["labels"]]
    return str(main["metadata"]["labels"]["ferry-serving.io/job"])


def pages() -> list[Path]:
    return sorted(RUNBOOKS.glob("*.md"))


def assigned(text: str) -> set[str]:
    """Variables a page sets: NAME=..., export NAME=..., read NAME, for NAME in, function names."""
    names = set(re.findall(r"(?:^|[\s;(&|])(?:export\s+)?(\w+)=", text))
    names |= set(re.findall(r"\bfor (\w+) in\b", text))
    return names


def commands(page: Path) -> Iterator[Command]:
    text = page.read_text()
    for block in shell_blocks(text):
        for line in logical_lines(block):
            code, comment = split_comment(line)
            tags = set(TAG.findall(comment))
            for simple in simple_commands(code):
                yield Command(page.name, line, [simple], tags)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:kubectl|helm) [^`]+)`", prose):
        # A span naming a command (`kubectl rollout undo`) is prose; one with a namespace, a variable or an
        # object (`kubectl -n "$NS" delete "$POD"`) is a command the reader will run.
        if re.search(r"\$|\s-n\s|/", span):
            for simple in simple_commands(span):
                yield Command(page.name, span, [simple], set())


def scenarios_of(tags: set[str]) -> list[str]:
    if not tags:
        return list(SHAPES)
    out = []
    for tag in sorted(tags):
        out += {"deployment": ["deployment", "canary"], "canary": ["canary"], "rollout": ["rollout"]}.get(tag, [tag])
    return out


# --- what one command names -----------------------------------------------------------------------
@dataclass
class Parsed:
    tool: str
    namespace: str | None = None
    other_namespace: bool = False
    flags: dict[str, list[str]] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)


def parse(words: list[str]) -> Parsed | None:
    while words and re.fullmatch(r"\w+=.*", words[0]):  # leading assignments (SINCE=6h flogs ...)
        words = words[1:]
    if not words:
        return None
    if words[0] == "flogs":  # the preamble's function: kubectl logs -l "${PODS:-$API_PODS}"
        return None
    if words[0] not in ("kubectl", "helm"):
        return None
    parsed = Parsed(words[0])
    rest = words[1:]
    i = 0
    while i < len(rest):
        word = rest[i]
        if re.fullmatch(r"\d*[<>]{1,2}&?\d*", word):  # a redirection and its target: `> file`, `2>&1`
            i += 1 if "&" in word else 2
            continue
        if re.fullmatch(r"\d*[<>]{1,2}\S+", word):  # `>/dev/null`, `2>/dev/null`
            i += 1
            continue
        if word == "--":
            parsed.positionals.append("--")
            parsed.positionals += rest[i + 1 :]
            break
        if word.startswith("-") and word != "-":
            name, eq, value = word.partition("=")
            if eq:
                parsed.flags.setdefault(name, []).append(value)
            elif name in VALUE_FLAGS:
                parsed.flags.setdefault(name, []).append(rest[i + 1])
                i += 1
            else:
                parsed.flags.setdefault(name, []).append("")
            i += 1
            continue
        parsed.positionals.append(word)
        i += 1
    for key in ("-n", "--namespace"):
        if key in parsed.flags:
            parsed.namespace = parsed.flags[key][0]
    everywhere = "-A" in parsed.flags or "--all-namespaces" in parsed.flags
    parsed.other_namespace = everywhere or parsed.namespace not in (None, NAMESPACE)
    return parsed


def flogs_selector(simple: str, values: dict[str, str]) -> str:
    m = re.search(r"(?:^|\s)PODS=(\"[^\"]*\"|\S+)", simple)
    if m:
        (selector,), _ = expand(m[1], values)
        return selector
    return values["API_PODS"]


def check_kubectl(cmd: Parsed, scenario: str, problems: list[str]) -> None:
    pos = cmd.positionals
    if not pos or pos[0] in ("version", "config", "api-resources"):
        return
    verb = pos[0]
    if pos[:2] == ["argo", "rollouts"]:
        sub = pos[2:]
        if not sub or sub[0] == "version":
            return
        name = sub[2] if sub[0] == "get" else sub[1]
        named = [("Rollout", name)]
        verb = "argo"
    else:
        verb = pos[0]
        args = pos[1:]
        if verb in ("rollout", "set") and args:
            args = args[1:]
        if "--" in args:
            args = args[: args.index("--")]
        named = []
        kinds: list[str] = []
        for i, arg in enumerate(args):
            if "/" in arg:
                kind, _, name = arg.partition("/")
                named.append((KINDS.get(kind.lower(), kind), name))
            elif i == 0 and verb in ("get", "describe", "edit", "delete", "patch", "scale", "label", "annotate", "top"):
                kinds = [KINDS.get(k.lower(), k) for k in arg.split(",")]
            elif kinds and verb != "port-forward" and not re.fullmatch(r"[\d:]+\w*|\w+=.*", arg):
                named += [(kinds[0], arg)]
            elif verb in ("logs", "exec", "port-forward") and i == 0:
                named.append(("Pod", arg))
        if verb in ("logs", "exec", "port-forward", "top") and not kinds and not named:
            kinds = ["Pod"]
        for selector in cmd.flags.get("-l", []) + cmd.flags.get("--selector", []):
            check_selector(selector, kinds or ["Pod"], cmd, scenario, problems)
    for kind, name in named:
        check_named(kind, name, cmd, scenario, problems)
    if verb == "port-forward" and named:
        kind, name = named[0]
        for spec in cmd.positionals[2:]:
            remote = spec.rpartition(":")[2]
            available = ports_of(kind, name, scenario)
            if available is not None and remote not in available:
                problems.append(f"{kind} {name} has no port {remote!r} (has {sorted(available)})")


def ports_of(kind: str, name: str, scenario: str) -> set[str] | None:
    if kind == "Service":
        found = [o for o in objects(scenario, "Service") if o["metadata"]["name"] == name]
        return {str(v) for o in found for p in o["spec"]["ports"] for v in (p.get("name"), p["port"])}
    if kind in ("Deployment", "Rollout"):
        found = [o for o in objects(scenario, kind) if o["metadata"]["name"] == name]
        containers = [c for o in found for c in o["spec"]["template"]["spec"]["containers"]]
        return {str(v) for c in containers for p in c.get("ports", []) for v in (p["name"], p["containerPort"])}
    return None


def check_named(kind: str, name: str, cmd: Parsed, scenario: str, problems: list[str]) -> None:
    if name.startswith("RUNTIME:"):  # a name the reader's shell found at run time (a pod)
        return
    if kind == "Pod":
        problems.append(f"pod {name!r}: a pod's name must come from a variable set by a command")
        return
    if kind not in KINDS.values():
        problems.append(f"{kind}/{name}: a kind the chart does not render")
        return
    if not any(o["metadata"]["name"] == name for o in objects(scenario, kind)):
        present = sorted(o["metadata"]["name"] for o in objects(scenario, kind))
        problems.append(f"{kind} {name!r} is not in the {scenario} render (it has {present})")
    containers = cmd.flags.get("-c", []) + cmd.flags.get("--container", [])
    if containers and kind in ("Deployment", "Rollout"):
        (obj,) = [o for o in objects(scenario, kind) if o["metadata"]["name"] == name] or [None]
        if obj is not None:
            spec = obj["spec"]["template"]["spec"]
            names = {c["name"] for c in [*spec["containers"], *spec.get("initContainers", [])]}
            problems += [f"{kind} {name} has no container {c!r}" for c in containers if c not in names]


def check_selector(selector: str, kinds: list[str], cmd: Parsed, scenario: str, problems: list[str]) -> None:
    containers = cmd.flags.get("-c", []) + cmd.flags.get("--container", [])
    if kinds == ["Pod"]:
        matched = [p for p in pods(scenario) if selector_matches(selector, p.labels)]
        if not matched:
            problems.append(f"no pod of the {scenario} render matches -l {selector!r}")
        for c in containers:
            if any(c not in p.containers for p in matched):
                problems.append(f"-l {selector!r} -c {c}: not every matched pod has that container")
        return
    rendered = [o for k in kinds for o in (pods_as_objects(scenario) if k == "Pod" else objects(scenario, k))]
    if not any(selector_matches(selector, o["metadata"].get("labels", {})) for o in rendered):
        problems.append(f"no {'/'.join(kinds)} of the {scenario} render matches -l {selector!r}")


def pods_as_objects(scenario: str) -> list[dict]:
    return [{"metadata": {"labels": p.labels}} for p in pods(scenario)]


def check_helm(cmd: Parsed, scenario: str, problems: list[str]) -> None:
    pos = cmd.positionals
    if not pos or pos[0] in ("version", "repo", "search", "template", "show", "pull"):
        return
    if cmd.namespace != NAMESPACE:
        problems.append(f'helm {pos[0]}: namespace {cmd.namespace!r}, not the release\'s (-n "$NS")')
    sub = pos[0]
    if sub == "list":
        return
    args = pos[2:] if sub == "get" else pos[1:]
    if not args or args[0] != RELEASE:
        problems.append(f"helm {sub}: release {args[:1]}, not $RELEASE")
    if sub == "rollback" and (len(args) < 2 or not re.fullmatch(r"\d+|RUNTIME:\w+", args[1])):
        problems.append(f"helm rollback needs a revision number, got {args[1:]}")
    if sub == "upgrade":
        sets = [arg for value in cmd.flags.get("--set", []) for arg in ("--set", value)]
        if "--reuse-values" not in cmd.flags and not cmd.flags.get("-f") and not cmd.flags.get("--values"):
            problems.append("helm upgrade without --reuse-values or a values file would reset the release's values")
        try:
            render(scenario, *sets)
        except AssertionError as error:
            problems.append(str(error))


# --- tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def test_the_release_under_test_is_not_named_like_its_objects() -> None:
    """The point of rendering `shop`: its objects are `shop-ferry`, so `deploy/$RELEASE` would be wrong."""
    values = preamble_values()
    assert values["JOB"] == "shop-ferry" != values["RELEASE"]
    # The preamble derives RELEASE from the Service named $JOB: its instance label is the release.
    (svc,) = [s for s in objects("deployment", "Service") if s["metadata"]["name"] == values["JOB"]]
    assert svc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert "jsonpath='{.metadata.labels.app\\.kubernetes\\.io/instance}'" in PREAMBLE.read_text()


@pytest.mark.parametrize("scenario", [*SHAPES, "worker"])
def test_every_runbook_command_names_objects_the_chart_renders(scenario: str) -> None:
    values = preamble_values()
    problems: list[str] = []
    checked = 0
    for page in pages():
        runtime = assigned(page.read_text()) | assigned(PREAMBLE.read_text())
        optional = {"PODS", "SINCE"}  # the preamble's flogs reads them when set
        for command in commands(page):
            if scenario not in scenarios_of(command.tags):
                continue
            (simple,) = command.words
            local = {**values, **{name: f"RUNTIME:{name}" for name in runtime - set(values) - optional}}
            words, used = expand(simple, local)
            unknown = used - set(local) - optional - SHELL_SPECIAL
            if unknown:
                problems.append(f"{command.page}: {command.line}\n    variables set nowhere: {sorted(unknown)}")
            while words and re.fullmatch(r"\w+=.*", words[0]):
                words = words[1:]
            if words and words[0] == "flogs":
                words = ["kubectl", "-n", NAMESPACE, "logs", "-l", flogs_selector(simple, local)]
            parsed = parse(words)
            if parsed is None or parsed.other_namespace:
                continue
            found: list[str] = []
            if parsed.tool == "kubectl":
                if parsed.namespace is None and parsed.positionals[:3] != ["argo", "rollouts", "version"]:
                    found.append('kubectl without -n "$NS"')
                else:
                    check_kubectl(parsed, scenario, found)
            else:
                check_helm(parsed, scenario, found)
            checked += 1
            problems += [f"{command.page}: {command.line}\n    {p}" for p in found]
    print(f"{scenario}: {checked} commands checked")
    assert checked >= (3 if scenario == "worker" else 40), checked
    assert not problems, "\n".join(problems)


def test_no_placeholder_in_any_command_line() -> None:
    problems = []
    for page in pages():
        for block in shell_blocks(page.read_text()):
            for line in logical_lines(block):
                code, _comment = split_comment(line)
                if PLACEHOLDER.search(line) or ELLIPSIS.search(code):
                    problems.append(f"{page.name}: {line}")
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for span in re.findall(r"`((?:kubectl|helm|curl|amtool) [^`]+)`", prose):
            if PLACEHOLDER.search(span) or ELLIPSIS.search(span):
                problems.append(f"{page.name}: `{span}`")
    assert not problems, "\n".join(problems)


def test_every_alert_runbook_opens_with_a_triage_naming_real_panels() -> None:
    titles: dict[str, set[str]] = {}
    for path in (ROOT / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        stack = list(board["panels"])
        while stack:
            panel = stack.pop()
            stack += panel.get("panels", [])
            titles.setdefault(board["title"], set()).add(panel.get("title", ""))
    problems = []
    for page in pages():
        if page == PREAMBLE:
            continue
        text = page.read_text()
        head = text.split("\n## ", 1)[0]
        if "Triage" not in head:
            problems.append(f"{page.name}: no triage block before ## Meaning")
        refs = PANEL_REF.findall(head)
        if not refs:
            problems.append(f"{page.name}: its triage names no dashboard panel")
        for board, panel in PANEL_REF.findall(text):
            if panel not in titles.get(board, set()):
                problems.append(f"{page.name}: no panel {panel!r} on {board!r}")
        if "README.md" not in head:
            problems.append(f"{page.name}: its triage does not point to the preamble (README.md)")
    assert not problems, "\n".join(problems)


def test_the_scenarios_render_the_shapes_they_stand_for() -> None:
    """Guard the fixtures: a shape that rendered nothing of its own would make its tag unchecked."""
    names = {s: {(o["kind"], o["metadata"]["name"]) for o in render(s)} for s in SCENARIOS}
    assert ("Deployment", "shop-ferry") in names["deployment"] and ("Rollout", "shop-ferry") not in names["deployment"]
    assert ("Deployment", "shop-ferry-canary") in names["canary"]
    assert ("Rollout", "shop-ferry") in names["rollout"] and ("Deployment", "shop-ferry") not in names["rollout"]
    assert {("Deployment", "shop-ferry-worker"), ("ScaledObject", "shop-ferry-worker")} <= names["worker"]
    assert yaml.safe_load((ENVIRONMENTS / "canary.yaml").read_text())["canary"]["enabled"] is True
