"""Model delivery in the chart (`model.*`, `canary.model.*`), rendered with the real helm.

Each `model.source` renders its own volume, read-only mount, init container and FERRY_MODEL__*
settings (the scenarios of `make helm-validate`, validated strictly there); a remote source without
a pinned sha256 is refused at render with a message naming the value to set; each track carries its
own model settings in its own pod template, so a change of the canary's model leaves the stable
Deployment and the shared ConfigMap byte for byte as they were; NOTES.txt warns about an unpinned
model and `helm test` checks each track against its own values.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from support.helm import refusal
from support.notes import render_notes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

CHART = kv.CHART
PIN = "0f3c6b1e8a4d2c7f9b5e1a3d6c8f0b2e4a7c9d1f3b5e7a9c2d4f6b8e0a1c3e5f"  # the ci scenarios' model pin
STABLE_PIN = "7a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c"  # canary-model's stable pin
OTHER = "c" * 64


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def render(*args: str) -> tuple[dict, ...]:
    return tuple(kv.documents(kv.helm_template(None, (), *args)))


def workload(docs: tuple[dict, ...], name: str = "ferry") -> dict:
    (found,) = [d for d in docs if d["kind"] in ("Deployment", "Rollout") and d["metadata"]["name"] == name]
    return found


def pod(docs: tuple[dict, ...], name: str = "ferry") -> dict:
    return workload(docs, name)["spec"]["template"]["spec"]


def env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def model_env(container: dict) -> dict[str, object]:
    return {k: v for k, v in env(container).items() if k.startswith("FERRY_MODEL__")}


def volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec["volumes"]}


def mounts(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container["volumeMounts"]}


def configmap(docs: tuple[dict, ...]) -> dict:
    (found,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ferry"]
    return found


def helm_checks(docs: tuple[dict, ...]) -> list[dict]:
    (test_pod,) = [d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"] == "ferry-test-predict"]
    (value,) = [e["value"] for e in test_pod["spec"]["containers"][0]["env"] if e["name"] == "FERRY_CHECKS"]
    return json.loads(value)


# --- each source -----------------------------------------------------------------------------------
def test_image_source_reads_the_model_in_the_image() -> None:
    docs = kv.render_scenario("default")
    spec = pod(docs)
    ferry = spec["containers"][0]
    assert "initContainers" not in spec and set(volumes(spec)) == {"tmp", "metrics"}
    assert "model" not in mounts(ferry)
    # No FERRY_MODEL__PATH: the image's own (the churn model, or a derived image's /app/models/own/...).
    assert model_env(ferry) == {"FERRY_MODEL__NAME": "churn", "FERRY_MODEL__REQUIRE_CARD": "true"}
    assert not any(k.startswith("FERRY_MODEL__") for k in configmap(docs)["data"]), "never in the shared ConfigMap"
    elsewhere = pod(render("--set", "model.path=/app/models/other/model.joblib", "--set", f"model.sha256={PIN}"))
    assert model_env(elsewhere["containers"][0]) == {
        "FERRY_MODEL__NAME": "churn",
        "FERRY_MODEL__REQUIRE_CARD": "true",
        "FERRY_MODEL__PATH": "/app/models/other/model.joblib",
        "FERRY_MODEL__SHA256": PIN,
    }


def test_url_source_fetches_into_an_empty_dir_with_an_init_container() -> None:
    spec = pod(kv.render_scenario("model-url-https"))
    ferry = spec["containers"][0]
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "model-fetch"
    assert fetch["image"] == ferry["image"], "the same image runs ferry model fetch"
    assert fetch["command"] == ["python", "-m", "ferry", "model", "fetch"]
    args = fetch["args"]
    flags = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flags["--url"] == "https://models.example.com/churn/v3/model.joblib"
    assert flags["--sha256"] == PIN and flags["--out"] == "/models" and flags["--name"] == "model.joblib"
    assert flags["--max-bytes"] == "536870912" and "--allow-http" not in args and "--no-card" not in args
    # Hardened like the serving container, small, and its failure line shown by `kubectl describe pod`.
    assert fetch["securityContext"] == ferry["securityContext"]
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    assert fetch["resources"]["limits"] == {"cpu": "1", "memory": "256Mi"}
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "env" not in fetch, "no credentials for an https source"
    # The init container writes the emptyDir; the service only reads it, from the path the fetch wrote.
    assert volumes(spec)["model"] == {"name": "model", "emptyDir": {"sizeLimit": "1Gi"}}
    assert mounts(fetch)["model"] == {"name": "model", "mountPath": "/models"}
    assert mounts(ferry)["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    assert model_env(ferry) == {
        "FERRY_MODEL__NAME": "churn",
        "FERRY_MODEL__REQUIRE_CARD": "true",
        "FERRY_MODEL__PATH": "/models/model.joblib",
        "FERRY_MODEL__SHA256": PIN,
    }


def test_s3_source_takes_credentials_from_a_secret_or_the_service_account() -> None:
    (fetch,) = pod(kv.render_scenario("model-url-s3"))["initContainers"]
    assert env(fetch) == {
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "https://minio.storage.svc:9000",
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "ferry-model-store", "key": "AWS_ACCESS_KEY_ID"}},
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "ferry-model-store", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert fetch["args"][fetch["args"].index("--url") + 1] == "s3://ml-models/churn/v3/model.joblib"
    # IRSA: no Secret; the ServiceAccount's role annotation is what the EKS webhook turns into credentials.
    role = "arn:aws:iam::123456789012:role/ferry-models"
    docs = kv.render_scenario(
        "model-url-s3",
        "--set",
        "model.fetch.s3.existingSecret=",
        "--set",
        f"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={role}",
    )
    (fetch,) = pod(docs)["initContainers"]
    assert env(fetch) == {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "https://minio.storage.svc:9000"}
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert pod(docs)["serviceAccountName"] == account["metadata"]["name"]


def test_pvc_source_mounts_the_claim_read_only() -> None:
    spec = pod(kv.render_scenario("model-pvc"))
    ferry = spec["containers"][0]
    assert "initContainers" not in spec
    assert volumes(spec)["model"]["persistentVolumeClaim"] == {"claimName": "ferry-models", "readOnly": True}
    assert mounts(ferry)["model"] == {"name": "model", "mountPath": "/models", "readOnly": True, "subPath": "churn/v3"}
    assert model_env(ferry)["FERRY_MODEL__PATH"] == "/models/model.joblib"
    assert model_env(ferry)["FERRY_MODEL__SHA256"] == PIN


def test_image_volume_source_mounts_the_oci_image_read_only() -> None:
    spec = pod(kv.render_scenario("model-image-volume"))
    ferry = spec["containers"][0]
    reference = (
        "ghcr.io/ferry-serving/models/churn@sha256:"
        + "5d1e9c3a7b2f4e6d8c0a1b3e5f7d9c2a4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f"
    )
    assert "initContainers" not in spec
    assert volumes(spec)["model"] == {"name": "model", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}
    assert mounts(ferry)["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    # Valid for the Kubernetes versions make helm-validate checks (1.33, 1.37); unknown before the API had it.
    deployment = workload(kv.render_scenario("model-image-volume"))
    assert kv.validate_core(deployment, "1.33.0") is None
    assert "'image' was unexpected" in str(kv.validate_core(deployment, "1.30.0"))
    # Pinned by the reference's digest: no sha256 needed (and none rendered).
    assert model_env(ferry) == {
        "FERRY_MODEL__NAME": "churn",
        "FERRY_MODEL__REQUIRE_CARD": "true",
        "FERRY_MODEL__PATH": "/models/model.joblib",
    }


def test_worker_and_rollout_serve_the_stable_model() -> None:
    url = ["--set", "model.source=url", "--set", "model.url=https://m.example.com/model.joblib"]
    url += ["--set", f"model.sha256={PIN}"]
    canary = ["--set", "canary.enabled=true", "--set", "canary.image.tag=0.2.0"]
    canary += ["--set", f"canary.model.sha256={OTHER}"]
    docs = kv.render_scenario("worker-redis", *url, *canary)
    stable, worker = pod(docs), pod(docs, "ferry-worker")
    assert model_env(worker["containers"][0]) == model_env(stable["containers"][0])
    assert worker["initContainers"] == stable["initContainers"] and volumes(worker) == volumes(stable)
    assert model_env(pod(docs, "ferry-canary")["containers"][0])["FERRY_MODEL__SHA256"] == OTHER
    rollout = pod(kv.render_scenario("rollout", *url))
    assert model_env(rollout["containers"][0])["FERRY_MODEL__SHA256"] == PIN and rollout["initContainers"]


# --- refused at render ------------------------------------------------------------------------------
REFUSED = {
    "url without a pin": (
        ["--set", "model.source=url", "--set", "model.url=https://m.example.com/model.joblib"],
        r"model.source=url needs model.sha256: the pinned sha256 of the model file",
    ),
    "canary url without a pin": (
        [
            "--set", "canary.enabled=true", "--set", "canary.image.tag=0.2.0", "--set", "canary.model.source=url",
            "--set", "canary.model.url=s3://models/churn/v4/model.joblib",
        ],
        r"canary.model.source=url needs canary.model.sha256",
    ),
    "image volume by tag without a pin": (
        ["--set", "model.source=imageVolume", "--set", "model.imageVolume.reference=ghcr.io/acme/churn:v3"],
        r"model.source=imageVolume with ghcr.io/acme/churn:v3 \(a tag, which can be moved\) needs model.sha256.*"
        r"model.imageVolume.reference=repo@sha256:",
    ),
    "canary moves its model under the stable pin": (
        [
            "--set", f"model.sha256={PIN}", "--set", "canary.enabled=true", "--set", "canary.image.tag=0.2.0",
            "--set", "canary.model.source=pvc", "--set", "canary.model.pvc.claimName=models",
        ],
        r"canary.model.source, canary.model.pvc set: .* canary.model.sha256 is not set: the canary would inherit "
        r"model.sha256",
    ),
    "plain http without allowHttp": (
        ["--set", "model.source=url", "--set", "model.url=http://m.local/model.joblib", "--set", f"model.sha256={PIN}"],
        r"model.url is plain http://: set model.fetch.allowHttp=true",
    ),
    "http S3 endpoint without allowHttp": (
        [
            "--set", "model.source=url", "--set", "model.url=s3://b/model.joblib", "--set", f"model.sha256={PIN}",
            "--set", "model.fetch.s3.endpoint=http://minio:9000",
        ],
        r"model.fetch.s3.endpoint is plain http://: set model.fetch.allowHttp=true",
    ),
    "no card fetched but a card required": (
        [
            "--set", "model.source=url", "--set", "model.url=https://m/model.joblib", "--set", f"model.sha256={PIN}",
            "--set", "model.fetch.card=false",
        ],
        r"model.fetch.card=false fetches no card.*also set model.requireCard=false",
    ),
    "url without a url": (
        ["--set", "model.source=url", "--set", f"model.sha256={PIN}"],
        r"model.source=url needs model.url",
    ),
    "pvc without a claim": (["--set", "model.source=pvc"], r"model.source=pvc needs model.pvc.claimName"),
    "image volume without a reference": (
        ["--set", "model.source=imageVolume", "--set", f"model.sha256={PIN}"],
        r"needs model.imageVolume.reference",
    ),
    "a mount over the service's files": (
        ["--set", "model.source=pvc", "--set", "model.pvc.claimName=c", "--set", "model.mountPath=/app/models"],
        r"model.mountPath \(/app/models\) must not be or sit inside /app",
    ),
    "a subdirectory as the fetched file": (
        [
            "--set", "model.source=url", "--set", "model.url=https://m/model.joblib", "--set", f"model.sha256={PIN}",
            "--set", "model.file=v3/model.joblib",
        ],
        r"model.file \(v3/model.joblib\) must be a plain file name for source url",
    ),
    "a model setting in extraSettings": (
        ["--set", f"ferry.extraSettings.FERRY_MODEL__SHA256={PIN}"],
        r"ferry.extraSettings.FERRY_MODEL__SHA256 is set per track from model.\*",
    ),
    "unknown source": (["--set", "model.source=s3"], r"/model/source'?: value must be one of"),
    "short sha256": (["--set", "model.sha256=abc"], r"/model/sha256"),
    "misspelt canary model key": (["--set", "canary.model.sha265=x"], r"additional properties 'sha265'"),
    "old location of the model values": (["--set", "ferry.model.path=/x"], r"additional properties 'model'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_a_message_naming_the_value(case: str) -> None:
    args, message = REFUSED[case]
    stderr = refusal(kv.HELM, CHART, *args)
    assert re.search(message, stderr), stderr


# --- per track ---------------------------------------------------------------------------------------
def test_canary_carries_its_own_model_and_pin() -> None:
    docs = kv.render_scenario("canary-model")
    stable, canary = pod(docs)["containers"][0], pod(docs, "ferry-canary")
    assert model_env(stable) == {
        "FERRY_MODEL__NAME": "churn",
        "FERRY_MODEL__REQUIRE_CARD": "true",
        "FERRY_MODEL__SHA256": STABLE_PIN,
    }
    assert model_env(canary["containers"][0]) == {
        "FERRY_MODEL__NAME": "churn",  # inherited from model.name
        "FERRY_MODEL__REQUIRE_CARD": "true",
        "FERRY_MODEL__PATH": "/models/model.joblib",
        "FERRY_MODEL__SHA256": PIN,
    }
    assert canary["initContainers"][0]["args"][3] == PIN and "initContainers" not in pod(docs)
    assert [(c["track"], c["url"], c["version"], c["sha256"]) for c in helm_checks(docs)] == [
        ("stable", "http://ferry-stable.ferry.svc:80", "", STABLE_PIN),
        ("canary", "http://ferry-canary.ferry.svc:80", "3.0.0", PIN),
    ]


def test_changing_only_the_canary_model_leaves_the_stable_track_alone() -> None:
    before = kv.render_scenario("canary-model")
    after = kv.render_scenario(
        "canary-model",
        "--set", "canary.model.url=https://models.example.com/churn/v4/model.joblib",
        "--set", f"canary.model.sha256={OTHER}",
        "--set", "canary.model.version=4.0.0",
        "--set", "canary.model.requireCard=false",
        "--set", "canary.model.fetch.card=false",
    )  # fmt: skip
    assert workload(after) == workload(before), "the stable Deployment (pod template, checksum) is unchanged"
    assert configmap(after) == configmap(before), "the shared ConfigMap is unchanged"
    assert workload(after, "ferry-canary") != workload(before, "ferry-canary")
    canary = model_env(pod(after, "ferry-canary")["containers"][0])
    assert canary["FERRY_MODEL__SHA256"] == OTHER and canary["FERRY_MODEL__REQUIRE_CARD"] == "false"


def test_helm_test_checks_each_track_against_its_values() -> None:
    (stable,) = helm_checks(kv.render_scenario("default", "--set", "model.name=fraud", "--set", "model.version=2.0"))
    assert stable == {
        "track": "stable",
        "url": "http://ferry.ferry.svc:80",
        "name": "fraud",
        "version": "2.0",
        "sha256": "",
    }
    (newest,) = helm_checks(kv.render_scenario("rollout"))
    assert newest["track"] == "newest revision" and newest["url"] == "http://ferry-canary.ferry.svc:80"
    script = (CHART / "files/helm-test.py").read_text()
    assert "churn" not in script and "churn" not in (CHART / "templates/NOTES.txt").read_text()


# --- NOTES ---------------------------------------------------------------------------------------
def test_notes_name_the_model_and_warn_without_a_pin(tmp_path: Path) -> None:
    unpinned = render_notes(kv.HELM, CHART, tmp_path)
    assert "stable: churn from image" in unpinned
    assert (
        "WARNING: the stable model is not pinned. Set model.sha256 (sha256sum of the model file) or image.digest"
        in unpinned
    )
    for pinned in (["--set", f"model.sha256={PIN}"], ["--set", f"image.digest=sha256:{PIN}"]):
        assert "not pinned" not in render_notes(kv.HELM, CHART, tmp_path, *pinned)
    assert "not pinned" not in render_notes(
        kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/model-image-volume-values.yaml")
    )
    fraud = render_notes(kv.HELM, CHART, tmp_path, "--set", "model.name=fraud", "--set", f"model.sha256={PIN}")
    assert "api/v1/models/fraud?section=example" in fraud and "churn" not in fraud
    # The canary inherits the stable pin unless it sets its own; without either, each track is warned about.
    canary = render_notes(kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/canary-values.yaml"))
    assert "the stable model is not pinned" in canary
    assert (
        "WARNING: the canary model is not pinned. Set canary.model.sha256 (sha256sum of the model file) "
        + ("or canary.image.digest")
        in canary
    )
    inherited = render_notes(
        kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/canary-values.yaml"), "--set", f"model.sha256={PIN}"
    )
    assert "not pinned" not in inherited
    both = render_notes(kv.HELM, CHART, tmp_path, "-f", str(CHART / "ci/canary-model-values.yaml"))
    assert "not pinned" not in both and "canary: churn 3.0.0 from url" in both and STABLE_PIN in both


def test_network_policy_opens_the_model_store_only_to_fetch() -> None:
    def store_rules(docs: tuple[dict, ...]) -> list[dict]:
        (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
        return [rule for rule in policy["spec"]["egress"] if {"port": 53, "protocol": "UDP"} not in rule["ports"]]

    https = {"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
    assert store_rules(kv.render_scenario("model-url-https")) == [https]
    assert store_rules(kv.render_scenario("canary-model")) == [https], "the canary fetches"
    for scenario in ("default", "model-pvc", "model-image-volume"):
        assert store_rules(kv.render_scenario(scenario)) == [], scenario
    minio = kv.render_scenario(
        "model-url-s3",
        "--set", "networkPolicy.modelStore.ports={9000}",
        "--set", "networkPolicy.modelStore.to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=storage",
    )  # fmt: skip
    assert store_rules(minio) == [
        {
            "ports": [{"port": 9000, "protocol": "TCP"}],
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}}}],
        }
    ]
