"""Strict JSON Schemas of the custom resources the chart renders, derived from vendored upstream CRDs.

``deploy/crds/`` holds the upstream CustomResourceDefinition YAML (``manifest.yaml`` records, for each
file, its project, repository, path, tag, commit and sha256). This script derives
``deploy/crds/jsonschema/{group}/{kind}_{version}.json`` (the kubeconform layout, kind lower-cased)
from them, one file per served version, which ``make helm-validate`` validates custom resources with:

- the version's ``openAPIV3Schema``, with ``apiVersion`` and ``kind`` pinned by ``enum`` and required;
- ``x-kubernetes-int-or-string`` becomes ``anyOf: [integer, string]``; ``nullable`` adds ``null``;
- every object that lists its properties gets ``additionalProperties: false`` unless it says
  ``x-kubernetes-preserve-unknown-fields``: a misspelt field is an error, as with the API server's
  strict field validation, instead of being dropped silently;
- ``pattern`` written for Go's RE2 that Python's ``re`` rejects is rewritten (``PATTERN_REWRITES``);
  every pattern must compile, and a rewrite that no longer matches anything fails the run;
- a bare ``=`` (YAML 1.1's "value" tag, in AlertmanagerConfig's ``matchType`` enum) is read as the
  string ``=``, as Kubernetes' own YAML reader does (``Loader``).

Not expressible here (only an API server checks them): CEL ``x-kubernetes-validations``, defaulting.

``--write`` regenerates, ``--check`` fails on drift (both verify every vendored file's sha256 against
the manifest first, and that no YAML lies there unlisted). ``--extract FILE`` cuts the documents the
manifest names out of a multi-CRD upstream build (KEDA ships its CRDs as one file; ferry vendors
only the kinds it uses), after checking FILE's sha256 against the manifest's ``built_sha256``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "deploy/crds"
MANIFEST = CRDS / "manifest.yaml"
SCHEMAS = CRDS / "jsonschema"
DRAFT = "http://json-schema.org/draft-07/schema#"
# Go RE2 accepts inline flags anywhere, scoped to the rest of the enclosing group; Python only at the
# start of the expression, or as a scoped group ``(?i:...)``. Each rewrite is the same language.
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december|1[0-2]|[1-9]"
_DAYS = "sun|mon|tues|wednes|thurs|fri|satur"
PATTERN_REWRITES = {
    "^(?i)(abort|warn)?$": "(?i)^(abort|warn)?$",
    # AlertmanagerConfig time intervals: month and weekday names, case-insensitive within their group only.
    f"^((?i){_MONTHS})(?:((:((?i){_MONTHS}))$)|$)": f"^((?i:{_MONTHS}))(?:((:((?i:{_MONTHS})))$)|$)",
    f"^((?i){_DAYS})day(?:((:({_DAYS})day)$)|$)": f"^((?i:{_DAYS}))day(?:((:({_DAYS})day)$)|$)",
}
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the large CRDs 10x faster


class Loader(_FastLoader):
    """YAML 1.1 reads a bare ``=`` as the obsolete "value" tag; AlertmanagerConfig's matchType enum lists
    ``- =`` unquoted (Kubernetes' YAML library reads it as the string), so it is read as a string here too."""


Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


class Problem(Exception):
    """The vendored data or the manifest is inconsistent; the message says what to do."""


@dataclass(frozen=True)
class Source:
    file: str  # relative to deploy/crds
    project: str
    repository: str
    path: str
    tag: str
    commit: str
    sha256: str
    built: str = ""  # how a multi-document upstream build was made (then built_sha256 and document)
    built_sha256: str = ""
    document: str = ""  # the CRD (metadata.name) cut from that build


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_manifest() -> list[Source]:
    entries = yaml.load(MANIFEST.read_text(), Loader=Loader)["sources"]
    try:
        return [Source(file=name, **fields) for name, fields in entries.items()]
    except TypeError as exc:
        raise Problem(f"{shown(MANIFEST)}: {exc}") from None


def verify(sources: list[Source]) -> None:
    """Every listed file is there with its recorded sha256, and every vendored YAML is listed."""
    problems = []
    for source in sources:
        path = CRDS / source.file
        if not path.is_file():
            problems.append(f"{source.file}: listed in the manifest but missing")
        elif (actual := sha256(path)) != source.sha256:
            problems.append(
                f"{source.file}: sha256 {actual} but the manifest records {source.sha256} for "
                f"{source.repository}@{source.tag}:{source.path}. Restore the upstream file, or record the "
                "new upstream version (tag, commit, sha256) in the manifest."
            )
    listed = {source.file for source in sources}
    vendored = {str(p.relative_to(CRDS)) for p in CRDS.rglob("*.yaml") if p != MANIFEST}
    problems += [f"{name}: vendored but not in the manifest" for name in sorted(vendored - listed)]
    if problems:
        raise Problem("\n".join([f"{shown(MANIFEST)} does not match deploy/crds:", *problems]))


# --- derivation ----------------------------------------------------------------------------------
SUBSCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SUBSCHEMAS = ("additionalProperties", "items", "not")


def _convert(node: dict[str, Any], where: str, rewrites_used: set[str]) -> None:
    """Rewrite one schema node in place, then its sub-schemas (never data such as default or enum)."""
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
        elif "anyOf" in node:
            node["anyOf"] = [*node["anyOf"], {"type": "null"}]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
    listed = "properties" in node and "additionalProperties" not in node
    if listed and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    if "pattern" in node:
        if node["pattern"] in PATTERN_REWRITES:
            rewrites_used.add(node["pattern"])
            node["pattern"] = PATTERN_REWRITES[node["pattern"]]
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            raise Problem(
                f"{where}: pattern {node['pattern']!r} is not valid for Python's re ({exc}); "
                "add an equivalent to PATTERN_REWRITES in scripts/crd_schemas.py"
            ) from None
    for key in SUBSCHEMA_MAPS:
        for name, child in node.get(key, {}).items():
            _convert(child, f"{where}/{key}/{name}", rewrites_used)
    for key in SUBSCHEMA_LISTS:
        for i, child in enumerate(node.get(key, [])):
            _convert(child, f"{where}/{key}/{i}", rewrites_used)
    for key in SUBSCHEMAS:
        children = node.get(key)
        for i, child in enumerate(children if isinstance(children, list) else [children]):
            if isinstance(child, dict):
                _convert(child, f"{where}/{key}" + (f"/{i}" if isinstance(children, list) else ""), rewrites_used)


def version_schema(crd: dict[str, Any], version: dict[str, Any], rewrites_used: set[str]) -> dict[str, Any]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    _convert(schema, f"{crd['metadata']['name']} {version['name']}", rewrites_used)
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
    properties["kind"] = {"type": "string", "enum": [kind]}
    properties["metadata"] = {"type": "object"}
    required = schema.get("required", [])
    schema["required"] = [*required, *(key for key in ("apiVersion", "kind") if key not in required)]
    schema["additionalProperties"] = False
    return {"$schema": DRAFT, **schema, "x-source-crd": crd["metadata"]["name"]}


def crds_of(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d]
    if not docs or any(d.get("kind") != "CustomResourceDefinition" for d in docs):
        raise Problem(f"{shown(path)}: expected CustomResourceDefinition documents only")
    return docs


def schemas(sources: list[Source] | None = None) -> dict[str, str]:
    """Every derived file (path relative to the repository root -> text), after verifying the sources."""
    sources = load_manifest() if sources is None else sources
    verify(sources)
    out: dict[str, str] = {}
    rewrites_used: set[str] = set()
    for source in sources:
        for crd in crds_of(CRDS / source.file):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                relative = str((SCHEMAS / group / f"{kind.lower()}_{version['name']}.json").relative_to(ROOT))
                if relative in out:
                    raise Problem(f"{relative}: derived twice (two vendored files define {kind} {version['name']})")
                out[relative] = render(version_schema(crd, version, rewrites_used))
    if unused := set(PATTERN_REWRITES) - rewrites_used:
        raise Problem(f"PATTERN_REWRITES entries match no vendored pattern any more, remove them: {sorted(unused)}")
    return out


def render(schema: dict[str, Any]) -> str:
    # One key per line, so an upstream bump shows up as a readable diff; indent 1 keeps deep trees small.
    return json.dumps(schema, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


# --- extraction from a multi-CRD build ----------------------------------------------------------
def extract(built: Path, sources: list[Source]) -> list[str]:
    """Write the documents the manifest names from ``built`` (verbatim bytes); return what was written."""
    digest = sha256(built)
    wanted = [s for s in sources if s.document and s.built_sha256 == digest]
    if not wanted:
        raise Problem(f"{built}: sha256 {digest} is no built_sha256 in {shown(MANIFEST)}")
    chunks = re.split(r"^---\n", built.read_text(), flags=re.M)
    by_name = {}
    for chunk in chunks:
        doc = yaml.load(chunk, Loader=Loader)
        if doc:
            by_name[doc["metadata"]["name"]] = chunk if chunk.endswith("\n") else chunk + "\n"
    written = []
    for source in wanted:
        if source.document not in by_name:
            raise Problem(f"{built}: no document {source.document}")
        target = CRDS / source.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(by_name[source.document])
        written.append(f"{source.file}: sha256 {sha256(target)}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate deploy/crds/jsonschema")
    mode.add_argument("--check", action="store_true", help="fail if deploy/crds/jsonschema is not what --write makes")
    mode.add_argument("--extract", type=Path, metavar="FILE", help="cut the manifest's documents out of FILE")
    args = parser.parse_args(argv)
    try:
        if args.extract:
            print("\n".join(extract(args.extract, load_manifest())))
            print("record each sha256 above in deploy/crds/manifest.yaml, then run `make generate`")
            return 0
        wanted = schemas()
    except Problem as exc:
        print(f"crd_schemas: {exc}", file=sys.stderr)
        return 1
    present = {str(p.relative_to(ROOT)) for p in SCHEMAS.rglob("*.json")}
    stale = sorted(present - set(wanted))
    changed = sorted(r for r, text in wanted.items() if not (ROOT / r).exists() or (ROOT / r).read_text() != text)
    if args.write:
        for relative in changed:
            (ROOT / relative).parent.mkdir(parents=True, exist_ok=True)
            (ROOT / relative).write_text(wanted[relative])
            print(f"wrote {relative}")
        for relative in stale:
            (ROOT / relative).unlink()
            print(f"removed {relative} (no vendored CRD defines it)")
        return 0
    for relative in changed:
        current = (ROOT / relative).read_text() if (ROOT / relative).exists() else ""
        diff = difflib.unified_diff(
            current.splitlines(), wanted[relative].splitlines(), f"{relative} (committed)", f"{relative} (generated)"
        )
        sys.stdout.writelines(line + "\n" for line in list(diff)[:40])
    if changed or stale:
        print(
            f"CRD schemas out of date: {', '.join(changed + stale)} — run `make generate`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
