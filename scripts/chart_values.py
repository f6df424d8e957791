"""The chart's values.yaml as the one source of its documentation and of its JSON Schema.

``scripts/generate_deploy.py`` writes ``deploy/helm/ferry/README.md`` (the values table) and
``deploy/helm/ferry/values.schema.json`` from what this module reads out of values.yaml:

- ``# --`` comment (continued by plain ``#`` lines): documents the key on the next line; every value
  a user sets must have one (a documented map covers the keys inside it);
- ``# @schema {flow YAML}`` lines in that comment (consecutive ones are one mapping): JSON Schema
  keywords merged into what the default implies. ``$ref: NAME`` replaces the inferred schema,
  children included; NAME is an entry of ``DEFINITIONS`` below (quantities, resources, label maps),
  ``k8s:<group>.<version>.<Kind>`` (a Kubernetes type, strict, from kubernetes-validate's schemas of
  ``K8S_VERSION``) or ``crd:<group>/<kind>_<version>#<field.path>`` (a field of a vendored CRD schema
  in deploy/crds; a trailing ``[]`` is a list's item). ``x-define: NAME`` publishes a map's schema as
  a definition other keys ``$ref``. ``setting: FERRY_...`` (on ``ferry.*`` values) takes type, range
  and enum from the service's pydantic Settings; without it, a ``ferry.*`` value takes those of the
  first Settings variable its comment names, so the chart cannot accept what the service refuses.

What the default implies: a bool, integer, number or string type; a list's type (items from the
annotation); a non-empty map becomes an object listing its keys with ``additionalProperties:
false``, so a misspelt key fails ``helm install`` with its path. An empty map is free-form unless
annotated. Helm validates the merged values, so ``key: null`` (which deletes a default) passes.
The schema is draft 7 (what Helm 3 validates), where ``$ref`` ignores its siblings: a ``$ref`` with
other keywords becomes an ``allOf``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from k8s_validate import KUBE_VERSIONS  # the Kubernetes versions `make helm-validate` checks

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/ferry"

DNS_NAME = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = {
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"},
        {"type": "number", "minimum": 0},
    ]
}
# Shapes named by `$ref` in values.yaml. Kubernetes objects the chart passes through untouched
# (securityContext, affinity, containers, volumes, ...) stay free-form here: the rendered objects
# are validated against the Kubernetes schemas by `make helm-validate`.
DEFINITIONS: dict[str, dict[str, Any]] = {
    "dnsName": {"type": "string", "pattern": DNS_NAME, "maxLength": 253},
    "duration": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
    "sizeLimit": {"type": "string", "pattern": r"^[0-9]+(Ki|Mi|Gi)$"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "quantity": QUANTITY,
    "intOrPercent": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]{1,3}%$"}]},
    "resources": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            side: {
                "type": "object",
                "additionalProperties": False,
                "properties": {k: {"$ref": "#/definitions/quantity"} for k in ("cpu", "memory", "ephemeral-storage")},
            }
            for side in ("requests", "limits")
        },
    },
    "stringMap": {"type": "object", "additionalProperties": {"type": "string"}},
    "object": {"type": "object"},
    "objectList": {"type": "array", "items": {"type": "object"}},
    "imageRepository": {"type": "string", "pattern": r"^$|^[a-z0-9]+([._/:-][a-z0-9]+)*$"},
    # A host (with a port) and an optional path: `registry.example`, `127.0.0.1:5000`, `mirror.example/ghcr`.
    "imageRegistry": {
        "type": "string",
        "pattern": r"^$|^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$",
    },
    "imageTag": {"type": "string", "pattern": r"^$|^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"},
    "imageDigest": {"type": "string", "pattern": r"^$|^sha256:[0-9a-f]{64}$"},
    "pullSecrets": {
        "type": "array",
        "items": {
            "anyOf": [
                {"type": "string", "pattern": DNS_NAME, "minLength": 1, "maxLength": 253},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "pattern": DNS_NAME, "minLength": 1, "maxLength": 253}},
                },
            ]
        },
    },
    # `helm create`'s ingress host: a host and its paths.
    "ingressHost": {
        "type": "object",
        "additionalProperties": False,
        "required": ["host"],
        "properties": {
            "host": {"$ref": "#/definitions/dnsName", "minLength": 1},
            "paths": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["path"],
                    "properties": {
                        "path": {"type": "string", "pattern": "^/"},
                        "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                    },
                },
            },
        },
    },
    "topologySpreadConstraints": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["maxSkew", "topologyKey", "whenUnsatisfiable"],
            "properties": {
                "maxSkew": {"type": "integer", "minimum": 1, "maximum": 100},
                "topologyKey": {"type": "string", "minLength": 1},
                "whenUnsatisfiable": {"enum": ["DoNotSchedule", "ScheduleAnyway"]},
                "minDomains": {"type": "integer", "minimum": 1, "maximum": 100},
                "nodeAffinityPolicy": {"enum": ["Honor", "Ignore"]},
                "nodeTaintsPolicy": {"enum": ["Honor", "Ignore"]},
            },
        },
    },
    # The step kinds the chart's Rollout template understands (`analysis: {}` runs its AnalysisTemplate).
    "rolloutSteps": {
        "type": "array",
        "minItems": 1,
        "items": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["setWeight"],
                    "properties": {"setWeight": {"type": "integer", "minimum": 0, "maximum": 100}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["pause"],
                    "properties": {
                        "pause": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"duration": {"$ref": "#/definitions/duration"}},
                        }
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["analysis"],
                    "properties": {"analysis": {"type": "object", "additionalProperties": False, "properties": {}}},
                },
            ]
        },
    },
}

# Kubernetes objects passed through to a pod spec, HPA or NetworkPolicy (`$ref: k8s:core.v1.Container`) take the
# strict schema of the newest Kubernetes `make helm-validate` checks (kubernetes-validate's copy), so a misspelt
# field of a sidecar fails at install with its path instead of being dropped by the API server. Custom resource
# fields (`$ref: crd:<group>/<kind>_<version>#<JSON pointer>`) take the vendored CRD schemas of deploy/crds.
K8S_VERSION = KUBE_VERSIONS[-1]
CRD_SCHEMAS = ROOT / "deploy/crds/jsonschema"
K8S_REFS = ("/api/_definitions.json#/$defs/", "#/$defs/")  # how the upstream files refer to their definitions

ANNOTATION = "# @schema "
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_./-]+):(?P<rest>.*)$")


class ValuesError(Exception):
    """values.yaml breaks a rule of this module; the message names the key."""


def comments(text: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(description, annotation) of every key with a `# --` comment or a `# @schema` line, by dotted path."""
    docs: dict[str, str] = {}
    notes: dict[str, dict[str, Any]] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    note: dict[str, Any] = {}
    flow: list[str] = []  # consecutive `# @schema` lines: one flow mapping, which may span lines
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(ANNOTATION.strip()):
            flow.append(stripped[len(ANNOTATION) :])
            continue
        if flow:
            try:
                extra = yaml.safe_load(" ".join(flow))
            except yaml.YAMLError as exc:
                raise ValuesError(f"values.yaml line {number - 1}: bad @schema annotation: {exc}") from None
            if not isinstance(extra, dict):
                raise ValuesError(f"values.yaml line {number - 1}: an @schema annotation is a YAML mapping")
            note.update(extra)
            flow = []
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("-"):
            if stripped and not line.startswith(" ") and not match:
                pending, note = None, {}
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(k for _, k in stack)
        if pending is not None:
            docs[path] = " ".join(pending)
        if note:
            notes[path] = note
        pending, note = None, {}
    return docs, notes


