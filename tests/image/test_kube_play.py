"""The chart's pods as containers: ``helm template`` of a scenario -> ``podman kube play`` of its
Deployments and ConfigMaps -> pods running the images ``make image`` built, with the rendered
security context, environment, volumes and init containers (tests/support/kubeplay.py strips or
rewrites, each with its reason, what podman 4.3 cannot apply: probes, ports, preStop, the grace period,
emptyDir naming, the restart policy). The tests then act as the kubelet and the Service would: poll the
rendered probes and send traffic to the pod IPs.

- default scenario: one pod, as rendered (user, read-only root, capabilities, no-new-privileges,
  ConfigMap and per-track environment, limits, emptyDirs), its probes answer, it predicts;
- canary scenario: the canary track runs a derived image (deploy/model-image, `make model-image`)
  of a second model trained here, pinned with canary.model.sha256, while stable pins the image's churn
  model: each track serves its own model, the chart's own `helm test` script (run as its pod would, in
  the service image on the pods' network) passes, and fails when a track's model is swapped; stopping
  both pods with their grace period under light load fails no request;
- model.source url: the model-fetch init container fetches the second model from an HTTP server on the
  pods' network and the pod serves it; with a wrong pin the init container fails with its one line and
  the serving container never starts;
- model.url s3://: the same from moto's S3 server on the network's gateway, the init container's keys
  from a Secret;
- model.source pvc: the claim is a podman volume holding the second model, mounted read-only;
- model.source imageVolume: podman 4.3's kube play has no image volumes (podman-kube-play(1) of 4.3:
  hostPath, emptyDir and persistentVolumeClaim only), so this pod runs through tests/support/podspec.py,
  which mounts the model image (deploy/model-volume/Dockerfile) as podman's read-only image mount, as
  a kubelet mounts an image volume.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import yaml

from ferry.train import TrainParams, train
from support.kubeplay import Pod, Release, remove_session_pods
from support.load import Load
from support.moto_s3 import MotoS3
from support.podman import SERVICE_IMAGE, Container, podman, run_once
from support.podspec import cgroup_controllers, container, cpus, pod_run, quantity_bytes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

NEXT = {"name": "churn-next", "version": "2.0.0"}  # the second model's card


@pytest.fixture(scope="module", autouse=True)
def _leftovers() -> Iterator[None]:
    kv.ensure_k8s_tools()
    yield
    remove_session_pods()


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    """A podman network of this module's own: its pods (and the model server) reach each other by IP.

    An idle container holds it up: podman removes a network's bridge (and its route) with its last
    container, and traffic to a stopped pod's IP would then leave by the default route, where this
    machine's egress proxy answers it (a 404 that is no answer of ferry's). With the bridge up, a
    request after a pod has gone finds no host, as it would in a cluster."""
    name = f"ferry-kp-{uuid.uuid4().hex[:8]}"
    podman("network", "create", name)
    anchor = Container(
        SERVICE_IMAGE, ["3600"], prefix="ferry-kp-anchor", entrypoint=["sleep"], options=["--network", name]
    )
    with anchor:
        yield name
    podman("network", "rm", "--force", name, check=False)


def render(scenario: str, *sets: str) -> tuple[str, list[dict]]:
    """A unique release name and ``helm template`` of a ci scenario with the local images."""
    release = f"kp{uuid.uuid4().hex[:6]}"
    repository, tag = SERVICE_IMAGE.rsplit(":", 1)
    argv = [kv.HELM, "template", release, str(kv.CHART), "--namespace", "ferry"]
    argv += ["--values", str(kv.CHART / "ci" / kv.SCENARIOS[scenario].values)]
    argv += ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]
    for value in sets:
        argv += ["--set", value]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return release, [d for d in yaml.safe_load_all(result.stdout) if d]


def rendered_container(pod: Pod, name: str = "ferry") -> dict:
    (container,) = [c for c in pod.template["spec"]["containers"] if c["name"] == name]
    return container


def served(pod: Pod) -> dict:
    (model,) = httpx.get(pod.url("/api/v1/models"), timeout=10).json()["models"]
    return model


def example(pod: Pod) -> dict:
    """A valid record for the model the pod serves: its card's example."""
    return httpx.get(pod.url(f"/api/v1/models/{served(pod)['name']}"), timeout=10).json()["example"]


