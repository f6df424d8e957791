"""scripts/crd_schemas.py: the vendored CRDs are what the manifest says, and the derivation is strict."""

from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import crd_schemas  # noqa: E402


@pytest.fixture
def vendored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of deploy/crds the script works on instead of the repository's."""
    copy = tmp_path / "crds"
    shutil.copytree(crd_schemas.CRDS, copy, ignore=shutil.ignore_patterns("jsonschema"))
    monkeypatch.setattr(crd_schemas, "CRDS", copy)
    monkeypatch.setattr(crd_schemas, "MANIFEST", copy / "manifest.yaml")
    return copy


def test_every_source_records_its_upstream_release() -> None:
    for source in crd_schemas.load_manifest():
        assert source.repository.startswith("https://github.com/") and source.path, source
        assert source.tag.startswith("v") and len(source.commit) == 40 and len(source.sha256) == 64, source
        assert bool(source.document) == bool(source.built_sha256) == bool(source.built), source


def test_a_changed_vendored_file_fails_loudly(vendored: Path) -> None:
    rule = vendored / "prometheus-operator/v0.93.0/monitoring.coreos.com_prometheusrules.yaml"
    rule.write_text(rule.read_text().replace("type: string", "type: integer", 1))
    with pytest.raises(crd_schemas.Problem, match=r"monitoring.coreos.com_prometheusrules.yaml: sha256 \w+ but"):
        crd_schemas.schemas()
    assert crd_schemas.main(["--check"]) == 1


def test_an_unlisted_or_missing_file_fails(vendored: Path) -> None:
    shutil.copy(
        vendored / "argo-rollouts/v1.9.1/rollout-crd.yaml", vendored / "argo-rollouts/v1.9.1/experiment-crd.yaml"
    )
    (vendored / "gateway-api/v1.6.1/gateway.networking.k8s.io_httproutes.yaml").unlink()
    with pytest.raises(crd_schemas.Problem) as failure:
        crd_schemas.schemas()
    assert "experiment-crd.yaml: vendored but not in the manifest" in str(failure.value)
    assert "httproutes.yaml: listed in the manifest but missing" in str(failure.value)


def test_extract_cuts_the_named_documents_verbatim(vendored: Path, tmp_path: Path) -> None:
    """A multi-CRD build whose sha256 the manifest records yields byte-identical vendored files."""
    keda = [s for s in crd_schemas.load_manifest() if s.document]
    assert {s.document for s in keda} == {"scaledobjects.keda.sh", "triggerauthentications.keda.sh"}
    original = {s.file: (vendored / s.file).read_bytes() for s in keda}
    other = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: other.keda.sh\n"
    build = tmp_path / "keda-crds.yaml"
    build.write_text("---\n".join([other, *(text.decode() for text in original.values())]))
    for source in keda:
        (vendored / source.file).unlink()
    digest = crd_schemas.sha256(build)
    sources = [dataclasses.replace(s, built_sha256=digest) if s.document else s for s in crd_schemas.load_manifest()]
    written = crd_schemas.extract(build, sources)
    assert len(written) == 2
    assert {s.file: (vendored / s.file).read_bytes() for s in keda} == original
    with pytest.raises(crd_schemas.Problem, match="is no built_sha256"):
        crd_schemas.extract(build, crd_schemas.load_manifest())


def crd(schema: dict) -> dict:
    return {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


def derive(schema: dict) -> dict:
    used: set[str] = set()
    out = crd_schemas.version_schema(crd(schema), crd(schema)["spec"]["versions"][0], used)
    jsonschema.Draft7Validator.check_schema(out)
    return out


WIDGET = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                # field names that are also schema keywords must stay field names
                "properties": {"type": "object", "properties": {"type": {"type": "string"}}},
                "strategy": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
            },
        }
    },
}


def widget(**spec: object) -> dict:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1, **spec}}


def errors(schema: dict, doc: dict) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def test_derived_schema_is_strict_and_kubernetes_shaped() -> None:
    schema = derive(WIDGET)
    assert errors(schema, widget()) == []
    assert errors(schema, widget(sise=1)) == ["Additional properties are not allowed ('sise' was unexpected)"]
    assert errors(schema, widget(properties={"typo": "x"}))  # nested objects are strict too
    assert errors(schema, {**widget(), "kind": "Gadget"}) and errors(schema, {**widget(), "apiVersion": "x/v1"})
    assert errors(schema, {"metadata": {}, "spec": {"size": 1}})  # apiVersion and kind are required
    assert errors(schema, {**widget(), "stauts": {}})  # the root is strict
    # int-or-string: both, nothing else; declared once by controller-gen, or only by the extension
    assert errors(schema, widget(size="25%", port=80)) == errors(schema, widget(port="http")) == []
    assert errors(schema, widget(size=1.5)) and errors(schema, widget(port=[1]))
    assert errors(schema, widget(note=None, mode=None)) == [] and errors(schema, widget(mode="c"))
    assert errors(schema, widget(extra={"anything": {"goes": 1}}, labels={"a": "b"})) == []
    assert errors(schema, widget(labels={"a": 1}))
    assert errors(schema, widget(strategy="ABORT")) == [] and errors(schema, widget(strategy="fail"))


def test_a_pattern_python_cannot_compile_fails_the_run() -> None:
    with pytest.raises(crd_schemas.Problem, match=r"spec/properties/name: pattern .* PATTERN_REWRITES"):
        derive({"type": "object", "properties": {"spec": {"properties": {"name": {"pattern": "a(?i)b"}}}}})


def test_the_derivation_reads_only_the_manifest_sources() -> None:
    """What helm-validate uses: one file per served version of every vendored CRD, nothing else."""
    names = set()
    for source in crd_schemas.load_manifest():
        for doc in yaml.load_all((crd_schemas.CRDS / source.file).read_text(), Loader=crd_schemas.Loader):
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"].lower()
            names |= {f"deploy/crds/jsonschema/{group}/{kind}_{v['name']}.json" for v in doc["spec"]["versions"]}
    assert set(crd_schemas.schemas()) == names


def test_the_rewritten_patterns_keep_go_scoping_of_inline_flags() -> None:
    """RE2 scopes ``(?i)`` to the rest of its group: month names match in any case, the ``day`` suffix does not."""
    months, days = (
        re.compile(new) for old, new in crd_schemas.PATTERN_REWRITES.items() if "january" in old or "satur" in old
    )
    assert all(months.search(m) for m in ("January", "march:MAY", "1:12", "9"))
    assert not any(months.search(m) for m in ("jan", "13", "may:"))
    assert days.search("Monday") and days.search("monday:friday")
    assert not days.search("MonDAY") and not days.search("monday:Friday")


def test_a_bare_equals_sign_is_read_as_a_string() -> None:
    assert yaml.load("enum:\n- '!='\n- =\n- =~\n", Loader=crd_schemas.Loader) == {"enum": ["!=", "=", "=~"]}