def leaves(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value a user sets: scalars, lists and empty maps."""
    if isinstance(value, dict) and value:
        return [leaf for key, sub in value.items() for leaf in leaves(sub, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


# --- the service's settings ----------------------------------------------------------------------
@functools.cache
def settings_fields() -> dict[str, dict[str, Any]]:
    """JSON Schema of every scalar Settings field, by its FERRY_* environment variable."""
    from ferry.settings import Settings

    schema = Settings.model_json_schema()
    out: dict[str, dict[str, Any]] = {}
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref") or next((s["$ref"] for s in prop.get("allOf", []) if "$ref" in s), None)
        if ref:
            group = schema["$defs"][ref.rsplit("/", 1)[-1]]
            for field, sub in group["properties"].items():
                out[f"FERRY_{name}__{field}".upper()] = sub
        else:
            out[f"FERRY_{name}".upper()] = prop
    return out


SETTING_KEYWORDS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength")


def setting_schema(env: str, path: str) -> dict[str, Any]:
    fields = settings_fields()
    if env not in fields:
        raise ValuesError(f"{path}: `setting: {env}` names no field of ferry.settings.Settings")
    field = fields[env]
    # An optional setting (`int | None`): the chart value is the non-null branch (unset is the value's own default).
    branches = [b for b in field.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1 and len(field["anyOf"]) == 2:
        field = {**field, **branches[0]}
    out = {k: field[k] for k in SETTING_KEYWORDS if k in field}
    if "enum" in out:
        out.pop("type", None)
    if "type" not in out and "enum" not in out:
        raise ValuesError(f"{path}: {env} has no simple type in Settings ({field}); annotate the value instead")
    return out


_AUTO = object()
SETTING_NAME = re.compile(r"\bFERRY_[A-Z0-9_]+")


def _setting_named_in(path: str, value: Any, description: str | None) -> str | None:
    """A ferry.* scalar maps to the first Settings variable its description names (`setting:` overrides)."""
    if not path.startswith("ferry.") or isinstance(value, (dict, list)) or not description:
        return None
    fields = settings_fields()
    return next((name for name in SETTING_NAME.findall(description) if name in fields), None)


# --- the schema ----------------------------------------------------------------------------------
def _infer(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object"}
    raise ValuesError(f"cannot infer a schema for {value!r}")


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    import kubernetes_validate

    folder = Path(kubernetes_validate.__file__).parent / f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    return dict(json.loads((folder / "_definitions.json").read_text())["$defs"])


def _slim(node: Any, in_properties: bool = False) -> Any:
    """An upstream schema without prose, vendor keys or `format` (validators differ on OpenAPI's int64, byte, ...;
    the rendered objects meet the full schemas in `make helm-validate`), refs made local. A property named
    `description` or `format` stays."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            dropped = (key in ("description", "format") and isinstance(value, str)) or key.startswith("x-")
            if not in_properties and dropped:
                continue
            if key == "$ref" and isinstance(value, str) and value.startswith(K8S_REFS):
                value = "#/definitions/" + value.rsplit("/", 1)[-1]
            out[key] = _slim(value, in_properties=not in_properties and key in ("properties", "patternProperties"))
        return out
    if isinstance(node, list):
        return [_slim(v) for v in node]
    return node


def external_definitions(name: str) -> dict[str, dict[str, Any]]:
    """The definitions a `k8s:` or `crd:` reference brings in (the named one and what it refers to), by name."""
    if name.startswith("k8s:"):
        upstream = _k8s_definitions()
        wanted, out = [f"io.k8s.api.{name.removeprefix('k8s:')}"], {}
        while wanted:
            current = wanted.pop()
            if current in out:
                continue
            if current not in upstream:
                raise ValuesError(f"`$ref: {name}`: no {current} in the Kubernetes {K8S_VERSION} schemas")
            out[current] = _slim(upstream[current])
            wanted += sorted(_uses(out[current]) - set(out))
        return out
    if name.startswith("crd:"):
        # crd:<group>/<kind>_<version>#a.b.c: field c of b of a (through list items); a trailing [] is a list's item.
        file, _, fields = name.removeprefix("crd:").partition("#")
        path = CRD_SCHEMAS / f"{file}.json"
        if not path.exists():
            raise ValuesError(f"`$ref: {name}`: no {path.relative_to(ROOT)}")
        node: Any = json.loads(path.read_text())
        for part in fields.removesuffix("[]").split("."):
            if node.get("type") == "array":
                node = node["items"]
            if part not in node.get("properties", {}):
                raise ValuesError(f"`$ref: {name}`: no field {part!r} in {path.relative_to(ROOT)}")
            node = node["properties"][part]
        if fields.endswith("[]"):
            node = node["items"]
        return {_crd_name(name): _slim(node)}
    return {}


def _crd_name(name: str) -> str:
    file, _, fields = name.removeprefix("crd:").partition("#")
    return f"{file.replace('/', '.')}.{fields.replace('[]', '.item')}"


def _ref_with_siblings(node: dict[str, Any]) -> dict[str, Any]:
    """Draft 7 ignores the siblings of `$ref` (Helm 3 validates draft 7): keep them beside an allOf instead."""
    siblings = {k: v for k, v in node.items() if k not in ("$ref", "description")}
    if "$ref" not in node or not siblings:
        return node
    return {
        "allOf": [{"$ref": node["$ref"]}],
        **siblings,
        **({"description": node["description"]} if "description" in node else {}),
    }


def _ref(name: str, used: set[str], path: str) -> str:
    if name.startswith("#/"):
        return name
    if name.startswith("k8s:"):
        used.add(name)
        return f"#/definitions/io.k8s.api.{name.removeprefix('k8s:')}"
    if name.startswith("crd:"):
        used.add(name)
        return f"#/definitions/{_crd_name(name)}"
    used.add(name)  # checked once every `x-define` is known (schema())
    return f"#/definitions/{name}"


def _node(
    value: Any,
    path: str,
    docs: dict[str, str],
    notes: dict[str, dict[str, Any]],
    used: set[str],
    defined: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    note = copy.deepcopy(notes.get(path, {}))
    description = docs.get(path)
    define = note.pop("x-define", None)
    setting = note.pop("setting", _AUTO)
    if setting is _AUTO:
        setting = _setting_named_in(path, value, description)
    if "$ref" in note:
        schema: dict[str, Any] = {"$ref": _ref(note.pop("$ref"), used, path), **_resolve_refs(note, used, path)}
    else:
        schema = _infer(value)
        if setting:
            schema = setting_schema(setting, path)
        if isinstance(value, dict) and value:
            props = {
                key: _node(sub, f"{path}.{key}" if path else key, docs, notes, used, defined)
                for key, sub in value.items()
            }
            schema["properties"] = {**props, **_resolve_refs(note.pop("properties", {}), used, path)}
            schema["additionalProperties"] = False
        schema.update(_resolve_refs(note, used, path))
        if "enum" in schema or "anyOf" in schema or "oneOf" in schema:
            schema.pop("type", None)
    if description:
        schema["description"] = description
    schema = _ref_with_siblings(schema)
    if define:
        defined[define] = {k: v for k, v in schema.items() if k != "description"}
        return {"$ref": f"#/definitions/{define}", **({"description": description} if description else {})}
    return schema


def _resolve_refs(node: Any, used: set[str], path: str) -> Any:
    if isinstance(node, dict):
        resolved = {k: (_ref(v, used, path) if k == "$ref" else _resolve_refs(v, used, path)) for k, v in node.items()}
        return _ref_with_siblings(resolved)
    if isinstance(node, list):
        return [_resolve_refs(v, used, path) for v in node]
    return node


def _uses(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_uses(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_uses(v) for v in node))
    return set()


def ferry_settings(text: str) -> dict[str, str | None]:
    """The Settings variable each ferry.* scalar takes its type and bounds from (None: a chart-only value)."""
    values = yaml.safe_load(text)
    docs, notes = comments(text)
    out: dict[str, str | None] = {}
    for leaf in leaves(values["ferry"]):
        path, value = f"ferry.{leaf}", lookup(values["ferry"], leaf)
        if isinstance(value, (dict, list)):
            continue
        setting = notes.get(path, {}).get("setting", _AUTO)
        out[path] = _setting_named_in(path, value, docs.get(path)) if setting is _AUTO else (setting or None)
    return out


def schema(text: str) -> dict[str, Any]:
    values = yaml.safe_load(text)
    docs, notes = comments(text)
    unknown = sorted(set(notes) - {p for p in _paths(values)})
    if unknown:
        raise ValuesError(f"@schema annotations on unknown keys: {', '.join(unknown)}")
    used: set[str] = set()
    defined: dict[str, dict[str, Any]] = {}
    root = _node(values, "", docs, notes, used, defined)
    # Definitions may use one another (resources -> quantity): close over them.
    pending = set(used) | _uses(defined)
    while pending:
        name = pending.pop()
        if name in DEFINITIONS and name not in used:
            used.add(name)
        pending |= {n for n in _uses(DEFINITIONS.get(name, {})) if n not in used}
    external: dict[str, dict[str, Any]] = {}
    for name in sorted(n for n in used if n.startswith(("k8s:", "crd:"))):
        external.update(external_definitions(name))
    used -= {n for n in used if n.startswith(("k8s:", "crd:"))}
    unknown = sorted(used - set(DEFINITIONS) - set(defined))
    if unknown:
        raise ValuesError(f"`$ref: {', '.join(unknown)}`: not in DEFINITIONS nor an x-define")
    definitions = {
        **{name: DEFINITIONS[name] for name in sorted(used) if name in DEFINITIONS},
        **defined,
        **dict(sorted(external.items())),
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "ferry chart values",
        "description": "GENERATED by `make generate` (scripts/generate_deploy.py, scripts/chart_values.py) from "
        "deploy/helm/ferry/values.yaml: its `# --` comments and `# @schema` annotations, and the bounds of "
        "ferry.settings.Settings for the ferry.* values. Strict: every object refuses unknown keys "
        "(additionalProperties: false), so a misspelt value fails `helm install` with its path.",
        **root,
        "definitions": definitions,
    }


def _paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        out = []
        for key, sub in value.items():
            path = f"{prefix}{key}"
            out += [path, *_paths(sub, path + ".")]
        return out
    return []


def schema_json(text: str) -> str:
    return json.dumps(schema(text), indent=2, ensure_ascii=False) + "\n"
