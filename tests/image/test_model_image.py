"""A team's own model baked into a derived image: deploy/model-image/Dockerfile (FROM the ferry image,
COPY the model and its card, ENV FERRY_MODEL__PATH) through `make model-image`, which
`make image MODEL=...` runs after building the service image (built once, by the tier's prerequisite).

The model is a second one trained here, different from the image's churn model in name, version
and sha256. A model that does not match its card is refused by make before building, and an image
built around one anyway (plain podman build) never becomes ready.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ferry.train import TrainParams, train
from support.podman import SERVICE_IMAGE, Container, podman
from support.podspec import PodRun

ROOT = Path(__file__).resolve().parents[2]
OWN_PATH = "/app/models/own/model.joblib"  # where deploy/model-image/Dockerfile puts it


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller churn-like model under another name and version, saved as lite.joblib + lite.card.json."""
    out = tmp_path_factory.mktemp("own-model")
    card = train(out, TrainParams(seed=7, n_samples=4000, n_estimators=30))
    card.update(name="churn-lite", version="2.1.0", file="lite.joblib")
    (out / "model.joblib").rename(out / "lite.joblib")
    (out / "model.card.json").unlink()
    (out / "lite.card.json").write_text(json.dumps(card))
    return out / "lite.joblib"


@pytest.fixture(scope="module")
def image_refs() -> Iterator[Callable[[], str]]:
    """Unique tags for the derived images of this module, removed at its end."""
    made: list[str] = []

    def new() -> str:
        made.append(f"localhost/ferry-model-test:{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    podman("rmi", "--force", "--ignore", *made, check=False)


def make_model_image(model: Path, ref: str) -> subprocess.CompletedProcess[str]:
    image, tag = SERVICE_IMAGE.rsplit(":", 1)
    command = ["make", "--no-print-directory", "model-image", f"MODEL={model}", f"MODEL_IMAGE={ref}"]
    return subprocess.run(
        [*command, f"IMAGE={image}", f"TAG={tag}"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_derived_image_serves_its_own_model(
    own_model: Path, image_refs: Callable[[], str], start_service: Callable[..., Container], service_pod: PodRun
) -> None:
    ref = image_refs()
    built = make_model_image(own_model, ref)
    assert built.returncode == 0, built.stdout + built.stderr
    own_card = json.loads(own_model.with_name("lite.card.json").read_text())
    # The chart's default model.path is empty: the pod reads the derived image's own FERRY_MODEL__PATH.
    assert "FERRY_MODEL__PATH" not in service_pod.env
    ferry = start_service(ref)
    assert ferry.exec("sh", "-c", "echo $FERRY_MODEL__PATH", check=True).stdout.strip() == OWN_PATH
    ferry.wait_for("/readyz", 200, timeout=90)
    churn_card = json.loads(ferry.exec("cat", "/app/models/churn/model.card.json", check=True).stdout)
    ready = httpx.get(ferry.url + "/readyz", timeout=10).json()
    assert (ready["model"], ready["version"]) == ("churn-lite", "2.1.0")
    served = httpx.get(ferry.url + "/api/v1/models/churn-lite", timeout=10).json()
    assert served["sha256"] == own_card["sha256"]
    for key in ("name", "version", "sha256"):  # another model than the image's own churn
        assert served[key] != churn_card[key], key
    r = httpx.post(ferry.url + "/api/v1/predict", json={"record": own_card["example"]}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": "churn-lite", "version": "2.1.0"}


def test_a_model_that_does_not_match_its_card_is_refused(
    own_model: Path, image_refs: Callable[[], str], service_pod: PodRun, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    blob = bytearray(own_model.read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte
    (context / "model.joblib").write_bytes(bytes(blob))
    (context / "model.card.json").write_bytes(own_model.with_name("lite.card.json").read_bytes())
    card_sha = json.loads((context / "model.card.json").read_text())["sha256"]

    refused = make_model_image(context / "model.joblib", image_refs())
    assert refused.returncode != 0
    assert card_sha in refused.stderr and "sha256" in refused.stderr, refused.stderr

    # Built anyway, without make's check: the image's own settings (FERRY_MODEL__PATH and a required
    # card, from its ENV) with the pod's hardening. It runs, stays unready, and says why.
    ref = image_refs()
    podman(
        "build", "--format", "docker", "-f", str(ROOT / "deploy/model-image/Dockerfile"),
        "--build-arg", f"FERRY_IMAGE={SERVICE_IMAGE}", "-t", ref, str(context), timeout=300,
    )  # fmt: skip
    with Container(ref, prefix="ferry-tampered", publish=service_pod.ports["http"], options=service_pod.options) as c:
        c.wait_for("/livez", 200, timeout=90)
        deadline = time.monotonic() + 60
        while (ready := httpx.get(c.url + "/readyz", timeout=10)).json()["status"] != "failed":
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert ready.status_code == 503 and "sha256 mismatch" in ready.json()["reason"], ready.text
        failed = [r for r in c.records() if r.get("event") == "model_load_failed"]
        assert failed and all("sha256 mismatch" in r["reason"] for r in failed)
        assert c.healthcheck().returncode != 0  # the HEALTHCHECK says unhealthy