def predict(pod: Pod) -> httpx.Response:
    return httpx.post(pod.url("/api/v1/predict"), json={"record": example(pod)}, timeout=10)


def image_card() -> dict:
    """The card of the churn model built into the service image."""
    return json.loads(run_once(SERVICE_IMAGE, "/app/models/churn/model.card.json", entrypoint=["cat"]))


@pytest.fixture(scope="module")
def next_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A second, smaller model under another name and version: model.joblib and model.card.json in a
    directory readable by the image's user (the model server container serves it)."""
    out = tmp_path_factory.mktemp("next-model")
    card = {**train(out, TrainParams(seed=11, n_samples=3000, n_estimators=20)), **NEXT}
    (out / "model.card.json").write_text(json.dumps(card))
    out.chmod(0o755)
    for file in out.iterdir():
        file.chmod(0o644)
    return out, card


@pytest.fixture(scope="module")
def canary_image(next_model: tuple[Path, dict]) -> Iterator[str]:
    """The derived image of the second model (`make model-image`, deploy/model-image/Dockerfile)."""
    # A letter first: `--set` reads an all-digit tag (or 1e5-like) as a number, which the schema refuses.
    ref = f"localhost/ferry-model-kp:t{uuid.uuid4().hex[:8]}"
    image, tag = SERVICE_IMAGE.rsplit(":", 1)
    make = ["make", "--no-print-directory", "model-image", f"MODEL={next_model[0] / 'model.joblib'}"]
    built = subprocess.run(
        [*make, f"MODEL_IMAGE={ref}", f"IMAGE={image}", f"TAG={tag}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    yield ref
    podman("rmi", "--force", "--ignore", ref, check=False)


def status_field(pod: Pod, field: str) -> str:
    status = podman("exec", pod.container("ferry"), "cat", "/proc/1/status").stdout
    match = re.search(rf"^{field}:\s+(.*)$", status, re.M)
    assert match, status
    return match.group(1)


def test_default_scenario_runs_as_rendered(network: str, tmp_path: Path) -> None:
    release, docs = render("default")
    with Release(docs, network, tmp_path) as played:
        assert played.play_result is not None and played.play_result.returncode == 0, (
            played.play_result.stderr,
            str(played),
        )
        # What podman 4.3 cannot apply is stripped by name (tests/support/kubeplay.py says why), nothing else.
        stripped = {c.split(": ")[1] for c in played.changes if c.split(": ")[1].endswith(" stripped")}
        pod_fields = ["serviceAccountName", "automountServiceAccountToken", "enableServiceLinks"]
        pod_fields += ["topologySpreadConstraints", "terminationGracePeriodSeconds"]
        container_fields = ["ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle"]
        assert stripped == {f"{field} stripped" for field in pod_fields + container_fields}, str(played)
        (pod,) = played.pods
        pod.wait_ready()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert httpx.get(pod.probe(kind), timeout=5).status_code == 200, kind
        container = rendered_container(pod)
        inspect = json.loads(podman("container", "inspect", pod.container("ferry")).stdout)[0]

        # The security context, as the kubelet would apply it.
        security, pod_security = container["securityContext"], pod.template["spec"]["securityContext"]
        assert inspect["Config"]["User"] == f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"
        assert podman("exec", pod.container("ferry"), "id", "-u").stdout.strip() == "10001"
        assert security["readOnlyRootFilesystem"] and inspect["HostConfig"]["ReadonlyRootfs"] is True
        denied = podman("exec", pod.container("ferry"), "touch", "/app/written", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        assert security["capabilities"]["drop"] == ["ALL"] and status_field(pod, "CapEff") == "0000000000000000"
        assert security["allowPrivilegeEscalation"] is False and status_field(pod, "NoNewPrivs") == "1"
        limits = container["resources"]["limits"]
        if "memory" in cgroup_controllers():  # rootless podman without the controller cannot apply limits
            assert inspect["HostConfig"]["Memory"] == quantity_bytes(limits["memory"])
        if "cpu" in cgroup_controllers():
            assert inspect["HostConfig"]["NanoCpus"] == int(float(cpus(limits["cpu"])) * 1e9)

        # The environment: the shared ConfigMap (envFrom) and the track's own model settings (env).
        environment = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
        (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{release}-ferry"]
        assert {k: environment.get(k) for k in configmap["data"]} == configmap["data"]
        assert {e["name"]: environment.get(e["name"]) for e in container["env"]} == {
            e["name"]: e["value"] for e in container["env"]
        }
        assert environment["FERRY_MODEL__PATH"] == "/app/models/churn/model.joblib", "the image's own path"

        # The volumes: an emptyDir of the pod's own at each rendered mount, writable; nothing else is.
        mounts = {m["Destination"]: m for m in inspect["Mounts"]}
        assert set(mounts) == {m["mountPath"] for m in container["volumeMounts"]}
        assert all(m["Name"].startswith(f"{release}-ferry-") and m["RW"] for m in mounts.values())
        assert podman("exec", pod.container("ferry"), "touch", "/tmp/written", check=False).returncode == 0

        assert served(pod)["name"] == "churn"
        answer = predict(pod)
        assert answer.status_code == 200, answer.text


def test_canary_tracks_serve_their_own_models_and_drain(
    network: str, tmp_path: Path, canary_image: str, next_model: tuple[Path, dict]
) -> None:
    churn, nxt = image_card(), next_model[1]
    canary_repository, canary_tag = canary_image.rsplit(":", 1)
    release, docs = render(
        "canary",
        f"model.version={churn['version']}",
        f"model.sha256={churn['sha256']}",
        f"canary.image.repository={canary_repository}",
        f"canary.image.tag={canary_tag}",
        f"canary.model.name={nxt['name']}",
        f"canary.model.version={nxt['version']}",
        f"canary.model.sha256={nxt['sha256']}",
    )
    with Release(docs, network, tmp_path) as played:
        assert played.play_result is not None and played.play_result.returncode == 0, played.play_result.stderr
        stable, canary = played.pod(f"{release}-ferry"), played.pod(f"{release}-ferry-canary")
        stable.wait_ready()
        canary.wait_ready()
        expected = {stable.name: churn, canary.name: nxt}
        for pod in (stable, canary):
            card = expected[pod.name]
            assert {k: served(pod)[k] for k in ("name", "version", "sha256")} == {
                k: card[k] for k in ("name", "version", "sha256")
            }, pod.name
            answer = predict(pod)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == {"name": card["name"], "version": card["version"]}
        assert churn["sha256"] != nxt["sha256"] and churn["name"] != nxt["name"]

        # The chart's `helm test` pod, run as rendered (the service image, its command and FERRY_CHECKS) on
        # the pods' network, each track's Service address replaced by that track's pod IP.
        (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
        tester = test_pod["spec"]["containers"][0]
        (checks,) = [json.loads(e["value"]) for e in tester["env"] if e["name"] == "FERRY_CHECKS"]
        pods = {"stable": stable, "canary": canary}
        for check in checks:
            assert check["url"] == f"http://{release}-ferry-{check['track']}.ferry.svc:80"
            check["url"] = pods[check["track"]].url()
        test_run = Container(
            SERVICE_IMAGE,
            tester["args"],
            prefix="ferry-helm-test",
            entrypoint=tester["command"],
            env={"FERRY_CHECKS": json.dumps(checks)},
            options=["--network", network, "--user", "10001:10001", "--read-only"],
        )
        with test_run:
            assert test_run.wait(timeout=60) == 0, test_run.logs()
            assert "ok: every track serves the expected model" in test_run.logs()
        # A track serving the other track's model fails it (here the checks swapped, run in this process).
        other = {"stable": canary, "canary": stable}
        swapped = [{**check, "url": other[check["track"]].url()} for check in checks]
        script = [sys.executable, *tester["command"][1:], *tester["args"]]
        wrong = subprocess.run(
            script, env={"FERRY_CHECKS": json.dumps(swapped)}, capture_output=True, text=True, timeout=60, check=False
        )
        assert wrong.returncode == 1 and "stable: serves" in wrong.stdout and "canary: serves" in wrong.stdout

        # Both tracks stopped under light load, each with its grace period: no request fails.
        with contextlib.ExitStack() as stack:
            loads = [
                stack.enter_context(Load(pod.url("/api/v1/predict"), {"record": example(pod)}, rate=20, connections=2))
                for pod in (stable, canary)
            ]
            deadline = time.monotonic() + 30
            while min(load.outcomes.get("ok", 0) for load in loads) < 20:  # the load runs before the signal
                assert time.monotonic() < deadline, [load.outcomes for load in loads]
                time.sleep(0.1)
            started = time.monotonic()
            codes = played.stop()
            took = time.monotonic() - started
            time.sleep(0.5)  # requests after the exit: refused, not failed
        grace = stable.template["spec"]["terminationGracePeriodSeconds"]
        assert codes == {stable.name: 0, canary.name: 0}, {p.name: p.logs()[-2000:] for p in (stable, canary)}
        assert took < grace, took
        for pod, load in zip((stable, canary), loads, strict=True):
            assert load.failures() == {}, (pod.name, load.outcomes)
            records = [json.loads(line) for line in podman("logs", pod.container("ferry")).stdout.splitlines()]
            assert records[-1]["event"] == "Shutting down: Master", pod.name


def test_url_source_fetches_the_pinned_model_or_never_starts(
    network: str, tmp_path: Path, next_model: tuple[Path, dict]
) -> None:
    directory, nxt = next_model
    server = Container(
        SERVICE_IMAGE,
        ["-m", "http.server", "8080", "--directory", "/srv"],
        prefix="ferry-model-server",
        entrypoint=["python"],
        options=["--network", network, "--volume", f"{directory}:/srv:ro"],
    )
    with server:
        address = server.inspect()["NetworkSettings"]["Networks"][network]["IPAddress"]
        url = f"http://{address}:8080/model.joblib"
        source = ["model.source=url", f"model.url={url}", "model.fetch.allowHttp=true", "model.fetch.retries=2"]
        source += [f"model.name={nxt['name']}", f"model.version={nxt['version']}"]

        _, docs = render("default", *source, f"model.sha256={nxt['sha256']}")
        with Release(docs, network, tmp_path) as played:
            assert played.play_result is not None and played.play_result.returncode == 0, played.play_result.stderr
            (pod,) = played.pods
            pod.wait_ready()
            model = served(pod)
            assert (model["name"], model["version"], model["sha256"]) == (nxt["name"], nxt["version"], nxt["sha256"])
            assert predict(pod).status_code == 200

        wrong = image_card()["sha256"]  # another model's hash: the pin does not match what is served
        _, docs = render("default", *source, f"model.sha256={wrong}")
        with Release(docs, network, tmp_path) as played:
            assert played.play_result is not None and played.play_result.returncode != 0
            assert "init container" in played.play_result.stderr and "exited with code 1" in played.play_result.stderr
            (pod,) = played.pods
            time.sleep(3)
            assert pod.state()["Status"] == "created", "the serving container never started"
            fetch = pod.state("model-fetch")
            assert (fetch["Status"], fetch["ExitCode"]) == ("exited", 1)
            stderr = podman("logs", pod.container("model-fetch")).stderr.strip().splitlines()
            assert len(stderr) == 1, stderr  # the one failure line
            failure = json.loads(stderr[0])
            assert failure["event"] == "model_fetch_failed" and failure["exit_code"] == 1
            assert wrong in failure["error"] and nxt["sha256"] in failure["error"], failure["error"]


def test_pvc_source_serves_the_model_on_the_claim(network: str, tmp_path: Path, next_model: tuple[Path, dict]) -> None:
    directory, nxt = next_model
    claim = f"ferry-kp-models-{uuid.uuid4().hex[:8]}"  # podman plays a claim as the volume of that name
    tarball = tmp_path / "claim.tar"
    with tarfile.open(tarball, "w") as tar:
        for name in ("model.joblib", "model.card.json"):
            tar.add(directory / name, arcname=name)
    podman("volume", "create", claim)
    try:
        podman("volume", "import", claim, str(tarball))
        # podman 4.3 ignores subPath (kubeplay.py refuses it): the files sit at the claim's root.
        _, docs = render(
            "model-pvc",
            f"model.pvc.claimName={claim}",
            "model.pvc.subPath=",
            f"model.name={nxt['name']}",
            f"model.version={nxt['version']}",
            f"model.sha256={nxt['sha256']}",
        )
        with Release(docs, network, tmp_path) as played:
            assert played.play_result is not None and played.play_result.returncode == 0, played.play_result.stderr
            (pod,) = played.pods
            pod.wait_ready()
            model = served(pod)
            assert (model["name"], model["version"], model["sha256"]) == (nxt["name"], nxt["version"], nxt["sha256"])
            assert predict(pod).status_code == 200
            inspect = json.loads(podman("container", "inspect", pod.container("ferry")).stdout)[0]
            (mount,) = [m for m in inspect["Mounts"] if m["Destination"] == "/models"]
            assert (mount["Name"], mount["RW"]) == (claim, False), mount
            denied = podman("exec", pod.container("ferry"), "touch", "/models/written", check=False)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    finally:
        podman("volume", "rm", "--force", claim, check=False)


def test_image_volume_source_serves_the_model_image(tmp_path: Path, next_model: tuple[Path, dict]) -> None:
    directory, nxt = next_model
    reference = f"localhost/ferry-model-volume-kp:{uuid.uuid4().hex[:8]}"
    dockerfile = ROOT / "deploy/model-volume/Dockerfile"
    podman("build", "--format", "oci", "-f", str(dockerfile), "-t", reference, str(directory), timeout=300)
    try:
        _, docs = render(
            "model-image-volume",
            f"model.imageVolume.reference={reference}",  # a tag, so pinned by the model's sha256
            "model.imageVolume.pullPolicy=Never",
            f"model.name={nxt['name']}",
            f"model.version={nxt['version']}",
            f"model.sha256={nxt['sha256']}",
        )
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap" and "data" in d}
        run = pod_run(deployment["spec"]["template"], configmaps, "ferry")
        assert f"type=image,source={reference},destination=/models" in run.options
        with container(run, SERVICE_IMAGE, prefix="ferry-image-volume") as ferry:
            ferry.wait_for("/readyz", 200, timeout=120)
            (model,) = httpx.get(ferry.url + "/api/v1/models", timeout=10).json()["models"]
            assert (model["name"], model["version"], model["sha256"]) == (nxt["name"], nxt["version"], nxt["sha256"])
            assert ferry.exec("ls", "/models").stdout.split() == ["model.card.json", "model.joblib"]
            denied = ferry.exec("touch", "/models/written")
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    finally:
        podman("rmi", "--force", "--ignore", reference, check=False)


def test_s3_source_with_credentials_from_a_secret(network: str, tmp_path: Path, next_model: tuple[Path, dict]) -> None:
    """model.url s3:// against moto's S3 server on the network's gateway (AWS_ENDPOINT_URL), with the
    init container's keys from a Secret played beside the Deployment (the init container has no other
    source of credentials: without them the fetch fails)."""
    directory, nxt = next_model
    (subnet,) = json.loads(podman("network", "inspect", network).stdout)[0]["subnets"]
    secret = f"ferry-kp-store-{uuid.uuid4().hex[:8]}"
    with MotoS3(tmp_path, host=subnet["gateway"]) as s3:
        aws = s3.aws_env()
        client = boto3.client(
            "s3",
            endpoint_url=aws["AWS_ENDPOINT_URL"],
            region_name=aws["AWS_REGION"],
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket="ferry-models")
        for name in ("model.joblib", "model.card.json"):
            client.put_object(Bucket="ferry-models", Key=f"next/{name}", Body=(directory / name).read_bytes())
        _, docs = render(
            "model-url-s3",
            "model.url=s3://ferry-models/next/model.joblib",
            f"model.fetch.s3.endpoint={s3.endpoint}",
            f"model.fetch.s3.region={aws['AWS_REGION']}",
            f"model.fetch.s3.existingSecret={secret}",
            "model.fetch.allowHttp=true",  # the endpoint is plain http
            "model.fetch.retries=2",
            f"model.name={nxt['name']}",
            f"model.version={nxt['version']}",
            f"model.sha256={nxt['sha256']}",
        )
        keys = {k: aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        store = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "stringData": keys}
        with Release([*docs, store], network, tmp_path) as played:
            assert played.play_result is not None and played.play_result.returncode == 0, played.play_result.stderr
            (pod,) = played.pods
            pod.wait_ready()
            model = served(pod)
            assert (model["name"], model["version"], model["sha256"]) == (
                nxt["name"],
                nxt["version"],
                nxt["sha256"],
            )
            assert predict(pod).status_code == 200
